// L2-SP, DELTA, BSS, Co-Tuning and RIFLE: exact formula values, the methods' behaviour, bad input.
#include <cmath>

#include "method_harness.h"
#include "support.h"
#include "xfer/core/rng.h"
#include "xfer/data/loader.h"
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

/// A frozen eval-mode model of `backbone` over 3 classes on the tiny task's 1x8x8 images, seeded.
Model regularization_frozen(const Task& task, const std::string& backbone, uint64_t seed) {
  seed_global(seed);
  Model m(Arch{backbone, 1, 8, 8, compute_normalization(task.train.images), {{"source", {"a", "b", "c"}}}});
  freeze(*m);
  m->eval();
  return m;
}

/// The name of each stage's last convolution weight, as DELTA's authors hook them.
std::string regularization_last_conv(const std::string& backbone, const std::string& stage) {
  return backbone.rfind("cnn4", 0) == 0 ? stage + ".0.weight"
                                        : stage + ".1.conv2.weight";  // resnet18: 2 blocks
}

TEST(Regularization, DeltaHooksTheLastConvolutionOfEachStage) {
  // The hooked map is each stage's last convolution output (before its batch norm and the residual add),
  // recomputed here from the named modules on a fixed input.
  test::TempDir dir;
  const Task task = regularization_task(dir);
  const torch::Tensor x = torch::randn({3, 1, 8, 8});
  torch::NoGradGuard no_grad;
  for (const std::string backbone : {"cnn4:width=4", "resnet18:width=4:stem=cifar"}) {
    const Model m = regularization_frozen(task, backbone, 3);
    const Features f = m->backbone->forward_features(x);
    const auto modules = m->backbone->named_modules();
    ASSERT_EQ(f.convs.size(), 4u) << backbone;
    torch::Tensor input = x;
    if (backbone.rfind("resnet", 0) == 0)
      input = torch::relu(modules["bn1"]->as<torch::nn::BatchNorm2d>()->forward(
          modules["conv1"]->as<torch::nn::Conv2d>()->forward(x)));
    for (size_t k = 0; k < 4; ++k) {
      const std::string stage = cat("layer", k + 1);
      torch::Tensor expected;
      if (backbone.rfind("cnn4", 0) == 0) {
        expected = modules[stage + ".0"]->as<torch::nn::Conv2d>()->forward(input);
      } else {  // block 0 whole, then block 1's conv1 -> bn1 -> relu -> conv2
        const torch::Tensor h = modules[stage + ".0"]->as<BasicBlockImpl>()->forward(input);
        const torch::Tensor a = torch::relu(modules[stage + ".1.bn1"]->as<torch::nn::BatchNorm2d>()->forward(
            modules[stage + ".1.conv1"]->as<torch::nn::Conv2d>()->forward(h)));
        expected = modules[stage + ".1.conv2"]->as<torch::nn::Conv2d>()->forward(a);
      }
      EXPECT_TRUE(torch::allclose(f.conv(stage), expected, 1e-5, 1e-6)) << backbone << " " << stage;
      EXPECT_FALSE(f.conv(stage).sizes() == f.map(stage).sizes() &&
                   torch::allclose(f.conv(stage), f.map(stage)))
          << "not the stage output: " << stage;
      EXPECT_EQ(delta_maps(f, {stage}, true)[0].data_ptr(), f.conv(stage).data_ptr());
      EXPECT_EQ(delta_maps(f, {stage}, false)[0].data_ptr(), f.map(stage).data_ptr());
      input = f.map(stage);
    }
  }
}

TEST(Regularization, DeltaChannelRisesMatchZeroingOneFilterOrOneChannelAtATime) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  const torch::Tensor x = torch::randn({5, 1, 8, 8}), y = torch::tensor({0, 1, 2, 1, 0}, torch::kInt64);
  torch::manual_seed(3);
  const std::vector<std::string> stages = {"layer1", "layer4"};
  for (const std::string backbone : {"cnn4:width=4", "resnet18:width=4:stem=cifar"}) {
    Model source = regularization_frozen(task, backbone, 7);
    torch::nn::Linear probe(source->backbone->feature_dim(), 3);
    for (const bool last_conv : {true, false}) {
      const auto rises = delta_channel_rises(*source->backbone, probe, x, y, stages, last_conv);
      ASSERT_EQ(rises.size(), 2u);
      torch::NoGradGuard no_grad;
      const double base = cross_entropy(probe->forward(source->backbone->forward(x)), y).item<double>();
      for (size_t s = 0; s < 2; ++s) {
        const int64_t c = rises[s].size(0);
        for (int64_t j = 0; j < c; ++j) {
          torch::Tensor pooled;
          if (last_conv) {  // the authors' ablation: filter j of the stage's last convolution set to 0
            Model copy = clone_model(source);
            copy->eval();
            copy->backbone->named_parameters()[regularization_last_conv(backbone, stages[s])][j].zero_();
            pooled = copy->backbone->forward(x);
          } else {  // channel j of the stage's output
            pooled = source->backbone
                         ->forward_features(x,
                                            [&](const std::string& name, const torch::Tensor& out) {
                                              if (name != stages[s]) return out;
                                              torch::Tensor z = out.clone();
                                              z.select(1, j).zero_();
                                              return z;
                                            })
                         .pooled;
          }
          const double rise = cross_entropy(probe->forward(pooled), y).item<double>() - base;
          EXPECT_NEAR(rises[s][j].item<double>(), rise, 1e-5)
              << backbone << (last_conv ? " last conv " : " stage ") << stages[s] << " channel " << j;
        }
      }
    }
  }
}

