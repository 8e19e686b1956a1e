// mixup, manifold mixup and CutMix: draws, boxes, the loss each step computes, bad input.
#include "xfer/methods/mixup.h"
#include "method_harness.h"
#include "support.h"

namespace xfer {
namespace {

Task mixup_task(const test::TempDir& dir) {
  return load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
}

TEST(Mixup, CutMixBoxHasTheAreaOfOneMinusLambdaAndIsClipped) {
  // lambda 0.75: side sqrt(0.25) = 1/2 of each dimension.
  CutMixBox b = cutmix_box(28, 28, 0.75, 14, 14);
  EXPECT_EQ((std::vector<int64_t>{b.y1, b.y2, b.x1, b.x2}), (std::vector<int64_t>{7, 21, 7, 21}));
  EXPECT_DOUBLE_EQ(cutmix_lambda(b, 28, 28), 0.75);
  // At a corner the box is clipped, and lambda is corrected to the area really pasted.
  b = cutmix_box(28, 28, 0.75, 0, 27);
  EXPECT_EQ((std::vector<int64_t>{b.y1, b.y2, b.x1, b.x2}), (std::vector<int64_t>{0, 7, 20, 28}));
  EXPECT_DOUBLE_EQ(cutmix_lambda(b, 28, 28), 1.0 - 7.0 * 8.0 / 784.0);
  // Height and width are not swapped.
  b = cutmix_box(10, 20, 0.0, 5, 10);
  EXPECT_EQ((std::vector<int64_t>{b.y1, b.y2, b.x1, b.x2}), (std::vector<int64_t>{0, 10, 0, 20}));
  EXPECT_DOUBLE_EQ(cutmix_lambda(b, 10, 20), 0.0);
  EXPECT_EQ(cutmix_box(28, 28, 1.0, 3, 3).area(), 0);
  test::expect_bad_input([] { cutmix_box(28, 28, 1.5, 3, 3); }, {"lambda", "1.5"});
}

TEST(Mixup, CutMixImagesPasteOnlyTheBoxFromThePartner) {
  const torch::Tensor x = torch::arange(2 * 1 * 4 * 4, torch::kFloat32).view({2, 1, 4, 4});
  const torch::Tensor perm = torch::tensor({1, 0}, torch::kInt64);
  const CutMixBox box{1, 3, 0, 2};
  const torch::Tensor out = cutmix_images(x, perm, box);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::equal(out.index({0, Slice(), Slice(1, 3), Slice(0, 2)}),
                           x.index({1, Slice(), Slice(1, 3), Slice(0, 2)})));
  EXPECT_TRUE(torch::equal(out.index({1, Slice(), Slice(1, 3), Slice(0, 2)}),
                           x.index({0, Slice(), Slice(1, 3), Slice(0, 2)})));
  const torch::Tensor changed = (out != x).to(torch::kInt64).sum();
  EXPECT_EQ(changed.item<int64_t>(), 2 * box.area());
}

TEST(Mixup, DrawsAreSeededFoldedAndChecked) {
  at::Generator a = make_generator(11), b = make_generator(11);
  const MixupDraw d1 = draw_mixup(a, 8, 0.2, false), d2 = draw_mixup(b, 8, 0.2, false);
  EXPECT_EQ(d1.lambda, d2.lambda);
  EXPECT_TRUE(torch::equal(d1.perm, d2.perm));
  EXPECT_TRUE(torch::equal(std::get<0>(d1.perm.sort()), torch::arange(8, torch::kInt64)));
  at::Generator g = make_generator(5);
  bool below_half = false;
  for (int i = 0; i < 50; ++i) {
    EXPECT_GE(draw_mixup(g, 4, 0.2, true).lambda, 0.5);
    below_half = below_half || draw_mixup(g, 4, 0.2, false).lambda < 0.5;
  }
  EXPECT_TRUE(below_half) << "unfolded draws fall on both sides of 0.5";
  test::expect_bad_input([&] { draw_mixup(g, 4, 0.0, false); }, {"alpha must be > 0, got 0"});
}

/// The batch a harness will draw at step 0, and the method generator it will use.
struct MixupReplay {
  Batch batch;
  at::Generator rng;
};
MixupReplay mixup_replay(const Task& task, const Model& model, uint64_t seed) {
  LoaderOptions lo;
  lo.batch_size = 8;
  lo.prefetch = false;
  BatchStream s(task.train, model->arch().input, lo, derive_seed(seed, "target"));
  return {s.next(), make_generator(derive_seed(seed, "method"))};
}

TEST(Mixup, MixupLossIsTheMixedCrossEntropyOfTheMixedBatch) {
  test::TempDir dir;
  const Task task = mixup_task(dir);
  test::MethodHarness h("mixup", task, nullptr, 3, 10, {{"alpha", "0.4"}});
  Model before = clone_model(h.model());
  auto [batch, rng] = mixup_replay(task, before, 3);
  const MixupDraw d = draw_mixup(rng, 8, 0.4, false);
  const torch::Tensor x = d.lambda * batch.x + (1 - d.lambda) * batch.x.index_select(0, d.perm);
  const torch::Tensor z = before->forward(x, "target");
  const double expected = d.lambda * cross_entropy(z, batch.y).item<double>() +
                          (1 - d.lambda) * cross_entropy(z, batch.y.index_select(0, d.perm)).item<double>();
  EXPECT_NEAR(h.step().total.item<double>(), expected, 1e-5);
}

TEST(Mixup, ManifoldMixupMixesTheChosenStage) {
  test::TempDir dir;
  const Task task = mixup_task(dir);
  test::MethodHarness h("manifold_mixup", task, nullptr, 6, 10, {{"layers", "layer2"}});
  Model before = clone_model(h.model());
  auto [batch, rng] = mixup_replay(task, before, 6);
  EXPECT_EQ(sample_index(rng, 1), 0);  // the layer draw
  const MixupDraw d = draw_mixup(rng, 8, 2.0, false);
  const Features f =
      before->backbone->forward_features(batch.x, [&](const std::string& s, const torch::Tensor& out) {
        return s == "layer2" ? d.lambda * out + (1 - d.lambda) * out.index_select(0, d.perm) : out;
      });
  const torch::Tensor z = before->head("target")->forward(f.pooled);
  const double expected = d.lambda * cross_entropy(z, batch.y).item<double>() +
                          (1 - d.lambda) * cross_entropy(z, batch.y.index_select(0, d.perm)).item<double>();
  EXPECT_NEAR(h.step().total.item<double>(), expected, 1e-5);
  test::expect_bad_input(
      [&] {
        test::MethodHarness bad("manifold_mixup", task, nullptr, 0, 5, {{"layers", "input,conv9"}});
      },
      {"--layers", "no stage 'conv9'", "valid: input, layer1"});
}

TEST(Mixup, CutMixMixesAboutHalfTheBatchesByTheBoxArea) {
  test::TempDir dir;
  const Task task = mixup_task(dir);
  test::MethodHarness h("cutmix", task, nullptr, 8, 40);
  int mixed = 0;
  for (int i = 0; i < 40; ++i) mixed += static_cast<int>(h.step().parts.at("mixed").item<double>());
  EXPECT_GT(mixed, 10);
  EXPECT_LT(mixed, 30);
  test::MethodHarness never("cutmix", task, nullptr, 8, 10, {{"prob", "0"}});
  for (int i = 0; i < 5; ++i) EXPECT_EQ(never.step().parts.at("mixed").item<double>(), 0.0);
  // A mixed step's loss: the box from the same draws, lambda corrected to its area.
  test::MethodHarness always("cutmix", task, nullptr, 9, 10, {{"prob", "1"}});
  Model before = clone_model(always.model());
  auto [batch, rng] = mixup_replay(task, before, 9);
  sample_uniform(rng);
  MixupDraw d = draw_mixup(rng, 8, 1.0, false);
  const int64_t cy = sample_index(rng, 8), cx = sample_index(rng, 8);
  const CutMixBox box = cutmix_box(8, 8, d.lambda, cy, cx);
  d.lambda = cutmix_lambda(box, 8, 8);
  const double expected =
      mixup_loss(before->forward(cutmix_images(batch.x, d.perm, box), "target"), batch.y, d).item<double>();
  EXPECT_NEAR(always.step().total.item<double>(), expected, 1e-5);
}

TEST(Mixup, AlphaMustBePositive) {
  test::TempDir dir;
  const Task task = mixup_task(dir);
  for (const char* m : {"mixup", "manifold_mixup", "cutmix"}) {
    test::expect_bad_input(
        [&] {
          test::MethodHarness h(m, task, nullptr, 0, 5, {{"alpha", "0"}});
        },
        {"--alpha must be > 0, got 0"});
    test::expect_bad_input(
        [&] {
          test::MethodHarness h(m, task, nullptr, 0, 5, {{"alpha", "-1"}});
        },
        {"--alpha", "-1"});
  }
  test::expect_bad_input(
      [&] {
        test::MethodHarness h("cutmix", task, nullptr, 0, 5, {{"prob", "1.5"}});
      },
      {"--prob", "1.5"});
}

}  // namespace
}  // namespace xfer
