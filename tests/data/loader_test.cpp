#include <set>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/data/loader.h"

namespace xfer {
namespace {

TensorDataset tiny(int64_t n) {
  TensorDataset d;
  d.images = torch::randint(0, 256, {n, 1, 6, 6}, torch::kUInt8);
  d.labels = torch::arange(n, torch::kInt64) % 3;
  d.class_names = {"a", "b", "c"};
  return d;
}

const Normalization kNorm{{0.5}, {0.25}};

TEST(Loader, ShuffleSamplerReadsWholePermutationsBackToBack) {
  ShuffleSampler s(10, 1);
  std::vector<int64_t> seq;
  for (int b = 0; b < 5; ++b)
    for (int64_t i : s.indices(b, 4)) seq.push_back(i);  // 20 samples = 2 epochs, batches span them
  EXPECT_EQ(std::set<int64_t>(seq.begin(), seq.begin() + 10).size(), 10u);
  EXPECT_EQ(std::set<int64_t>(seq.begin() + 10, seq.end()).size(), 10u);
  EXPECT_NE(std::vector<int64_t>(seq.begin(), seq.begin() + 10),
            std::vector<int64_t>(seq.begin() + 10, seq.end()));
  ShuffleSampler again(10, 1);
  EXPECT_EQ(again.indices(3, 4), s.indices(3, 4));  // a pure function of the batch number
}

TEST(Loader, StreamsAreDeterministicPerSeedWithOrWithoutPrefetch) {
  const TensorDataset d = tiny(17);
  LoaderOptions opts;
  opts.batch_size = 5;
  BatchStream a(d, kNorm, opts, 3), b(d, kNorm, opts, 3), c(d, kNorm, opts, 4);
  opts.prefetch = false;
  BatchStream sync(d, kNorm, opts, 3);
  bool differs = false;
  for (int i = 0; i < 6; ++i) {
    const Batch x = a.next(), y = b.next(), z = c.next(), w = sync.next();
    EXPECT_TRUE(torch::equal(x.x, y.x) && torch::equal(x.y, y.y));
    EXPECT_TRUE(torch::equal(x.x, w.x) && torch::equal(x.index, w.index));
    differs = differs || !torch::equal(x.index, z.index);
    EXPECT_TRUE(torch::equal(x.y, d.labels.index_select(0, x.index)));
  }
  EXPECT_TRUE(differs);
}

TEST(Loader, SeekResumesTheSameSequence) {
  const TensorDataset d = tiny(9);
  LoaderOptions opts;
  opts.batch_size = 4;
  BatchStream full(d, kNorm, opts, 8);
  std::vector<Batch> seq;
  for (int i = 0; i < 7; ++i) seq.push_back(full.next());
  BatchStream resumed(d, kNorm, opts, 8);
  resumed.next();  // a prefetch is in flight when we seek
  resumed.seek(4);
  for (int i = 4; i < 7; ++i) {
    const Batch b = resumed.next();
    EXPECT_TRUE(torch::equal(b.x, seq[i].x) && torch::equal(b.index, seq[i].index)) << "batch " << i;
  }
  EXPECT_EQ(resumed.position(), 7);
}

TEST(Loader, WithoutAugmentationBatchesAreNormalisedImages) {
  const TensorDataset d = tiny(8);
  LoaderOptions opts;
  opts.batch_size = 8;
  opts.crop_pad = 0;
  opts.flip = false;
  BatchStream s(d, kNorm, opts, 0);
  const Batch b = s.next();
  const torch::Tensor expected = (d.images.index_select(0, b.index).to(torch::kFloat32) / 255.0 - 0.5) / 0.25;
  EXPECT_TRUE(torch::allclose(b.x, expected, 1e-6, 1e-6));
}

TEST(Loader, CropAndFlipMoveContentWithoutChangingIt) {
  // One image with a single bright pixel: every augmented copy holds it once, at a shifted or
  // mirrored position within the padding range, and the rest is padding/background.
  TensorDataset d;
  d.images = torch::zeros({1, 1, 9, 9}, torch::kUInt8);
  d.images[0][0][4][2] = 255;  // far enough from the border that no crop drops it
  d.labels = torch::zeros({1}, torch::kInt64);
  d.class_names = {"a"};
  InputTransform t(Normalization{{0.0}, {1.0}}, /*crop_pad=*/2, /*flip=*/true);
  std::set<std::pair<int, int>> positions;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const torch::Tensor x = t(d.images, {0}, seed)[0][0];
    ASSERT_EQ((x == 1.0f).sum().item<int64_t>(), 1);
    const torch::Tensor where = (x == 1.0f).nonzero()[0];
    const int y = where[0].item<int>(), xx = where[1].item<int>();
    EXPECT_LE(std::abs(y - 4), 2);
    EXPECT_TRUE(std::abs(xx - 2) <= 2 || std::abs(xx - 6) <= 2);  // shifted, or mirrored then shifted
    positions.insert({y, xx});
  }
  EXPECT_GT(positions.size(), 15u) << "crops and flips should vary with the seed";
}

TEST(Loader, OptionsAreValidated) {
  LoaderOptions opts;
  opts.batch_size = 0;
  test::expect_bad_input([&] { BatchStream(tiny(3), kNorm, opts, 0); }, {"--batch-size must be >= 1, got 0"});
  TensorDataset empty = tiny(3).subset(torch::empty({0}, torch::kInt64));
  test::expect_bad_input([&] { BatchStream(empty, kNorm, LoaderOptions(), 0); }, {"empty dataset"});
}

}  // namespace
}  // namespace xfer