TEST(Regularization, DeltaInStepLossRecomputedFromTheReplayedBatch) {
  // The default DELTA (last-conv maps, attention, beta decay) on a fixed model and batch: the loss of the
  // harness's first step against CE + alpha 0.5 sum C a_c ||FM - FM0||^2 / (H W) + beta/2 ||w_head||^2
  // written out channel by channel on the same batch.
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 3, 5);
  test::MethodHarness h("delta", task, source, 1, 10, {{"alpha", "0.5"}, {"beta", "0.2"}});
  const auto& delta = dynamic_cast<const DeltaMethod&>(h.method());
  Model before = clone_model(h.model());
  before->train();
  LoaderOptions loader;
  loader.batch_size = 8;
  loader.prefetch = false;
  const Batch b = BatchStream(task.train, h.model()->arch().input, loader, derive_seed(1, "target")).next();
  const double total = h.step().total.item<double>();

  torch::NoGradGuard no_grad;
  const Features f = before->backbone->forward_features(b.x);
  const Features f0 = source->backbone->forward_features(b.x);
  const torch::Tensor logp =
      torch::log_softmax(before->head("target")->forward(f.pooled).to(torch::kFloat64), 1);
  double expected = 0;
  for (int64_t i = 0; i < 8; ++i) expected -= logp[i][b.y[i].item<int64_t>()].item<double>() / 8;
  for (size_t l = 0; l < delta.stages().size(); ++l) {
    const torch::Tensor d = (f.conv(delta.stages()[l]) - f0.conv(delta.stages()[l])).to(torch::kFloat64);
    const int64_t c = d.size(1);
    const double hw = static_cast<double>(d.size(2) * d.size(3));
    for (int64_t ch = 0; ch < c; ++ch)
      expected += 0.5 * 0.5 * c * delta.attention()[l][ch].item<double>() *
                  d.select(1, ch).pow(2).sum().item<double>() / hw;
  }
  for (const auto& p : before->head("target")->parameters())
    expected += 0.5 * 0.2 * p.pow(2).sum().item<double>();
  EXPECT_NEAR(total, expected, 1e-4 * std::abs(expected));
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
  EXPECT_FALSE(torch::allclose(delta.attention()[1], torch::full({16}, 1.0 / 16)))
      << "attention is not uniform";
  // The feature-map term is live: positive (the student's batch-norm uses batch statistics, the frozen
  // source its running ones) and finite at every step. Its value is checked against Python in the golden
  // test.
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
  test::MethodHarness other("delta", task, source, 2, 10,
                            {{"stages", "layer2,layer3"}, {"attention", "off"}});
  other.method().load(Archive::decode(out.encode(), "delta state"));
  const auto& loaded = dynamic_cast<const DeltaMethod&>(other.method());
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(loaded.attention()[i], delta.attention()[i]));
}

TEST(Regularization,
     L2SPAndDeltaTurnWeightDecayOffUnlessAskedAndCoTuningTrainsTheSourceHeadAtTheBackbonesRate) {
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 4, 5);
  for (const char* name : {"l2sp", "delta"}) {
    test::MethodHarness h(name, task, source, 0, 5);
    for (const auto& g : h.groups())
      EXPECT_EQ(g.weight_decay, std::optional<double>(0.0)) << name << " " << g.name;
    EXPECT_TRUE(h.step().parts.count("head_l2")) << name;
    // --decay optimizer (SMILE's code): the run's weight decay on every group, no beta term.
    test::MethodHarness o(name, task, source, 0, 5, {{"decay", "optimizer"}});
    for (const auto& g : o.groups()) EXPECT_FALSE(g.weight_decay.has_value()) << name << " " << g.name;
    EXPECT_FALSE(o.step().parts.count("head_l2")) << name;
  }
  test::MethodHarness co("cotuning", task, source, 0, 5);
  ASSERT_EQ(co.groups().size(), 3u);
  EXPECT_EQ(co.groups()[2].name, "source_head");
  EXPECT_DOUBLE_EQ(co.groups()[2].lr_mult, 1.0) << "Transfer-Learning-Library: the backbone's learning rate";
  EXPECT_DOUBLE_EQ(co.groups()[2].lr_mult, co.groups()[0].lr_mult);
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

