// Smooth Transfer Learning: the lambda schedule, its special cases, per-domain BatchNorm, training and
// resume.
#include <cmath>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/rng.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/methods/smooth.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/method_figures.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const double kInf = std::numeric_limits<double>::infinity();

TEST(Smooth, LambdaMatchesTheIssueValues) {
  // T=100, t0=0, tau=10, alpha=0: lambda(0) = 1/(1+e^5), lambda(100) = 1/(1+e^-5).
  EXPECT_NEAR(smooth_lambda(0, 100, 0, 10, 0), 0.006693, 5e-7);
  EXPECT_NEAR(smooth_lambda(100, 100, 0, 10, 0), 0.993307, 5e-7);
  EXPECT_DOUBLE_EQ(smooth_lambda(0, 100, 0, 10, 0), 1 / (1 + std::exp(5.0)));
  // At t = T/2 + t0 the time term vanishes for every tau: lambda = 1/(1+e^alpha).
  for (double alpha : {-3.0, 0.0, 0.5, 4.0})
    for (double tau : {0.0, 1e-9, 1.0, 10.0, 1e12, kInf})
      for (double t0 : {-20.0, 0.0, 17.0})
        EXPECT_DOUBLE_EQ(smooth_lambda(50 + t0, 100, t0, tau, alpha), 1 / (1 + std::exp(alpha)))
            << "alpha " << alpha << " tau " << tau << " t0 " << t0;
}

TEST(Smooth, SearchDrawsLambdaOfTheTrialsOptions) {
  // The registry's curve for `xfer search` (the paper's Fig. 2): lambda(t) at steps 1..T of a trial's
  // options.
  const OptionCurve& curve = methods().get("smooth").search_curve;
  ASSERT_TRUE(curve.points);
  EXPECT_EQ(curve.file, "schedules.png");
  const nlohmann::json options = {{"t0", 5.0}, {"tau", 10.0}, {"alpha", 0.5}, {"t0_origin", "half"}};
  const auto [x, y] = curve.points(options, 100, /*from_init=*/false);
  ASSERT_EQ(x.size(), 100u);
  ASSERT_EQ(y.size(), 100u);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(x[i], static_cast<double>(i + 1));
    EXPECT_DOUBLE_EQ(y[i], smooth_lambda(x[i], 100, 5, 10, 0.5)) << i;  // the weight after step x
  }
  // A long run is drawn with 400 points from the first step to the last.
  const auto [long_x, long_y] = curve.points(options, 10000, false);
  ASSERT_EQ(long_x.size(), 400u);
  EXPECT_EQ(long_x.front(), 1.0);
  EXPECT_EQ(long_x.back(), 10000.0);
  // t0 "auto" counts from the first step for a run from a pretrained model, from T/2 otherwise.
  const nlohmann::json automatic = {{"t0", 0.0}, {"tau", 10.0}, {"t0_origin", "auto"}};
  EXPECT_NEAR(curve.points(automatic, 100, true).second[0], 1 / (1 + std::exp(-0.1)), 1e-12);
  EXPECT_LT(curve.points(automatic, 100, false).second[0], 0.01);
  test::expect_bad_input([&] { curve.points(nlohmann::json{{"tau", -1.0}}, 100, false); }, {"--tau"});

  // The plot: one line per trial and a vertical mark at its selected step spanning [0, 1].
  TrialCurve a{"#3", x, y, 40}, b{"#7", x, y, -1};
  const Plot plot = option_curve_plot(curve, {a, b}, "lambda(t) of the best 2 trials");
  ASSERT_EQ(plot.series.size(), 3u);
  EXPECT_EQ(plot.series[0].name, "#3");
  EXPECT_EQ(plot.series[1].name, "#3: selected step");
  EXPECT_EQ(plot.series[1].x, (std::vector<double>{40, 40}));
  EXPECT_EQ(plot.series[1].y, (std::vector<double>{0, 1}));
  EXPECT_EQ(plot.series[2].name, "#7");
  EXPECT_EQ(plot.ylabel, "lambda(t) (target weight)");
  EXPECT_FALSE(methods().get("l2").search_curve.points) << "l2 draws nothing";
}

