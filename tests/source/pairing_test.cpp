// XMixup's auxiliary sample selection: centroids, cosine similarities, greedy rounds, pools and samplers.
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/rng.h"
#include "xfer/data/spec.h"
#include "xfer/source/pairing.h"

namespace xfer {
namespace {

/// A dataset of `counts[c]` blank 1x4x4 images per class c, labels in class order.
TensorDataset pairing_dataset(const std::vector<int64_t>& counts, const std::string& prefix) {
  TensorDataset d;
  std::vector<int64_t> labels;
  for (size_t c = 0; c < counts.size(); ++c) {
    labels.insert(labels.end(), static_cast<size_t>(counts[c]), static_cast<int64_t>(c));
    d.class_names.push_back(prefix + std::to_string(c));
  }
  d.labels = torch::tensor(labels, torch::kInt64);
  d.images = torch::zeros({d.labels.size(0), 1, 4, 4}, torch::kUInt8);
  return d;
}

TEST(Pairing, CentroidsAndCosinesOfAHandMadeFeatureSet) {
  const torch::Tensor features =
      torch::tensor({{1.0, 0.0, 0.0}, {3.0, 0.0, 0.0}, {0.0, 2.0, 0.0}, {0.0, 4.0, 2.0}});
  const torch::Tensor labels = torch::tensor({0, 0, 1, 1}, torch::kInt64);
  const torch::Tensor c = class_centroids(features, labels, 2);
  EXPECT_TRUE(torch::allclose(c, torch::tensor({{2.0, 0.0, 0.0}, {0.0, 3.0, 1.0}}, torch::kFloat64)));
  const torch::Tensor source = torch::tensor({{1.0, 1.0, 0.0}, {0.0, 0.0, 5.0}});
  const torch::Tensor s = cosine_similarity_matrix(c, source);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_NEAR(s[0][0].item<double>(), 1 / std::sqrt(2.0), 1e-12);
  EXPECT_NEAR(s[0][1].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(s[1][0].item<double>(), 3 / std::sqrt(20.0), 1e-12);
  EXPECT_NEAR(s[1][1].item<double>(), 1 / std::sqrt(10.0), 1e-12);
  test::expect_bad_input(
      [&] {
        class_centroids(features, labels, 3, {"a", "b", "coat"});
      },
      {"class 'coat' has no training examples"});
}

TEST(Pairing, GreedyTakesTheMostSimilarPairFirstEvenWhenTheOptimumDiffers) {
  // Greedy pairs (0,0) = 0.9 first and is left with (1,1) = 0.1: 1.0 in all. The optimal one-to-one
  // assignment (0,1) + (1,0) scores 1.6; XMixup uses greedy (section 3).
  const torch::Tensor sim = torch::tensor({{0.9, 0.8}, {0.8, 0.1}}, torch::kFloat64);
  const auto pairs = greedy_pairing(sim, {false, false});
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].target, 0);
  EXPECT_EQ(pairs[0].source, 0);
  EXPECT_DOUBLE_EQ(pairs[0].similarity, 0.9);
  EXPECT_EQ(pairs[1].target, 1);
  EXPECT_EQ(pairs[1].source, 1);
  EXPECT_DOUBLE_EQ(pairs[1].similarity, 0.1);
  // A used source is skipped; with fewer free sources than targets, the most similar targets get them.
  const torch::Tensor wide = torch::tensor({{0.1, 0.5, 0.3}, {0.2, 0.6, 0.4}}, torch::kFloat64);
  const auto partial = greedy_pairing(wide, {false, true, true}, 3);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_EQ(partial[0].target, 1);
  EXPECT_EQ(partial[0].source, 0);
  EXPECT_EQ(partial[0].round, 3);
}

TEST(Pairing, RoundsRepeatUntilTheAuxiliarySetReachesTheThreshold) {
  const torch::Tensor sim =
      torch::tensor({{0.9, 0.1, 0.5, 0.3, 0.2}, {0.2, 0.8, 0.4, 0.6, 0.7}}, torch::kFloat64);
  const std::vector<int64_t> counts = {10, 20, 30, 40, 50};
  // One round: 0->0, 1->1, 30 examples.
  auto one = pair_classes(sim, counts, 0);
  ASSERT_EQ(one.size(), 2u);
  EXPECT_EQ(one[0].source + one[1].source, 1);
  // 31 needs a second round over the unused sources 2, 3, 4: greedy takes (1,4) = 0.7 then (0,2) = 0.5.
  auto two = pair_classes(sim, counts, 31);
  ASSERT_EQ(two.size(), 4u);
  EXPECT_EQ(two[2].target, 1);
  EXPECT_EQ(two[2].source, 4);
  EXPECT_EQ(two[2].round, 2);
  EXPECT_EQ(two[3].target, 0);
  EXPECT_EQ(two[3].source, 2);
  int64_t total = 0;
  std::set<int64_t> sources;
  for (const auto& p : two) {
    total += counts[p.source];
    sources.insert(p.source);
  }
  EXPECT_EQ(total, 110);
  EXPECT_EQ(sources.size(), 4u) << "a source class is paired at most once";
  // 111 needs the third round, which has one source left: it goes to its most similar target.
  auto three = pair_classes(sim, counts, 111);
  ASSERT_EQ(three.size(), 5u);
  EXPECT_EQ(three[4].source, 3);
  EXPECT_EQ(three[4].target, 1);
  EXPECT_EQ(three[4].round, 3);
}

TEST(Pairing, BadSizesSayWhatWouldWork) {
  const torch::Tensor sim = torch::rand({3, 2}, torch::kFloat64);
  test::expect_bad_input(
      [&] {
        pair_classes(sim, {5, 5}, 0);
      },
      {"one-to-one", "the source has 2 classes and the target 3", "--aux all"});
  const torch::Tensor ok = torch::rand({2, 3}, torch::kFloat64);
  test::expect_bad_input(
      [&] {
        pair_classes(ok, {5, 5, 5}, 16);
      },
      {"--aux-size 16 is larger than the source (15 training examples)", "--aux all would use all 15"});
}

TEST(Pairing, JsonRoundTripAndClassChecks) {
  const TensorDataset target = pairing_dataset({3, 4}, "t"), source = pairing_dataset({5, 6, 7}, "s");
  const torch::Tensor tf = torch::rand({7, 4}), sf = torch::rand({18, 4});
  const Pairing p = pair_by_features(tf, target, sf, source, 0);
  EXPECT_EQ(p.pairs.size(), 2u);
  const Pairing q = Pairing::from_json(p.to_json(), "test");
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.samples(), p.samples());
  EXPECT_EQ(p.to_json()["pairs"][0]["target"], target.class_names[p.pairs[0].target]);
  q.check_matches(target, source, "file");
  const TensorDataset other = pairing_dataset({3, 4}, "x");
  test::expect_bad_input([&] { q.check_matches(other, source, "--pairing p.json"); },
                         {"--pairing p.json pairs the target classes [t0, t1] but the task's are [x0, x1]"});
  test::expect_bad_input([&] { q.check_matches(target, other, "--pairing p.json"); },
                         {"pairs the source classes [s0, s1, s2] but --source has [x0, x1]"});
  nlohmann::json broken = p.to_json();
  broken["pairs"][0]["source_label"] = 7;
  test::expect_bad_input([&] { Pairing::from_json(broken, "p.json"); }, {"p.json", "out of range"});
  test::expect_bad_input([&] { Pairing::from_json({{"format", "x"}}, "p.json"); }, {"not a pairing file"});
  // Found by the JSON fuzzer: a count too large for int64 was cast (undefined behaviour), not refused.
  broken = p.to_json();
  broken["source_counts"][0] = 2.3e119;
  test::expect_bad_input([&] { Pairing::from_json(broken, "p.json"); },
                         {"p.json: source_counts must be an integer, got 2.3e+119"});
  broken = p.to_json();
  broken["pairs"][0]["round"] = 1.5;
  test::expect_bad_input([&] { Pairing::from_json(broken, "p.json"); }, {"p.json: round must be an integer"});
}

