#include <filesystem>
#include <set>

#include "support.h"
#include "xfer/data/spec.h"

namespace xfer {
namespace {

/// (file class, index within class, split salt) of each image, from the pixels write_tiny_idx encodes.
std::vector<std::tuple<int, int, int>> ids(const TensorDataset& d) {
  std::vector<std::tuple<int, int, int>> out;
  for (int64_t i = 0; i < d.size(); ++i) {
    const auto px = d.images[i][0][0];
    out.emplace_back(px[0].item<int>(), px[1].item<int>(), px[2].item<int>());
  }
  return out;
}

TEST(Spec, ParsesEveryKey) {
  const auto s = DatasetSpec::parse(
      "fmnist:classes=2,4-6,9:per_class=10:val=0.2:test=rest:test_per_class=50:part=1/"
      "3:shift=rot90+invert+noise0.1:seed=7");
  EXPECT_EQ(s.source, "fmnist");
  EXPECT_EQ(s.classes, (std::vector<int64_t>{2, 4, 5, 6, 9}));
  EXPECT_EQ(*s.per_class, 10);
  EXPECT_DOUBLE_EQ(s.val_fraction, 0.2);
  EXPECT_EQ(s.test, "rest");
  EXPECT_EQ(*s.test_per_class, 50);
  EXPECT_EQ(s.part_index, 1);
  EXPECT_EQ(s.part_count, 3);
  EXPECT_EQ(s.shifts, (std::vector<std::string>{"rot90", "invert", "noise0.1"}));
  EXPECT_EQ(*s.seed, 7u);
  EXPECT_EQ(DatasetSpec::parse("fmnist:val=25").val_count, 25);
}

TEST(Spec, KeysApplyWhereTheirDatasetUsesThem) {
  // Each key's scope comes from the one key table; a key outside it is refused by name.
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:train_images=a.idx"); },
                         {"train_images is only for idx datasets"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:train_list=l.txt"); },
                         {"train_list is only for image folders (folder:dir=ROOT)"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:size=64"); },
                         {"size is only for image folders and image benchmarks"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:split=train"); },
                         {"split is only for aircraft, dtd and flowers"});
  test::expect_bad_input([] { DatasetSpec::parse("cub:dir=x:fold=2"); }, {"fold is only for dtd"});
  // The unknown-key message lists every key of the table, grouped as `xfer data --help` does.
  test::expect_bad_input(
      [] { DatasetSpec::parse("fmnist:colour=red"); },
      {"valid keys: classes, per_class, val, fraction, test, test_per_class, part, shift, seed, "
       "dir, train_images, train_labels, test_images, test_labels, names; folder: test_dir, "
       "train_list, val_list, test_list, size, resize, crop, scale, ratio, mean, std, corrupt, "
       "cache; benchmarks: split, fold and the image keys"});
  // Numbers are whole: no leading or trailing space.
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:per_class= 5"); }, {"per_class expects an integer"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:fraction=inf"); }, {"fraction expects a number"});
}

TEST(Spec, AbsolutePathsOnlyForPathKeys) {
  const std::string cwd = std::filesystem::current_path().lexically_normal().string();
  const std::string out = absolute_spec_paths("folder:dir=imgs:train_list=l.txt:cache=c:size=64:crop=random");
  EXPECT_EQ(out, "folder:dir=" + cwd + "/imgs:train_list=" + cwd + "/l.txt:cache=" + cwd +
                     "/c:size=64:crop=random");
  EXPECT_EQ(absolute_spec_paths("idx:train_images=a:train_labels=b:classes=1,2"),
            "idx:train_images=" + cwd + "/a:train_labels=" + cwd + "/b:classes=1,2");
  // A spec that does not parse is left as it is, for the run to report.
  EXPECT_EQ(absolute_spec_paths("fmnist:colour=red:dir=x"), "fmnist:colour=red:dir=x");
}

TEST(Spec, ParseErrorsNameTheProblem) {
  test::expect_bad_input([] { DatasetSpec::parse("cifar:classes=1"); },
                         {"unknown dataset 'cifar'", "fmnist, idx"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:colour=red"); },
                         {"unknown key 'colour'", "classes, per_class, val"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:classes=1,x"); },
                         {"classes expects an integer, got 'x'"});
  // Found by tests/fuzz/spec_fuzz: a huge range used to be expanded until memory ran out.
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:classes=1-977777777774"); },
                         {"class range '1-977777777774' is implausibly large"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:classes=1,2,1"); }, {"listed twice"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:classes=5-2"); }, {"empty class range '5-2'"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:per_class=0"); }, {"per_class must be >= 1, got 0"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:per_class=10:per_class=5"); }, {"given twice"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:part=3/3"); }, {"part 3/3 needs I < N"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:shift=blur"); }, {"unknown shift 'blur'"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:shift=noise2"); },
                         {"noise std must be in [0, 1], got 2"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:test=val"); }, {"test must be file, rest or none"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:seed="); }, {"seed has an empty value"});
  test::expect_bad_input([] { DatasetSpec::parse("fmnist:perclass"); },
                         {"expected key=value, got 'perclass'"});
  test::expect_bad_input([] { DatasetSpec::parse("idx:classes=1"); }, {"idx needs dir=PATH"});
}

