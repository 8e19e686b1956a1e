// Hostile input (issue 21): image files, image caches and folder trees an attacker laid out. One corrupt JPEG
// spoils no other decode, a cache cannot point outside its file, links cannot loop or relabel images, and an
// unreadable image is replaced only by one of its own class.
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/image.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/spec.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A JPEG cut after its frame marker's length and followed by 0xff bytes: TurboJPEG's header read fails
/// ("Bogus marker length") and, on libjpeg-turbo 2.1, every later header read on the same handle did too.
std::string him_broken_jpeg(const test::TempDir& dir) {
  test::write_image(dir.file("model.jpg"), test::flat_image(16, 16, 200, 10, 10));
  const std::string good = read_file(dir.file("model.jpg"));
  return good.substr(0, good.find("\xff\xc0") + 4) + std::string(20, '\xff');
}

TEST(HostileImages, OneCorruptJpegSpoilsNoLaterDecodeOnItsThread) {
  test::TempDir dir;
  test::write_image(dir.file("good.jpg"), test::ramp_image(16, 24));
  std::ofstream(dir.file("bad.jpg"), std::ios::binary) << him_broken_jpeg(dir);
  const Image before = decode_image_file(dir.file("good.jpg"));
  for (int round = 0; round < 3; ++round) {
    test::expect_bad_input([&] { decode_image_file(dir.file("bad.jpg")); },
                           {"bad.jpg", "not a readable JPEG", "marker"});
    const Image after = decode_image_file(dir.file("good.jpg"));
    ASSERT_EQ(after.rgb, before.rgb) << "round " << round;
  }
}

TEST(HostileImages, CorruptSkipSkipsExactlyTheBadFiles) {
  test::TempDir dir;
  const std::string root = dir.file("f");
  for (int i = 0; i < 6; ++i)
    test::write_image(cat(root, "/a/", i, ".jpg"), test::flat_image(20, 20, 200, 10, 10));
  for (int i = 0; i < 6; ++i)
    test::write_image(cat(root, "/b/", i, ".jpg"), test::flat_image(20, 20, 10, 10, 200));
  std::ofstream(root + "/a/0broken.jpg", std::ios::binary) << him_broken_jpeg(dir);
  const Task task = load_task("folder:dir=" + root + ":test=none:size=16:resize=16", 0);
  ASSERT_EQ(task.train.size(), 13);
  std::vector<int64_t> all(13);
  for (int64_t i = 0; i < 13; ++i) all[static_cast<size_t>(i)] = i;
  const torch::Tensor x = task.train.files->load_batch(all, false, false, 0, 1);  // one thread: one handle
  EXPECT_EQ(task.train.files->skipped(), 1);
  EXPECT_EQ(task.train.files->corrupt_files(), std::vector<std::string>{root + "/a/0broken.jpg"});
  // Every example shows its own class's colour: red for a (the broken file's stand-in too), blue for b.
  for (int64_t i = 0; i < 13; ++i) {
    const bool red = task.train.labels[i].item<int64_t>() == 0;
    EXPECT_EQ(x[i][0].to(torch::kInt).max().item<int>() > 150, red) << i;
  }
}

TEST(HostileImages, AClassOfUnreadableImagesFailsInsteadOfBorrowingAnother) {
  test::TempDir dir;
  const std::string root = dir.file("f");
  for (int i = 0; i < 3; ++i)
    test::write_image(cat(root, "/a/", i, ".png"), test::flat_image(12, 12, 200, 10, 10));
  fs::create_directories(root + "/b");
  for (int i = 0; i < 3; ++i)
    std::ofstream(cat(root, "/b/", i, ".png"), std::ios::binary) << "\x89PNG\r\n\x1a\n broken";
  const Task task = load_task("folder:dir=" + root + ":test=none:size=8:resize=8", 0);
  std::vector<int64_t> b_examples;
  for (int64_t i = 0; i < task.train.size(); ++i)
    if (task.train.labels[i].item<int64_t>() == 1) b_examples.push_back(i);
  ASSERT_EQ(b_examples.size(), 3u);
  test::expect_bad_input([&] { task.train.files->load_batch(b_examples, false, false, 0, 1); },
                         {"no image of class", "can be decoded"});
}

TEST(HostileImages, CraftedCacheCannotPointOutsideItsFile) {
  test::TempDir dir;
  auto le = [](std::string& s, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  };
  // The cache: an entry of 0xffffffff x 0xffffffff pixels at offset 48 (h*w*3 overflowed to a small
  // number).
  std::string bad = "XFERIMC1";
  le(bad, 1, 8), le(bad, 8, 8), le(bad, 48, 8), le(bad, 0xffffffff, 4), le(bad, 0xffffffff, 4), le(bad, 4, 4);
  bad += "/a/b" + std::string(16, '\0');
  std::ofstream(dir.file("bad.cache"), std::ios::binary) << bad;
  EXPECT_EQ(ImageCache::open(dir.file("bad.cache")), nullptr);
  // A count no file can hold, and an offset past the end.
  std::string many = "XFERIMC1";
  le(many, uint64_t(1) << 62, 8), le(many, 8, 8), many += std::string(8, '\0');
  std::ofstream(dir.file("many.cache"), std::ios::binary) << many;
  EXPECT_EQ(ImageCache::open(dir.file("many.cache")), nullptr);
  std::string past = "XFERIMC1";
  le(past, 1, 8), le(past, 8, 8), le(past, 1000, 8), le(past, 1, 4), le(past, 1, 4), le(past, 1, 4);
  past += "p";
  std::ofstream(dir.file("past.cache"), std::ios::binary) << past;
  EXPECT_EQ(ImageCache::open(dir.file("past.cache")), nullptr);
  // A well-formed one is read.
  std::string good = "XFERIMC1";
  le(good, 1, 8), le(good, 8, 8), le(good, 45, 8), le(good, 1, 4), le(good, 1, 4), le(good, 1, 4);
  good += "p\x01\x02\x03";
  std::ofstream(dir.file("good.cache"), std::ios::binary) << good;
  const auto cache = ImageCache::open(dir.file("good.cache"));
  ASSERT_NE(cache, nullptr);
  ASSERT_NE(cache->find("p"), nullptr);
  EXPECT_EQ(cache->find("p")->rgb[2], 3);
}