TEST(Smooth, LambdaLimitsAreAStepAndAConstant) {
  // tau -> 0: a step at T/2 + t0 (Eq. 5), with no NaN from 0/0 or inf/inf.
  for (double tau : {0.0, 1e-300, 4.9e-324}) {
    EXPECT_EQ(smooth_lambda(59.999, 100, 10, tau, 2.0), 0.0) << tau;
    EXPECT_EQ(smooth_lambda(60.001, 100, 10, tau, 2.0), 1.0) << tau;
    EXPECT_EQ(smooth_lambda(0, 100, 10, tau, -700.0), 0.0) << tau;
  }
  // Small tau approaches the step continuously.
  EXPECT_LT(smooth_lambda(55, 100, 10, 0.5, 0), 1e-4);
  EXPECT_GT(smooth_lambda(65, 100, 10, 0.5, 0), 1 - 1e-4);
  // tau -> infinity: the constant 1/(1+e^alpha) (Eq. 6), at every t.
  for (double t : {0.0, 1.0, 50.0, 100.0, 1e9}) {
    EXPECT_DOUBLE_EQ(smooth_lambda(t, 100, 0, kInf, 1.5), 1 / (1 + std::exp(1.5)));
    EXPECT_NEAR(smooth_lambda(t, 100, 0, 1e15, 1.5), 1 / (1 + std::exp(1.5)), 1e-6);
  }
  // Extreme arguments stay in [0, 1] and finite.
  for (double alpha : {-1e308, -800.0, 800.0, 1e308, -kInf, kInf})
    for (double tau : {0.0, 1e-300, 1.0, 1e300, kInf}) {
      const double l = smooth_lambda(37, 100, 0, tau, alpha);
      EXPECT_TRUE(l >= 0 && l <= 1) << "alpha " << alpha << " tau " << tau << " -> " << l;
    }
  test::expect_bad_input([] { smooth_lambda(1, 100, 0, -1, 0); }, {"tau", "-1"});
}

TEST(Smooth, PresetsAreLimitsOfTheSchedule) {
  SmoothOptions o;
  o.t0 = 10;
  o.alpha = 1;
  o.lambda_schedule = LambdaSchedule::pretrain_finetune;  // the step at t = T/2 + t0 = 60, t = step + 1
  EXPECT_EQ(o.lambda(58, 100), 0.0);
  EXPECT_DOUBLE_EQ(o.lambda(59, 100), 1 / (1 + std::exp(1.0)));
  EXPECT_EQ(o.lambda(60, 100), 1.0);
  o.lambda_schedule = LambdaSchedule::multitask;
  EXPECT_DOUBLE_EQ(o.lambda(0, 100), 1 / (1 + std::exp(1.0)));
  EXPECT_DOUBLE_EQ(o.lambda(99, 100), 1 / (1 + std::exp(1.0)));
  o.lambda_schedule = LambdaSchedule::target_only;
  EXPECT_EQ(o.lambda(0, 100), 1.0);
  o.lambda_schedule = LambdaSchedule::smooth;
  o.tau = 5;
  EXPECT_DOUBLE_EQ(o.lambda(0, 100), smooth_lambda(1, 100, 10, 5, 1));
  test::expect_bad_input(
      [&] {
        Fields f;
        o.fields(f);
        f.set("lambda_schedule", "sigmoid");
      },
      {"--lambda-schedule", "sigmoid"});
  o.lambda_schedule = LambdaSchedule::smooth;
  o.tau = -2;
  test::expect_bad_input([&] { check_options(o); }, {"--tau", "-2"});
  o.tau = 1;
  test::expect_bad_input(
      [&] {
        Fields f;
        o.fields(f);
        f.set("bn", "split");
      },
      {"--bn", "split"});
}

/// A tiny target task and a source task whose images are inverted, so the two domains' BatchNorm
/// statistics differ.
struct SmoothFixture {
  test::TempDir dir;
  Task target, source;
  LoaderOptions loader;
  Batches batches;
  Model model{nullptr};

  SmoothFixture() {
    const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 2);
    target = load_task(spec, 0);
    source = load_task(spec + ":shift=invert", 0);
    loader.batch_size = 6;
    loader.prefetch = false;
    Arch a;
    a.backbone = "cnn4:width=4";
    a.in_channels = 1;
    a.height = a.width = 8;
    a.input = compute_normalization(target.train.images);
    a.heads = {{"target", target.class_names()}};
    seed_global(3);
    model = Model(a);
    batches.add("target", std::make_unique<BatchStream>(target.train, a.input, loader, 11));
  }
  SetupContext context(int64_t total) {
    return SetupContext{target, &source, Model(nullptr), batches, loader, 5, torch::kCPU, "target", total};
  }
  /// The batches a stream named `name` of this fixture hands out, replayed from the start.
  std::unique_ptr<BatchStream> replay(const TensorDataset& data, const std::string& name, uint64_t seed) {
    return std::make_unique<BatchStream>(data, model->arch().input, loader,
                                         name == "source" ? derive_seed(5, name) : seed);
  }
};

