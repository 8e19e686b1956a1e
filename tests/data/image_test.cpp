// Image folders: scanning order and labels, JPEG/PNG decoding against known pixels, transform geometry,
// corrupt files, folder specs, and a fine-tuning run on a folder through the trainer.
#include <filesystem>
#include <fstream>
#include <random>

#include "support.h"
#include "xfer/core/rng.h"
#include "xfer/data/image.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A folder of `classes` classes x `per_class` images of varying sizes; class c is a flat colour.
std::string img_tiny_folder(const std::string& root, int classes, int per_class) {
  const uint8_t colours[3][3] = {{220, 30, 30}, {30, 220, 30}, {30, 30, 220}};
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < per_class; ++i) {
      const auto* col = colours[c % 3];
      const std::string ext = i % 2 ? ".png" : ".jpg";
      test::write_image(cat(root, "/class", c, "/img", i, ext),
                        test::flat_image(40 + 3 * i, 48 - 2 * i, col[0], col[1], col[2]));
    }
  return root;
}

TEST(ImageFolder, ScansClassesAndFilesInTorchvisionOrder) {
  test::TempDir dir;
  const std::string root = dir.file("root");
  const Image px = test::flat_image(4, 4, 1, 2, 3);
  test::write_image(root + "/b/x.png", px);
  test::write_image(root + "/a/2.png", px);
  test::write_image(root + "/a/1.JPG", px);
  test::write_image(root + "/a/sub/0.png", px);
  std::ofstream(root + "/a/notes.txt") << "not an image";
  const FolderScan scan = scan_image_folder(root);
  EXPECT_EQ(scan.class_names, (std::vector<std::string>{"a", "b"}));
  // sorted(os.walk()): a's own files, then a/sub's, then b's.
  EXPECT_EQ(scan.files, (std::vector<std::string>{"a/1.JPG", "a/2.png", "a/sub/0.png", "b/x.png"}));
  EXPECT_EQ(scan.labels, (std::vector<int64_t>{0, 0, 0, 1}));
}

TEST(ImageFolder, EmptyClassOrRootIsBadInputNamingThePath) {
  test::TempDir dir;
  fs::create_directories(dir.file("none"));
  test::expect_bad_input([&] { scan_image_folder(dir.file("none")); },
                         {dir.file("none"), "no class folders"});
  test::write_image(dir.file("r/full/a.png"), test::flat_image(4, 4, 0, 0, 0));
  fs::create_directories(dir.file("r/empty"));
  test::expect_bad_input([&] { scan_image_folder(dir.file("r")); }, {dir.file("r/empty"), "holds no images"});
  test::expect_bad_input([&] { scan_image_folder(dir.file("missing")); },
                         {dir.file("missing"), "not a directory"});
  test::expect_bad_input([&] { load_task("folder:dir=" + dir.file("r") + ":test=none", 0); },
                         {dir.file("r/empty")});
}

TEST(ImageDecode, PngIsExact) {
  test::TempDir dir;
  const Image ramp = test::ramp_image(5, 7);
  write_png_rgb(dir.file("a.png"), ramp);
  const Image back = decode_image_file(dir.file("a.png"));
  EXPECT_EQ(back.height, 5);
  EXPECT_EQ(back.width, 7);
  EXPECT_EQ(back.rgb, ramp.rgb);
}

TEST(ImageDecode, JpegFlatBlocksWithinTolerance) {
  test::TempDir dir;
  // Four 16x16 quadrants of flat colour: JPEG keeps their centres within a few levels.
  Image img = test::flat_image(32, 32, 0, 0, 0);
  const uint8_t q[4][3] = {{250, 10, 10}, {10, 250, 10}, {10, 10, 250}, {128, 128, 128}};
  for (int64_t y = 0; y < 32; ++y)
    for (int64_t x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c) img.rgb[(y * 32 + x) * 3 + c] = q[(y / 16) * 2 + x / 16][c];
  write_jpeg_rgb(dir.file("q.jpg"), img, 95);
  for (int64_t min_side : {0, 8}) {
    const Image back = decode_image_file(dir.file("q.jpg"), min_side);
    // min_side=8: libjpeg-turbo's 1/4 scaling in the DCT domain gives 8x8.
    const int64_t side = min_side == 0 ? 32 : 8;
    ASSERT_EQ(back.height, side);
    ASSERT_EQ(back.width, side);
    for (int k = 0; k < 4; ++k) {
      const int64_t cy = (k / 2) * side / 2 + side / 4, cx = (k % 2) * side / 2 + side / 4;
      for (int c = 0; c < 3; ++c)
        EXPECT_NEAR(back.pixel(cy, cx)[c], q[k][c], 8)
            << "quadrant " << k << " channel " << c << " side " << side;
    }
  }
}

