// VAT and MixMatch, the unlabelled terms GradMix adds (methods/semi.h).
#include "xfer/methods/semi.h"
#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"

namespace xfer {
namespace {

TEST(Semi, SharpeningFollowsTheFormula) {
  const torch::Tensor p = torch::tensor({0.6, 0.4, 0.2, 0.8}, torch::kFloat64).view({2, 2});
  const torch::Tensor s = sharpen(p, 0.5);
  EXPECT_NEAR(s[0][0].item<double>(), 0.36 / 0.52, 1e-12);
  EXPECT_NEAR(s[0][1].item<double>(), 0.16 / 0.52, 1e-12);
  EXPECT_NEAR(s[1][1].item<double>(), 0.64 / 0.68, 1e-12);
  EXPECT_TRUE(torch::allclose(sharpen(p, 1.0), p));
  test::expect_bad_input([&] { sharpen(p, 0.0); }, {"temperature", "0"});
}

TEST(Semi, VatPerturbationHasNormEpsilonAndLiesInTheModelsInputSubspace) {
  torch::manual_seed(0);
  torch::nn::Linear lin(64, 3);
  lin->to(torch::kFloat64);
  const LogitsFn f = [&](const torch::Tensor& x) { return lin->forward(x.flatten(1)); };
  at::Generator data_gen = make_generator(1);
  const torch::Tensor x = torch::randn({5, 1, 8, 8}, data_gen, torch::kFloat64);
  const torch::Tensor p = torch::softmax(f(x), 1).detach();
  at::Generator gen = make_generator(2);
  const torch::Tensor r = vat_perturbation(f, x, p, 2.5, 1e-6, gen);
  ASSERT_EQ(r.sizes(), x.sizes());
  const torch::Tensor norms = r.flatten(1).norm(2, 1);
  EXPECT_TRUE(torch::allclose(norms, torch::full({5}, 2.5, torch::kFloat64), 1e-9, 0));
  // For a linear model the KL's curvature lives in the row space of W: r must lie there, where a
  // random direction of 64 dimensions would not.
  const torch::Tensor w = lin->weight.detach();                            // (3, 64)
  const torch::Tensor proj = w.t().mm(torch::inverse(w.mm(w.t()))).mm(w);  // projector onto W's row space
  const torch::Tensor rf = r.flatten(1);
  EXPECT_TRUE(torch::allclose(rf.mm(proj.t()), rf, 1e-6, 1e-6));
  // Seeded: the same generator state gives the same perturbation.
  at::Generator again = make_generator(2);
  EXPECT_TRUE(torch::equal(r, vat_perturbation(f, x, p, 2.5, 1e-6, again)));
  // The loss is a KL divergence: non-negative, and it has gradients.
  at::Generator g3 = make_generator(3);
  const torch::Tensor loss = vat_loss(f, x, 2.5, 1e-6, g3);
  EXPECT_GT(loss.item<double>(), 0.0);
  loss.backward();
  EXPECT_GT(lin->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(Semi, KlDivergenceMatchesItsDefinition) {
  const torch::Tensor p = torch::tensor({0.5, 0.5, 0.0, 1.0}, torch::kFloat64).view({2, 2});
  const torch::Tensor logits = torch::tensor({0.0, std::log(3.0), 0.0, 0.0}, torch::kFloat64).view({2, 2});
  // Row 0: q = (0.25, 0.75): 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75); row 1: q = (0.5, 0.5): log 2.
  const double expected = (0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0) + std::log(2.0)) / 2;
  EXPECT_NEAR(kl_divergence(p, logits).item<double>(), expected, 1e-12);
}

TEST(Semi, MixMatchIsSeededAndVanishesWhenPredictionsAreConsistent) {
  // A network that always predicts class 0 with certainty, on labelled data of class 0: the guesses,
  // the mixed targets and the predictions agree, so both terms are ~0.
  const LogitsFn sure = [](const torch::Tensor& x) {
    return torch::tensor({50.0, 0.0, 0.0}, torch::kFloat64).expand({x.size(0), 3}) +
           0 * x.flatten(1).sum(1, true);
  };
  at::Generator data_gen = make_generator(4);
  const torch::Tensor x = torch::randn({4, 1, 8, 8}, data_gen, torch::kFloat64);
  const torch::Tensor y = torch::zeros({4}, torch::kInt64);
  const std::vector<torch::Tensor> u = {torch::randn({6, 1, 8, 8}, data_gen, torch::kFloat64),
                                        torch::randn({6, 1, 8, 8}, data_gen, torch::kFloat64)};
  at::Generator gen = make_generator(5);
  const MixMatchLoss consistent = mixmatch_loss(sure, x, y, 3, u, 0.5, 0.75, gen);
  EXPECT_NEAR(consistent.labelled.item<double>(), 0.0, 1e-9);
  EXPECT_NEAR(consistent.unlabelled.item<double>(), 0.0, 1e-9);

  torch::manual_seed(0);
  torch::nn::Linear lin(64, 3);
  lin->to(torch::kFloat64);
  const LogitsFn f = [&](const torch::Tensor& xx) { return lin->forward(xx.flatten(1)); };
  const torch::Tensor y2 = torch::tensor({0, 1, 2, 1}, torch::kInt64);
  at::Generator a = make_generator(6), b = make_generator(6);
  const MixMatchLoss first = mixmatch_loss(f, x, y2, 3, u, 0.5, 0.75, a);
  const MixMatchLoss second = mixmatch_loss(f, x, y2, 3, u, 0.5, 0.75, b);
  EXPECT_EQ(first.labelled.item<double>(), second.labelled.item<double>());
  EXPECT_EQ(first.unlabelled.item<double>(), second.unlabelled.item<double>());
  EXPECT_GT(first.labelled.item<double>(), 0.0);
  EXPECT_GE(first.unlabelled.item<double>(), 0.0);
  EXPECT_LE(first.unlabelled.item<double>(), 1.0);  // a mean of squared differences of probabilities
}

TEST(Semi, MixMatchMatchesTheGoldenValuesOfItsPaper) {
  // tests/golden/make_semi_interpolation_golden.py: Algorithm 1 of Berthelot et al. written in python3-torch,
  // with the same permutation and Beta draws from the same seed; a linear model, K = 2 augmentations.
  const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/semi_interpolation.json")["mixmatch"];
  const torch::Tensor w = test::json_tensor(g["weight"]);
  const LogitsFn f = [&](const torch::Tensor& x) { return x.flatten(1).matmul(w); };
  const torch::Tensor x = test::json_tensor(g["x"]);
  const torch::Tensor y = test::json_tensor(g["y"]).to(torch::kInt64);
  std::vector<torch::Tensor> u;
  for (const auto& a : g["u"]) u.push_back(test::json_tensor(a));
  at::Generator gen = make_generator(g["seed"].get<uint64_t>());
  const MixMatchLoss l = mixmatch_loss(f, x, y, g["classes"].get<int64_t>(), u,
                                       g["temperature"].get<double>(), g["alpha"].get<double>(), gen);
  EXPECT_NEAR(l.labelled.item<double>(), g["labelled"].get<double>(), 1e-9 * g["labelled"].get<double>());
  EXPECT_NEAR(l.unlabelled.item<double>(), g["unlabelled"].get<double>(),
              1e-9 * g["unlabelled"].get<double>());
  // The guessed labels alone: the sharpened mean of the two augmentations' softmax.
  const torch::Tensor guess = sharpen((torch::softmax(f(u[0]), 1) + torch::softmax(f(u[1]), 1)) / 2, 0.5);
  EXPECT_TRUE(torch::allclose(guess, test::json_tensor(g["guess"]), 1e-12, 0));
}

}  // namespace
}  // namespace xfer