/// Running statistics of every BatchNorm layer of `m`'s backbone, in order.
std::vector<torch::Tensor> smooth_bn_means(const Model& m) {
  std::vector<torch::Tensor> out;
  for (const auto& b : m->backbone->named_buffers())
    if (b.key().find("running_mean") != std::string::npos) out.push_back(b.value().clone());
  return out;
}

TEST(Smooth, PerDomainBatchNormKeepsSeparateStatistics) {
  SmoothFixture fx;
  Model reference_target = clone_model(fx.model), reference_source = clone_model(fx.model);
  SmoothOptions o;
  o.lambda_schedule = LambdaSchedule::multitask;  // both domains at every step
  o.bn = SmoothBatchNorm::per_domain;
  SmoothMethod method(o);
  auto ctx = fx.context(4);
  method.setup(fx.model, ctx);
  ASSERT_EQ(method.source_bn().layers(), 4u);
  at::Generator rng = make_generator(0);
  fx.model->train();
  for (int64_t step = 0; step < 4; ++step) {
    StepContext sc{fx.batches, fx.model, step, 4, rng, "target"};
    LossTerms terms = method.loss(sc);
    terms.total.backward();  // the swapped statistics never break autograd
  }
  // The model's statistics are exactly those of the target batches alone, the second set those of the
  // source batches alone (weights never changed: no optimizer step).
  auto target_stream = fx.replay(fx.target.train, "target", 11);
  auto source_stream = fx.replay(fx.source.train, "source", 0);
  {
    torch::NoGradGuard no_grad;
    reference_target->train();
    reference_source->train();
    for (int i = 0; i < 4; ++i) {
      reference_target->backbone->forward(target_stream->next().x);
      reference_source->backbone->forward(source_stream->next().x);
    }
  }
  const auto model_means = smooth_bn_means(fx.model), target_means = smooth_bn_means(reference_target),
             source_means = smooth_bn_means(reference_source);
  ASSERT_EQ(model_means.size(), 4u);
  for (size_t i = 0; i < model_means.size(); ++i) {
    EXPECT_TRUE(torch::allclose(model_means[i], target_means[i], 1e-6, 1e-7)) << "layer " << i;
    EXPECT_TRUE(torch::allclose(method.source_bn().second_mean(i), source_means[i], 1e-6, 1e-7))
        << "layer " << i;
    EXPECT_FALSE(torch::allclose(model_means[i], method.source_bn().second_mean(i), 1e-3, 1e-3))
        << "layer " << i;
  }
  // Evaluation-mode forwards use the target statistics held by the model.
  EXPECT_EQ(fx.model->backbone->named_buffers()["layer1.1.num_batches_tracked"].item<int64_t>(), 4);
}

TEST(Smooth, SharedBatchNormSeesOneBatchOfBothDomains) {
  SmoothFixture fx;
  Model reference = clone_model(fx.model);
  SmoothOptions o;
  o.lambda_schedule = LambdaSchedule::multitask;
  SmoothMethod method(o);
  auto ctx = fx.context(3);
  method.setup(fx.model, ctx);
  EXPECT_EQ(method.source_bn().layers(), 0u);
  at::Generator rng = make_generator(0);
  fx.model->train();
  for (int64_t step = 0; step < 3; ++step) {
    StepContext sc{fx.batches, fx.model, step, 3, rng, "target"};
    method.loss(sc).total.backward();
  }
  auto target_stream = fx.replay(fx.target.train, "target", 11);
  auto source_stream = fx.replay(fx.source.train, "source", 0);
  {
    torch::NoGradGuard no_grad;
    reference->train();
    for (int i = 0; i < 3; ++i)
      reference->backbone->forward(torch::cat({target_stream->next().x, source_stream->next().x}));
  }
  const auto a = smooth_bn_means(fx.model), b = smooth_bn_means(reference);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-6, 1e-7)) << "layer " << i;
}