TEST(ImageDecode, CorruptDataIsBadInput) {
  test::TempDir dir;
  std::ofstream(dir.file("junk.jpg")) << "definitely not a jpeg";
  test::expect_bad_input([&] { decode_image_file(dir.file("junk.jpg")); }, {dir.file("junk.jpg")});
  const std::string bad_jpeg = std::string("\xff\xd8\xff\xe0", 4) + std::string(40, '\x01');
  std::ofstream(dir.file("trunc.jpg"), std::ios::binary) << bad_jpeg;
  test::expect_bad_input([&] { decode_image_file(dir.file("trunc.jpg")); }, {dir.file("trunc.jpg")});
  test::expect_bad_input([&] { decode_image_file(dir.file("absent.png")); }, {dir.file("absent.png")});
}

TEST(ImageTransform, CenterCropBoxIsResize256ThenCrop224) {
  const CropBox b = center_crop_box(300, 400, 256, 224);
  // Shorter side 300 -> 256: scale 256/300, so the 224 crop covers 262.5 source pixels, centred.
  EXPECT_DOUBLE_EQ(b.h, 262.5);
  EXPECT_DOUBLE_EQ(b.w, 262.5);
  EXPECT_DOUBLE_EQ(b.y, 18.75);
  EXPECT_DOUBLE_EQ(b.x, 68.75);
}

TEST(ImageTransform, RandomResizedCropStaysInsideWithScaleAndRatio) {
  std::mt19937_64 engine(7);
  for (int i = 0; i < 500; ++i) {
    const int64_t h = 50 + i % 300, w = 80 + (i * 7) % 200;
    const CropBox b = random_resized_crop_box(h, w, 0.08, 1.0, 3.0 / 4.0, 4.0 / 3.0, engine);
    ASSERT_GE(b.y, 0);
    ASSERT_GE(b.x, 0);
    ASSERT_LE(b.y + b.h, h);
    ASSERT_LE(b.x + b.w, w);
    const double area = b.h * b.w / static_cast<double>(h * w);
    EXPECT_GE(area, 0.08 * 0.8) << h << "x" << w;  // rounding of small crops
    EXPECT_LE(area, 1.0);
  }
  // Scale (1, 1) and ratio (1, 1) on a square image: the whole image.
  const CropBox whole = random_resized_crop_box(64, 64, 1.0, 1.0, 1.0, 1.0, engine);
  EXPECT_EQ(whole.h, 64);
  EXPECT_EQ(whole.w, 64);
}

TEST(ImageTransform, ResampleIdentityAndMirror) {
  const Image ramp = test::ramp_image(6, 9);
  std::vector<uint8_t> out(3 * 6 * 9), mirrored(3 * 6 * 9);
  resample_crop(ramp, {0, 0, 6, 9}, 6, 9, false, out.data());
  resample_crop(ramp, {0, 0, 6, 9}, 6, 9, true, mirrored.data());
  for (int64_t y = 0; y < 6; ++y)
    for (int64_t x = 0; x < 9; ++x)
      for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(out[c * 54 + y * 9 + x], ramp.pixel(y, x)[c]);
        EXPECT_EQ(mirrored[c * 54 + y * 9 + x], ramp.pixel(y, 8 - x)[c]);
      }
  // A 2x2 box downsampled to 1x1 samples its centre: the mean of the four pixels.
  std::vector<uint8_t> one(3);
  resample_crop(ramp, {2, 3, 2, 2}, 1, 1, false, one.data());
  const double mean_r =
      (ramp.pixel(2, 3)[0] + ramp.pixel(2, 4)[0] + ramp.pixel(3, 3)[0] + ramp.pixel(3, 4)[0]) / 4.0;
  EXPECT_NEAR(one[0], mean_r, 0.51);
}

