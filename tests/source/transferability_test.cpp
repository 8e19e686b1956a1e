// Transferability estimators: golden values from tests/golden/make_transferability_golden.py (numpy, from
// the papers' definitions; rtol 1e-6), hand values on tiny cases, and the inputs they refuse.
#include <cmath>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/source/transferability.h"

namespace xfer {
namespace {

const nlohmann::json& transfer_golden() {
  static const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/transferability.json");
  return g;
}

torch::Tensor golden_matrix(const nlohmann::json& c, const char* key, int64_t rows, int64_t cols) {
  return torch::tensor(c[key].get<std::vector<double>>(), torch::kFloat64).view({rows, cols});
}

torch::Tensor golden_labels(const nlohmann::json& c, const char* key) {
  return torch::tensor(c[key].get<std::vector<int64_t>>(), torch::kInt64);
}

void expect_rel(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 1e-6 * std::max(1.0, std::abs(want))) << what;
}

TEST(Transferability, MatchesTheNumpyGoldenValuesOfEveryMetric) {
  for (const char* name : {"tall", "wide"}) {
    const auto& c = transfer_golden()[name];
    const int64_t n = c["n"], d = c["d"], k = c["k"], z = c["z"];
    const torch::Tensor f = golden_matrix(c, "features", n, d);
    const torch::Tensor probs = golden_matrix(c, "source_probs", n, z);
    const torch::Tensor y = golden_labels(c, "labels");
    const LogMEResult lm = logme(f, y, k);
    expect_rel(lm.score, c["logme"], cat(name, " LogME"));
    for (int64_t j = 0; j < k; ++j)
      expect_rel(lm.evidence[j], c["logme_per_class"][j], cat(name, " LogME class ", j));
    expect_rel(leep(probs, y, k), c["leep"], cat(name, " LEEP"));
    expect_rel(nce(golden_labels(c, "source_labels"), z, y, k), c["nce"], cat(name, " NCE"));
    expect_rel(h_score(f, y, k), c["hscore"], cat(name, " H-score"));
    // The one-call form: NCE from the argmax of the probabilities.
    const auto all = transferability_scores(transferability_metrics(), f, probs, y, k);
    expect_rel(all.at("nce"), c["nce"], cat(name, " NCE via argmax"));
    EXPECT_NEAR(all.at("logme"), c["logme"].get<double>(), 1e-9);
  }
  // The wide case has N - 1 <= D: H-score cannot tell features apart there and gives K - 1.
  EXPECT_NEAR(transfer_golden()["wide"]["hscore"].get<double>(), 2.0, 1e-9);
}

TEST(Transferability, LogMEReachesTheNoiseFreeLimitOfFewShotTargets) {
  // N < D with informative features: the evidence is maximal as beta -> infinity, where the explicit
  // formulas cancel to nothing; the golden value is the closed-form limit.
  const auto& c = transfer_golden()["noise_free"];
  const int64_t n = c["n"], d = c["d"], k = c["k"];
  const LogMEResult lm = logme(golden_matrix(c, "features", n, d), golden_labels(c, "labels"), k);
  expect_rel(lm.score, c["logme"], "noise-free LogME");
  for (int64_t j = 0; j < k; ++j) {
    expect_rel(lm.evidence[j], c["logme_per_class"][j], cat("class ", j));
    EXPECT_GT(lm.beta[j], 1e5) << "class " << j;
  }
}

TEST(Transferability, SourceClassesMatchTheirGoldenPosteriors) {
  const auto& c = transfer_golden()["source_classes"];
  const int64_t n = c["n"], z = c["z"], d = c["d"];
  const SourceClasses classes =
      fit_source_classes(golden_matrix(c, "features", n, d), golden_labels(c, "labels"), z);
  expect_rel(classes.variance, c["variance"], "variance");
  const torch::Tensor target = golden_matrix(transfer_golden()["tall"], "features", 60, d).slice(0, 0, 10);
  const torch::Tensor post = source_class_posteriors(classes, target);
  const torch::Tensor want = golden_matrix(c, "posteriors", 10, z);
  EXPECT_TRUE(torch::allclose(post, want, 1e-6, 1e-12)) << post << "\n" << want;
}

TEST(Transferability, NceIsZeroWhenTheSourceLabelDeterminesTheTargetLabel) {
  const torch::Tensor y = torch::tensor({0, 0, 1, 1, 2, 2, 2}, torch::kInt64);
  // A relabelling, and a many-to-one mapping (source classes 1 and 4 both mean target class 2).
  EXPECT_DOUBLE_EQ(nce(torch::tensor({3, 3, 0, 0, 1, 1, 1}, torch::kInt64), 4, y, 3), 0.0);
  EXPECT_DOUBLE_EQ(nce(torch::tensor({0, 0, 2, 2, 1, 4, 1}, torch::kInt64), 5, y, 3), 0.0);
  // One source label for everything tells nothing: NCE = -H(Y).
  const torch::Tensor balanced = torch::tensor({0, 1, 0, 1}, torch::kInt64);
  EXPECT_NEAR(nce(torch::zeros({4}, torch::kInt64), 3, balanced, 2), -std::log(2.0), 1e-15);
  // Half informative: z = 0 holds both classes once, z = 1 only class 1 -> -(2/4) log 2.
  EXPECT_NEAR(
      nce(torch::tensor({0, 0, 1, 1}, torch::kInt64), 2, torch::tensor({0, 1, 1, 1}, torch::kInt64), 2),
      -0.5 * std::log(2.0), 1e-15);
}

TEST(Transferability, LeepHandValues) {
  const torch::Tensor y = torch::tensor({0, 1, 0, 1}, torch::kInt64);
  // A one-hot source head whose classes map onto the target's: every expected prediction is 1.
  const torch::Tensor onehot = torch::tensor({{0., 1., 0.}, {0., 0., 1.}, {0., 1., 0.}, {0., 0., 1.}});
  EXPECT_NEAR(leep(onehot, y, 2), 0.0, 1e-15);
  // A uniform head: the expected prediction is the target prior, here 1/2.
  EXPECT_NEAR(leep(torch::full({4, 3}, 1.0 / 3, torch::kFloat64), y, 2), -std::log(2.0), 1e-15);
}

TEST(Transferability, HScoreHandValuesAndRankDeficientFeatures) {
  const torch::Tensor y = torch::tensor({0, 0, 0, 1, 1, 1}, torch::kInt64);
  // A feature that is the label: its class means are itself, cov(E[f|y]) = cov(f), H = 1.
  const torch::Tensor f = y.to(torch::kFloat64).unsqueeze(1);
  EXPECT_NEAR(h_score(f, y, 2), 1.0, 1e-12);
  // A duplicated column adds no direction: the pseudo-inverse drops the zero singular value.
  EXPECT_NEAR(h_score(torch::cat({f, 2 * f}, 1), y, 2), 1.0, 1e-12);
  // A feature independent of the label within this sample: class means equal, H = 0.
  const torch::Tensor noise = torch::tensor({1., 2., 3., 1., 2., 3.}).unsqueeze(1);
  EXPECT_NEAR(h_score(noise, y, 2), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(h_score(torch::ones({6, 3}), y, 2), 0.0);
}

TEST(Transferability, LogMEHandValuesAndInvariances) {
  const torch::Tensor y = torch::tensor({0, 0, 0, 1, 2, 2}, torch::kInt64);
  // Features with no direction: each class is pure noise, beta = N / n_k, L_k / N = 1/2 log beta - 1/2 - 1/2
  // log 2 pi.
  const LogMEResult zero = logme(torch::zeros({6, 4}), y, 3);
  double want = 0;
  for (double nk : {3.0, 1.0, 2.0}) want += (0.5 * std::log(6.0 / nk) - 0.5 - 0.5 * std::log(2 * M_PI)) / 3;
  EXPECT_NEAR(zero.score, want, 1e-12);
  // The maximum evidence does not change when the features are scaled (alpha absorbs the scale).
  torch::manual_seed(3);
  const torch::Tensor f = torch::randn({40, 5}, torch::kFloat64) + torch::one_hot(torch::arange(40) % 3, 5);
  const torch::Tensor labels = torch::arange(40) % 3;
  EXPECT_NEAR(logme(f, labels, 3).score, logme(f * 100, labels, 3).score, 1e-9);
  // Features that carry the labels score higher than the same number of random ones.
  EXPECT_GT(logme(f, labels, 3).score, logme(torch::randn({40, 5}, torch::kFloat64), labels, 3).score);
  // Deterministic to the bit.
  EXPECT_EQ(logme(f, labels, 3).score, logme(f, labels, 3).score);
}

TEST(Transferability, RefusesWhatNoMetricCanScore) {
  const torch::Tensor f = torch::randn({4, 3});
  test::expect_bad_input([&] { logme(f, torch::zeros({4}, torch::kInt64), 1); },
                         {"at least 2 classes", "got 1"});
  test::expect_bad_input(
      [&] {
        h_score(f, torch::tensor({0, 0, 2, 2}, torch::kInt64), 3);
      },
      {"target class 1 has no examples"});
  test::expect_bad_input(
      [&] {
        logme(f, torch::tensor({0, 1, 0}, torch::kInt64), 2);
      },
      {"3 labels for 4 examples"});
  test::expect_bad_input(
      [&] {
        logme(f, torch::tensor({0, 1, 0, 5}, torch::kInt64), 2);
      },
      {"[0, 2)", "[0, 5]"});
  test::expect_bad_input([&] { logme(f, torch::tensor({0., 1., 0., 1.}), 2); }, {"int64 labels"});
  torch::Tensor bad = f.clone();
  bad[1][1] = std::nan("");
  test::expect_bad_input([&] { h_score(bad, torch::tensor({0, 1, 0, 1}, torch::kInt64), 2); }, {"NaN"});
  test::expect_bad_input(
      [&] {
        leep(torch::full({4, 2}, 0.6), torch::tensor({0, 1, 0, 1}, torch::kInt64), 2);
      },
      {"sum to 1"});
  test::expect_bad_input(
      [&] {
        nce(torch::tensor({0, 3, 0, 1}, torch::kInt64), 3, torch::tensor({0, 1, 0, 1}, torch::kInt64), 2);
      },
      {"[0, 3)"});
  test::expect_bad_input([&] { parse_transferability_metrics("logme,bogus"); },
                         {"'bogus'", "logme, leep, nce, hscore"});
  EXPECT_EQ(parse_transferability_metrics("all"), transferability_metrics());
  EXPECT_EQ(parse_transferability_metrics("nce,logme,nce"), (std::vector<std::string>{"nce", "logme"}));
}

}  // namespace
}  // namespace xfer
