#include "xfer/methods/method.h"

#include <cmath>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/methods/registry.h"

namespace xfer {

void SetupContext::add_stream(const std::string& name, const TensorDataset& data, const Model& model,
                              std::unique_ptr<Sampler> sampler, int64_t batch_size) {
  const Arch& arch = model->arch();
  XFER_CHECK(data.size() > 0, "the '", name, "' data is empty");
  XFER_CHECK(
      data.channels() == arch.in_channels && data.height() == arch.height && data.width() == arch.width,
      "the '", name, "' images are ", data.channels(), "x", data.height(), "x", data.width(),
      " but the model takes ", arch.in_channels, "x", arch.height, "x", arch.width);
  LoaderOptions opts = loader;
  if (batch_size > 0) opts.batch_size = batch_size;
  batches.add(name, std::make_unique<BatchStream>(data, arch.input, opts, derive_seed(seed, name),
                                                  std::move(sampler), device));
}

const Task& SetupContext::require_source(const std::string& method) const {
  XFER_CHECK(source != nullptr, "method ", method, " draws on source data: pass --source SPEC");
  return *source;
}

const Model& SetupContext::require_pretrained(const std::string& method) const {
  XFER_CHECK(static_cast<bool>(pretrained), "method ", method,
             " needs the source model: pass --init (a run directory of `xfer pretrain`, or a checkpoint)");
  return pretrained;
}

std::vector<ParamGroup> Method::param_groups(Model& model, double head_lr_mult) {
  return {{"backbone", model->backbone_parameters(), 1.0, std::nullopt},
          {"heads", model->head_parameters(), head_lr_mult, std::nullopt}};
}

LossTerms Method::compute_gradients(StepContext& ctx) {
  LossTerms terms = loss(ctx);
  terms.total.backward();
  after_backward(ctx);
  return terms;
}

int64_t phase_total_steps(const std::vector<Phase>& phases) {
  XFER_CHECK(!phases.empty(), "a method must train in at least one phase");
  int64_t total = 0;
  for (const auto& p : phases) {
    XFER_CHECK(p.steps >= 1, "phase '", p.name, "' must have at least 1 step, got ", p.steps);
    total += p.steps;
  }
  return total;
}

void check_finite(const LossTerms& terms, int64_t step) {
  const double total = terms.total.item<double>();
  if (std::isfinite(total)) return;
  std::string parts;
  for (const auto& [name, t] : terms.parts)
    parts += cat(parts.empty() ? "" : ", ", name, "=", t.item<double>());
  throw NumericalError(
      cat("the loss is ", total, " at step ", step, parts.empty() ? "" : " (" + parts + ")"));
}

nlohmann::json MethodConfig::prepare_data(DataContext&) {
  return nullptr;
}

void MethodRegistry::add(MethodInfo info) {
  XFER_CHECK(!has(info.name), "method '", info.name, "' is registered twice");
  methods_.push_back(std::move(info));
}

bool MethodRegistry::has(const std::string& name) const {
  for (const auto& m : methods_)
    if (m.name == name) return true;
  return false;
}

const MethodInfo& MethodRegistry::get(const std::string& name) const {
  for (const auto& m : methods_)
    if (m.name == name) return m;
  throw BadInput(cat("unknown method '", name, "'; valid methods: ", names()));
}

std::string MethodRegistry::names() const {
  std::string out;
  for (const auto& m : methods_) out += (out.empty() ? "" : ", ") + m.name;
  return out;
}

MethodRegistry& methods() {
  static MethodRegistry registry = [] {
    MethodRegistry r;
    register_builtin_methods(r);
    return r;
  }();
  return registry;
}

}  // namespace xfer
