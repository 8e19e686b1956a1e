// The confusion matrix on a hand-made case: orientation (row = true class), per-class accuracy, its mean
// over the classes present, and the Trainer's evaluation against predictions taken by hand.
#include <cmath>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/metrics/accuracy.h"
#include "xfer/train/trainer.h"

namespace xfer {
namespace {

TEST(Accuracy, ConfusionMatrixOnAHandMadeCase) {
  // true:      0 0 0 0 | 1 1 1 2 2      class 3 has no example
  // predicted: 0 0 0 1 | 1 2 2 2 0
  ConfusionMatrix m(4);
  m.add(torch::tensor({0, 0, 0, 1}), torch::tensor({0, 0, 0, 0}));
  m.add(torch::tensor({1, 2, 2, 2, 0}), torch::tensor({1, 1, 1, 2, 2}));
  const Evaluation e = m.evaluation();
  EXPECT_EQ(e.count, 9);
  const std::vector<std::vector<int64_t>> want = {{3, 1, 0, 0}, {0, 1, 2, 0}, {1, 0, 1, 0}, {0, 0, 0, 0}};
  EXPECT_EQ(e.confusion, want)
      << "confusion[true][predicted]: two of class 1 were called 2, none of 2 called 1";
  EXPECT_DOUBLE_EQ(e.top1, 5.0 / 9.0);
  ASSERT_EQ(e.per_class.size(), 4u);
  EXPECT_DOUBLE_EQ(e.per_class[0], 0.75);
  EXPECT_DOUBLE_EQ(e.per_class[1], 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(e.per_class[2], 0.5);
  EXPECT_TRUE(std::isnan(e.per_class[3]));
  EXPECT_DOUBLE_EQ(e.mean_class, (0.75 + 1.0 / 3.0 + 0.5) / 3.0) << "the mean over the three classes present";
  const nlohmann::json j = e.to_json();
  EXPECT_TRUE(j["per_class"][3].is_null());
  EXPECT_EQ(j["confusion"][1][2], 2);
  EXPECT_EQ(j["confusion"][2][1], 0);
}

TEST(Accuracy, LogitsGiveTheMeanCrossEntropyAndTopFive) {
  // Six classes. Row 0: logits 0..5, label 0: argmax 5, and 0 is the lowest logit: outside the top five.
  // Row 1: logits 5..0, label 4: argmax 0, but 4 is the fifth highest: a top-5 hit.
  ConfusionMatrix m(6);
  m.add_logits(torch::tensor({{0., 1., 2., 3., 4., 5.}, {5., 4., 3., 2., 1., 0.}}), torch::tensor({0, 4}));
  const Evaluation e = m.evaluation();
  double lse = 0;
  for (int k = 0; k <= 5; ++k) lse += std::exp(static_cast<double>(k));
  lse = std::log(lse);
  EXPECT_DOUBLE_EQ(e.top1, 0.0);
  EXPECT_DOUBLE_EQ(e.top5, 0.5);
  EXPECT_NEAR(e.loss, ((lse - 0.0) + (lse - 1.0)) / 2.0, 1e-6)
      << "cross-entropy of row 0 at label 0, row 1 at 4";
  EXPECT_EQ(e.confusion[0][5], 1);
  EXPECT_EQ(e.confusion[4][0], 1);
  EXPECT_DOUBLE_EQ(e.to_json()["top5"].get<double>(), 0.5);

  // Five classes or fewer: top-5 is always 1 and is not reported; predictions alone give no loss.
  ConfusionMatrix few(3);
  few.add_logits(torch::tensor({{2., 0., 0.}}), torch::tensor({0}));
  EXPECT_TRUE(std::isnan(few.evaluation().top5));
  EXPECT_FALSE(few.evaluation().to_json().contains("top5"));
  EXPECT_NEAR(few.evaluation().loss, std::log(std::exp(2.0) + 2.0) - 2.0, 1e-6);
  ConfusionMatrix counted(3);
  counted.add(torch::tensor({0}), torch::tensor({0}));
  EXPECT_TRUE(std::isnan(counted.evaluation().loss));
  EXPECT_FALSE(counted.evaluation().to_json().contains("loss"));
}

TEST(Accuracy, EvaluateCountsTheModelsArgmaxAgainstTheLabels) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 4, 7), 0);
  Arch arch{
      "cnn4:width=4", 1, 8, 8, compute_normalization(task.train.images), {{"target", task.class_names()}}};
  torch::manual_seed(4);
  Model model(arch);
  model->eval();
  const Evaluation e = evaluate(model, task.test, "target", 5);
  // By hand: normalise, forward, argmax, count.
  torch::NoGradGuard no_grad;
  const torch::Tensor x =
      (task.test.images.to(torch::kFloat32) / 255.0 - arch.input.mean[0]) / arch.input.std[0];
  const torch::Tensor pred = model->forward(x, "target").argmax(1);
  std::vector<std::vector<int64_t>> want(3, std::vector<int64_t>(3, 0));
  for (int64_t i = 0; i < pred.size(0); ++i)
    ++want[static_cast<size_t>(task.test.labels[i].item<int64_t>())]
          [static_cast<size_t>(pred[i].item<int64_t>())];
  EXPECT_EQ(e.confusion, want);
  int64_t correct = 0;
  for (int c = 0; c < 3; ++c) correct += want[c][c];
  EXPECT_DOUBLE_EQ(e.top1, static_cast<double>(correct) / 21.0);
  const double ce =
      torch::nn::functional::cross_entropy(model->forward(x, "target").to(torch::kFloat64), task.test.labels)
          .item<double>();
  EXPECT_NEAR(e.loss, ce, 1e-5) << "the mean cross-entropy over the test set";
  EXPECT_FALSE(model->is_training());
}

}  // namespace
}  // namespace xfer