TEST(Spec, ClassSubsetsAreRelabelledInTheOrderGivenWithNames) {
  test::TempDir dir;
  const std::string base = test::write_tiny_idx(dir.path(), 4, 6, 3);
  const Task t = load_task(base + ":classes=3,1:names=a,b,c,d", 0);
  EXPECT_EQ(t.class_names(), (std::vector<std::string>{"d", "b"}));
  EXPECT_EQ(t.train.size(), 12);
  EXPECT_EQ(t.test.size(), 6);
  for (int64_t i = 0; i < t.train.size(); ++i) {
    const int file_class = t.train.images[i][0][0][0].item<int>();
    EXPECT_EQ(t.train.labels[i].item<int64_t>(), file_class == 3 ? 0 : 1);
  }
}

TEST(Spec, FewShotValidationAndTestSplitsAreDisjointAndSeeded) {
  test::TempDir dir;
  const std::string base = test::write_tiny_idx(dir.path(), 3, 20, 5);
  const Task t = load_task(base + ":per_class=4:val=5:test=rest", 11);
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(t.val.class_counts(), (std::vector<int64_t>{5, 5, 5}));
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>{11, 11, 11}));
  std::set<std::tuple<int, int, int>> seen;
  for (const auto* d : {&t.train, &t.val, &t.test})
    for (const auto& id : ids(*d)) EXPECT_TRUE(seen.insert(id).second) << "an example is in two splits";
  // The same seed draws the same examples; another seed draws others.
  EXPECT_EQ(ids(load_task(base + ":per_class=4:val=5", 11).train), ids(t.train));
  EXPECT_NE(ids(load_task(base + ":per_class=4:val=5", 12).train), ids(t.train));
  EXPECT_EQ(ids(load_task(base + ":per_class=4:val=5:seed=11", 99).train), ids(t.train));
  // The validation split does not depend on per_class.
  EXPECT_EQ(ids(load_task(base + ":per_class=9:val=5", 11).val), ids(t.val));
}

TEST(Spec, FractionCountRoundsHalfUpWithAtLeastOne) {
  EXPECT_EQ(fraction_count(0.15, 100), 15);
  EXPECT_EQ(fraction_count(0.15, 20), 3);
  EXPECT_EQ(fraction_count(0.15, 10), 2);  // 1.5 rounds up
  EXPECT_EQ(fraction_count(0.3, 5), 2);    // 1.5, although 0.3 x 5 is 1.4999999999999998 in binary
  EXPECT_EQ(fraction_count(0.3, 29), 9);   // 8.7
  EXPECT_EQ(fraction_count(0.5, 3), 2);    // 1.5
  EXPECT_EQ(fraction_count(0.15, 3), 1);   // 0.45 would round to 0: at least 1
  EXPECT_EQ(fraction_count(0.01, 1), 1);
  EXPECT_EQ(fraction_count(1.0, 7), 7);
  EXPECT_EQ(fraction_count(0.5, 30), 15);
}

TEST(Spec, FractionKeepsThatShareOfEachClassSeededAndNested) {
  test::TempDir dir;
  const std::string base = test::write_tiny_idx(dir.path(), 3, 20, 2);
  const Task t = load_task(base + ":fraction=0.15", 4);
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_DOUBLE_EQ(*DatasetSpec::parse(base + ":fraction=0.15").fraction, 0.15);
  // Of what val= leaves: 0.3 x 15 = 4.5 -> 5.
  const Task v = load_task(base + ":fraction=0.3:val=5", 4);
  EXPECT_EQ(v.train.class_counts(), (std::vector<int64_t>{5, 5, 5}));
  EXPECT_EQ(v.val.class_counts(), (std::vector<int64_t>{5, 5, 5}));
  EXPECT_EQ(load_task(base + ":fraction=1", 4).train.size(), 60);
  // The same seed keeps the same subset; another seed another; 15% is part of 30%, which is part of 50%.
  EXPECT_EQ(ids(load_task(base + ":fraction=0.15", 4).train), ids(t.train));
  EXPECT_EQ(ids(load_task(base + ":fraction=0.15:seed=4", 9).train), ids(t.train));
  EXPECT_NE(ids(load_task(base + ":fraction=0.15", 5).train), ids(t.train));
  std::set<std::tuple<int, int, int>> prev;
  for (const char* f : {"0.15", "0.3", "0.5"}) {
    std::set<std::tuple<int, int, int>> now;
    for (const auto& id : ids(load_task(base + ":fraction=" + f, 4).train)) now.insert(id);
    for (const auto& id : prev)
      EXPECT_TRUE(now.count(id)) << "fraction=" << f << " drops an example a smaller one kept";
    prev = now;
  }
  // per_class=N and fraction keep the same examples when they keep as many.
  EXPECT_EQ(ids(load_task(base + ":per_class=3", 4).train), ids(t.train));
  for (const char* bad : {"0", "1.5", "-0.2", "abc", "nan"})
    test::expect_bad_input([&] { DatasetSpec::parse(base + ":fraction=" + bad); }, {std::string("fraction")});
  test::expect_bad_input([&] { DatasetSpec::parse(base + ":fraction=0"); },
                         {"fraction must be in (0, 1], got 0"});
  test::expect_bad_input([&] { DatasetSpec::parse(base + ":fraction=0.3:per_class=3"); },
                         {"give per_class= or fraction=, not both"});
}

