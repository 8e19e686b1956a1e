// Each baseline's training step against the test's own code: the loss recomputed with plain torch ops from
// the replayed batches and the replayed random draws, every gradient, and every updated parameter (which
// checks the method's parameter groups: weight decay, learning-rate multipliers). Methods of the papers
// (xmixup, smile, smooth, gradmix, ...) have their own files.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "method_harness.h"
#include "step_rig.h"
#include "xfer/methods/datl.h"
#include "xfer/methods/regularization.h"

namespace xfer {
namespace {

using test::plain_ce;
using test::replay_beta;
using test::RigSetup;
using test::StepView;

Task step_task(const test::TempDir& dir) {
  return load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
}

/// A frozen source model for `task`'s images: cnn4:width=4 with a "source" head over `names`, seeded.
Model step_source_model(const Task& task, const std::vector<std::string>& names, uint64_t seed) {
  Arch arch;
  arch.backbone = "cnn4:width=4";
  arch.in_channels = task.train.channels();
  arch.height = task.train.height();
  arch.width = task.train.width();
  arch.input = compute_normalization(task.train.images);
  arch.heads = {{"source", names}};
  seed_global(seed);
  Model m(arch);
  // Not the fresh initialisation: a source model whose batch-norm statistics and weights are its own.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : m->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);
    for (auto& b : m->named_buffers())
      if (b.key().find("running_mean") != std::string::npos) b.value().add_(0.1);
  }
  freeze(*m);
  m->eval();
  return m;
}

torch::Tensor step_sq_norm(const std::vector<torch::Tensor>& ts) {
  torch::Tensor sum = torch::zeros({});
  for (const auto& t : ts) sum = sum + (t * t).sum();
  return sum;
}

TEST(Step, ScratchAndL2AreCrossEntropyWithTheOptimizersWeightDecay) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const Model source = step_source_model(task, {"a", "b", "c", "d"}, 5);
  auto ce = [](StepView& v) {
    const Batch b = v.next();
    return plain_ce(v.model()->forward(b.x, "target"), b.y);
  };
  // Every parameter, heads included, decays at the run's --weight-decay (torch.optim.SGD's weight_decay).
  const RigSetup scratch("scratch", task, 3, 10), l2("l2", task, 3, 10, {}, source);
  const auto run_decay = [&](const std::string&) { return l2.weight_decay; };
  for (int64_t k : {0, 3}) {
    test::expect_step_matches(scratch, k, ce, nullptr, 1e-5, run_decay);
    test::expect_step_matches(l2, k, ce, nullptr, 1e-5, run_decay);
  }
}

TEST(Step, L2SPPullsTheBackboneToTheSourceAndDecaysTheHead) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const Model source = step_source_model(task, {"a", "b", "c", "d"}, 5);
  const RigSetup s("l2sp", task, 4, 10, {{"alpha", "0.3"}, {"beta", "0.2"}}, source);
  for (int64_t k : {0, 3}) {
    // alpha/2 ||w - w0||^2 over the backbone (w0: the source's) + beta/2 ||w||^2 over the new head; the
    // optimizer's weight decay is off for every group (the update check uses the groups' decay).
    const auto checked = test::expect_step_matches(s, k, [&](StepView& v) {
      const Batch b = v.next();
      const torch::Tensor ce = plain_ce(v.model()->forward(b.x, "target"), b.y);
      std::vector<torch::Tensor> diff;
      const auto w0 = source->backbone->named_parameters();
      for (const auto& p : v.model()->backbone->named_parameters()) diff.push_back(p.value() - w0[p.key()]);
      const torch::Tensor head = step_sq_norm(v.model()->head("target")->parameters());
      return ce + 0.15 * step_sq_norm(diff) + 0.1 * head;
    });
    for (const auto& g : checked.rig->groups())
      EXPECT_EQ(g.weight_decay, std::optional<double>(0.0)) << g.name;
    if (k > 0) {
      EXPECT_GT(checked.terms.parts.at("l2sp").item<double>(), 0.0) << "the backbone has moved";
    }
    EXPECT_GT(checked.terms.parts.at("head_l2").item<double>(), 0.0);
  }
}

