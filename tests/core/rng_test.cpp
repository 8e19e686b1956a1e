#include <numeric>
#include <set>

#include "support.h"
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

TEST(Rng, BetaSampleMeanMatches) {
  std::mt19937_64 engine(3);
  double sum = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) sum += sample_beta(engine, 4.0, 1.0);
  EXPECT_NEAR(sum / n, 4.0 / 5.0, 0.005);
}

TEST(Rng, TorchGeneratorDrawsAreSeededAndMatchTheirDistributions) {
  at::Generator g = make_generator(5), h = make_generator(5);
  const torch::Tensor a = sample_beta(g, 4.0, 1.0, 20000);
  EXPECT_TRUE(torch::equal(a, sample_beta(h, 4.0, 1.0, 20000)));  // same seed, same bits
  EXPECT_NEAR(a.mean().item<double>(), 4.0 / 5.0, 0.005);
  EXPECT_GE(a.min().item<double>(), 0.0);
  EXPECT_LE(a.max().item<double>(), 1.0);
  // Beta(0.2, 0.2) piles up near 0 and 1 but keeps mean 1/2.
  EXPECT_NEAR(sample_beta(g, 0.2, 0.2, 20000).mean().item<double>(), 0.5, 0.01);
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
