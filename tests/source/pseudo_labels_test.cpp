// GradMix's ensemble pseudo-label rules (section 3.5) on hand-made probabilities.
#include "xfer/source/pseudo_labels.h"
#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"

namespace xfer {
namespace {

/// Three models, four images, three classes.
torch::Tensor pseudo_test_probs() {
  return torch::tensor(
             {                   // model 0
              0.90, 0.05, 0.05,  // image 0: class 0, confident
              0.10, 0.85, 0.05,  // image 1: class 1, confident
              0.70, 0.20, 0.10,  // image 2: class 0, not confident
              0.05, 0.05, 0.90,  // image 3: class 2
                                 // model 1
              0.95, 0.03, 0.02,  //
              0.05, 0.90, 0.05,  //
              0.85, 0.10, 0.05,  //
              0.90, 0.05, 0.05,  // image 3: model 1 disagrees
                                 // model 2
              0.81, 0.10, 0.09,  //
              0.02, 0.97, 0.01,  //
              0.90, 0.05, 0.05,  //
              0.05, 0.05, 0.90},
             torch::kFloat32)
      .view({3, 4, 3});
}

TEST(PseudoLabels, HardRuleNeedsAgreementAndConfidenceFromEveryModel) {
  const HardLabels h = hard_pseudo_labels(pseudo_test_probs(), 0.8);
  ASSERT_EQ(h.index.numel(), 2);
  EXPECT_EQ(h.index[0].item<int64_t>(), 0);
  EXPECT_EQ(h.index[1].item<int64_t>(), 1);
  EXPECT_EQ(h.labels[0].item<int64_t>(), 0);
  EXPECT_EQ(h.labels[1].item<int64_t>(), 1);
  EXPECT_NEAR(h.confidence[0].item<float>(), 0.81f, 1e-6);  // the least confident model
  EXPECT_NEAR(h.confidence[1].item<float>(), 0.85f, 1e-6);
  // A lower threshold admits image 2 (0.70, 0.85, 0.90 all agree on class 0); image 3 never (disagreement).
  const HardLabels low = hard_pseudo_labels(pseudo_test_probs(), 0.6);
  EXPECT_EQ(low.index.numel(), 3);
  EXPECT_EQ(low.index[2].item<int64_t>(), 2);
}

TEST(PseudoLabels, SoftRuleIsTheMeanProbability) {
  const torch::Tensor soft = soft_pseudo_labels(pseudo_test_probs());
  ASSERT_EQ(soft.sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_NEAR(soft[3][0].item<float>(), (0.05 + 0.90 + 0.05) / 3, 1e-6);
  EXPECT_NEAR(soft[3][2].item<float>(), (0.90 + 0.05 + 0.90) / 3, 1e-6);
  EXPECT_NEAR(soft.sum(1)[2].item<float>(), 1.0, 1e-6);
}

TEST(PseudoLabels, ThresholdOutsideTheOpenUnitIntervalIsRejected) {
  for (double t : {0.0, 1.0, -0.2, 1.5})
    test::expect_bad_input([&] { hard_pseudo_labels(pseudo_test_probs(), t); },
                           {"--pseudo-threshold", "(0, 1)"});
}

TEST(PseudoLabels, EnlargingVFillsEachClassUpToTheTarget) {
  // 6 hard labels: class 0 x3, class 1 x2, class 2 x1. V has 1 of class 0, 2 of class 1, 0 of class 2.
  HardLabels h;
  h.index = torch::tensor({10, 11, 12, 13, 14, 15}, torch::kInt64);
  h.labels = torch::tensor({0, 1, 0, 2, 1, 0}, torch::kInt64);
  h.confidence = torch::ones({6});
  const torch::Tensor v = torch::tensor({0, 1, 1}, torch::kInt64);
  at::Generator gen = make_generator(1);
  const torch::Tensor pick = enlarge_per_class(v, h, 3, 3, gen);
  const torch::Tensor picked_labels = h.labels.index_select(0, pick);
  EXPECT_EQ((picked_labels == 0).sum().item<int64_t>(), 2);         // 3 - 1
  EXPECT_EQ((picked_labels == 1).sum().item<int64_t>(), 1);         // 3 - 2
  EXPECT_EQ((picked_labels == 2).sum().item<int64_t>(), 1);         // wants 3, only 1 exists
  EXPECT_EQ(std::get<0>(at::_unique(pick)).numel(), pick.numel());  // no image twice
  // Seeded: the same generator seed picks the same images.
  at::Generator again = make_generator(1);
  EXPECT_TRUE(torch::equal(pick, enlarge_per_class(v, h, 3, 3, again)));
}

TEST(PseudoLabels, EnsembleFileRoundTrips) {
  test::TempDir dir;
  EnsembleLabels e;
  e.images = {torch::randint(0, 255, {4, 1, 8, 8}).to(torch::kUInt8),
              torch::tensor({0, 1, 2, 0}, torch::kInt64),
              {"a", "b", "c"},
              nullptr};
  e.probs = pseudo_test_probs();
  save_ensemble_labels(dir.file("p.pt"), e);
  const EnsembleLabels back = load_ensemble_labels(dir.file("p.pt"));
  EXPECT_TRUE(torch::equal(back.images.images, e.images.images));
  EXPECT_TRUE(torch::equal(back.probs, e.probs));
  EXPECT_EQ(back.images.class_names, e.images.class_names);
  write_file_atomic(dir.file("bad.pt"), "not an archive");
  test::expect_bad_input([&] { load_ensemble_labels(dir.file("bad.pt")); }, {"bad.pt", "gradmix-pseudo"});
}

}  // namespace
}  // namespace xfer
