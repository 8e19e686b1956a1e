#include <cmath>

#include "support.h"
#include "xfer/methods/losses.h"

namespace xfer {
namespace {

TEST(Losses, SoftCrossEntropyOfUniformLogitsIsLogK) {
  const torch::Tensor logits = torch::zeros({3, 5});
  const torch::Tensor p = torch::softmax(torch::randn({3, 5}), 1);
  EXPECT_NEAR(soft_cross_entropy(logits, p).item<double>(), std::log(5.0), 1e-6);
  // One-hot targets reduce it to the ordinary cross-entropy.
  const torch::Tensor z = torch::randn({4, 3}), y = torch::tensor({0, 2, 1, 2}, torch::kInt64);
  EXPECT_NEAR(soft_cross_entropy(z, torch::one_hot(y, 3).to(torch::kFloat)).item<double>(),
              cross_entropy(z, y).item<double>(), 1e-6);
}

TEST(Losses, MixedCrossEntropyWeighsBothLabels) {
  const torch::Tensor z = torch::randn({4, 3});
  const torch::Tensor a = torch::tensor({0, 1, 2, 0}, torch::kInt64),
                      b = torch::tensor({1, 1, 0, 2}, torch::kInt64);
  const double expected = 0.3 * cross_entropy(z, a).item<double>() + 0.7 * cross_entropy(z, b).item<double>();
  EXPECT_NEAR(mixed_cross_entropy(z, a, b, 0.3).item<double>(), expected, 1e-6);
  // A per-example lambda of constant 0.3 gives the same.
  EXPECT_NEAR(mixed_cross_entropy(z, a, b, torch::full({4}, 0.3)).item<double>(), expected, 1e-6);
  // lambda = (1, 0, ...) picks label a for the first example, b for the others.
  const torch::Tensor lam = torch::tensor({1.0, 0.0, 0.0, 0.0});
  const torch::Tensor ce_a = cross_entropy(z.slice(0, 0, 1), a.slice(0, 0, 1));
  const torch::Tensor ce_b = cross_entropy(z.slice(0, 1, 4), b.slice(0, 1, 4));
  EXPECT_NEAR(mixed_cross_entropy(z, a, b, lam).item<double>(),
              (ce_a.item<double>() + 3 * ce_b.item<double>()) / 4, 1e-6);
}

TEST(Losses, MixBroadcastsPerExampleWeights) {
  const torch::Tensor a = torch::ones({2, 1, 2, 2}), b = torch::zeros({2, 1, 2, 2});
  EXPECT_TRUE(torch::allclose(mix(a, b, 0.25), torch::full({2, 1, 2, 2}, 0.25)));
  const torch::Tensor m = mix(a, b, torch::tensor({0.1, 0.9}));
  EXPECT_NEAR(m[0].mean().item<double>(), 0.1, 1e-6);
  EXPECT_NEAR(m[1].mean().item<double>(), 0.9, 1e-6);
}

}  // namespace
}  // namespace xfer
