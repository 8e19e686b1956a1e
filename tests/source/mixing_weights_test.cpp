// GradMix's per-layer weight solver (Eq. 6, 7), the adaptive learning rate (Eq. 9) and learning to
// reweight, on hand-made gradients.
#include <cmath>

#include "support.h"
#include "xfer/core/rng.h"
#include "xfer/source/mixing_weights.h"

namespace xfer {
namespace {

/// A layer from explicit gradient rows: sources first, g_V last.
LayerGeometry mixing_test_layer(const std::vector<std::vector<double>>& rows) {
  std::vector<torch::Tensor> t;
  for (const auto& r : rows) t.push_back(torch::tensor(r, torch::kFloat64));
  return LayerGeometry::from_rows(torch::stack(t));
}

/// The best cosine over a grid on the simplex (k = 2 or 3), and where it is.
std::pair<double, std::vector<double>> mixing_brute_force(const LayerGeometry& l, int steps) {
  double best = -2;
  std::vector<double> arg;
  for (int a = 0; a <= steps; ++a)
    for (int b = 0; b <= (l.k == 3 ? steps - a : 0); ++b) {
      std::vector<double> w =
          l.k == 2 ? std::vector<double>{double(a) / steps, 1.0 - double(a) / steps}
                   : std::vector<double>{double(a) / steps, double(b) / steps, double(steps - a - b) / steps};
      const double c = l.cossim(w);
      if (c > best) best = c, arg = w;
    }
  return {best, arg};
}

TEST(MixingWeights, AlignedSourceTakesAllTheWeight) {
  // g1 = gV, g2 orthogonal to gV: the optimum is w = (1, 0), cosine 1.
  const auto l = mixing_test_layer({{1, 2, 0}, {0, 0, 3}, {1, 2, 0}});
  const MixingSolution s = solve_mixing_weights(l, {0.5, 0.5});
  ASSERT_TRUE(s.ok) << s.why;
  EXPECT_NEAR(s.weights[0], 1.0, 1e-6);
  EXPECT_NEAR(s.weights[1], 0.0, 1e-6);
  EXPECT_NEAR(s.cossim, 1.0, 1e-9);
}

TEST(MixingWeights, OpposedSourceGetsZero) {
  // g2 = -gV: any weight on it lowers the cosine, so it gets 0; g1 is partly aligned.
  const auto l = mixing_test_layer({{1, 1, 0}, {-1, 0, 0}, {1, 0, 0}});
  const MixingSolution s = solve_mixing_weights(l, {0.5, 0.5});
  ASSERT_TRUE(s.ok) << s.why;
  EXPECT_NEAR(s.weights[1], 0.0, 1e-6);
  EXPECT_NEAR(s.weights[0], 1.0, 1e-6);
  EXPECT_NEAR(s.cossim, 1 / std::sqrt(2.0), 1e-9);
}

TEST(MixingWeights, InteriorOptimumIsFound) {
  // g1 = e1, g2 = e2, gV = e1 + 2 e2: the best mix is w ∝ (1, 2), which reproduces gV exactly.
  const auto l = mixing_test_layer({{1, 0}, {0, 1}, {1, 2}});
  const MixingSolution s = solve_mixing_weights(l, {0.5, 0.5});
  ASSERT_TRUE(s.ok) << s.why;
  EXPECT_NEAR(s.weights[0], 1.0 / 3, 1e-5);
  EXPECT_NEAR(s.weights[1], 2.0 / 3, 1e-5);
  EXPECT_NEAR(s.cossim, 1.0, 1e-9);
}

TEST(MixingWeights, MatchesBruteForceGridIn2And3Dimensions) {
  at::Generator gen = make_generator(7);
  for (int64_t k : {2, 3}) {
    for (int trial = 0; trial < 20; ++trial) {
      const torch::Tensor rows = torch::randn({k + 1, 6}, gen, torch::kFloat64);
      const LayerGeometry l = LayerGeometry::from_rows(rows);
      const MixingSolution s = solve_mixing_weights(l, std::vector<double>(k, 1.0 / k));
      const auto [best, arg] = mixing_brute_force(l, k == 2 ? 20000 : 600);
      if (!s.ok) {
        // A solve may only fail where the start is already optimal to rounding; otherwise it must succeed.
        ADD_FAILURE() << "k " << k << " trial " << trial << ": " << s.why;
        continue;
      }
      double sum = 0;
      for (double w : s.weights) {
        EXPECT_GE(w, 0.0);
        sum += w;
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
      // SLSQP is at least as good as the grid, up to the grid's resolution.
      EXPECT_GE(s.cossim, best - 1e-4) << "k " << k << " trial " << trial;
      EXPECT_NEAR(s.cossim, l.cossim(s.weights), 1e-12);
      // Where the grid's optimum is clearly better than uniform, the weights agree with it.
      for (int64_t i = 0; i < k; ++i)
        EXPECT_NEAR(s.weights[i], arg[i], k == 2 ? 2e-3 : 2e-2) << "k " << k << " trial " << trial;
    }
  }
}

TEST(MixingWeights, AnalyticGradientMatchesFiniteDifferences) {
  at::Generator gen = make_generator(3);
  const LayerGeometry l = LayerGeometry::from_rows(torch::randn({4, 5}, gen, torch::kFloat64));
  const std::vector<double> w = {0.2, 0.5, 0.3};
  const std::vector<double> g = l.cossim_gradient(w);
  for (int i = 0; i < 3; ++i) {
    std::vector<double> hi = w, lo = w;
    hi[i] += 1e-6;
    lo[i] -= 1e-6;
    EXPECT_NEAR(g[i], (l.cossim(hi) - l.cossim(lo)) / 2e-6, 1e-6);
  }
}

TEST(MixingWeights, DegenerateLayersKeepThePreviousWeights) {
  const std::vector<double> previous = {0.25, 0.75};
  const MixingSolution zero_target =
      solve_mixing_weights(mixing_test_layer({{1, 0}, {0, 1}, {0, 0}}), previous);
  EXPECT_FALSE(zero_target.ok);
  EXPECT_EQ(zero_target.weights, previous);
  EXPECT_NE(zero_target.why.find("target gradient is zero"), std::string::npos);
  const MixingSolution zero_sources =
      solve_mixing_weights(mixing_test_layer({{0, 0}, {0, 0}, {1, 0}}), previous);
  EXPECT_FALSE(zero_sources.ok);
  EXPECT_EQ(zero_sources.weights, previous);
  // Every source opposed to gV: SLSQP cannot do better than a cosine of -1, but it still returns weights
  // summing to 1 without throwing.
  const MixingSolution opposed =
      solve_mixing_weights(mixing_test_layer({{-1, 0}, {-2, 0}, {1, 0}}), previous);
  double sum = 0;
  for (double w : opposed.weights) sum += w;
  EXPECT_NEAR(sum, 1.0, 1e-12);
}

TEST(MixingWeights, OneSourceHasWeightOne) {
  const MixingSolution s = solve_mixing_weights(mixing_test_layer({{1, 1}, {1, 0}}), {1.0});
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.weights, std::vector<double>{1.0});
  EXPECT_NEAR(s.cossim, 1 / std::sqrt(2.0), 1e-12);
}

TEST(MixingWeights, Normalisation) {
  const auto w = normalise_weights({1.0, 3.0, 0.0});
  EXPECT_DOUBLE_EQ(w[0], 0.25);
  EXPECT_DOUBLE_EQ(w[1], 0.75);
  EXPECT_DOUBLE_EQ(w[2], 0.0);
  test::expect_bad_input([] { normalise_weights({0.0, 0.0}); }, {"sum to 0"});
  test::expect_bad_input([] { normalise_weights({1.0, -0.5}); }, {"-0.5"});
  // Normalising does not change the cosine (Eq. 6 is scale-invariant).
  const auto l = mixing_test_layer({{1, 0, 2}, {0, 1, 1}, {1, 1, 0}});
  EXPECT_NEAR(l.cossim({2.0, 6.0}), l.cossim(normalise_weights({2.0, 6.0})), 1e-12);
}

TEST(MixingWeights, AdaptiveLearningRateFormula) {
  EXPECT_NEAR(adaptive_lr_scale(0.2, 10, 5), 0.047426, 5e-7);
  EXPECT_DOUBLE_EQ(adaptive_lr_scale(0.5, 10, 5), 0.5);  // beta * rho = gamma
  EXPECT_NEAR(adaptive_lr_scale(3, 10, 5), 1 / (1 + std::exp(-25.0)), 1e-15);
}

TEST(MixingWeights, LearningToReweightClampsAndNormalises) {
  const auto w = reweight_by_meta_gradient({3.0, -2.0, 1.0});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_DOUBLE_EQ(w[0], 0.75);
  EXPECT_DOUBLE_EQ(w[1], 0.0);
  EXPECT_DOUBLE_EQ(w[2], 0.25);
  EXPECT_TRUE(reweight_by_meta_gradient({-1.0, 0.0}).empty());
}

}  // namespace
}  // namespace xfer