TEST(Smooth, LossIsTheScheduledMixtureAndZeroWeightDomainsAreSkipped) {
  SmoothFixture fx;
  SmoothOptions o;
  o.lambda_schedule =
      LambdaSchedule::pretrain_finetune;  // T = 10: source for steps 0..3, lambda 0.5 at step 4, target after
  o.t0 = 0;
  SmoothMethod method(o);
  auto ctx = fx.context(10);
  method.setup(fx.model, ctx);
  ASSERT_TRUE(fx.model->has_head("source"));
  at::Generator rng = make_generator(0);
  std::vector<double> lambdas;
  for (int64_t step = 0; step < 10; ++step) {
    StepContext sc{fx.batches, fx.model, step, 10, rng, "target"};
    const LossTerms t = method.loss(sc);
    lambdas.push_back(t.parts.at("lambda").item<double>());
    EXPECT_NEAR(t.total.item<double>(),
                t.parts.at("target_term").item<double>() + t.parts.at("source_term").item<double>(), 1e-5);
    if (step == 3) {
      EXPECT_EQ(fx.batches.stream("target").position(), 0) << "the target is not drawn while its weight is 0";
      EXPECT_EQ(fx.batches.stream("source").position(), 4);
    }
  }
  EXPECT_EQ(lambdas, (std::vector<double>{0, 0, 0, 0, 0.5, 1, 1, 1, 1, 1}));
  EXPECT_EQ(fx.batches.stream("target").position(), 6);
  EXPECT_EQ(fx.batches.stream("source").position(), 5);
}