TEST(Step, BssShrinksTheSmallestSingularValuesOfTheBatchFeatures) {
  test::TempDir dir;
  const Task task = step_task(dir);
  for (int64_t k : {0, 2}) {
    test::expect_step_matches(RigSetup("bss", task, 6, 10, {{"k", "2"}, {"eta", "0.5"}}), k, [](StepView& v) {
      const Batch b = v.next();
      const torch::Tensor f = v.model()->backbone->forward(b.x);
      // sigma_i^2 are the eigenvalues of F F^T (8 x 8 for 8 examples of 16 features).
      const torch::Tensor f64 = f.to(torch::kFloat64);
      const torch::Tensor ev = torch::linalg_eigvalsh(f64.mm(f64.t()));  // ascending
      const torch::Tensor bss = ev.slice(0, 0, 2).sum().to(torch::kFloat32);
      return plain_ce(v.model()->head("target")->forward(f), b.y) + 0.5 * bss;
    });
  }
}

/// RIFLE's seeded head: U(-1/sqrt(in), 1/sqrt(in)) for weight then bias, from generator (seed, "rifle",
/// index).
std::pair<torch::Tensor, torch::Tensor> rifle_draw(uint64_t seed, uint64_t index,
                                                   const torch::nn::Linear& head) {
  at::Generator gen = make_generator(derive_seed(derive_seed(seed, "rifle"), index));
  const double bound = 1.0 / std::sqrt(static_cast<double>(head->weight.size(1)));
  const torch::Tensor w = torch::rand(head->weight.sizes(), gen) * (2 * bound) - bound;
  const torch::Tensor b = torch::rand(head->bias.sizes(), gen) * (2 * bound) - bound;
  return {w, b};
}

TEST(Step, RifleTrainsWithCrossEntropyAndRedrawsTheHeadFromTheSeed) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const RigSetup s("rifle", task, 4, 9, {{"k", "3"}});  // re-drawn after steps 3 and 6
  auto ce = [](StepView& v) {
    const Batch b = v.next();
    return plain_ce(v.model()->forward(b.x, "target"), b.y);
  };
  auto backbone_only = [](const std::string& name) { return name.rfind("backbone.", 0) == 0; };
  for (int64_t k : {0, 1, 2, 3, 5, 6}) {
    const bool redraw = k == 2 || k == 5;
    const auto checked = test::expect_step_matches(
        s, k, ce, redraw ? std::function<bool(const std::string&)>(backbone_only) : nullptr);
    const torch::nn::Linear head = checked.rig->model()->head("target");
    const auto [w, b] = rifle_draw(4, k == 2 ? 0 : 1, head);
    EXPECT_EQ(torch::equal(head->weight, w) && torch::equal(head->bias, b), redraw)
        << "step " << k << ": the head is the seeded draw exactly after steps 3 and 6, and only then";
  }
  // Step 4 (k = 3) started from the re-drawn head with the momentum of the one before: the update check
  // above used the optimizer's buffer as it stood, so the momentum was kept, as in the authors' code.
}

TEST(Step, MixupMixesImagesAndLabelsWithTheSeededDraw) {
  test::TempDir dir;
  const Task task = step_task(dir);
  for (const bool fold : {false, true}) {
    const RigSetup s("mixup", task, 7, 10, {{"alpha", "0.4"}, {"fold", fold ? "true" : "false"}});
    for (int64_t k : {0, 2}) {
      test::expect_step_matches(s, k, [&](StepView& v) {
        const Batch b = v.next();
        double lam = replay_beta(v.rng(), 0.4, 0.4);
        if (fold) lam = std::max(lam, 1 - lam);
        const torch::Tensor perm = torch::randperm(8, v.rng(), torch::kInt64);
        EXPECT_TRUE(lam > 0 && lam < 1 && (!fold || lam >= 0.5)) << lam;
        EXPECT_TRUE(torch::equal(std::get<0>(perm.sort()), torch::arange(8))) << "a permutation";
        const torch::Tensor z =
            v.model()->forward(lam * b.x + (1 - lam) * b.x.index_select(0, perm), "target");
        return lam * plain_ce(z, b.y) + (1 - lam) * plain_ce(z, b.y.index_select(0, perm));
      });
    }
  }
}

