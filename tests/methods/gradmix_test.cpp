// GradMix and its baselines (methods/gradmix.h) on tiny IDX data: the step's plumbing, runs that learn,
// determinism, resume, bad input, and the pseudo-label pipeline.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/data/idx.h"
#include "xfer/data/spec.h"
#include "xfer/methods/gradmix.h"
#include "xfer/source/mixing_weights.h"
#include "xfer/source/pseudo_labels.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/gradmix_pipeline.h"
#include "xfer/train/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Tiny data: 5 classes of 8x8 images, 20 training images each. The target is classes 0-2 with 3 labels
/// per class and 3 for validation; source 0 the same classes with noise (shares the target head), source 1
/// classes 3-4 (its own head).
struct GradMixTiny {
  test::TempDir dir;
  std::string data = test::write_tiny_idx(dir.path(), 5, 20, 4);
  std::string target = data + ":classes=0-2:per_class=3:val=3";
  std::string sources = data + ":classes=0-2:shift=noise0.1;" + data + ":classes=3-4";
};

RunOptions gradmix_tiny_run(const GradMixTiny& t, const std::string& method, const std::string& out) {
  RunOptions o;
  o.method = method;
  o.target = t.target;
  o.backbone = "cnn4:width=4";
  o.threads = 1;
  o.out = out;
  o.trainer.iterations = 20;
  o.trainer.eval_every = 10;
  o.trainer.log_every = 5;
  o.trainer.optim.lr = 0.05;
  o.loader.batch_size = 8;
  return o;
}

nlohmann::json gradmix_tiny_finetune(const RunOptions& o, const nlohmann::json& method_options) {
  auto config = methods().get(o.method).make_config();
  Fields f;
  config->fields(f);
  f.read_json(method_options, "test");
  return run_finetune(o, *config);
}

std::vector<nlohmann::json> gradmix_metrics(const std::string& run_dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

/// A model, streams and a set-up method, outside the Trainer, to inspect one step.
struct GradMixStepRig {
  Task task;
  Model model{nullptr};
  Batches batches;
  LoaderOptions loader;
  std::unique_ptr<GradMixMethod> method;
  at::Generator rng = make_generator(1);

  GradMixStepRig(const GradMixTiny& t, GradMixMethod::Options opts) : task(load_task(t.target, 0)) {
    Arch arch;
    arch.backbone = "cnn4:width=4";
    arch.height = arch.width = 8;
    arch.input = compute_normalization(task.train.images);
    arch.heads = {{"target", task.class_names()}};
    seed_global(3);
    model = Model(arch);
    model->train();
    loader.batch_size = 8;
    loader.prefetch = false;
    batches.add("target", std::make_unique<BatchStream>(task.train, arch.input, loader, 1));
    opts.sources = t.sources;
    method = std::make_unique<GradMixMethod>(opts);
    SetupContext ctx{task, nullptr, Model(nullptr), batches, loader, 0, torch::kCPU, "target", 10};
    method->setup(model, ctx);
  }
};

/// Each source's backbone gradient on batch `b` of its stream, recomputed by hand.
std::vector<std::vector<torch::Tensor>> gradmix_source_grads(GradMixStepRig& rig, const GradMixTiny& t, int64_t b) {
  const std::vector<std::string> specs = {t.data + ":classes=0-2:shift=noise0.1", t.data + ":classes=3-4"};
  const std::vector<std::string> heads = {"target", "s1"};
  std::vector<std::vector<torch::Tensor>> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    BatchStream s(load_task(specs[i], 0).train, rig.model->arch().input, rig.loader,
                  derive_seed(0, "source" + std::to_string(i)));
    s.seek(b);
    const Batch batch = s.next();
    const torch::Tensor loss = cross_entropy(rig.model->forward(batch.x, heads[i]), batch.y);
    out.push_back(torch::autograd::grad({loss}, rig.model->backbone->parameters(), {}, false, false, true));
  }
  return out;
}