TEST(Smooth, LossIsRecomputedFromTheReplayedBatchesWithLambdaByHand) {
  // Eq. 3 and 4 recomputed outside the method: lambda(t) from the formula (t = step + 1, T = 20, t0 = 2,
  // tau = 3, alpha = 0.4), the two cross-entropies from the replayed sub-batches through one shared-BN
  // forward, and L = lambda CE_target + (1 - lambda) CE_source. lambda is far from 1/2 at these steps and
  // the two CEs differ, so swapping lambda and 1 - lambda fails.
  SmoothFixture fx;
  SmoothOptions o;
  o.t0 = 2;
  o.tau = 3;
  o.alpha = 0.4;
  SmoothMethod method(o);
  auto ctx = fx.context(20);
  method.setup(fx.model, ctx);
  auto target = fx.replay(fx.target.train, "target", 11), source = fx.replay(fx.source.train, "source", 0);
  at::Generator rng = make_generator(0);
  int checked = 0;
  for (int64_t step = 0; step < 20; ++step) {
    const double t = static_cast<double>(step + 1);
    const double lambda = 1 / (1 + std::exp(-(t - 10 - 2) / 3 + 0.4));
    const Batch bt = target->next(), bs = source->next();
    StepContext sc{fx.batches, fx.model, step, 20, rng, "target"};
    const LossTerms terms = method.loss(sc);
    if (step % 4 != 1) continue;  // a few steps, both sides of the switch
    // By hand: one forward of both sub-batches (BatchNorm in train mode sees them as one batch).
    torch::NoGradGuard no_grad;
    const torch::Tensor g = fx.model->backbone->forward(torch::cat({bt.x, bs.x}));
    const int64_t n = bt.x.size(0);
    const double ce_t =
        torch::nn::functional::cross_entropy(fx.model->head("target")->forward(g.slice(0, 0, n)), bt.y)
            .item<double>();
    const double ce_s =
        torch::nn::functional::cross_entropy(fx.model->head("source")->forward(g.slice(0, n)), bs.y)
            .item<double>();
    ASSERT_GT(std::abs(ce_t - ce_s), 1e-3);
    EXPECT_NEAR(terms.parts.at("lambda").item<double>(), lambda, 1e-12) << "step " << step;
    EXPECT_NEAR(terms.total.item<double>(), lambda * ce_t + (1 - lambda) * ce_s, 1e-5) << "step " << step;
    EXPECT_GT(std::abs(terms.total.item<double>() - ((1 - lambda) * ce_t + lambda * ce_s)), 1e-4)
        << "step " << step;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(Smooth, AfterInitT0CountsFromTheFirstStepByDefault) {
  // By hand: counted from the start, lambda(t) = 1/(1 + exp(-(t - t0)/tau + alpha)); counted from T/2, Eq. 4.
  SmoothOptions o;
  o.t0 = 2;
  o.tau = 3;
  o.alpha = 0.4;
  for (int64_t step : {0, 1, 5, 19}) {
    const double t = static_cast<double>(step + 1);
    o.t0_origin = T0Origin::start;
    EXPECT_NEAR(o.lambda(step, 20), 1 / (1 + std::exp(-(t - 2) / 3 + 0.4)), 1e-12) << "step " << step;
    o.t0_origin = T0Origin::half;
    EXPECT_NEAR(o.lambda(step, 20), 1 / (1 + std::exp(-(t - 10 - 2) / 3 + 0.4)), 1e-12) << "step " << step;
  }
  o.t0_origin = T0Origin::start;
  o.lambda_schedule =
      LambdaSchedule::pretrain_finetune;  // the step at t = t0 = 2: source at t = 1, target from t = 3
  EXPECT_EQ(o.lambda(0, 20), 0.0);
  EXPECT_EQ(o.lambda(2, 20), 1.0);
  // auto: start after --init, half from scratch; an explicit origin stays.
  o.t0_origin = T0Origin::automatic;
  EXPECT_EQ(o.resolved(true).t0_origin, T0Origin::start);
  EXPECT_EQ(o.resolved(false).t0_origin, T0Origin::half);
  o.t0_origin = T0Origin::half;
  EXPECT_EQ(o.resolved(true).t0_origin, T0Origin::half);

  // The method resolves auto at setup from whether the run has a pretrained model.
  for (bool pretrained : {false, true}) {
    SmoothFixture fx;
    SmoothOptions d;
    d.tau = 3;
    SmoothMethod method(d);
    auto ctx = fx.context(20);
    if (pretrained) ctx.pretrained = clone_model(fx.model);
    method.setup(fx.model, ctx);
    at::Generator rng = make_generator(0);
    StepContext sc{fx.batches, fx.model, 0, 20, rng, "target"};
    const double lambda = method.loss(sc).parts.at("lambda").item<double>();
    EXPECT_NEAR(lambda, pretrained ? 1 / (1 + std::exp(-1.0 / 3)) : 1 / (1 + std::exp(9.0 / 3)), 1e-12)
        << (pretrained ? "after --init" : "from scratch");
  }
  test::expect_bad_input(
      [&] {
        Fields f;
        o.fields(f);
        f.set("t0_origin", "middle");
      },
      {"--t0-origin", "middle"});
}

TEST(Smooth, NeedsSourceData) {
  SmoothFixture fx;
  SmoothMethod method(SmoothOptions{});
  SetupContext ctx{fx.target, nullptr, Model(nullptr), fx.batches, fx.loader, 5, torch::kCPU, "target", 10};
  test::expect_bad_input([&] { method.setup(fx.model, ctx); }, {"smooth", "--source"});
}

RunOptions smooth_tiny_run(const test::TempDir& dir, const std::string& out) {
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 30, 6);
  RunOptions r;
  r.method = "smooth";
  r.target = spec + ":per_class=10:val=5";
  r.source = spec + ":shift=invert";
  r.backbone = "cnn4:width=4";
  r.threads = 1;
  r.out = out;
  r.trainer.iterations = 40;
  r.trainer.eval_every = 10;
  r.trainer.optim.lr = 0.05;
  r.trainer.schedule.schedule = ScheduleKind::cosine;
  r.trainer.schedule.warmup = 0.025;
  r.loader.batch_size = 8;
  return r;
}

TEST(Smooth, TrainsFromScratchAndResumesBitExactWithPerDomainBatchNorm) {
  test::TempDir dir;
  RunOptions straight = smooth_tiny_run(dir, dir.file("straight"));
  auto config = methods().get("smooth").make_config();
  Fields f;
  config->fields(f);
  f.set("bn", "per-domain");
  f.set("tau", "5");
  const nlohmann::json a = run_finetune(straight, *config);
  EXPECT_GT(a["best_val_top1"].get<double>(), 0.5) << "3 classes: chance is 1/3";

  RunOptions split = straight;
  split.out = dir.file("split");
  split.trainer.stop_after = 15;
  run_finetune(split, *config);
  split.resume = true;
  split.trainer.stop_after = 0;  // run to the end this time
  const nlohmann::json b = run_finetune(split, *config);
  EXPECT_EQ(a["test_top1"], b["test_top1"]);
  CheckpointReader ca(dir.file("straight/checkpoints/last.pt")), cb(dir.file("split/checkpoints/last.pt"));
  const Model ma = ca.read_model(), mb = cb.read_model();
  ASSERT_TRUE(ma->has_head("source"));
  for (const auto& p : ma->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), mb->named_parameters()[p.key()])) << p.key();
  const Archive sa = ca.read("method"), sb = cb.read("method");
  EXPECT_TRUE(torch::equal(sa.read("source_bn/2.running_var"), sb.read("source_bn/2.running_var")));
}

}  // namespace
}  // namespace xfer