TEST(Step, ManifoldMixupMixesAtTheDrawnLayer) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const std::vector<std::string> layers = {"input", "layer1", "layer2"};
  const RigSetup s("manifold_mixup", task, 8, 10);
  std::set<std::string> drawn;
  for (int64_t k = 0; k < 6; ++k) {
    test::expect_step_matches(s, k, [&](StepView& v) {
      const Batch b = v.next();
      const std::string layer =
          layers[static_cast<size_t>(torch::randint(3, {1}, v.rng(), torch::kInt64).item<int64_t>())];
      drawn.insert(layer);
      const double lam = replay_beta(v.rng(), 2.0, 2.0);
      const torch::Tensor perm = torch::randperm(8, v.rng(), torch::kInt64);
      auto mixed = [&](const torch::Tensor& h) { return lam * h + (1 - lam) * h.index_select(0, perm); };
      const Features f = layer == "input" ? v.model()->backbone->forward_features(mixed(b.x))
                                          : v.model()->backbone->forward_features(
                                                b.x, [&](const std::string& st, const torch::Tensor& out) {
                                                  return st == layer ? mixed(out) : out;
                                                });
      const torch::Tensor z = v.model()->head("target")->forward(f.pooled);
      return lam * plain_ce(z, b.y) + (1 - lam) * plain_ce(z, b.y.index_select(0, perm));
    });
  }
  EXPECT_GE(drawn.size(), 2u) << "the seed draws the input and a hidden layer";
  EXPECT_TRUE(drawn.count("input")) << "the seed draws the input layer once";
}

TEST(Step, CutMixPastesTheSeededBoxAndWeighsLabelsByItsArea) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const RigSetup s("cutmix", task, 9, 10);
  int mixed = 0, plain = 0;
  for (int64_t k = 0; k < 6; ++k) {
    test::expect_step_matches(s, k, [&](StepView& v) {
      const Batch b = v.next();
      const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
      if (torch::rand({1}, v.rng(), f64).item<double>() >= 0.5) {
        ++plain;
        return plain_ce(v.model()->forward(b.x, "target"), b.y);
      }
      ++mixed;
      const double lam0 = replay_beta(v.rng(), 1.0, 1.0);
      const torch::Tensor perm = torch::randperm(8, v.rng(), torch::kInt64);
      const int64_t cy = torch::randint(8, {1}, v.rng(), torch::kInt64).item<int64_t>();
      const int64_t cx = torch::randint(8, {1}, v.rng(), torch::kInt64).item<int64_t>();
      // The reference code's box: side int(8 sqrt(1 - lambda)) around (cy, cx), clipped to the image.
      const int64_t cut = static_cast<int64_t>(8 * std::sqrt(1 - lam0));
      const int64_t y1 = std::clamp<int64_t>(cy - cut / 2, 0, 8),
                    y2 = std::clamp<int64_t>(cy + cut / 2, 0, 8);
      const int64_t x1 = std::clamp<int64_t>(cx - cut / 2, 0, 8),
                    x2 = std::clamp<int64_t>(cx + cut / 2, 0, 8);
      torch::Tensor x = b.x.clone();
      for (int64_t i = 0; i < 8; ++i)
        for (int64_t r = y1; r < y2; ++r)
          for (int64_t c = x1; c < x2; ++c)
            x[i].select(1, r).select(1, c).copy_(b.x[perm[i].item<int64_t>()].select(1, r).select(1, c));
      const double lam = 1.0 - static_cast<double>((y2 - y1) * (x2 - x1)) / 64.0;
      const torch::Tensor z = v.model()->forward(x, "target");
      return lam * plain_ce(z, b.y) + (1 - lam) * plain_ce(z, b.y.index_select(0, perm));
    });
  }
  EXPECT_GT(mixed, 0) << "the seed cuts and mixes some batches";
  EXPECT_GT(plain, 0) << "and leaves others alone";
}

