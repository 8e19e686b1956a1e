// The analyses: interpolation loss (SMILE Eq. 7), parameter distance (SMILE Table 7), feature spectrum
// (XMixup Fig. 2), forgetting probe (XMixup Table 2).
#include <cmath>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/metrics/analysis.h"

namespace xfer {
namespace {

TEST(Analysis, InterpolationLossIsZeroForAnAffineFunctionAndPositiveForAReluNetwork) {
  torch::manual_seed(0);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x = torch::randn({30, 1, 4, 4}, f64);
  const torch::Tensor w1 = torch::randn({16, 8}, f64), b1 = torch::randn({8}, f64),
                      w2 = torch::randn({8, 5}, f64);
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
      [&](const torch::Tensor& in) {
        return std::vector<torch::Tensor>{torch::relu(in.flatten(1).mm(w1) + b1)};
      },
      x, o);
  EXPECT_EQ(again[0].mean, relu[0].mean);
  o.seed = 1;
  const auto other = interpolation_loss(
      [&](const torch::Tensor& in) {
        return std::vector<torch::Tensor>{torch::relu(in.flatten(1).mm(w1) + b1)};
      },
      x, o);
  EXPECT_NE(other[0].mean, relu[0].mean);
  o.alpha = 0;
  test::expect_bad_input(
      [&] {
        interpolation_loss([](const torch::Tensor& in) { return std::vector<torch::Tensor>{in}; }, x, o);
      },
      {"alpha must be > 0, got 0"});
  o.alpha = 0.2;
  test::expect_bad_input(
      [&] {
        interpolation_loss([](const torch::Tensor& in) { return std::vector<torch::Tensor>{in}; },
                           x.slice(0, 0, 1), o);
      },
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

TEST(Analysis, InterpolationLossOfKnownOutputsIsTheirDistance) {
  // Two examples x = 0 and x' = 1 (so Mix_d is d, or 1 - d) through f(t) = (3 t^2, -1): the pair's distance
  // |f(Mix_{lambda d1 + (1 - lambda) d2}) - (lambda f(Mix_d1) + (1 - lambda) f(Mix_d2))| is
  // 3 lambda (1 - lambda) (d1 - d2)^2 either way round. The draws are replayed from the seed.
  const torch::Tensor x = torch::tensor({0.0, 1.0}, torch::kFloat64).view({2, 1});
  InterpolationOptions o;
  o.pairs = 64;
  o.batch = 20;
  o.alpha = 0.7;
  o.seed = 4;
  const auto il = interpolation_loss(
      [](const torch::Tensor& t) {
        return std::vector<torch::Tensor>{torch::cat({3 * t.pow(2), -torch::ones_like(t)}, 1)};
      },
      x, o);
  at::Generator gen = make_generator(derive_seed(4, "interpolation"));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  torch::randint(2, {64}, gen, torch::kInt64);  // first of each pair
  torch::randint(1, {64}, gen, torch::kInt64);  // the other one
  const torch::Tensor d1 = torch::rand({64}, gen, f64), d2 = torch::rand({64}, gen, f64);
  const torch::Tensor lam = sample_beta(gen, 0.7, 0.7, 64);
  const torch::Tensor expected = 3 * lam * (1 - lam) * (d1 - d2).pow(2);
  EXPECT_NEAR(il[0].mean, expected.mean().item<double>(), 1e-12);
  EXPECT_NEAR(il[0].std, expected.std().item<double>(), 1e-12);
}

TEST(Analysis, LabelIlIsMeasuredOnLogitsUnlessAskedForSoftmax) {
  torch::manual_seed(1);
  Model m = analysis_test_model("cnn4:width=4");
  {
    torch::NoGradGuard no_grad;
    m->head("target")->weight.mul_(1000);  // logits far apart, as a trained head's
  }
  const torch::Tensor x = torch::randn({12, 1, 28, 28});
  InterpolationOptions o;
  o.pairs = 50;
  const ModelInterpolation logits = model_interpolation_loss(m, x, "target", o);
  const ModelInterpolation softmax = model_interpolation_loss(m, x, "target", o, LabelOutput::softmax);
  // Logits: the distance the head's raw outputs give, which may exceed sqrt(2) (SMILE Table 6
  // reports 1.65-2.00).
  m->eval();
  const auto direct = interpolation_loss(
      [&](const torch::Tensor& in) {
        torch::NoGradGuard no_grad;
        return std::vector<torch::Tensor>{m->forward(in, "target")};
      },
      x, o);
  m->train();
  EXPECT_NEAR(logits.label.mean, direct[0].mean, 1e-6 * direct[0].mean);
  EXPECT_GT(logits.label.mean, std::sqrt(2.0));
  EXPECT_GT(softmax.label.mean, 0);
  EXPECT_LT(softmax.label.mean, std::sqrt(2.0)) << "softmax outputs are at most sqrt(2) apart";
  EXPECT_EQ(logits.feature.mean, softmax.feature.mean) << "Feature-IL does not depend on it";
  EXPECT_TRUE(m->is_training()) << "the model's mode is restored";
}

TEST(Analysis, ForgettingProbeScoresTheAuxiliaryClassesTheOthersAndAll) {
  // Three source classes at (4, 0), (0, 4), (-4, -4); class 0 is the auxiliary set's. In the test split one
  // example of class 1 sits where class 0 does, so the head gets it wrong: Auxiliary 2/2, ABA 3/4, All 5/6.
  torch::manual_seed(3);
  const torch::Tensor centres = torch::tensor({4.0, 0.0, 0.0, 4.0, -4.0, -4.0}).view({3, 2});
  const torch::Tensor train_y = torch::arange(30, torch::kInt64) % 3;
  const torch::Tensor train_x = centres.index_select(0, train_y) + 0.3 * torch::randn({30, 2});
  const torch::Tensor test_y = torch::tensor({0, 0, 1, 1, 2, 2}, torch::kInt64);
  torch::Tensor test_x = centres.index_select(0, test_y).clone();
  test_x[3] = centres[0];
  for (uint64_t seed : {0, 1}) {
    const SubsetAccuracy a = forgetting_probe(train_x, train_y, test_x, test_y, 3, {0}, 50, 1e-4, seed);
    EXPECT_EQ(a.auxiliary_n, 2);
    EXPECT_EQ(a.aba_n, 4);
    EXPECT_EQ(a.all_n, 6);
    EXPECT_DOUBLE_EQ(a.auxiliary, 1.0);
    EXPECT_DOUBLE_EQ(a.aba, 0.75);
    EXPECT_DOUBLE_EQ(a.all, 5.0 / 6.0);
  }
  // Every class auxiliary: ABA is empty.
  const SubsetAccuracy all = forgetting_probe(train_x, train_y, test_x, test_y, 3, {0, 1, 2}, 50, 1e-4, 0);
  EXPECT_EQ(all.aba_n, 0);
  EXPECT_DOUBLE_EQ(all.auxiliary, all.all);
  test::expect_bad_input([&] { forgetting_probe(train_x, train_y, test_x, test_y, 3, {3}, 50, 1e-4, 0); },
                         {"auxiliary class 3 is outside"});
}

TEST(Analysis, LinearProbeStartsFromZeroOrASeededRandomHead) {
  torch::manual_seed(4);
  const torch::Tensor x = torch::randn({40, 3});
  const torch::Tensor y = (x.select(1, 0) > 0).to(torch::kInt64);
  const auto a = fit_linear_probe(x, y, 2, 1, 0.0, 5), b = fit_linear_probe(x, y, 2, 1, 0.0, 5);
  EXPECT_TRUE(torch::equal(a->weight, b->weight)) << "seeded";
  auto c = fit_linear_probe(x, y, 2, 100, 1e-3);
  EXPECT_GT((c->forward(x).argmax(1) == y).to(torch::kFloat64).mean().item<double>(), 0.95);
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

TEST(Analysis, InterpolationLossMatchesTheGoldenValuesOfSmilesEq7) {
  // tests/golden/make_semi_interpolation_golden.py: Eq. 7 written in python3-torch with the same pairs,
  // deltas and Beta draws; a nonlinear output (tanh squared) and an affine one (0 up to rounding).
  const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/semi_interpolation.json")["interpolation"];
  const torch::Tensor w1 = test::json_tensor(g["w1"]), w2 = test::json_tensor(g["w2"]),
                      b2 = test::json_tensor(g["b2"]);
  const BatchFunction f = [&](const torch::Tensor& z) {
    return std::vector<torch::Tensor>{torch::tanh(z.matmul(w1)).pow(2), z.matmul(w2) + b2};
  };
  InterpolationOptions o;
  o.pairs = g["pairs"].get<int64_t>();
  o.alpha = g["alpha"].get<double>();
  o.seed = g["seed"].get<uint64_t>();
  o.batch = 16;  // several batches: the draws are made once for all pairs
  const std::vector<MeanStd> got = interpolation_loss(f, test::json_tensor(g["inputs"]), o);
  ASSERT_EQ(got.size(), 2u);
  const auto& want = g["losses"];
  EXPECT_NEAR(got[0].mean, want[0]["mean"].get<double>(), 1e-10 * want[0]["mean"].get<double>());
  EXPECT_NEAR(got[0].std, want[0]["std"].get<double>(), 1e-10 * want[0]["std"].get<double>());
  EXPECT_GT(got[0].mean, 1e-3);
  EXPECT_LT(got[1].mean, 1e-12);
  EXPECT_NEAR(got[1].mean, want[1]["mean"].get<double>(), 1e-12);
}

}  // namespace
}  // namespace xfer