TEST(ImageFolder, CorruptFilesAreSkippedAndCountedOrFail) {
  test::TempDir dir;
  const std::string root = img_tiny_folder(dir.file("f"), 2, 3);
  std::ofstream(root + "/class0/broken.jpg") << "garbage";
  const Task task = load_task("folder:dir=" + root + ":test=none:size=16", 0);
  ASSERT_EQ(task.train.size(), 7);
  const auto& files = *task.train.files;
  std::vector<int64_t> all(7);
  for (int64_t i = 0; i < 7; ++i) all[i] = i;
  const torch::Tensor x = files.load_batch(all, true, true, 1, 2);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{7, 3, 16, 16}));
  EXPECT_EQ(files.corrupt_files(), std::vector<std::string>{root + "/class0/broken.jpg"});
  EXPECT_EQ(files.skipped(), 1);

  const Task strict = load_task("folder:dir=" + root + ":test=none:size=16:corrupt=fail", 0);
  test::expect_bad_input([&] { strict.train.files->load_batch(all, true, true, 1, 1); },
                         {root + "/class0/broken.jpg"});
}

TEST(ImageFolder, SpecSplitsBatchesAndEvalImages) {
  test::TempDir dir;
  const std::string root = img_tiny_folder(dir.file("f"), 3, 4);
  const Task task = load_task("folder:dir=" + root + ":val=1:per_class=2:test=rest:size=24:resize=28", 0);
  EXPECT_EQ(task.class_names(), (std::vector<std::string>{"class0", "class1", "class2"}));
  EXPECT_EQ(task.train.size(), 6);
  EXPECT_EQ(task.val.size(), 3);
  EXPECT_EQ(task.test.size(), 3);
  EXPECT_EQ(task.train.channels(), 3);
  EXPECT_EQ(task.train.height(), 24);
  // Evaluation images: resize + center crop of a flat colour is that colour.
  const torch::Tensor ev = task.test.eval_images(0, task.test.size());
  ASSERT_EQ(ev.sizes(), (std::vector<int64_t>{3, 3, 24, 24}));
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t label = task.test.labels[i].item<int64_t>();
    EXPECT_GT(ev[i][label].to(torch::kFloat).mean().item<double>(), 180.0) << "example " << i;
  }
  // Training batches are pure functions of (seed, batch): two streams agree bit for bit.
  LoaderOptions lo;
  lo.batch_size = 4;
  lo.workers = 2;
  BatchStream a(task.train, imagenet_normalization(), lo, 5), b(task.train, imagenet_normalization(), lo, 5);
  for (int k = 0; k < 3; ++k) {
    const Batch ba = a.next(), bb = b.next();
    ASSERT_EQ(ba.x.sizes(), (std::vector<int64_t>{4, 3, 24, 24}));
    EXPECT_TRUE(torch::equal(ba.x, bb.x));
    EXPECT_TRUE(torch::equal(ba.y, bb.y));
  }
  a.seek(1);
  b.seek(0);
  b.next();
  EXPECT_TRUE(torch::equal(a.next().x, b.next().x));
}