/// A folder of classes a and b with one image each, for link tests.
std::string him_folder(const test::TempDir& dir) {
  const std::string root = dir.file("root");
  test::write_image(root + "/a/1.png", test::flat_image(4, 4, 1, 2, 3));
  test::write_image(root + "/b/1.png", test::flat_image(4, 4, 3, 2, 1));
  return root;
}

TEST(HostileImages, LinksThatLoopOrLeaveTheirClassAreRefused) {
  {  // a/l1 -> . twice: walked forever, or every image counted again per link
    test::TempDir dir;
    const std::string root = him_folder(dir);
    fs::create_directory_symlink(".", root + "/a/l1");
    fs::create_directory_symlink(".", root + "/a/l2");
    test::expect_bad_input([&] { scan_image_folder(root); }, {root + "/a/l", "a link cycle"});
  }
  {  // a/up -> ..: class b's images would be labelled a
    test::TempDir dir;
    const std::string root = him_folder(dir);
    fs::create_directory_symlink("..", root + "/a/up");
    test::expect_bad_input([&] { scan_image_folder(root); }, {root + "/a/up", "outside its class folder"});
  }
  {  // a/other -> ../b, and a file link to b's image
    test::TempDir dir;
    const std::string root = him_folder(dir);
    fs::create_symlink("../b/1.png", root + "/a/2.png");
    test::expect_bad_input([&] { scan_image_folder(root); }, {root + "/a/2.png", "outside its class folder"});
  }
  {  // a class folder that is a link to another class, or to the root
    test::TempDir dir;
    const std::string root = him_folder(dir);
    fs::create_directory_symlink("a", root + "/c");
    test::expect_bad_input([&] { scan_image_folder(root); }, {"two labels"});
    fs::remove(root + "/c");
    fs::create_directory_symlink(".", root + "/c");
    test::expect_bad_input([&] { scan_image_folder(root); }, {"holds the whole folder"});
  }
  {  // allowed: a class folder elsewhere, and a link inside a class to its own subfolder
    test::TempDir dir;
    const std::string root = him_folder(dir);
    test::write_image(dir.file("elsewhere/x.png"), test::flat_image(4, 4, 9, 9, 9));
    fs::create_directory_symlink(dir.file("elsewhere"), root + "/c");
    test::write_image(root + "/a/sub/2.png", test::flat_image(4, 4, 1, 2, 3));
    const FolderScan scan = scan_image_folder(root);
    EXPECT_EQ(scan.class_names, (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(scan.files, (std::vector<std::string>{"a/1.png", "a/sub/2.png", "b/1.png", "c/x.png"}));
  }
}

TEST(HostileImages, NamesThatAreNotUtf8AndSplitListsLeavingTheRootAreRefused) {
  test::TempDir dir;
  const std::string root = him_folder(dir);
  test::write_image(root + "/c\xff/1.png", test::flat_image(4, 4, 1, 1, 1));
  test::expect_bad_input([&] { scan_image_folder(root); },
                         {"class folder name is not valid UTF-8", "c\\xff"});
  fs::remove_all(root + "/c\xff");
  std::ofstream(dir.file("list.txt")) << "a/1.png\na/../../secret.png\n";
  test::expect_bad_input(
      [&] {
        read_split_list(root, dir.file("list.txt"), {"a", "b"});
      },
      {"line 2", "no '..'"});
}

/// A PNG chunk: length, type and data, CRC.
std::string him_chunk(const std::string& type_and_data) {
  std::string out;
  const auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>(v >> s));
  };
  be32(static_cast<uint32_t>(type_and_data.size() - 4));
  out += type_and_data;
  be32(static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(type_and_data.data()),
                                   static_cast<uInt>(type_and_data.size()))));
  return out;
}

/// A PNG whose header declares `w` x `h` pixels, then an empty IDAT: libpng reads the header and stops.
std::string him_png_header(uint32_t w, uint32_t h) {
  std::string ihdr = "IHDR";
  for (uint32_t v : {w, h})
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<char>(v >> s));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + him_chunk(ihdr) + him_chunk("IDAT");
}

TEST(HostileImages, DecompressionBombsAreRefusedBeforeAllocating) {
  const std::string png = him_png_header(100000, 100000);  // 3e10 bytes of RGB from 33 bytes
  test::expect_bad_input(
      [&] { decode_image(reinterpret_cast<const uint8_t*>(png.data()), png.size(), "bomb.png"); },
      {"bomb.png", "100000x100000", "at most 178956970 pixels"});
}

}  // namespace
}  // namespace xfer
