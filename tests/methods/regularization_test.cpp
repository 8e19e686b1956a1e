// L2-SP, DELTA, BSS, Co-Tuning and RIFLE: exact formula values, the methods' behaviour, bad input.
#include <cmath>

#include "method_harness.h"
#include "support.h"
#include "xfer/methods/delta.h"
#include "xfer/methods/regularization.h"

namespace xfer {
namespace {

Task regularization_task(const test::TempDir& dir) {
  return load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
}

TEST(Regularization, BssShrinksTheSmallestSingularValues) {
  // Singular values of [[3,0],[0,4],[0,0]] are (4, 3).
  const torch::Tensor f = torch::tensor({3.0, 0.0, 0.0, 4.0, 0.0, 0.0}).view({3, 2});
  EXPECT_NEAR(bss_penalty(f, 1).item<double>(), 9.0, 1e-5);
  EXPECT_NEAR(bss_penalty(f, 2).item<double>(), 25.0, 1e-5);
  test::expect_bad_input([&] { bss_penalty(f, 3); }, {"--k", "[1, 2]", "got 3"});
  test::expect_bad_input([&] { bss_penalty(f, 0); }, {"--k", "got 0"});
}

TEST(Regularization, L2SPPenalisesTheDistanceToTheStartingPoint) {
  const torch::Tensor w = torch::tensor({4.0, 6.0}), w0 = torch::tensor({1.0, 2.0});  // w - w0 = (3, 4)
  EXPECT_NEAR(l2sp_penalty({w}, {w0}, 1.0).item<double>(), 12.5, 1e-6);
  EXPECT_NEAR(l2sp_penalty({w}, {w0}, 0.01).item<double>(), 0.125, 1e-7);
  EXPECT_NEAR(l2_penalty({torch::tensor({3.0}), torch::tensor({4.0})}, 2.0).item<double>(), 25.0, 1e-6);
  test::expect_bad_input([&] { l2sp_penalty({w}, {torch::zeros({3})}, 1.0); }, {"shape"});
}

TEST(Regularization, DeltaPenaltyWeighsChannelsByAttention) {
  // One layer, N=1, C=2, H=1, W=2: channel 0 differs by (1, 1), channel 1 by (2, 0).
  const torch::Tensor m0 = torch::zeros({1, 2, 1, 2});
  const torch::Tensor m = torch::tensor({1.0, 1.0, 2.0, 0.0}).view({1, 2, 1, 2});
  const torch::Tensor a = torch::tensor({0.25, 0.75});
  // 0.5 * C * (0.25 * 2 + 0.75 * 4) / (H W) = 0.5 * 2 * 3.5 / 2
  EXPECT_NEAR(delta_penalty({m}, {m0}, {a}).item<double>(), 1.75, 1e-6);
  // Summed over the batch, as the authors' code: two copies give twice as much.
  EXPECT_NEAR(delta_penalty({torch::cat({m, m})}, {torch::cat({m0, m0})}, {a}).item<double>(), 3.5, 1e-6);
  test::expect_bad_input([&] { delta_penalty({m}, {m0}, {torch::ones({3})}); }, {"2 channels but 3"});
}

TEST(Regularization, DeltaAttentionIsASoftmaxOfZScores) {
  // Equal rises: uniform attention.
  EXPECT_TRUE(torch::allclose(delta_attention_weights(torch::full({4}, 0.3), 5.0), torch::full({4}, 0.25)));
  // Rises (0, 1): z = (-1, 1), a = softmax((-0.2, 0.2)).
  const torch::Tensor a = delta_attention_weights(torch::tensor({0.0, 1.0}), 5.0);
  const double e = std::exp(0.4);
  EXPECT_NEAR(a[0].item<double>(), 1 / (1 + e), 1e-6);
  EXPECT_NEAR(a[1].item<double>(), e / (1 + e), 1e-6);
  EXPECT_NEAR(delta_attention_weights(torch::tensor({0.1, 5.0, 2.0}), 5.0).sum().item<double>(), 1.0, 1e-6);
}

TEST(Regularization, DeltaChannelRisesMatchZeroingOneChannelAtATime) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 3, 7);
  const torch::Tensor x = torch::randn({5, 1, 8, 8}), y = torch::tensor({0, 1, 2, 1, 0}, torch::kInt64);
  torch::manual_seed(3);
  torch::nn::Linear probe(source->backbone->feature_dim(), 3);
  const auto rises = delta_channel_rises(*source->backbone, probe, x, y, {"layer1", "layer4"});
  ASSERT_EQ(rises.size(), 2u);
  torch::NoGradGuard no_grad;
  const double base = cross_entropy(probe->forward(source->backbone->forward(x)), y).item<double>();
  const std::vector<std::string> stages = {"layer1", "layer4"};
  for (size_t s = 0; s < 2; ++s) {
    const int64_t c = rises[s].size(0);
    EXPECT_EQ(c, stages[s] == "layer1" ? 4 : 16);
    for (int64_t j = 0; j < c; ++j) {
      const auto pooled = source->backbone->forward_features(x, [&](const std::string& name, const torch::Tensor& out) {
        if (name != stages[s]) return out;
        torch::Tensor z = out.clone();
        z.select(1, j).zero_();
        return z;
      }).pooled;
      const double rise = cross_entropy(probe->forward(pooled), y).item<double>() - base;
      EXPECT_NEAR(rises[s][j].item<double>(), rise, 1e-5) << stages[s] << " channel " << j;
    }
  }
}