TEST(GradMix, StepSetsEachLayersGradientToTheSolvedMix) {
  GradMixTiny t;
  GradMixMethod::Options opts;
  GradMixStepRig rig(t, opts);
  ASSERT_EQ(rig.method->layer_names().size(), 8u);  // cnn4: 4 convolutions, 4 batch norms
  EXPECT_EQ(rig.method->layer_names()[0], "layer1.0");
  EXPECT_EQ(rig.method->layer_names()[1], "layer1.1");
  EXPECT_TRUE(rig.model->has_head("s1"));
  EXPECT_FALSE(rig.model->has_head("s0"));  // source 0 shares the target head

  // Gradients by hand first (BN in train mode uses batch statistics, so the running statistics that
  // these forwards update do not change the step's gradients).
  const auto g = gradmix_source_grads(rig, t, 0);
  StepContext ctx{rig.batches, rig.model, 0, 10, rig.rng, "target"};
  const LossTerms terms = rig.method->compute_gradients(ctx);
  const auto& w = rig.method->weights();
  const auto params = rig.model->backbone->parameters();
  size_t p = 0;
  double sum_check = 0;
  for (size_t l = 0; l < w.size(); ++l) {
    EXPECT_NEAR(w[l][0] + w[l][1], 1.0, 1e-12);
    for (size_t j = 0; j < (l % 2 == 0 ? 1u : 2u); ++j, ++p) {  // conv: weight; BN: weight and bias
      const torch::Tensor expected = g[0][p] * w[l][0] + g[1][p] * w[l][1];
      EXPECT_TRUE(torch::allclose(params[p].grad(), expected, 1e-5, 1e-7)) << "layer " << l;
      sum_check += params[p].grad().abs().sum().item<double>();
    }
  }
  EXPECT_EQ(p, params.size());
  EXPECT_GT(sum_check, 0.0);
  // eta is Eq. 9 of the logged rho, and rho is within [-layers, layers].
  const double rho = terms.parts.at("rho").item<double>();
  EXPECT_LE(std::abs(rho), 8.0);
  EXPECT_DOUBLE_EQ(terms.lr_scale, adaptive_lr_scale(rho, opts.beta, opts.gamma));
  EXPECT_TRUE(terms.parts.count("w/layer1.0/s0"));
  EXPECT_TRUE(terms.parts.count("w/layer4.1/s1"));
  EXPECT_EQ(terms.parts.at("slsqp_failures").item<double>(), 0.0);
  // The source head s1 gets its own gradient; the target head gets source 0's.
  EXPECT_GT(rig.model->head("s1")->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(rig.model->head("target")->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(GradMix, SourceOnlySumsTheSourceGradients) {
  GradMixTiny t;
  GradMixMethod::Options opts;
  opts.mode = GradMixMethod::Mode::source_only;
  GradMixStepRig rig(t, opts);
  const auto g = gradmix_source_grads(rig, t, 0);
  StepContext ctx{rig.batches, rig.model, 0, 10, rig.rng, "target"};
  const LossTerms terms = rig.method->compute_gradients(ctx);
  EXPECT_EQ(terms.lr_scale, 1.0);
  const auto params = rig.model->backbone->parameters();
  for (size_t p = 0; p < params.size(); ++p)
    EXPECT_TRUE(torch::allclose(params[p].grad(), g[0][p] + g[1][p], 1e-5, 1e-7)) << p;
  EXPECT_FALSE(terms.parts.count("rho"));
}

TEST(GradMix, RefusesBadInput) {
  GradMixTiny t;
  test::TempDir out;
  // No source shares the target's label space.
  RunOptions o = gradmix_tiny_run(t, "gradmix", out.file("a"));
  o.overwrite = true;
  test::expect_bad_input([&] { gradmix_tiny_finetune(o, {{"sources", t.data + ":classes=3-4"}}); },
                         {"no source shares the target's label space", "0,1,2", "3,4", "--shared-sources"});
  // No sources at all.
  test::expect_bad_input([&] { gradmix_tiny_finetune(o, nlohmann::json::object()); }, {"--sources"});
  // A source whose images have another shape (10x10 against 8x8).
  const std::string other = out.file("other");
  make_dirs(other);
  write_file_atomic(other + "/train-images-idx3-ubyte", encode_idx(torch::zeros({6, 10, 10}, torch::kUInt8)));
  write_file_atomic(other + "/train-labels-idx1-ubyte", encode_idx(torch::tensor({0, 1, 2, 0, 1, 2}).to(torch::kUInt8)));
  test::expect_bad_input(
      [&] { gradmix_tiny_finetune(o, {{"sources", t.sources + ";idx:dir=" + other + ":test=none"}}); },
      {"source 2", "1x10x10", "1x8x8"});
  // --shared-sources out of range.
  test::expect_bad_input([&] { gradmix_tiny_finetune(o, {{"sources", t.sources}, {"shared_sources", "5"}}); },
                         {"--shared-sources 5", "only 2 sources"});
  // beta, gamma, the pseudo-label threshold.
  GradMixMethod::Options bad;
  bad.beta = 0;
  test::expect_bad_input([&] { GradMixMethod m(bad); }, {"--adalr-beta", "0"});
  bad = {};
  bad.gamma = -1;
  test::expect_bad_input([&] { GradMixMethod m(bad); }, {"--adalr-gamma", "-1"});
  for (double th : {0.0, 1.0, 1.2}) {
    bad = {};
    bad.pseudo_threshold = th;
    test::expect_bad_input([&] { GradMixMethod m(bad); }, {"--pseudo-threshold"});
  }
  // An empty V.
  Task empty = load_task(t.target, 0);
  empty.train = empty.train.subset(torch::empty({0}, torch::kInt64));
  Batches batches;
  LoaderOptions loader;
  SetupContext ctx{empty, nullptr, Model(nullptr), batches, loader, 0, torch::kCPU, "target", 10};
  Model model{nullptr};
  GradMixMethod m{GradMixMethod::Options{}};
  test::expect_bad_input([&] { m.setup(model, ctx); }, {"V", "empty"});
}

TEST(GradMix, ShortRunsLearnAndLogTheWeights) {
  GradMixTiny t;
  test::TempDir out;
  for (const std::string method : {"gradmix", "gradmix-sgd", "source-only", "target-only", "finetune"}) {
    RunOptions o = gradmix_tiny_run(t, method, out.file(method));
    o.trainer.iterations = 40;
    const nlohmann::json opts = method == "target-only" ? nlohmann::json::object() : nlohmann::json{{"sources", t.sources}};
    const nlohmann::json r = gradmix_tiny_finetune(o, opts);
    EXPECT_GT(r["test_top1"].get<double>(), 0.6) << method;  // chance is 1/3
    const auto lines = gradmix_metrics(out.file(method));
    const nlohmann::json& first = lines.front();
    if (method == "gradmix") {
      EXPECT_TRUE(first.contains("w/layer1.0/s0") && first.contains("w/layer1.0/s1"));
      EXPECT_TRUE(first.contains("rho") && first.contains("eta") && first.contains("solver_ms"));
      EXPECT_LT(first["eta"].get<double>(), 1.0);
    }
    if (method == "gradmix-sgd") {
      EXPECT_TRUE(first.contains("w/all/s1"));
    }
  }
}

TEST(GradMix, SameSeedSameBitsAndResumeIsBitExact) {
  GradMixTiny t;
  test::TempDir out;
  const nlohmann::json opts = {{"sources", t.sources}, {"ssl", "mixmatch"}};
  RunOptions a = gradmix_tiny_run(t, "gradmix", out.file("a"));
  gradmix_tiny_finetune(a, opts);
  RunOptions b = gradmix_tiny_run(t, "gradmix", out.file("b"));
  b.trainer.stop_after = 10;
  gradmix_tiny_finetune(b, opts);
  b.resume = true;
  gradmix_tiny_finetune(b, opts);
  RunOptions c = gradmix_tiny_run(t, "gradmix", out.file("c"));
  c.seed = 1;
  gradmix_tiny_finetune(c, opts);

  auto state = [](const std::string& dir) {
    CheckpointReader ck(dir + "/checkpoints/last.pt");
    std::vector<torch::Tensor> out;
    for (const auto& p : ck.read_model()->named_parameters()) out.push_back(p.value());
    out.push_back(ck.read("method").read("weights"));
    return out;
  };
  const auto sa = state(out.file("a")), sb = state(out.file("b")), sc = state(out.file("c"));
  ASSERT_EQ(sa.size(), sb.size());
  bool seed_matters = false;
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_TRUE(torch::equal(sa[i], sb[i])) << "tensor " << i << " differs after resume";
    seed_matters = seed_matters || !torch::equal(sa[i], sc[i]);
  }
  EXPECT_TRUE(seed_matters);
  EXPECT_EQ(sa.back().size(0), 8);  // layers x sources
  EXPECT_EQ(sa.back().size(1), 2);
}

TEST(GradMix, PseudoLabelPipelineWritesEveryStage) {
  GradMixTiny t;
  test::TempDir out;
  RunOptions run = gradmix_tiny_run(t, "gradmix", out.file("pipe"));
  GradMixMethod::Options method;
  method.sources = t.sources;
  method.pseudo_threshold = 0.4;
  method.enlarge_v = 6;
  GradMixPseudoOptions opts;
  opts.grid = "10:0.5,5:2";
  opts.top = 2;
  opts.modes = "hard,soft+vat";
  std::ostringstream log;
  const nlohmann::json s = run_gradmix_pseudo(run, method, opts, log);
  for (const char* f : {"stage1/b10-g0.5/result.json", "stage1/b5-g2/result.json", "pseudo_labels.pt",
                        "final-hard/result.json", "final-soft+vat/result.json", "summary.json", "table.md"})
    EXPECT_TRUE(fs::exists(out.file("pipe/") + f)) << f;
  EXPECT_EQ(s["pseudo_labels"]["unlabelled"], 3 * 14);  // 20 per class - 3 labelled - 3 validation
  EXPECT_EQ(s["runs"].size(), 4u);
  const EnsembleLabels e = load_ensemble_labels(out.file("pipe/pseudo_labels.pt"));
  EXPECT_EQ(e.probs.size(0), 2);
  // V was enlarged with hard labels in the final hard run.
  const nlohmann::json cfg = read_json_file(out.file("pipe/final-hard/config.json"));
  EXPECT_EQ(cfg["method_options"]["pseudo_mode"], "hard");
  EXPECT_EQ(cfg["method_options"]["pseudo"], out.file("pipe/pseudo_labels.pt"));
  // A second run into the same directory is refused; --resume reuses the finished runs.
  test::expect_bad_input([&] { run_gradmix_pseudo(run, method, opts, log); }, {"already holds", "--resume"});
  run.resume = true;
  std::ostringstream again;
  run_gradmix_pseudo(run, method, opts, again);
  EXPECT_NE(again.str().find("reusing"), std::string::npos);
  // Bad pipeline input.
  opts.top = 3;
  test::expect_bad_input([&] { run_gradmix_pseudo(run, method, opts, log); }, {"--top 3"});
  opts.top = 1;
  opts.grid = "10:x";
  test::expect_bad_input([&] { run_gradmix_pseudo(run, method, opts, log); }, {"--grid", "10:x"});
  opts.grid = "10:1";
  opts.modes = "hard+fixmatch";
  test::expect_bad_input([&] { run_gradmix_pseudo(run, method, opts, log); }, {"--modes", "hard+fixmatch"});
}

}  // namespace
}  // namespace xfer