TEST(Pairing, PoolsOfEachAuxiliaryMode) {
  const TensorDataset source = pairing_dataset({5, 6, 7, 8}, "s");
  Pairing p;
  p.target_classes = {"a", "b"};
  p.source_classes = source.class_names;
  p.source_counts = source.class_counts();
  p.target_counts = {1, 1};
  p.pairs = {{0, 2, 0.9, 1}, {1, 0, 0.8, 1}, {1, 3, 0.5, 2}};
  const AuxPools paired = make_aux_pools(AuxMode::paired, &p, source, 2, 1);
  ASSERT_EQ(paired.pools.size(), 2u);
  EXPECT_EQ(paired.pools[0].size(), 7u);
  EXPECT_EQ(paired.pools[1].size(), 13u);
  for (int64_t i : paired.pools[0]) EXPECT_EQ(source.labels[i].item<int64_t>(), 2);
  for (int64_t i : paired.pools[1])
    EXPECT_TRUE(source.labels[i].item<int64_t>() == 0 || source.labels[i].item<int64_t>() == 3);
  EXPECT_EQ(paired.source_classes, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(paired.size(), p.samples());

  const AuxPools random = make_aux_pools(AuxMode::random, &p, source, 2, 1);
  ASSERT_EQ(random.pools.size(), 1u);
  EXPECT_EQ(random.size(), p.samples()) << "as many examples as the paired set";
  EXPECT_EQ(std::set<int64_t>(random.pools[0].begin(), random.pools[0].end()).size(), 20u)
      << "without replacement";
  EXPECT_EQ(make_aux_pools(AuxMode::random, &p, source, 2, 1).pools, random.pools) << "seeded";
  EXPECT_NE(make_aux_pools(AuxMode::random, &p, source, 2, 2).pools, random.pools);

  const AuxPools all = make_aux_pools(AuxMode::all, nullptr, source, 2, 1);
  EXPECT_EQ(all.size(), source.size());
  EXPECT_EQ(all.source_classes, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(all.pool_of(1), all.pools[0]);
}

TEST(Pairing, AuxSamplerDrawsFromThePairedClassesSlotForSlotWithTheTargetStream) {
  const TensorDataset target = pairing_dataset({7, 9, 5}, "t"),
                      source = pairing_dataset({4, 6, 8, 3, 5}, "s");
  Pairing p;
  p.target_classes = target.class_names;
  p.source_classes = source.class_names;
  p.source_counts = source.class_counts();
  p.target_counts = target.class_counts();
  p.pairs = {{0, 3, 0.9, 1}, {1, 1, 0.8, 1}, {2, 4, 0.7, 1}, {0, 0, 0.5, 2}};
  auto pools = std::make_shared<const AuxPools>(make_aux_pools(AuxMode::paired, &p, source, 3, 0));
  const uint64_t target_seed = derive_seed(uint64_t{5}, "target");
  LoaderOptions opts;
  opts.batch_size = 8;  // 8 does not divide 21: batches span epochs
  BatchStream target_stream(target, {{0.5}, {0.5}}, opts, target_seed);
  AuxSampler aux(pools, default_sampler(target.size(), target_seed), target.labels, 11);
  const auto by_target = p.sources_by_target();
  std::map<int64_t, std::set<int64_t>> drawn;  // target class -> source classes seen
  for (int64_t b = 0; b < 30; ++b) {
    const Batch t = target_stream.next();
    const std::vector<int64_t> a = aux.indices(b, 8);
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t tc = t.y[i].item<int64_t>(), sc = source.labels[a[i]].item<int64_t>();
      const auto& allowed = by_target[tc];
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), sc), allowed.end())
          << "batch " << b << " slot " << i << ": source class " << sc << " drawn for target class " << tc;
      drawn[tc].insert(sc);
    }
  }
  EXPECT_EQ(drawn[0], (std::set<int64_t>{0, 3})) << "both classes of a target class are drawn";
  // A pure function of the batch number: replaying out of order gives the same draws.
  AuxSampler again(pools, default_sampler(target.size(), target_seed), target.labels, 11);
  EXPECT_EQ(again.indices(17, 8), aux.indices(17, 8));
  EXPECT_EQ(again.indices(3, 8), aux.indices(3, 8));
  EXPECT_NE(aux.indices(3, 8), aux.indices(4, 8));
}