TEST(Regularization, CoTuningInStepLossRecomputedFromTheReplayedBatch) {
  // p(y_s | y_t) as the mean of the frozen source model's softmax over each class's training images
  // (evaluation transform), then CE + lambda softCE(h_s(g(x)), p(. | y)) on the harness's first batch.
  test::TempDir dir;
  const Task task = regularization_task(dir);
  Model source = test::harness_source_model(task, 4, 5);
  test::MethodHarness h("cotuning", task, source, 2, 10, {{"lambda", "1.5"}});
  Model before = clone_model(h.model());
  before->train();
  LoaderOptions loader;
  loader.batch_size = 8;
  loader.prefetch = false;
  const Batch b = BatchStream(task.train, h.model()->arch().input, loader, derive_seed(2, "target")).next();
  const double total = h.step().total.item<double>();

  torch::NoGradGuard no_grad;
  const torch::Tensor images =
      InputTransform(source->arch().input).normalise(task.train.eval_images(0, task.train.size()));
  const torch::Tensor probs = torch::softmax(source->forward(images, "source"), 1).to(torch::kFloat64);
  torch::Tensor rel = torch::zeros({3, 4}, torch::kFloat64);
  std::vector<double> count(3, 0);
  for (int64_t i = 0; i < task.train.size(); ++i) {
    const int64_t c = task.train.labels[i].item<int64_t>();
    rel[c] += probs[i];
    count[c] += 1;
  }
  for (int64_t c = 0; c < 3; ++c) rel[c] /= count[c];
  const torch::Tensor g = before->backbone->forward(b.x);
  const torch::Tensor lt = torch::log_softmax(before->head("target")->forward(g).to(torch::kFloat64), 1);
  const torch::Tensor ls = torch::log_softmax(before->head("source")->forward(g).to(torch::kFloat64), 1);
  double expected = 0;
  for (int64_t i = 0; i < 8; ++i) {
    const int64_t y = b.y[i].item<int64_t>();
    expected -= lt[i][y].item<double>() / 8;
    expected -= 1.5 * (rel[y] * ls[i]).sum().item<double>() / 8;
  }
  EXPECT_NEAR(total, expected, 1e-5 * std::abs(expected));
}

TEST(Regularization, CoTuningRelationshipAveragesPerClass) {
  const torch::Tensor p = torch::tensor({0.5, 0.5, 1.0, 0.0, 0.0, 1.0}).view({3, 2});
  const torch::Tensor rel = cotuning_relationship(p, torch::tensor({0, 0, 1}, torch::kInt64), 2);
  EXPECT_TRUE(torch::allclose(rel, torch::tensor({0.75, 0.25, 0.0, 1.0}).view({2, 2})));
  test::expect_bad_input(
      [&] {
        cotuning_relationship(p, torch::tensor({0, 0, 0}, torch::kInt64), 2);
      },
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
  // same for the same run seed (Step.RifleTrainsWithCrossEntropyAndRedrawsTheHeadFromTheSeed checks the
  // draw).
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
  test::expect_bad_input(
      [&] {
        build("bss", {{"k", "17"}}, source, 32);
      },
      {"--k 17", "feature dimension 16"});
  test::expect_bad_input([&] { build("bss", {{"k", "9"}}, source, 8); }, {"--k 9", "batch size 8"});
  test::expect_bad_input(
      [&] {
        build("delta", {{"stages", "layer2,layer9"}}, source);
      },
      {"--stages", "no stage 'layer9'", "layer1, layer2, layer3, layer4"});
  test::expect_bad_input([&] { build("delta", {{"attention", "maybe"}}, source); }, {"--attention", "maybe"});
  test::expect_bad_input([&] { build("delta", {{"feature_maps", "bn"}}, source); }, {"--feature-maps", "bn"});
  test::expect_bad_input([&] { build("l2sp", {{"decay", "none"}}, source); }, {"--decay", "none"});
  test::expect_bad_input([&] { build("rifle", {{"k", "11"}}, nullptr); }, {"--k", "got 11"});
  test::expect_bad_input([&] { build("cotuning", {{"source_head", "nope"}}, source); }, {"no 'nope' head"});
  for (const char* m : {"l2sp", "delta", "cotuning"})
    test::expect_bad_input([&] { build(m, {}, nullptr); },
                           {"method ", m, "needs the source model: pass --init"});
}

}  // namespace
}  // namespace xfer