TEST(Step, CoTrainSendsTargetAndAuxiliaryBatchesThroughOneBackboneIntoTwoHeads) {
  test::TempDir dir;
  const Task task = step_task(dir);
  std::filesystem::create_directories(dir.file("src"));
  const Task source = load_task(test::write_tiny_idx(dir.file("src"), 4, 10, 2), 0);
  // The source head's classes in another order than --source's labels: rows are matched by name.
  const std::vector<std::string> names = {source.class_names()[2], source.class_names()[0],
                                          source.class_names()[3], source.class_names()[1]};
  const Model pretrained = step_source_model(task, names, 11);
  const RigSetup s("cotrain", task, 12, 10, {{"aux_weight", "0.7"}}, pretrained, &source);
  for (int64_t k : {0, 2}) {
    test::expect_step_matches(s, k, [&](StepView& v) {
      const Batch t = v.next("target"), a = v.next("aux");
      const int64_t n = t.x.size(0);
      const torch::Tensor f = v.model()->backbone->forward(torch::cat({t.x, a.x}));  // one batch of 2B
      std::vector<int64_t> rows;
      for (int64_t i = 0; i < a.y.size(0); ++i) {
        const std::string& name = source.class_names()[static_cast<size_t>(a.y[i].item<int64_t>())];
        rows.push_back(std::find(names.begin(), names.end(), name) - names.begin());
      }
      const torch::Tensor ce_t = plain_ce(v.model()->head("target")->forward(f.slice(0, 0, n)), t.y);
      const torch::Tensor ce_a =
          plain_ce(v.model()->head("source")->forward(f.slice(0, n)), torch::tensor(rows));
      return ce_t + 0.7 * ce_a;
    });
  }
}

TEST(Step, DatlWeighsEachExamplesLossByItsClassWeight) {
  test::TempDir dir;
  const Task task = step_task(dir);
  const Model model = step_source_model(task, task.class_names(), 13);
  Model trained = clone_model(model);
  for (auto& p : trained->parameters()) p.set_requires_grad(true);
  trained->train();
  const std::vector<double> w = {2.1, 0.6, 0.3};
  ImportanceWeightedCrossEntropy method(w);
  LoaderOptions lo;
  lo.batch_size = 8;
  lo.prefetch = false;
  Batches batches;
  batches.add("target", std::make_unique<BatchStream>(task.train, model->arch().input, lo, 21));
  BatchStream replay(task.train, model->arch().input, lo, 21);
  at::Generator rng = make_generator(1);
  const std::string head = "source";
  for (int step = 0; step < 3; ++step) {
    StepContext ctx{batches, trained, step, 3, rng, head};
    const LossTerms t = method.loss(ctx);
    const Batch b = replay.next();
    const torch::Tensor logp = torch::log_softmax(trained->forward(b.x, "source"), 1);
    double want = 0, plain = 0;
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t y = b.y[i].item<int64_t>();
      want -= w[static_cast<size_t>(y)] * logp[i][y].item<double>() / 8;
      plain -= logp[i][y].item<double>() / 8;
    }
    EXPECT_NEAR(t.total.item<double>(), want, 1e-5 * std::abs(want)) << "step " << step;
    EXPECT_NEAR(t.parts.at("ce").item<double>(), plain, 1e-5 * plain) << "step " << step;
  }
}

}  // namespace
}  // namespace xfer