TEST(Regularization, DeltaSetsUpAttentionPerStageAndResumesIt) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 3, 5);
  test::MethodHarness on("delta", task, source, 1, 10, {{"stages", "layer2,layer3"}});
  const auto& delta = dynamic_cast<const DeltaMethod&>(on.method());
  ASSERT_EQ(delta.stages(), (std::vector<std::string>{"layer2", "layer3"}));
  ASSERT_EQ(delta.attention().size(), 2u);
  EXPECT_EQ(delta.attention()[0].size(0), 8);
  EXPECT_NEAR(delta.attention()[0].sum().item<double>(), 1.0, 1e-5);
  EXPECT_FALSE(torch::allclose(delta.attention()[1], torch::full({16}, 1.0 / 16))) << "attention is not uniform";
  // The feature-map term is live: positive (the student's batch-norm uses batch statistics, the frozen
  // source its running ones) and finite at every step. Its value is checked against Python in the golden test.
  for (int i = 0; i < 5; ++i) {
    const double fm = on.step().parts.at("feature_maps").item<double>();
    EXPECT_TRUE(std::isfinite(fm) && fm > 0) << "step " << i << ": " << fm;
  }

  test::MethodHarness off("delta", task, source, 1, 10, {{"attention", "off"}});
  const auto& plain = dynamic_cast<const DeltaMethod&>(off.method());
  ASSERT_EQ(plain.stages().size(), 4u);
  EXPECT_TRUE(torch::allclose(plain.attention()[3], torch::full({16}, 1.0 / 16)));

  // The attention is method state: it round-trips through save/load.
  Archive out;
  on.method().save(out);
  test::MethodHarness other("delta", task, source, 2, 10, {{"stages", "layer2,layer3"}, {"attention", "off"}});
  other.method().load(Archive::decode(out.encode(), "delta state"));
  const auto& loaded = dynamic_cast<const DeltaMethod&>(other.method());
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(loaded.attention()[i], delta.attention()[i]));
}

TEST(Regularization, L2SPAndDeltaTurnWeightDecayOffAndCoTuningTrainsTheSourceHeadSlower) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 4, 5);
  for (const char* name : {"l2sp", "delta"}) {
    test::MethodHarness h(name, task, source, 0, 5);
    for (const auto& g : h.groups()) EXPECT_EQ(g.weight_decay, std::optional<double>(0.0)) << name << " " << g.name;
  }
  test::MethodHarness co("cotuning", task, source, 0, 5);
  ASSERT_EQ(co.groups().size(), 3u);
  EXPECT_EQ(co.groups()[2].name, "source_head");
  EXPECT_DOUBLE_EQ(co.groups()[2].lr_mult, 0.1);
  // The source head starts as the --init model's.
  EXPECT_TRUE(torch::equal(co.model()->head("source")->weight, source->head("source")->weight));
  const auto& method = dynamic_cast<const CoTuningMethod&>(co.method());
  EXPECT_EQ(method.relationship().sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(torch::allclose(method.relationship().sum(1), torch::ones({3}), 1e-5, 1e-6));
}

TEST(Regularization, L2SPStartsAtZeroDistanceAndMovesAway) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 3, 5);
  test::MethodHarness h("l2sp", task, source, 0, 5, {{"alpha", "1"}});
  EXPECT_NEAR(h.step().parts.at("l2sp").item<double>(), 0.0, 1e-12);
  const double moved = h.step().parts.at("l2sp").item<double>();
  EXPECT_GT(moved, 0.0);
  // The term is alpha/2 ||w - w0||^2 over the backbone, recomputed by hand.
  double sq = 0;
  const auto now = h.model()->backbone->named_parameters();
  for (const auto& p : source->backbone->named_parameters())
    sq += (now[p.key()] - p.value()).pow(2).sum().item<double>();
  EXPECT_NEAR(h.step().parts.at("l2sp").item<double>(), 0.5 * sq, 1e-5 * sq + 1e-9);
}

