#include "xfer/methods/smooth.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"

namespace xfer {

double smooth_lambda(double t, double total_steps, double t0, double tau, double alpha) {
  XFER_CHECK(tau >= 0, "smooth: tau must be >= 0, got ", tau);
  XFER_CHECK(!std::isnan(t) && !std::isnan(total_steps) && !std::isnan(t0) && !std::isnan(alpha),
             "smooth: lambda(t) needs numbers, got t=", t, " T=", total_steps, " t0=", t0, " alpha=", alpha);
  // An infinite alpha pins the weight whatever the time term is (and keeps inf - inf out of z).
  if (std::isinf(alpha)) return alpha < 0 ? 1.0 : 0.0;
  const double d = t - total_steps / 2 - t0;
  double z;  // lambda = 1 / (1 + e^z)
  if (std::isinf(tau)) {
    z = alpha;  // multitask limit: the time term vanishes
  } else if (tau == 0) {
    // Step limit. Exactly at the switch the time term is 0 for every tau, so the limit is 1/(1+e^alpha).
    z = d > 0   ? -std::numeric_limits<double>::infinity()
        : d < 0 ? std::numeric_limits<double>::infinity()
                : alpha;
  } else {
    z = -d / tau + alpha;  // may overflow to +-inf, which the logistic below handles
  }
  if (z >= 0) {
    const double e = std::exp(-z);  // in [0, 1]: no overflow
    return e / (1 + e);
  }
  return 1 / (1 + std::exp(z));
}

void SmoothOptions::fields(Fields& f) {
  f.add("lambda_schedule", lambda_schedule,
        "the target weight lambda(t): smooth (Eq. 4 with --t0 --tau --alpha), pretrain-finetune (tau -> 0: "
        "source only, then target only from T/2 + t0), multitask (tau -> infinity: constant 1/(1+e^alpha)), "
        "target-only (lambda = 1)");
  f.add("t0", t0, "steps: lambda switches at ORIGIN + t0 (see --t0-origin)");
  f.add(
      "t0_origin", t0_origin,
      "where t0 counts from: half (T/2, Eq. 4: from scratch, the first half pre-trains on the source), start "
      "(the run's first step: the --init model stands for the pre-training half), auto (start with --init, "
      "half without)");
  f.add("tau", tau, "steps: the width of the switch (0: a step; search it in log space)").non_negative();
  f.add("alpha", alpha, "weight offset: lambda(T/2 + t0) = 1/(1 + e^alpha); multitask's constant weight");
  f.add("source_batch_size", source_batch_size, "source examples per step (0: the same as --batch-size)")
      .non_negative();
  f.add("bn", bn,
        "BatchNorm statistics: shared (one batch through BN) or per-domain (separate batch and "
        "running statistics for the source sub-batch)");
}

SmoothOptions SmoothOptions::resolved(bool from_pretrained) const {
  SmoothOptions o = *this;
  if (o.t0_origin == T0Origin::automatic) o.t0_origin = from_pretrained ? T0Origin::start : T0Origin::half;
  return o;
}

double SmoothOptions::lambda(int64_t step, int64_t total_steps) const {
  const double t = static_cast<double>(step + 1), T = static_cast<double>(total_steps);
  // Eq. 4 switches at T/2 + t0; counted from the start, the switch is at t0 = T/2 + (t0 - T/2).
  const double offset = t0_origin == T0Origin::start ? t0 - T / 2 : t0;
  if (lambda_schedule == LambdaSchedule::target_only) return 1.0;
  if (lambda_schedule == LambdaSchedule::pretrain_finetune) return smooth_lambda(t, T, offset, 0.0, alpha);
  if (lambda_schedule == LambdaSchedule::multitask)
    return smooth_lambda(t, T, offset, std::numeric_limits<double>::infinity(), alpha);
  return smooth_lambda(t, T, offset, tau, alpha);
}

void SmoothMethod::setup(Model& model, SetupContext& ctx) {
  const Task& source = ctx.require_source("smooth");
  if (opts_.t0_origin == T0Origin::automatic) {
    opts_ = opts_.resolved(static_cast<bool>(ctx.pretrained));
    log_info(cat("smooth: t0 counts from ",
                 opts_.t0_origin == T0Origin::start ? "the first step (--init)" : "T/2 (no --init)"));
  }
  XFER_CHECK(!model->has_head("source"), "smooth: the model already has a 'source' head");
  const HeadInfo* pretrained_head = ctx.pretrained ? ctx.pretrained->arch().head("source") : nullptr;
  if (pretrained_head && pretrained_head->class_names == source.class_names()) {
    copy_head(ctx.pretrained, "source", model);
  } else {
    if (ctx.pretrained)
      log_info(
          "smooth: the --init model has no 'source' head over the --source classes; the source head starts "
          "fresh");
    seed_global(derive_seed(ctx.seed, "smooth/source-head"));
    model->add_head({"source", source.class_names()});
  }
  if (opts_.lambda_schedule != LambdaSchedule::target_only)
    ctx.add_stream("source", source.train, model, nullptr, opts_.source_batch_size);
  if (opts_.bn == SmoothBatchNorm::per_domain) {
    source_bn_ = DomainBatchNorm(*model->backbone);
    XFER_CHECK(source_bn_.layers() > 0, "smooth --bn per-domain: the backbone ", model->arch().backbone,
               " has no BatchNorm layers");
  }
}

LossTerms SmoothMethod::loss(StepContext& ctx) {
  const double lambda = opts_.lambda(ctx.step, ctx.total_steps);
  // A domain whose weight is exactly 0 is not forwarded: its loss would not reach the gradient, and with
  // shared BN its batch would still move the statistics.
  const bool use_target = lambda > 0, use_source = lambda < 1;
  Batch target, source;
  if (use_target) target = ctx.batches.next("target");
  if (use_source) source = ctx.batches.next("source");

  torch::Tensor ce_target, ce_source;
  if (use_target && use_source && opts_.bn == SmoothBatchNorm::shared) {
    // One forward: BatchNorm sees the union of the sub-batches.
    const int64_t n = target.x.size(0);
    const torch::Tensor g = ctx.model->backbone->forward(torch::cat({target.x, source.x}));
    ce_target = cross_entropy(ctx.model->head(ctx.head)->forward(g.slice(0, 0, n)), target.y);
    ce_source = cross_entropy(ctx.model->head("source")->forward(g.slice(0, n)), source.y);
  } else {
    if (use_target) ce_target = cross_entropy(ctx.model->forward(target.x, ctx.head), target.y);
    if (use_source) {
      if (opts_.bn == SmoothBatchNorm::per_domain) {
        auto scope = source_bn_.use_second();
        ce_source = cross_entropy(ctx.model->forward(source.x, "source"), source.y);
      } else {
        ce_source = cross_entropy(ctx.model->forward(source.x, "source"), source.y);
      }
    }
  }

  torch::Tensor total, target_term = torch::zeros({}), source_term = torch::zeros({});
  if (use_target) {
    total = lambda * ce_target;
    target_term = total.detach();
  }
  if (use_source) {
    const torch::Tensor s = (1 - lambda) * ce_source;
    source_term = s.detach();
    total = total.defined() ? total + s : s;
  }
  return {total,
          {{"lambda", torch::tensor(lambda, torch::kDouble)},
           {"target_term", target_term},
           {"source_term", source_term}}};
}

void SmoothMethod::save(Archive& out) const {
  if (opts_.bn == SmoothBatchNorm::per_domain) source_bn_.save(out, "source_bn");
}

void SmoothMethod::load(const Archive& in) {
  if (opts_.bn == SmoothBatchNorm::per_domain) source_bn_.load(in, "source_bn");
}

std::pair<std::vector<double>, std::vector<double>> lambda_curve(const SmoothOptions& opts,
                                                                 int64_t total_steps, int64_t points) {
  XFER_CHECK(total_steps > 0, "a schedule to plot needs a positive number of steps, got ", total_steps);
  points = std::min(total_steps, points);
  std::vector<double> x, y;
  for (int64_t i = 0; i < points; ++i) {
    const int64_t step = i * (total_steps - 1) / std::max<int64_t>(points - 1, 1);
    x.push_back(static_cast<double>(step + 1));
    y.push_back(opts.lambda(step, total_steps));
  }
  return {x, y};
}

void register_smooth_methods(MethodRegistry& r) {
  MethodInfo m;
  m.name = "smooth";
  m.summary =
      "Smooth Transfer Learning: target and source sub-batches, loss weight lambda(t) on a sigmoid "
      "schedule (tune --t0 --tau --alpha with `xfer search`)";
  m.paper = "Takayama et al. 2021, Smooth Transfer Learning for Source-to-Target Generalization";
  m.needs_source = true;
  m.core = true;
  m.relative_cost = 2.0;  // two sub-batches per step
  m.make_config = [] { return std::make_unique<OptionsConfig<SmoothMethod>>(); };
  m.search_curve = {"schedules.png", "lambda(t)", "step t", "lambda(t) (target weight)",
                    [](const nlohmann::json& method_options, int64_t total_steps, bool from_init) {
                      SmoothOptions opts;
                      Fields f;
                      opts.fields(f);
                      f.read_json(method_options, "smooth options");
                      return lambda_curve(opts.resolved(from_init), total_steps);
                    }};
  r.add(m);
}

}  // namespace xfer