TEST(Pairing, SelectionPairsIdenticalClassesThroughTheBackbone) {
  test::TempDir dir;
  const std::string idx = test::write_tiny_idx(dir.path(), 4, 10, 2);
  const Task target = load_task(idx + ":classes=2,0", 0), source = load_task(idx, 0);
  Arch arch{"cnn4:width=4", 1, 8, 8, {{0.2}, {0.3}}, {{"source", source.class_names()}}};
  torch::manual_seed(0);
  Model model(arch);
  model->train();
  // Batching does not change the features, and the model's mode is restored.
  const torch::Tensor f1 = extract_features(model, source.train, 7),
                      f2 = extract_features(model, source.train, 500);
  EXPECT_TRUE(torch::allclose(f1, f2, 1e-5, 1e-6));
  EXPECT_TRUE(model->is_training());
  // The target's classes are source classes 2 and 0, with the same images: their centroids coincide.
  const Pairing p = select_auxiliary(model, target.train, source.train, 0);
  ASSERT_EQ(p.pairs.size(), 2u);
  for (const auto& pr : p.pairs) {
    EXPECT_EQ(p.source_classes[pr.source], p.target_classes[pr.target]);
    EXPECT_NEAR(pr.similarity, 1.0, 1e-6);
  }
  EXPECT_EQ(p.samples(), 20);
  test::expect_bad_input([&] { select_auxiliary(model, target.train, source.train, 41); },
                         {"--aux-size 41 is larger than the source (40 training examples)"});
  test::expect_bad_input([&] { select_auxiliary(model, source.train, target.train, 0); },
                         {"the source has 2 classes and the target 4"});
}

}  // namespace
}  // namespace xfer