TEST(Regularization, CoTuningRelationshipAveragesPerClass) {
  const torch::Tensor p = torch::tensor({0.5, 0.5, 1.0, 0.0, 0.0, 1.0}).view({3, 2});
  const torch::Tensor rel = cotuning_relationship(p, torch::tensor({0, 0, 1}, torch::kInt64), 2);
  EXPECT_TRUE(torch::allclose(rel, torch::tensor({0.75, 0.25, 0.0, 1.0}).view({2, 2})));
  test::expect_bad_input([&] { cotuning_relationship(p, torch::tensor({0, 0, 0}, torch::kInt64), 2); },
                         {"target class 1 has no training example"});
}

TEST(Regularization, RifleReinitialisesTheHeadAtKEqualPeriods) {
  EXPECT_EQ(rifle_reinit_steps(300, 3), (std::vector<int64_t>{100, 200}));
  EXPECT_EQ(rifle_reinit_steps(100, 3), (std::vector<int64_t>{33, 66}));
  EXPECT_EQ(rifle_reinit_steps(10, 1), (std::vector<int64_t>{}));
  test::expect_bad_input([] { rifle_reinit_steps(10, 11); }, {"--k", "got 11"});

  test::TempDir dir;
  const Task task = regularization_task(dir);
  test::MethodHarness h("rifle", task, nullptr, 4, 9);  // re-initialised after steps 3 and 6
  const auto& rifle = dynamic_cast<const RifleMethod&>(h.method());
  EXPECT_EQ(rifle.reinit_steps(), (std::vector<int64_t>{3, 6}));
  std::vector<torch::Tensor> after;
  for (int s = 1; s <= 9; ++s) {
    h.step();
    if (s == 3 || s == 6) after.push_back(h.model()->head("target")->weight.clone());
  }
  ASSERT_EQ(after.size(), 2u);
  // A re-initialised head is a fresh draw from U(-1/sqrt(in), 1/sqrt(in)), different each time, and the
  // same for the same run seed (Step.RifleTrainsWithCrossEntropyAndRedrawsTheHeadFromTheSeed checks the draw).
  const double bound = 1.0 / std::sqrt(16.0);
  for (const auto& w : after) EXPECT_LE(w.abs().max().item<double>(), bound);
  EXPECT_FALSE(torch::equal(after[0], after[1]));
  test::MethodHarness again("rifle", task, nullptr, 4, 9);
  for (int s = 1; s <= 3; ++s) again.step();
  EXPECT_TRUE(torch::equal(again.model()->head("target")->weight, after[0]));
}

TEST(Regularization, BadInputNamesTheOptionAndValue) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 3, 5);
  auto build = [&](const std::string& method, const std::map<std::string, std::string>& opts, Model src,
                   int64_t batch = 8) { test::MethodHarness h(method, task, src, 0, 10, opts, batch); };
  test::expect_bad_input([&] { build("l2sp", {{"alpha", "-1"}}, source); }, {"--alpha", ">= 0", "-1"});
  test::expect_bad_input([&] { build("l2sp", {{"beta", "-0.5"}}, source); }, {"--beta", "-0.5"});
  test::expect_bad_input([&] { build("delta", {{"alpha", "-2"}}, source); }, {"--alpha", "-2"});
  test::expect_bad_input([&] { build("bss", {{"eta", "-1"}}, source); }, {"--eta", "-1"});
  test::expect_bad_input([&] { build("cotuning", {{"lambda", "-1"}}, source); }, {"--lambda", "-1"});
  test::expect_bad_input([&] { build("bss", {{"k", "17"}}, source, 32); }, {"--k 17", "feature dimension 16"});
  test::expect_bad_input([&] { build("bss", {{"k", "9"}}, source, 8); }, {"--k 9", "batch size 8"});
  test::expect_bad_input([&] { build("delta", {{"stages", "layer2,layer9"}}, source); },
                         {"--stages", "no stage 'layer9'", "layer1, layer2, layer3, layer4"});
  test::expect_bad_input([&] { build("delta", {{"attention", "maybe"}}, source); }, {"--attention", "maybe"});
  test::expect_bad_input([&] { build("rifle", {{"k", "11"}}, nullptr); }, {"--k", "got 11"});
  test::expect_bad_input([&] { build("cotuning", {{"source_head", "nope"}}, source); }, {"no 'nope' head"});
  for (const char* m : {"l2sp", "delta", "cotuning"})
    test::expect_bad_input([&] { build(m, {}, nullptr); }, {"method ", m, "needs the source model: pass --init"});
}

}  // namespace
}  // namespace xfer
