#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include <gtest/gtest-spi.h>
#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"

namespace xfer {
namespace {

TEST(Rng, DerivedSeedsAreStableAndDistinct) {
  EXPECT_EQ(derive_seed(7, "target"), derive_seed(7, "target"));
  EXPECT_NE(derive_seed(7, "target"), derive_seed(7, "source"));
  EXPECT_NE(derive_seed(7, "target"), derive_seed(8, "target"));
  EXPECT_NE(derive_seed(7, uint64_t{0}), derive_seed(7, uint64_t{1}));
  // A fixed value guards against accidental changes, which would change every run's numbers.
  EXPECT_EQ(mix64(0), 0xe220a8397b1dcdafULL);
}

TEST(Rng, ShuffleIsAPermutationAndDeterministic) {
  std::vector<int64_t> a(100), b(100);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 0);
  shuffle_in_place(a, 42);
  shuffle_in_place(b, 42);
  EXPECT_EQ(a, b);
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 100u);
  std::vector<int64_t> c(100);
  std::iota(c.begin(), c.end(), 0);
  shuffle_in_place(c, 43);
  EXPECT_NE(a, c);
}

TEST(Rng, UniformIndexCoversTheRangeEvenly) {
  std::mt19937_64 engine(1);
  std::vector<int> counts(6, 0);
  for (int i = 0; i < 60000; ++i) ++counts[uniform_index(engine, 6)];
  for (int c : counts) EXPECT_NEAR(c, 10000, 400);
}

const nlohmann::json& rng_golden() {
  static const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/sampling.json");
  return g;
}

/// The Kolmogorov-Smirnov distance, on the golden grid, between `samples` and the Beta CDF there; expects
/// it below the 0.1% critical value 1.95 / sqrt(n), and the sample mean and variance within 4 standard
/// errors of Beta(a, b)'s (tests/golden/make_sampling_golden.py).
void expect_beta_distribution(std::vector<double> samples, double a, double b) {
  const nlohmann::json* g = nullptr;
  for (const auto& c : rng_golden()["beta"])
    if (c["a"] == a && c["b"] == b) g = &c;
  ASSERT_NE(g, nullptr) << "no golden CDF for Beta(" << a << ", " << b << ")";
  std::sort(samples.begin(), samples.end());
  const double n = static_cast<double>(samples.size());
  const auto xs = (*g)["x"].get<std::vector<double>>(), cdf = (*g)["cdf"].get<std::vector<double>>();
  double ks = 0;
  for (size_t j = 0; j < xs.size(); ++j) {
    const double below =
        static_cast<double>(std::upper_bound(samples.begin(), samples.end(), xs[j]) - samples.begin());
    ks = std::max(ks, std::abs(below / n - cdf[j]));
  }
  EXPECT_LT(ks, 1.95 / std::sqrt(n)) << "Beta(" << a << ", " << b << "): KS distance " << ks;
  double sum = 0, sq = 0;
  for (double v : samples) sum += v, sq += v * v;
  const double mean = sum / n, var = sq / n - mean * mean, want_var = (*g)["variance"].get<double>();
  EXPECT_NEAR(mean, (*g)["mean"].get<double>(), 4 * std::sqrt(want_var / n))
      << "Beta(" << a << ", " << b << ")";
  // The variance's standard error is below sqrt(E[(x - mu)^4] / n) <= sqrt(var / n) for x in [0, 1].
  EXPECT_NEAR(var, want_var, 4 * std::sqrt(want_var / n)) << "Beta(" << a << ", " << b << ")";
}

TEST(Rng, BetaSamplesFollowTheBetaDistribution) {
  for (const auto& [a, b] : std::vector<std::pair<double, double>>{{0.2, 0.2}, {4.0, 1.0}, {2.0, 5.0}}) {
    std::mt19937_64 engine(3);
    std::vector<double> v(20000);
    for (double& x : v) x = sample_beta(engine, a, b);
    expect_beta_distribution(v, a, b);
    at::Generator g = make_generator(5);
    const torch::Tensor t = sample_beta(g, a, b, 20000);
    expect_beta_distribution(std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel()), a,
                             b);
  }
  // A uniform sampler would fail Beta(0.2, 0.2), whose mean is the same: the check has power.
  std::mt19937_64 engine(3);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<double> uniform(20000);
  for (double& x : uniform) x = u(engine);
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter intercept(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    expect_beta_distribution(uniform, 0.2, 0.2);
  }
  EXPECT_EQ(failures.size(), 2) << "the KS distance and the variance of U(0, 1) are not Beta(0.2, 0.2)'s";
}

TEST(Rng, TorchGeneratorDrawsAreSeededAndMatchTheirDistributions) {
  at::Generator g = make_generator(5), h = make_generator(5);
  const torch::Tensor a = sample_beta(g, 4.0, 1.0, 20000);
  EXPECT_TRUE(torch::equal(a, sample_beta(h, 4.0, 1.0, 20000)));  // same seed, same bits
  EXPECT_GE(a.min().item<double>(), 0.0);
  EXPECT_LE(a.max().item<double>(), 1.0);
  const double one = sample_beta(g, 4.0, 1.0);  // the scalar draw
  EXPECT_TRUE(one >= 0 && one <= 1) << one;
  const torch::Tensor p = sample_permutation(g, 50);
  EXPECT_TRUE(torch::equal(std::get<0>(p.sort()), torch::arange(50)));
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 4000; ++i) ++counts[sample_index(g, 4)];
  for (int c : counts) EXPECT_NEAR(c, 1000, 120);
  const double u = sample_uniform(g);
  EXPECT_TRUE(u >= 0 && u < 1);
  test::expect_bad_input([&] { sample_beta(g, 0.0, 1.0, 1); }, {"a=0"});
}

}  // namespace
}  // namespace xfer