TEST(Spec, TestFileCapAndDisjointParts) {
  test::TempDir dir;
  const std::string base = test::write_tiny_idx(dir.path(), 2, 12, 8);
  const Task capped = load_task(base + ":test_per_class=3", 0);
  EXPECT_EQ(capped.test.class_counts(), (std::vector<int64_t>{3, 3}));
  for (const auto& id : ids(capped.test))
    EXPECT_EQ(std::get<2>(id), 2) << "test images come from the test file";
  const Task a = load_task(base + ":part=0/2:seed=1", 0), b = load_task(base + ":part=1/2:seed=2", 0);
  EXPECT_EQ(a.train.size(), 12);
  std::set<std::tuple<int, int, int>> in_a;
  for (const auto& id : ids(a.train)) in_a.insert(id);
  for (const auto& id : ids(b.train)) EXPECT_FALSE(in_a.count(id)) << "parts overlap whatever the seeds";
}

TEST(Spec, LoadErrorsNameTheBadValue) {
  test::TempDir dir;
  const std::string base = test::write_tiny_idx(dir.path(), 3, 10, 2);
  test::expect_bad_input([&] { load_task(base + ":classes=1,7", 0); }, {"unknown class 7", "classes 0-2"});
  test::expect_bad_input([&] { load_task(base + ":per_class=11", 0); },
                         {"per_class=11", "class 0 (0) has only 10 training examples"});
  test::expect_bad_input([&] { load_task(base + ":per_class=8:val=3", 0); },
                         {"only 7 training examples after val=3"});
  test::expect_bad_input([&] { load_task(base + ":val=10", 0); }, {"val=10 leaves no training examples"});
  test::expect_bad_input([&] { load_task(base + ":test=rest", 0); }, {"test split has no examples"});
  test::expect_bad_input([] { load_task("fmnist:dir=/nonexistent", 0); },
                         {"Fashion-MNIST file not found", "apt-get install dataset-fashion-mnist"});
  test::expect_bad_input([] { load_task("idx:dir=/nonexistent", 0); },
                         {"file not found: /nonexistent/train-images"});
}

TEST(Spec, ShiftsTransformPixelsAsNamed) {
  const torch::Tensor img = torch::arange(16, torch::kUInt8).view({1, 1, 4, 4});
  const torch::Tensor ids = torch::zeros({1}, torch::kInt64);
  EXPECT_TRUE(torch::equal(apply_shifts(img, {"invert"}, 0, ids), 255 - img));
  // rot90 turns clockwise: the left column becomes the top row, read bottom-up.
  const torch::Tensor r = apply_shifts(img, {"rot90"}, 0, ids);
  EXPECT_TRUE(torch::equal(r[0][0][0], torch::tensor({12, 8, 4, 0}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(apply_shifts(img, {"rot360"}, 0, ids), img));
  EXPECT_TRUE(torch::equal(apply_shifts(img, {"rot90", "invert"}, 0, ids), 255 - r));
  // Any angle: bilinear, and a 0-degree rotation is the identity.
  EXPECT_TRUE(torch::equal(apply_shifts(img, {"rot0.0"}, 0, ids), img));
  const torch::Tensor flat = torch::full({1, 1, 9, 9}, 100, torch::kUInt8);
  EXPECT_EQ(apply_shifts(flat, {"rot30"}, 0, ids)[0][0][4][4].item<int>(), 100);
  // Noise: seeded per image id, so the same image gets the same noise in any split.
  const torch::Tensor grey = torch::full({2, 1, 16, 16}, 128, torch::kUInt8);
  const torch::Tensor n1 = apply_shifts(grey, {"noise0.1"}, 5, torch::tensor({3, 4}));
  const torch::Tensor n2 = apply_shifts(grey.slice(0, 1, 2), {"noise0.1"}, 5, torch::tensor({4}));
  EXPECT_TRUE(torch::equal(n1[1], n2[0]));
  EXPECT_FALSE(torch::equal(n1[0], n1[1]));
  const double sd = (n1.to(torch::kFloat64) - 128).std().item<double>();
  EXPECT_NEAR(sd, 25.5, 5.0);
}

TEST(Spec, EmbeddedFashionMnistTask) {
  XFER_REQUIRE_FMNIST();
  const Task t = load_task("fmnist:classes=2,4,6,7,9:per_class=10:seed=0", 0);
  EXPECT_EQ(t.class_names(),
            (std::vector<std::string>{"Pullover", "Coat", "Shirt", "Sneaker", "Ankle boot"}));
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>(5, 10)));
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>(5, 1000)));
  EXPECT_EQ(t.val.size(), 0);
  EXPECT_EQ(t.train.images.sizes(), (std::vector<int64_t>{50, 1, 28, 28}));
}

}  // namespace
}  // namespace xfer
