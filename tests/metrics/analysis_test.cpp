// The analyses: interpolation loss (SMILE Eq. 7), parameter distance (SMILE Table 7), feature spectrum
// (XMixup Fig. 2).
#include <cmath>

#include "support.h"
#include "xfer/metrics/analysis.h"

namespace xfer {
namespace {

TEST(Analysis, InterpolationLossIsZeroForAnAffineFunctionAndPositiveForAReluNetwork) {
  torch::manual_seed(0);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x = torch::randn({30, 1, 4, 4}, f64);
  const torch::Tensor w1 = torch::randn({16, 8}, f64), b1 = torch::randn({8}, f64), w2 = torch::randn({8, 5}, f64);
  InterpolationOptions o;
  o.pairs = 200;
  o.batch = 64;  // several batches
  const auto affine = interpolation_loss(
      [&](const torch::Tensor& in) { return std::vector<torch::Tensor>{in.flatten(1).mm(w1) + b1}; }, x, o);
  ASSERT_EQ(affine.size(), 1u);
  EXPECT_EQ(affine[0].n, 200u);
  EXPECT_LT(affine[0].mean, 1e-12);
  const auto relu = interpolation_loss(
      [&](const torch::Tensor& in) {
        const torch::Tensor h = torch::relu(in.flatten(1).mm(w1) + b1);
        return std::vector<torch::Tensor>{h, h.mm(w2)};
      },
      x, o);
  ASSERT_EQ(relu.size(), 2u);
  EXPECT_GT(relu[0].mean, 0.1);
  EXPECT_GT(relu[0].std, 0);
  EXPECT_GT(relu[1].mean, 0.1);
  // Seeded: the same seed gives the same numbers, another seed other pairs.
  const auto again = interpolation_loss(
      [&](const torch::Tensor& in) { return std::vector<torch::Tensor>{torch::relu(in.flatten(1).mm(w1) + b1)}; }, x,
      o);
  EXPECT_EQ(again[0].mean, relu[0].mean);
  o.seed = 1;
  const auto other = interpolation_loss(
      [&](const torch::Tensor& in) { return std::vector<torch::Tensor>{torch::relu(in.flatten(1).mm(w1) + b1)}; }, x,
      o);
  EXPECT_NE(other[0].mean, relu[0].mean);
  o.alpha = 0;
  test::expect_bad_input([&] { interpolation_loss([](const torch::Tensor& in) { return std::vector<torch::Tensor>{in}; }, x, o); },
                         {"alpha must be > 0, got 0"});
  o.alpha = 0.2;
  test::expect_bad_input(
      [&] { interpolation_loss([](const torch::Tensor& in) { return std::vector<torch::Tensor>{in}; }, x.slice(0, 0, 1), o); },
      {"at least 2 examples"});
}

Model analysis_test_model(const std::string& backbone) {
  Arch a;
  a.backbone = backbone;
  a.in_channels = 1;
  a.height = a.width = 28;
  a.input = {{0.3}, {0.3}};
  a.heads = {{"target", {"a", "b", "c"}}};
  return Model(a);
}

TEST(Analysis, ModelInterpolationLossIsSmallForALinearHeadOnTopOfFeatures) {
  torch::manual_seed(1);
  Model m = analysis_test_model("cnn4:width=4");
  const torch::Tensor x = torch::randn({12, 1, 28, 28});
  InterpolationOptions o;
  o.pairs = 50;
  const ModelInterpolation il = model_interpolation_loss(m, x, "target", o);
  EXPECT_GT(il.feature.mean, 0);
  EXPECT_GT(il.label.mean, 0);
  EXPECT_LT(il.label.mean, std::sqrt(2.0)) << "softmax outputs are at most sqrt(2) apart";
  EXPECT_TRUE(m->is_training()) << "the model's mode is restored";
}

TEST(Analysis, ParameterDistanceIsZeroAtInitAndSumsTheBackbonesTensorNorms) {
  torch::manual_seed(2);
  const Model pretrained = analysis_test_model("cnn4:width=4");
  Model model = clone_model(pretrained);
  EXPECT_EQ(parameter_distance(model, pretrained), 0.0);
  torch::Tensor w = model->backbone->parameters()[0];
  {
    torch::NoGradGuard no_grad;
    w.add_(0.5);
    for (auto& p : model->head_parameters()) p.add_(10.0);  // heads are excluded
    for (auto& b : model->buffers()) b.add_(1);             // and so are BN statistics
  }
  EXPECT_NEAR(parameter_distance(model, pretrained), 0.5 * std::sqrt(double(w.numel())), 1e-4);
  test::expect_bad_input([&] { parameter_distance(model, analysis_test_model("cnn4:width=8")); },
                         {"backbones differ", "cnn4:width=4", "cnn4:width=8"});
}

TEST(Analysis, FeatureSpectrumIsTheSmallestRelativeSingularValuesAscending) {
  // A (5, 3) matrix with singular values 4, 2, 1, rotated so they are not on the diagonal.
  torch::Tensor m = torch::zeros({5, 3}, torch::kFloat64);
  m[0][0] = 4;
  m[1][1] = 2;
  m[2][2] = 1;
  const torch::Tensor q = std::get<0>(torch::linalg_qr(torch::randn({5, 5}, torch::kFloat64)));
  m = q.mm(m);
  const std::vector<double> two = feature_spectrum(m, 2);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NEAR(two[0], 0.25, 1e-12);
  EXPECT_NEAR(two[1], 0.5, 1e-12);
  const std::vector<double> all = feature_spectrum(m.to(torch::kFloat32), 10);  // capped at min(N, D)
  ASSERT_EQ(all.size(), 3u);
  EXPECT_NEAR(all[2], 1.0, 1e-6);
  test::expect_bad_input([&] { feature_spectrum(m, 0); }, {"k >= 1, got 0"});
  test::expect_bad_input([&] { feature_spectrum(torch::zeros({4, 2}), 1); }, {"all zeros"});
}

}  // namespace
}  // namespace xfer