TEST(ImageFolder, SplitListsAndTestDir) {
  test::TempDir dir;
  const std::string root = img_tiny_folder(dir.file("train"), 2, 3);
  const std::string test_root = img_tiny_folder(dir.file("test"), 2, 2);
  std::ofstream(dir.file("train.txt"))
      << "class0/img0.jpg\nclass1/img1.png\n# a comment\n\nclass1/img2.jpg\n";
  std::ofstream(dir.file("val.txt")) << "class0/img1.png\n";
  const Task t = load_task(cat("folder:dir=", root, ":train_list=", dir.file("train.txt"),
                               ":val_list=", dir.file("val.txt"), ":test_dir=", test_root),
                           0);
  EXPECT_EQ(t.train.size(), 3);
  EXPECT_EQ(t.val.size(), 1);
  EXPECT_EQ(t.test.size(), 4);
  EXPECT_EQ(t.test.files->path(0), test_root + "/class0/img0.jpg");
  std::ofstream(dir.file("bad.txt")) << "nosuchclass/x.jpg\n";
  test::expect_bad_input(
      [&] { load_task(cat("folder:dir=", root, ":train_list=", dir.file("bad.txt"), ":test=none"), 0); },
      {dir.file("bad.txt"), "nosuchclass/x.jpg"});
  test::expect_bad_input([&] { load_task(cat("folder:dir=", root), 0); }, {"test_dir= or test_list="});
  test::expect_bad_input([&] { load_task(cat("folder:dir=", root, ":shift=invert:test=none"), 0); },
                         {"not supported on image folders"});
}

TEST(ImageFolder, FineTunesOnAFolderEndToEnd) {
  test::TempDir dir;
  const std::string root = img_tiny_folder(dir.file("f"), 2, 6);
  RunOptions o;
  o.method = "scratch";
  o.target = "folder:dir=" + root + ":val=1:test=rest:per_class=4:size=32:resize=36";
  o.backbone = "resnet18:width=4";
  o.threads = 1;
  o.out = dir.file("run");
  o.trainer.iterations = 6;
  o.trainer.eval_every = 3;
  o.loader.batch_size = 4;
  o.loader.workers = 1;
  auto config = methods().get(o.method).make_config();
  const nlohmann::json r = run_finetune(o, *config);
  EXPECT_EQ(r["train_size"], 8);
  EXPECT_EQ(r["test_size"], 2);
  EXPECT_TRUE(r.contains("test_top1"));
  EXPECT_EQ(r["unreadable_images"].size(), 0u);
  EXPECT_TRUE(fs::exists(dir.file("run/checkpoints/last.pt")));
}

TEST(ImageFolder, CacheStoresDecodedImagesOnceAndKeepsCorruptPolicy) {
  test::TempDir dir;
  const std::string root = img_tiny_folder(dir.file("f"), 2, 3);
  std::ofstream(root + "/class1/broken.png") << "garbage";
  const std::string plain = "folder:dir=" + root + ":test=none:size=16:resize=20";
  const std::string cached = plain + ":cache=" + dir.file("c.bin");
  const Task a = load_task(plain, 0), b = load_task(cached, 0);
  ASSERT_TRUE(fs::exists(dir.file("c.bin")));
  const std::string written = test::mark_file(dir.file("c.bin"));
  const Task c = load_task(cached, 0);  // reuses the file
  EXPECT_EQ(test::file_stamp(dir.file("c.bin")), written) << "the cache was written again";
  // Flat colours: the cached (downscaled) images give the same evaluation crops within rounding.
  const torch::Tensor ea = a.train.eval_images(0, a.train.size()).to(torch::kInt);
  const torch::Tensor ec = c.train.eval_images(0, c.train.size()).to(torch::kInt);
  EXPECT_LE((ea - ec).abs().max().item<int>(), 2);
  EXPECT_EQ(c.train.files->corrupt_files(), std::vector<std::string>{root + "/class1/broken.png"});
  // A folder the cache does not cover (a new image) rebuilds it.
  test::write_image(root + "/class0/new.png", test::flat_image(30, 30, 1, 2, 3));
  const Task d = load_task(cached, 0);
  EXPECT_EQ(d.train.size(), 8);
  EXPECT_EQ(d.train.eval_images(0, d.train.size()).size(0), 8);
}

TEST(ImageFolder, InMemoryOnlyMethodsSayNotSupported) {
  test::TempDir dir;
  const Task task = load_task("folder:dir=" + img_tiny_folder(dir.file("f"), 2, 2) + ":test=none:size=16", 0);
  test::expect_bad_input([&] { task.train.require_in_memory("method gradmix"); },
                         {"method gradmix is not supported on image folders yet"});
}

}  // namespace
}  // namespace xfer
