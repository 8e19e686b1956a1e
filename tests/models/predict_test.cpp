// The shared batched forward pass: features and head logits of a dataset, in eval mode, in batches.
#include "xfer/models/predict.h"
#include "support.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"

namespace xfer {
namespace {

Model predict_tiny_model(const TensorDataset& data) {
  Arch a;
  a.backbone = "cnn4:width=4";
  a.in_channels = data.channels();
  a.height = data.height();
  a.width = data.width();
  a.input = {{0.2}, {0.3}};
  a.heads = {{"source", {"a", "b", "c"}}, {"target", {"x", "y"}}};
  torch::manual_seed(11);
  return Model(a);
}

TEST(Predict, FeaturesAndLogitsAreTheEvalModeForwardOfEveryExampleInAnyBatchSize) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 7, 1), 0);  // 21 images
  Model model = predict_tiny_model(task.train);
  model->train();
  {  // give batch norm running statistics that differ from one batch's
    torch::NoGradGuard no_grad;
    model->backbone->forward(torch::randn({16, 1, 8, 8}) * 3 + 1);
  }
  PredictOptions ask;
  ask.heads = {"source", "target"};
  ask.batch_size = 4;  // 21 images: five full batches and one of 1
  const Predictions p = predict(model, task.train, ask);
  EXPECT_TRUE(model->is_training()) << "the model's mode is restored";
  ASSERT_EQ(p.features.sizes(), (std::vector<int64_t>{21, 16}));
  EXPECT_EQ(p.features.scalar_type(), torch::kFloat32);
  EXPECT_EQ(p.logits.at("source").sizes(), (std::vector<int64_t>{21, 3}));
  EXPECT_EQ(p.logits.at("target").sizes(), (std::vector<int64_t>{21, 2}));

  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = InputTransform(model->arch().input).normalise(task.train.images);
  const torch::Tensor g = model->backbone->forward(x);
  EXPECT_TRUE(torch::allclose(p.features, g, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(p.logits.at("source"), model->forward(x, "source"), 1e-5, 1e-6));
  model->train();

  ask.batch_size = 500;
  const Predictions whole = predict(model, task.train, ask);
  EXPECT_TRUE(torch::allclose(whole.features, p.features, 1e-5, 1e-6));
  // Ordinary tensors, not inference tensors: callers may change them in place.
  EXPECT_NO_THROW(whole.features.mul_(2));
}

TEST(Predict, StreamedBatchesCoverTheRangeAndTheModesRestoredWhenTheCallerThrows) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 7, 1), 0);  // 21 images
  Model model = predict_tiny_model(task.train);
  model->train();
  const Predictions whole = predict(model, task.train, {true, {"target"}, 500});
  PredictOptions range{false, {"target"}, 4, 5, 16};  // examples 5..15: batches of 4, 4 and 3
  std::vector<std::pair<int64_t, int64_t>> batches;
  predict_each(model, task.train, range, [&](int64_t start, int64_t end, const Predictions& batch) {
    batches.emplace_back(start, end);
    EXPECT_FALSE(batch.features.defined()) << "features were not asked for";
    EXPECT_TRUE(torch::allclose(batch.logits.at("target"), whole.logits.at("target").slice(0, start, end),
                                1e-5, 1e-6));
  });
  EXPECT_EQ(batches, (std::vector<std::pair<int64_t, int64_t>>{{5, 9}, {9, 13}, {13, 16}}));
  EXPECT_TRUE(model->is_training());
  EXPECT_THROW(predict_each(model, task.train, range,
                            [](int64_t, int64_t, const Predictions&) { throw BadInput("stop"); }),
               BadInput);
  EXPECT_TRUE(model->is_training()) << "the mode is restored when the caller's function throws";
  test::expect_bad_input(
      [&] {
        predict(model, task.train, {true, {}, 4, 3, 22});
      },
      {"examples [3, 22) are not in a dataset of 21"});
}

TEST(Predict, RefusesMissingHeadsWrongShapesAndEmptyData) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 2, 3, 1), 0);
  Model model = predict_tiny_model(task.train);
  PredictOptions ask;
  ask.heads = {"aux"};
  test::expect_bad_input([&] { predict(model, task.train, ask); }, {"no 'aux' head", "source, target"});
  TensorDataset wrong = task.train;
  wrong.images = torch::zeros({6, 3, 8, 8}, torch::kUInt8);
  test::expect_bad_input([&] { predict(model, wrong, {}); }, {"3x8x8", "takes 1x8x8"});
  test::expect_bad_input([&] { predict(model, task.train.subset(torch::zeros({0}, torch::kInt64)), {}); },
                         {"empty dataset"});
  ask.heads = {};
  ask.features = false;
  test::expect_bad_input([&] { predict(model, task.train, ask); }, {"at least one head"});
}

}  // namespace
}  // namespace xfer
