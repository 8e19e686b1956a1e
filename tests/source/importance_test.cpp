// Domain Adaptive Transfer Learning: importance weights, the same and elastic matchers, pre-training on
// the resampled source, and `xfer weights`.
#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/data/idx.h"
#include "xfer/data/spec.h"
#include "xfer/methods/datl.h"
#include "xfer/methods/registry.h"
#include "xfer/source/importance.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// The appendix's example: A:10, B:40, C:50 source examples; P_t = .5, .3, .2.
ImportanceWeights datl_appendix_weights() {
  return ImportanceWeights::from_target_distribution({"A", "B", "C"}, {10, 40, 50}, {0.5, 0.3, 0.2});
}

/// Per-class example indices 0..n-1, class after class.
std::vector<std::vector<int64_t>> datl_by_class(const std::vector<int64_t>& counts) {
  std::vector<std::vector<int64_t>> out;
  int64_t next = 0;
  for (int64_t c : counts) {
    out.emplace_back();
    for (int64_t i = 0; i < c; ++i) out.back().push_back(next++);
  }
  return out;
}

TEST(Importance, AppendixExampleWeights) {
  const ImportanceWeights w = datl_appendix_weights();
  EXPECT_NEAR(w.weight[0], 5.0, 1e-12);
  EXPECT_NEAR(w.weight[1], 0.75, 1e-12);
  EXPECT_NEAR(w.weight[2], 0.4, 1e-12);
  EXPECT_EQ(w.order(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(w.source_size(), 100);
}

TEST(Importance, AppendixExampleSameMatcher) {
  EXPECT_EQ(same_counts(datl_appendix_weights(), 30), (std::vector<int64_t>{15, 9, 6}));
}

TEST(Importance, AppendixExampleElasticMatcher) {
  EXPECT_EQ(elastic_counts(datl_appendix_weights(), 30), (std::vector<int64_t>{10, 12, 8}));
}

TEST(Importance, ElasticReDividesRecursively) {
  // A (w=.5/.05=10) gives its 5, B (w=.3/.1=3) then cannot supply 55*.3/.5=33 and gives its 10, C the 45
  // left.
  const auto w = ImportanceWeights::from_target_distribution({"A", "B", "C"}, {5, 10, 85}, {0.5, 0.3, 0.2});
  EXPECT_EQ(elastic_counts(w, 60), (std::vector<int64_t>{5, 10, 45}));
  // Small N: every class can supply its share, so elastic equals same.
  EXPECT_EQ(elastic_counts(w, 10), same_counts(w, 10));
  // The whole source.
  EXPECT_EQ(elastic_counts(w, 100), (std::vector<int64_t>{5, 10, 85}));
  // Classes with P_t = 0 are used only once every other class is exhausted, in proportion to their sizes.
  const auto z = ImportanceWeights::from_target_distribution({"A", "B", "C"}, {4, 30, 10}, {1.0, 0.0, 0.0});
  EXPECT_EQ(elastic_counts(z, 3), (std::vector<int64_t>{3, 0, 0}));
  EXPECT_EQ(elastic_counts(z, 12), (std::vector<int64_t>{4, 6, 2}));
}

TEST(Importance, LargestRemainderSumsExactly) {
  EXPECT_EQ(largest_remainder({1, 1, 1}, 10), (std::vector<int64_t>{4, 3, 3}));  // ties: lower index first
  EXPECT_EQ(largest_remainder({0.5, 0.3, 0.2}, 7), (std::vector<int64_t>{4, 2, 1}));  // 3.5, 2.1, 1.4
  EXPECT_EQ(largest_remainder({1, 1}, 5, {1, 10}), (std::vector<int64_t>{1, 4}));
  for (int64_t n : {1, 2, 17, 1000, 99991}) {
    const auto c = largest_remainder({0.123, 0.456, 0.001, 0.42}, n);
    EXPECT_EQ(std::accumulate(c.begin(), c.end(), int64_t{0}), n);
  }
}

TEST(Importance, TemperatureSoftensTheSoftmax) {
  const torch::Tensor logits = torch::tensor({{2.0, 0.0}});
  const torch::Tensor t1 = tempered_softmax(logits, 1.0), t2 = tempered_softmax(logits, 2.0);
  EXPECT_NEAR(t1[0][0].item<double>(), 0.8808, 1e-4);
  EXPECT_NEAR(t1[0][1].item<double>(), 0.1192, 1e-4);
  EXPECT_NEAR(t2[0][0].item<double>(), 0.7311, 1e-4);
  EXPECT_NEAR(t2[0][1].item<double>(), 0.2689, 1e-4);
  test::expect_bad_input([&] { tempered_softmax(logits, 0.0); }, {"--temperature must be > 0, got 0"});
  test::expect_bad_input([&] { tempered_softmax(logits, -1.5); }, {"--temperature must be > 0, got -1.5"});
}

TEST(Importance, SameFrequenciesConvergeToTargetDistribution) {
  const auto w = ImportanceWeights::from_target_distribution({"A", "B", "C", "D"}, {7, 20, 40, 13},
                                                             {0.05, 0.6, 0.1, 0.25});
  const auto by_class = datl_by_class(w.examples);
  for (int64_t n : {1000, 200000}) {
    const MatchedSet set = match_distribution("same", w, by_class, n, 7);
    ASSERT_EQ(static_cast<int64_t>(set.indices.size()), n);
    std::map<int64_t, int64_t> per_example;
    for (int64_t i : set.indices) ++per_example[i];
    for (size_t y = 0; y < by_class.size(); ++y) {
      int64_t drawn = 0;
      for (int64_t i : by_class[y]) drawn += per_example[i];
      EXPECT_NEAR(static_cast<double>(drawn) / n, w.p_target[y], 1.0 / n);  // class frequencies: P_t
      if (n < 200000) continue;
      // Each example of class y is drawn N * P_t(y) / n_y times on average: rate proportional to w(y).
      const double expected = n * w.p_target[y] / w.examples[y];
      for (int64_t i : by_class[y]) EXPECT_NEAR(per_example[i] / expected, 1.0, 0.15) << "example " << i;
    }
  }
}

TEST(Importance, ElasticNeverRepeatsAnExample) {
  const auto w = ImportanceWeights::from_target_distribution({"A", "B", "C", "D"}, {7, 20, 40, 13},
                                                             {0.05, 0.6, 0.1, 0.25});
  const auto by_class = datl_by_class(w.examples);
  for (int64_t n : {1, 10, 33, 57, 79, 80}) {
    const MatchedSet set = match_distribution("elastic", w, by_class, n, 3);
    const std::set<int64_t> distinct(set.indices.begin(), set.indices.end());
    EXPECT_EQ(static_cast<int64_t>(set.indices.size()), n);
    EXPECT_EQ(static_cast<int64_t>(distinct.size()), n);
    EXPECT_EQ(set.unique, n);
    for (size_t y = 0; y < by_class.size(); ++y) EXPECT_LE(set.counts[y], w.examples[y]);
  }
  const MatchedSet same = match_distribution("same", w, by_class, 80, 3);
  EXPECT_LT(same.unique, 80);  // the same matcher repeats the heavy classes
}

TEST(Importance, DrawsAreAPureFunctionOfTheSeed) {
  const auto w = datl_appendix_weights();
  const auto by_class = datl_by_class(w.examples);
  for (const std::string m : {"same", "elastic"}) {
    const MatchedSet a = match_distribution(m, w, by_class, 30, 11),
                     b = match_distribution(m, w, by_class, 30, 11);
    const MatchedSet c = match_distribution(m, w, by_class, 30, 12);
    EXPECT_EQ(a.indices, b.indices) << m;
    EXPECT_EQ(a.counts, c.counts) << m;  // counts are deterministic, only the examples move
    EXPECT_NE(a.indices, c.indices) << m;
  }
}

TEST(Importance, BadSizesSayWhatIsWrong) {
  const auto w = datl_appendix_weights();
  test::expect_bad_input([&] { same_counts(w, 0); }, {"--size", "must be > 0", "got 0"});
  test::expect_bad_input([&] { elastic_counts(w, -3); }, {"--size", "must be > 0", "got -3"});
  test::expect_bad_input([&] { elastic_counts(w, 101); }, {"--size 101", "100 unique examples"});
  EXPECT_EQ(same_counts(w, 300), (std::vector<int64_t>{150, 90, 60}));  // same may exceed the source
  PretrainSampling s;
  s.weights = "w.json";
  s.matcher = "same";
  test::expect_bad_input([&] { s.check(); }, {"--size", "got 0"});
  s.matcher = "none";
  test::expect_bad_input([&] { s.check(); }, {"--matcher same|elastic", "--loss-weights"});
  s.weights.clear();
  s.matcher = "elastic";
  s.size = 5;
  test::expect_bad_input([&] { s.check(); }, {"give --weights FILE", "or --weights-from MODEL"});
}

TEST(Importance, WeightsFileRoundTripsAndMustMatchTheSource) {
  ImportanceWeights w = datl_appendix_weights();
  w.provenance["target"] = "somewhere";
  const ImportanceWeights back =
      ImportanceWeights::from_json(nlohmann::json::parse(w.to_json().dump()), "w.json");
  EXPECT_EQ(back.classes, w.classes);
  EXPECT_EQ(back.examples, w.examples);
  EXPECT_EQ(back.weight, w.weight);
  EXPECT_EQ(back.provenance["target"], "somewhere");

  TensorDataset source{
      torch::zeros({4, 1, 2, 2}, torch::kUInt8), torch::tensor({0, 1, 1, 2}), {"A", "B", "C"}, nullptr};
  const ImportanceWeights rebased = weights_for_source(w, source, "w.json");
  EXPECT_EQ(rebased.examples, (std::vector<int64_t>{1, 2, 1}));
  EXPECT_NEAR(rebased.weight[0], 0.5 / 0.25, 1e-12);
  source.class_names = {"A", "X", "C"};
  test::expect_bad_input([&] { weights_for_source(w, source, "w.json"); }, {"w.json", "'B'", "'X'"});
  source.class_names = {"A", "B", "C", "D"};
  test::expect_bad_input([&] { weights_for_source(w, source, "w.json"); },
                         {"w.json lists 3 classes", "has 4"});
  test::expect_bad_input(
      [&] {
        ImportanceWeights::from_json({{"classes", 3}}, "bad.json");
      },
      {"bad.json", "not an importance-weights file"});
}

TEST(Importance, ClassWeightedCrossEntropyWeightsEachExample) {
  const torch::Tensor logits = torch::tensor({{1.0, 2.0, 0.5}, {0.0, 0.0, 3.0}, {2.0, -1.0, 0.0}});
  const torch::Tensor labels = torch::tensor({1, 2, 0});
  const torch::Tensor w = torch::tensor({0.5, 2.0, 3.0});
  const torch::Tensor ce = -torch::log_softmax(logits, 1).gather(1, labels.unsqueeze(1)).squeeze(1);
  const double expected = ((ce[0] * 2.0 + ce[1] * 3.0 + ce[2] * 0.5) / 3).item<double>();
  EXPECT_NEAR(class_weighted_cross_entropy(logits, labels, w).item<double>(), expected, 1e-6);
  // Unit weights: plain cross-entropy.
  EXPECT_NEAR(class_weighted_cross_entropy(logits, labels, torch::ones({3})).item<double>(),
              ce.mean().item<double>(), 1e-6);
}

/// write_tiny_idx into a new subdirectory of `dir`.
std::string datl_tiny_idx(const test::TempDir& dir, const std::string& name, int classes, int per_class) {
  fs::create_directories(dir.file(name));
  return test::write_tiny_idx(dir.file(name), classes, per_class, 4);
}

/// A tiny classifier over `classes` classes of write_tiny_idx data, pre-trained for a few steps.
RunOptions datl_tiny_pretrain(const std::string& spec, const std::string& out) {
  RunOptions o;
  o.source = spec;
  o.backbone = "cnn4:width=4";
  o.threads = 1;
  o.out = out;
  o.trainer.iterations = 12;
  o.trainer.log_every = 4;
  o.loader.batch_size = 8;
  return o;
}

/// `xfer pretrain --method datl` of `o` with `sampling` as the method's options.
RunResult datl_pretrain(RunOptions o, const PretrainSampling& sampling) {
  o.method = "datl";
  DatlConfig config;
  config.options = sampling;
  return run_pretrain(o, config);
}

TEST(Importance, PretrainOnTheResampledSource) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 20, 4);
  ImportanceWeights w =
      ImportanceWeights::from_target_distribution({"0", "1", "2"}, {20, 20, 20}, {0.7, 0.2, 0.1});
  write_json_file(dir.file("w.json"), w.to_json());

  const RunOptions same = datl_tiny_pretrain(spec, dir.file("same"));
  PretrainSampling by_same;
  by_same.weights = dir.file("w.json");
  by_same.matcher = "same";
  by_same.size = 50;
  const nlohmann::json r = datl_pretrain(same, by_same);
  EXPECT_EQ(r["train_size"], 50);
  EXPECT_EQ(r["sampling"]["matcher"], "same");
  EXPECT_EQ(r["sampling"]["size"], 50);
  EXPECT_EQ(r["sampling"]["class_counts"], nlohmann::json({35, 10, 5}));
  EXPECT_LE(r["sampling"]["unique"].get<int64_t>(), 20 + 10 + 5);
  EXPECT_TRUE(std::isfinite(r["test_top1"].get<double>()));
  const nlohmann::json config = read_json_file(dir.file("same/config.json"));
  EXPECT_EQ(config["method"], "datl");
  EXPECT_EQ(config["method_options"]["matcher"], "same");

  RunOptions elastic = same;
  elastic.out = dir.file("elastic");
  PretrainSampling by_elastic = by_same;
  by_elastic.matcher = "elastic";
  by_elastic.size = 40;
  const nlohmann::json e = datl_pretrain(elastic, by_elastic);
  EXPECT_EQ(e["sampling"]["unique"], 40);
  EXPECT_EQ(e["sampling"]["class_counts"], nlohmann::json({20, 13, 7}));  // A exhausted, 20 re-divided 2:1
  by_elastic.size = 61;
  elastic.out = dir.file("too-big");
  test::expect_bad_input([&] { datl_pretrain(elastic, by_elastic); }, {"--size 61", "60 unique examples"});

  PretrainSampling by_loss;
  by_loss.weights = dir.file("w.json");
  by_loss.loss_weights = true;
  const nlohmann::json lw = datl_pretrain(datl_tiny_pretrain(spec, dir.file("weighted")), by_loss);
  EXPECT_EQ(lw["train_size"], 60);
  EXPECT_EQ(lw["sampling"]["loss_weights"], true);
  EXPECT_NEAR(lw["sampling"]["class_weights"][0].get<double>(), 2.1, 1e-12);

  // Weights for another source.
  const std::string four = datl_tiny_idx(dir, "four", 4, 20);
  RunOptions other = same;
  other.source = four;
  other.out = dir.file("other");
  test::expect_bad_input([&] { datl_pretrain(other, by_same); },
                         {"w.json lists 3 classes", "the source has 4"});

  // datl is a method of `xfer pretrain` only; `xfer pretrain` takes only pre-training methods.
  RunOptions finetune = same;
  finetune.target = spec;
  finetune.source.clear();
  finetune.out = dir.file("finetune");
  finetune.method = "datl";
  DatlConfig datl;
  datl.options = by_same;
  test::expect_bad_input(
      [&] { run_finetune(finetune, datl); },
      {"method datl pre-trains a source model: run it with `xfer pretrain --method datl`"});
  RunOptions l2 = same;
  l2.method = "l2";
  l2.out = dir.file("l2");
  const auto l2_config = methods().get("l2").make_config();
  test::expect_bad_input([&] { run_pretrain(l2, *l2_config); },
                         {"method l2 fine-tunes", "`xfer pretrain --method` takes scratch or datl"});
  EXPECT_FALSE(fs::exists(dir.file("finetune")));
  EXPECT_FALSE(fs::exists(dir.file("l2")));
  // Without weights, datl has nothing to pre-train by.
  test::expect_bad_input([&] { datl_pretrain(same, PretrainSampling{}); },
                         {"method datl pre-trains by importance weights: give --weights FILE"});
}

TEST(Importance, WeightsCommandIgnoresTargetLabels) {
  test::TempDir dir;
  const std::string source = datl_tiny_idx(dir, "source", 3, 20);
  run_pretrain(datl_tiny_pretrain(source, dir.file("classifier")));

  // Two targets with the same images; the second has its labels shuffled.
  const std::string target = datl_tiny_idx(dir, "target", 3, 6);
  fs::create_directories(dir.file("shuffled"));
  for (const char* f : {"train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"})
    fs::copy_file(dir.path() + "/target/" + f, dir.file("shuffled/") + f);
  const torch::Tensor labels = read_idx(dir.path() + "/target/train-labels-idx1-ubyte").data;
  write_file_atomic(dir.file("shuffled/train-labels-idx1-ubyte"),
                    encode_idx(labels.index_select(0, torch::randperm(labels.size(0), make_generator(5)))));

  auto weights = [&](const std::string& target_spec, const std::string& out) {
    const test::CliOutcome o =
        test::run_cli({"-q", "weights", "--model", dir.file("classifier"), "--source", source, "--target",
                       target_spec, "--out", out, "--threads", "1"});
    EXPECT_EQ(o.code, 0) << o.err;
    EXPECT_NE(o.out.find("w = P_t/P_s"), std::string::npos) << o.out;
    return ImportanceWeights::from_json(read_json_file(out + "/weights.json"), out);
  };
  const ImportanceWeights a = weights(target, dir.file("a")),
                          b = weights("idx:dir=" + dir.file("shuffled"), dir.file("b"));
  ASSERT_EQ(a.p_target.size(), 3u);
  for (size_t y = 0; y < 3; ++y) EXPECT_NEAR(a.p_target[y], b.p_target[y], 1e-9);
  EXPECT_NEAR(std::accumulate(a.p_target.begin(), a.p_target.end(), 0.0), 1.0, 1e-12);
  // P_t by hand (section 3.3): the classifier in eval mode on the normalised target images, softmax(z / 2)
  // averaged over the images; P_s = n_y / n and w = P_t / P_s.
  {
    torch::NoGradGuard no_grad;
    Model classifier = CheckpointReader(resolve_checkpoint(dir.file("classifier"))).read_model();
    classifier->eval();
    const Task t = load_task(target, 0);
    const Normalization& norm = classifier->arch().input;
    const torch::Tensor x = (t.train.images.to(torch::kFloat32) / 255.0 - norm.mean[0]) / norm.std[0];
    const torch::Tensor p =
        torch::softmax(classifier->forward(x, "source").to(torch::kFloat64) / 2.0, 1).mean(0);
    for (int64_t y = 0; y < 3; ++y) {
      EXPECT_NEAR(a.p_target[static_cast<size_t>(y)], p[y].item<double>(), 1e-6) << "P_t(" << y << ")";
      EXPECT_NEAR(a.p_source[static_cast<size_t>(y)], 20.0 / 60.0, 1e-12);
      EXPECT_NEAR(a.weight[static_cast<size_t>(y)], p[y].item<double>() * 3.0, 1e-5) << "w(" << y << ")";
    }
  }
  EXPECT_TRUE(fs::exists(dir.file("a/weights.md")));

  // `xfer pretrain --weights-from` computes the same weights in the run, and resamples alike.
  PretrainSampling file_weights;
  file_weights.weights = dir.file("a/weights.json");
  file_weights.matcher = "same";
  file_weights.size = 30;
  PretrainSampling model_weights = file_weights;
  model_weights.weights = "";
  model_weights.weights_from = dir.file("classifier");
  model_weights.weights_target = target;
  const RunOptions by_model = datl_tiny_pretrain(source, dir.file("by-model"));
  const nlohmann::json rf = datl_pretrain(datl_tiny_pretrain(source, dir.file("by-file")), file_weights),
                       rm = datl_pretrain(by_model, model_weights);
  EXPECT_EQ(rf["sampling"]["class_counts"], rm["sampling"]["class_counts"]);
  for (size_t y = 0; y < 3; ++y)
    EXPECT_NEAR(rm["sampling"]["p_target"][y].get<double>(), a.p_target[y], 1e-9);
  EXPECT_EQ(rm["sampling"]["weights_from"], dir.file("classifier"));
  model_weights.weights_target = "";
  test::expect_bad_input([&] { datl_pretrain(by_model, model_weights); },
                         {"--weights-from MODEL and --weights-target SPEC go together"});
  model_weights.weights = dir.file("a/weights.json");
  test::expect_bad_input([&] { datl_pretrain(by_model, model_weights); }, {"not both"});

  // Bad input: one line, exit code 2.
  const std::vector<std::string> base = {"weights",  "--model", dir.file("classifier"),
                                         "--source", source,    "--target",
                                         target,     "--out",   dir.file("c")};
  auto expect_bad = [&](std::vector<std::string> extra, const std::string& piece) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    const test::CliOutcome o = test::run_cli(args);
    EXPECT_EQ(o.code, 2) << o.err;
    EXPECT_NE(o.err.find(piece), std::string::npos) << o.err;
  };
  expect_bad({"--temperature", "0"}, "--temperature must be > 0, got 0");
  expect_bad({"--temperature", "-2"}, "--temperature must be > 0, got -2");
  const std::string four = datl_tiny_idx(dir, "four", 4, 20);
  expect_bad({"--source", four}, "head has 3 outputs but the source has 4 classes");
}

}  // namespace
}  // namespace xfer
