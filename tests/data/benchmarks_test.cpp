// MAT v5 files and the benchmark layouts (CUB, Aircraft, Pets, DTD, Flowers-102, Cars, CIFAR), each written
// here in its real layout, tiny, byte by byte where it is binary; then hostile variants of each.
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/benchmarks.h"
#include "xfer/data/mat.h"
#include "xfer/data/spec.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

// ---- A MAT v5 writer, element by element, as the format describes it ----

std::string mat_le32(uint32_t v) {
  return std::string(reinterpret_cast<const char*>(&v), 4);
}
std::string mat_le16(uint16_t v) {
  return std::string(reinterpret_cast<const char*>(&v), 2);
}

/// A data element: tag (type, byte count), data, zero padding to 8 bytes.
std::string mat_element(uint32_t type, const std::string& data) {
  std::string e = mat_le32(type) + mat_le32(static_cast<uint32_t>(data.size())) + data;
  e.resize((e.size() + 7) / 8 * 8, '\0');
  return e;
}
/// The small element form: count and type in one word, up to 4 bytes of data in the next.
std::string mat_small_element(uint32_t type, const std::string& data) {
  std::string e = mat_le32((static_cast<uint32_t>(data.size()) << 16) | type) + data;
  e.resize(8, '\0');
  return e;
}

enum : uint32_t {
  kMiInt8 = 1,
  kMiUint8 = 2,
  kMiUint16 = 4,
  kMiInt32 = 5,
  kMiUint32 = 6,
  kMiDouble = 9,
  kMiMatrix = 14,
  kMiCompressed = 15
};
enum : uint32_t { kMxCell = 1, kMxStruct = 2, kMxChar = 4, kMxSparse = 5, kMxDouble = 6 };

std::string mat_dims(const std::vector<int32_t>& dims) {
  std::string s;
  for (int32_t d : dims) s += mat_le32(static_cast<uint32_t>(d));
  return s;
}
/// A miMATRIX element: flags, dimensions, name, then the class's own sub-elements.
std::string mat_matrix(uint32_t cls, const std::vector<int32_t>& dims, const std::string& name,
                       const std::string& body) {
  return mat_element(kMiMatrix, mat_element(kMiUint32, mat_le32(cls) + mat_le32(0)) +
                                    mat_element(kMiInt32, mat_dims(dims)) + mat_element(kMiInt8, name) +
                                    body);
}
std::string mat_doubles(const std::string& name, const std::vector<double>& v) {
  std::string data;
  for (double x : v) data += std::string(reinterpret_cast<const char*>(&x), 8);
  return mat_matrix(kMxDouble, {1, static_cast<int32_t>(v.size())}, name, mat_element(kMiDouble, data));
}
/// A double array stored as uint8, as MATLAB does when the values fit.
std::string mat_doubles_u8(const std::string& name, const std::vector<uint8_t>& v) {
  return mat_matrix(kMxDouble, {1, static_cast<int32_t>(v.size())}, name,
                    mat_element(kMiUint8, std::string(v.begin(), v.end())));
}
/// A char row, UTF-16 (ASCII here).
std::string mat_chars(const std::string& name, const std::string& text) {
  std::string data;
  for (unsigned char c : text) data += mat_le16(c);
  return mat_matrix(kMxChar, {1, static_cast<int32_t>(text.size())}, name, mat_element(kMiUint16, data));
}
std::string mat_cell(const std::string& name, const std::vector<std::string>& values) {
  std::string body;
  for (const auto& v : values) body += v;
  return mat_matrix(kMxCell, {1, static_cast<int32_t>(values.size())}, name, body);
}
/// A 1xN struct array; `values` holds element i's fields in order at i * fields.size() + f.
std::string mat_struct(const std::string& name, const std::vector<std::string>& fields,
                       const std::vector<std::string>& values) {
  const int32_t len = 32;
  std::string names;
  for (const auto& f : fields) {
    std::string padded = f;
    padded.resize(len, '\0');
    names += padded;
  }
  std::string body = mat_small_element(kMiInt32, mat_le32(len)) + mat_element(kMiInt8, names);
  for (const auto& v : values) body += v;
  return mat_matrix(kMxStruct, {1, static_cast<int32_t>(values.size() / fields.size())}, name, body);
}
std::string mat_compressed(const std::string& var) {
  uLongf n = compressBound(var.size());
  std::string out(n, '\0');
  EXPECT_EQ(compress2(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(var.data()),
                      var.size(), 6),
            Z_OK);
  out.resize(n);
  return mat_le32(kMiCompressed) + mat_le32(static_cast<uint32_t>(n)) +
         out;  // compressed elements are not padded
}
std::string mat_header() {
  std::string h = "MATLAB 5.0 MAT-file, written by xfer's tests";
  h.resize(116, ' ');
  return h + std::string(8, '\0') + mat_le16(0x0100) + "IM";
}
std::string mat_file(const std::vector<std::string>& vars, bool compress) {
  std::string f = mat_header();
  for (const auto& v : vars) f += compress ? mat_compressed(v) : v;
  return f;
}
void bm_write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::vector<std::string> mat_sample_vars() {
  return {mat_doubles("labels", {1, 2, 3.5}), mat_doubles_u8("ids", {7, 8}),
          mat_cell("class_names", {mat_chars("", "AM General Hummer"), mat_chars("", "Acura RL")}),
          mat_struct("annotations", {"fname", "class"},
                     {mat_chars("", "00001.jpg"), mat_doubles("", {2}), mat_chars("", "00002.jpg"),
                      mat_doubles("", {1})})};
}
std::string mat_sample(bool compress) {
  return mat_file(mat_sample_vars(), compress);
}

TEST(MatFile, ReadsNumericCharCellAndStructArraysCompressedOrNot) {
  for (bool compress : {false, true}) {
    SCOPED_TRACE(compress ? "compressed" : "uncompressed");
    const auto vars = parse_mat(mat_sample(compress), "sample.mat");
    ASSERT_EQ(vars.size(), 4u);
    EXPECT_EQ(vars.at("labels").values, (std::vector<double>{1, 2, 3.5}));
    EXPECT_EQ(vars.at("labels").dims, (std::vector<int64_t>{1, 3}));
    EXPECT_EQ(vars.at("ids").values, (std::vector<double>{7, 8}));
    EXPECT_EQ(vars.at("ids").mclass, "double");
    const MatArray& names = vars.at("class_names");
    ASSERT_EQ(names.kind, MatArray::Kind::kCell);
    ASSERT_EQ(names.elements.size(), 2u);
    EXPECT_EQ(names.elements[0].text, "AM General Hummer");
    EXPECT_EQ(names.elements[1].text, "Acura RL");
    const MatArray& a = vars.at("annotations");
    EXPECT_EQ(a.fields, (std::vector<std::string>{"fname", "class"}));
    EXPECT_EQ(a.numel(), 2);
    EXPECT_EQ(a.field(1, "fname", "a").text, "00002.jpg");
    EXPECT_EQ(a.field(0, "class", "a").values, (std::vector<double>{2}));
    test::expect_bad_input([&] { a.field(2, "fname", "annotations"); },
                           {"annotations has 2 elements, no element 3"});
    test::expect_bad_input([&] { a.field(0, "bbox_x1", "annotations"); }, {"no field 'bbox_x1'"});
  }
}

TEST(MatFile, RefusesTruncatedAndLyingFilesWithOneLine) {
  for (bool compress : {false, true}) {
    // A file cut between variables is a valid file with fewer of them; every other cut is refused as
    // BadInput, in one line, never a crash.
    std::set<size_t> boundaries = {128};
    std::string full = mat_header();
    for (const auto& v : mat_sample_vars()) {
      full += compress ? mat_compressed(v) : v;
      boundaries.insert(full.size());
    }
    for (size_t cut = 129; cut < full.size(); ++cut) {
      if (boundaries.count(cut)) {
        EXPECT_NO_THROW(parse_mat(full.substr(0, cut), "cut.mat"));
        continue;
      }
      try {
        parse_mat(full.substr(0, cut), "cut.mat");
        ADD_FAILURE() << "a file cut at " << cut << " of " << full.size() << " bytes was accepted";
      } catch (const BadInput& e) {
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
      }
    }
  }
  test::expect_bad_input([] { parse_mat("MATLAB", "x.mat"); }, {"x.mat: not a MAT file (6 bytes"});
  std::string be = mat_header();
  be[126] = 'M', be[127] = 'I';
  test::expect_bad_input([&] { parse_mat(be, "be.mat"); }, {"big-endian"});
  test::expect_bad_input([] { parse_mat("MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5", "h.mat"); },
                         {"v7.3 (HDF5)"});
  // A tag declaring more bytes than the file holds.
  test::expect_bad_input(
      [] {
        parse_mat(mat_header() + mat_le32(kMiMatrix) + mat_le32(1u << 30) + std::string(64, '\0'), "big.mat");
      },
      {"declares 1073741824 bytes but only 64 are left"});
  // Dimensions that promise more values than there are.
  const std::string liar =
      mat_matrix(kMxDouble, {1000, 1000}, "x", mat_element(kMiDouble, std::string(24, '\0')));
  test::expect_bad_input([&] { parse_mat(mat_file({liar}, false), "liar.mat"); },
                         {"variable 'x' holds 3 values but its dimensions say 1000000"});
  // A cell array of a billion cells in a few bytes.
  const std::string cells = mat_matrix(kMxCell, {1, 1000000000}, "c", "");
  test::expect_bad_input([&] { parse_mat(mat_file({cells}, true), "cells.mat"); },
                         {"declares 1000000000 cells"});
  // A compressed element whose inner tag claims far more than deflate can produce from its bytes.
  std::string bomb = mat_compressed(mat_le32(kMiMatrix) + mat_le32(0x7fffffff) + std::string(16, '\0'));
  test::expect_bad_input([&] { parse_mat(mat_header() + bomb, "bomb.mat"); },
                         {"more than deflate can expand it to"});
  // ... or a little more than its stream holds.
  std::string short_stream = mat_compressed(mat_le32(kMiMatrix) + mat_le32(400) + std::string(16, '\0'));
  test::expect_bad_input([&] { parse_mat(mat_header() + short_stream, "short.mat"); }, {"(truncated)"});
  // A struct without fields that declares 2^40 elements: nothing to read per element, so nothing to loop over
  // (the fuzzer found that this looped 2^40 times).
  const std::string empty_struct =
      mat_matrix(kMxStruct, {1 << 20, 1 << 20}, "e",
                 mat_small_element(kMiInt32, mat_le32(8)) + mat_element(kMiInt8, ""));
  const auto vars = parse_mat(mat_file({empty_struct}, false), "empty.mat");
  EXPECT_EQ(vars.at("e").numel(), int64_t(1) << 40);
  EXPECT_TRUE(vars.at("e").elements.empty());
  test::expect_bad_input([&] { vars.at("e").field(0, "fname", "e"); }, {"e has no field 'fname'"});
  // Sparse arrays and arrays nested too deep.
  test::expect_bad_input(
      [&] {
        parse_mat(mat_file({mat_matrix(kMxSparse, {2, 2}, "s", "")}, false), "s.mat");
      },
      {"array class 5 (sparse)"});
  std::string nested = mat_doubles("", {1});
  for (int i = 0; i < 40; ++i) nested = mat_matrix(kMxCell, {1, 1}, i == 39 ? "deep" : "", nested);
  test::expect_bad_input([&] { parse_mat(mat_file({nested}, false), "deep.mat"); },
                         {"nested more than 32 deep"});
}

TEST(MatFile, RandomlyCorruptedBytesAreAcceptedOrRefusedNeverCrash) {
  std::mt19937 rng(7);
  for (bool compress : {false, true}) {
    const std::string full = mat_sample(compress);
    for (int trial = 0; trial < 400; ++trial) {
      std::string bad = full;
      for (int k = 0; k < 3; ++k) bad[128 + rng() % (bad.size() - 128)] = static_cast<char>(rng() % 256);
      try {
        parse_mat(bad, "fuzz.mat");
      } catch (const BadInput&) {
      }
    }
  }
}

// ---- Benchmark layouts ----

/// A tiny image whose red channel tells its class: 40 (c + 1).
void write_class_image(const fs::path& path, int64_t cls) {
  test::write_image(path.string(), test::flat_image(12, 12, static_cast<uint8_t>(40 * (cls + 1)), 30, 60));
}

/// The class each example of an image split shows (from the red channel of its evaluation crop).
std::vector<int64_t> shown_classes(const TensorDataset& d) {
  std::vector<int64_t> out;
  const torch::Tensor img = d.eval_images(0, d.size());
  for (int64_t i = 0; i < d.size(); ++i)
    out.push_back(std::lround(img[i][0].to(torch::kFloat32).mean().item<double>() / 40.0) - 1);
  return out;
}

/// Every example's label names the class its image shows (up to the relabelling `file_class_of`).
void expect_labels_match_images(const TensorDataset& d, const std::vector<int64_t>& file_class_of) {
  const auto shown = shown_classes(d);
  for (int64_t i = 0; i < d.size(); ++i)
    EXPECT_EQ(shown[i], file_class_of[d.labels[i].item<int64_t>()]) << "example " << i;
}

std::vector<int64_t> iota_classes(int64_t k) {
  std::vector<int64_t> v(k);
  for (int64_t i = 0; i < k; ++i) v[i] = i;
  return v;
}

/// CUB_200_2011 with 3 classes, 4 images each; the first 3 of each class are training images.
std::string write_cub(const fs::path& root) {
  std::string images, labels, split, classes;
  const char* names[] = {"001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"};
  int id = 0;
  for (int c = 0; c < 3; ++c) {
    classes += cat(c + 1, " ", names[c], "\n");
    for (int i = 0; i < 4; ++i) {
      ++id;
      const std::string rel = cat(names[c], "/img_", i, ".jpg");
      write_class_image(root / "images" / rel, c);
      images += cat(id, " ", rel, "\n");
      labels += cat(id, " ", c + 1, "\n");
      split += cat(id, " ", i < 3 ? 1 : 0, "\n");
    }
  }
  bm_write((root / "images.txt").string(), images);
  bm_write((root / "image_class_labels.txt").string(), labels);
  bm_write((root / "train_test_split.txt").string(), split);
  bm_write((root / "classes.txt").string(), classes);
  return cat("cub:dir=", root.string(), ":size=8");
}

TEST(Benchmarks, CubReadsItsFourFilesAndRefusesHostileOnes) {
  test::TempDir tmp;
  const fs::path root = fs::path(tmp.path()) / "CUB_200_2011";
  const std::string spec = write_cub(root);
  const Task t = load_task(spec, 0);
  EXPECT_EQ(t.class_names(), (std::vector<std::string>{"001.Black_footed_Albatross", "002.Laysan_Albatross",
                                                       "003.Sooty_Albatross"}));
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  expect_labels_match_images(t.train, iota_classes(3));
  expect_labels_match_images(t.test, iota_classes(3));
  // Class subsets and few-shot specs work on it as on any source.
  const Task sub = load_task(spec + ":classes=2,0:per_class=2", 0);
  EXPECT_EQ(sub.class_names(),
            (std::vector<std::string>{"003.Sooty_Albatross", "001.Black_footed_Albatross"}));
  expect_labels_match_images(sub.train, {2, 0});

  const std::string labels = read_file((root / "image_class_labels.txt").string());
  bm_write((root / "image_class_labels.txt").string(), labels + "13 4\n");
  test::expect_bad_input([&] { load_task(spec, 0); },
                         {"image_class_labels.txt line 13: label 4 is out of range 1..3"});
  bm_write((root / "image_class_labels.txt").string(), labels.substr(0, labels.size() - 5));
  test::expect_bad_input([&] { load_task(spec, 0); }, {"image 12 has no label"});
  bm_write((root / "image_class_labels.txt").string(), labels);
  const std::string images = read_file((root / "images.txt").string());
  bm_write((root / "images.txt").string(), images + "99 ../../etc/passwd\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"must be a path inside the dataset"});
  bm_write((root / "images.txt").string(), images + "1 x.jpg\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"images.txt line 13: image 1 is listed twice"});
  bm_write((root / "images.txt").string(), images);
  fs::remove(root / "images" / "002.Laysan_Albatross" / "img_1.jpg");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"img_1.jpg does not exist"});
  fs::remove(root / "train_test_split.txt");
  test::expect_bad_input([&] { load_task(spec, 0); },
                         {"train_test_split.txt not found", "docs/benchmarks.md"});
  test::expect_bad_input([&] { DatasetSpec::parse("cub:split=train:dir=x"); },
                         {"split is only for aircraft, dtd"});
  test::expect_bad_input([&] { DatasetSpec::parse("cub:size=64"); }, {"cub needs dir=PATH"});
}

TEST(Benchmarks, AircraftVariantsAndSplits) {
  test::TempDir tmp;
  const fs::path data = fs::path(tmp.path()) / "fgvc-aircraft-2013b" / "data";
  const std::vector<std::string> variants = {"707-320", "A300B4", "F/A-18"};  // names may hold '/' and spaces
  bm_write((data / "variants.txt").string(), "707-320\nA300B4\nF/A-18\n");
  int id = 1000000;
  std::map<std::string, std::string> lists;
  for (int c = 0; c < 3; ++c)
    for (const char* which : {"train", "train", "val", "test"}) {
      const std::string img = std::to_string(++id);
      write_class_image(data / "images" / (img + ".jpg"), c);
      lists[which] += img + " " + variants[c] + "\n";
      if (std::string(which) != "test") lists["trainval"] += img + " " + variants[c] + "\n";
    }
  for (const auto& [which, text] : lists)
    bm_write((data / ("images_variant_" + which + ".txt")).string(), text);
  const std::string spec = cat("aircraft:dir=", (data.parent_path()).string(), ":size=8");
  const Task tv = load_task(spec, 0);
  EXPECT_EQ(tv.class_names(), variants);
  EXPECT_EQ(tv.train.class_counts(), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(tv.val.size(), 0);
  expect_labels_match_images(tv.train, iota_classes(3));
  const Task tr = load_task(spec + ":split=train", 0);
  EXPECT_EQ(tr.train.class_counts(), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(tr.val.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  expect_labels_match_images(tr.val, iota_classes(3));
  EXPECT_EQ(load_task(cat("aircraft:dir=", data.string(), ":size=8"), 0).train.size(), 9)
      << "dir= may be data/";
  test::expect_bad_input([&] { DatasetSpec::parse(spec + ":split=train:val=1"); },
                         {"give val= or split=train"});
  test::expect_bad_input([&] { DatasetSpec::parse(spec + ":split=all"); },
                         {"split must be train or trainval"});
  bm_write((data / "images_variant_test.txt").string(), lists["test"] + "1000099 Spitfire\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"variant 'Spitfire' is not in"});
  bm_write((data / "images_variant_test.txt").string(), lists["test"] + "../1000001 707-320\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"'../1000001' must be a file name"});
  bm_write((data / "images_variant_test.txt").string(), lists["test"] + "1000099\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"is not 'IMAGE_ID VARIANT'"});
}

TEST(Benchmarks, PetsNamesBreedsFromImageNames) {
  test::TempDir tmp;
  const fs::path root(tmp.path());
  const std::vector<std::string> breeds = {"Abyssinian", "american_bulldog", "Bengal"};
  std::string trainval = "#Image CLASS-ID SPECIES BREED ID\n", test_list;
  for (int c = 0; c < 3; ++c)
    for (int i = 1; i <= 3; ++i) {
      const std::string name = cat(breeds[c], "_", i);
      write_class_image(root / "images" / (name + ".jpg"), c);
      (i < 3 ? trainval : test_list) += cat(name, " ", c + 1, " ", c == 1 ? 2 : 1, " ", c + 1, "\n");
    }
  bm_write((root / "annotations" / "trainval.txt").string(), trainval);
  bm_write((root / "annotations" / "test.txt").string(), test_list);
  const std::string spec = cat("pets:dir=", root.string(), ":size=8");
  const Task t = load_task(spec, 0);
  EXPECT_EQ(t.class_names(), breeds);
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  expect_labels_match_images(t.train, iota_classes(3));
  bm_write((root / "annotations" / "test.txt").string(), test_list + "Bengal_9 38 1 38\n");
  test::expect_bad_input([&] { load_task(spec, 0); }, {"test.txt line 4: label 38 is out of range 1..37"});
  bm_write((root / "annotations" / "test.txt").string(), test_list + "Bengal_9 1 1 1\n");
  test::expect_bad_input([&] { load_task(spec, 0); },
                         {"class 1 is 'Abyssinian' elsewhere but 'Bengal' here"});
}

TEST(Benchmarks, DtdFoldsAndSplits) {
  test::TempDir tmp;
  const fs::path root = fs::path(tmp.path()) / "dtd";
  const std::vector<std::string> classes = {"banded", "blotchy"};
  for (int fold : {1, 2}) {
    std::map<std::string, std::string> lists;
    for (int c = 0; c < 2; ++c)
      for (int i = 0; i < 4; ++i) {
        const std::string rel = cat(classes[c], "/", classes[c], "_", fold, i, ".jpg");
        write_class_image(root / "images" / rel, c);
        lists[i < 2 ? "train" : i == 2 ? "val" : "test"] += rel + "\n";
      }
    for (const auto& [which, text] : lists)
      bm_write((root / "labels" / cat(which, fold, ".txt")).string(), text);
  }
  const std::string spec = cat("dtd:dir=", root.string(), ":size=8");
  const Task t = load_task(spec, 0);
  EXPECT_EQ(t.class_names(), classes);
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{3, 3}));
  expect_labels_match_images(t.train, iota_classes(2));
  const Task f2 = load_task(spec + ":fold=2:split=train", 0);
  EXPECT_EQ(f2.train.class_counts(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f2.val.class_counts(), (std::vector<int64_t>{1, 1}));
  EXPECT_NE(f2.train.files->path(0), t.train.files->path(0)) << "fold 2 reads its own lists";
  test::expect_bad_input([&] { DatasetSpec::parse(spec + ":fold=11"); }, {"fold must be 1..10, got 11"});
  test::expect_bad_input([&] { DatasetSpec::parse("cub:dir=x:fold=2"); }, {"fold is only for dtd"});
  test::expect_bad_input([&] { load_task(spec + ":fold=3", 0); }, {"train3.txt not found"});
  bm_write((root / "labels" / "test1.txt").string(), "/etc/passwd\n");
  test::expect_bad_input([&] { load_task(spec, 0); },
                         {"test1.txt line 1: '/etc/passwd' must be a path inside"});
}

/// Flowers-102: imagelabels.mat (compressed, as the real one) and setid.mat (uncompressed), 3 classes.
std::string write_flowers(const fs::path& root, std::vector<double> labels, std::vector<double> tstid) {
  for (size_t i = 0; i < labels.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "image_%05zu.jpg", i + 1);
    write_class_image(root / "jpg" / name, static_cast<int64_t>(labels[i]) - 1);
  }
  bm_write((root / "imagelabels.mat").string(), mat_file({mat_doubles("labels", labels)}, true));
  bm_write((root / "setid.mat").string(),
           mat_file({mat_doubles("trnid", {1, 2, 3}), mat_doubles("valid", {4, 5, 6}),
                     mat_doubles("tstid", tstid)},
                    false));
  return cat("flowers:dir=", root.string(), ":size=8");
}

TEST(Benchmarks, FlowersReadsMatFiles) {
  test::TempDir tmp;
  const fs::path root(tmp.path());
  const std::vector<double> labels = {1, 2, 3, 1, 2, 3, 1, 2, 3};  // image i+1 has labels[i]
  const std::string spec = write_flowers(root, labels, {7, 8, 9});
  const Task t = load_task(spec, 0);
  EXPECT_EQ(t.class_names(), (std::vector<std::string>{"1", "2", "3"}));
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{2, 2, 2}));  // trnid + valid
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  expect_labels_match_images(t.train, iota_classes(3));
  expect_labels_match_images(t.test, iota_classes(3));
  const Task tr = load_task(spec + ":split=train", 0);
  EXPECT_EQ(tr.train.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(tr.val.class_counts(), (std::vector<int64_t>{1, 1, 1}));
  expect_labels_match_images(tr.val, iota_classes(3));

  write_flowers(root, labels, {7, 8, 10});
  test::expect_bad_input([&] { load_task(spec, 0); }, {"setid.mat: tstid(3) = 10 is out of range 1..9"});
  write_flowers(root, labels, {7, 7, 8, 9});
  test::expect_bad_input([&] { load_task(spec, 0); }, {"tstid lists image 7 twice"});
  write_flowers(root, {1, 2, 103}, {3});
  test::expect_bad_input([&] { load_task(spec, 0); }, {"labels(3) = 103 is out of range 1..102"});
  const std::string good = mat_file({mat_doubles("labels", labels)}, true);
  bm_write((root / "imagelabels.mat").string(), good.substr(0, good.size() - 10));
  try {
    load_task(spec, 0);
    ADD_FAILURE() << "a truncated imagelabels.mat was accepted";
  } catch (const BadInput& e) {
    EXPECT_NE(std::string(e.what()).find("imagelabels.mat"), std::string::npos) << e.what();
  }
}

/// Stanford Cars' devkit: class names (a cell of char rows) and struct arrays of annotations.
std::string write_cars(const fs::path& root, double bad_class = 0) {
  const std::vector<std::string> names = {"AM General Hummer SUV 2000", "Acura RL Sedan 2012"};
  std::vector<std::string> cells;
  for (const auto& n : names) cells.push_back(mat_chars("", n));
  bm_write((root / "devkit" / "cars_meta.mat").string(), mat_file({mat_cell("class_names", cells)}, false));
  auto annos = [&](const std::string& folder, int n, bool compress) {
    std::vector<std::string> values;
    for (int i = 0; i < n; ++i) {
      const int cls = i % 2;
      const std::string fname = cat(folder == "cars_train" ? "0" : "1", i, ".jpg");
      write_class_image(root / folder / fname, cls);
      values.push_back(mat_doubles("", {10}));  // bbox_x1: fields the reader does not use are skipped
      values.push_back(mat_chars("", fname));
      values.push_back(mat_doubles("", {i == 0 && bad_class != 0 ? bad_class : cls + 1.0}));
    }
    return mat_file({mat_struct("annotations", {"bbox_x1", "fname", "class"}, values)}, compress);
  };
  bm_write((root / "devkit" / "cars_train_annos.mat").string(), annos("cars_train", 4, true));
  bm_write((root / "cars_test_annos_withlabels.mat").string(), annos("cars_test", 2, false));
  return cat("cars:dir=", root.string(), ":size=8");
}

TEST(Benchmarks, CarsReadsDevkitStructArrays) {
  test::TempDir tmp;
  const fs::path root(tmp.path());
  const std::string spec = write_cars(root);
  const Task t = load_task(spec, 0);
  EXPECT_EQ(t.class_names(), (std::vector<std::string>{"AM General Hummer SUV 2000", "Acura RL Sedan 2012"}));
  EXPECT_EQ(t.train.class_counts(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.test.class_counts(), (std::vector<int64_t>{1, 1}));
  expect_labels_match_images(t.train, iota_classes(2));
  expect_labels_match_images(t.test, iota_classes(2));
  write_cars(root, 3);
  test::expect_bad_input([&] { load_task(spec, 0); }, {"annotations(1).class = 3 is out of range 1..2"});
  write_cars(root);
  bm_write((root / "devkit" / "cars_meta.mat").string(), mat_file({mat_doubles("class_names", {1})}, false));
  test::expect_bad_input([&] { load_task(spec, 0); }, {"cars_meta.mat: no cell array 'class_names'"});
}

/// CIFAR binary records: label byte(s), then 3072 pixels whose value is 10 x the (fine) label.
std::string cifar_records(const std::vector<std::vector<uint8_t>>& labels) {
  std::string out;
  for (const auto& l : labels) {
    out += std::string(l.begin(), l.end());
    out += std::string(3072, static_cast<char>(10 * l.back()));
  }
  return out;
}

TEST(Benchmarks, CifarBinaryBatches) {
  test::TempDir tmp;
  const fs::path ten = fs::path(tmp.path()) / "cifar-10-batches-bin";
  std::string meta;
  for (const char* n :
       {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"})
    meta += std::string(n) + "\n";
  bm_write((ten / "batches.meta.txt").string(), meta + "\n");
  for (int b = 1; b <= 5; ++b)
    bm_write((ten / cat("data_batch_", b, ".bin")).string(),
             cifar_records({{uint8_t(b - 1)}, {uint8_t(b + 4)}}));
  bm_write((ten / "test_batch.bin").string(),
           cifar_records({{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {9}}));
  const Task t = load_task("cifar10:dir=" + ten.string(), 0);
  EXPECT_EQ(t.class_names()[9], "truck");
  EXPECT_EQ(t.train.size(), 10);
  EXPECT_EQ(t.train.images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  for (int64_t i = 0; i < t.train.size(); ++i)
    EXPECT_EQ(t.train.images[i][2][31][31].item<int>(), 10 * t.train.labels[i].item<int>());
  EXPECT_EQ(t.train.class_counts(), std::vector<int64_t>(10, 1));
  EXPECT_EQ(t.test.class_counts()[9], 2);

  const fs::path hundred = fs::path(tmp.path()) / "cifar-100-binary";
  std::string fine;
  for (int c = 0; c < 100; ++c) fine += cat("fine", c, "\n");
  bm_write((hundred / "fine_label_names.txt").string(), fine);
  bm_write((hundred / "train.bin").string(), cifar_records({{3, 20}, {19, 99}, {0, 20}}));
  bm_write((hundred / "test.bin").string(), cifar_records({{1, 99}, {3, 20}}));
  const Task h = load_task("cifar100:dir=" + hundred.string() + ":classes=20,99", 0);
  EXPECT_EQ(h.class_names(), (std::vector<std::string>{"fine20", "fine99"}));
  EXPECT_EQ(h.train.class_counts(), (std::vector<int64_t>{2, 1})) << "fine labels, not coarse";
  EXPECT_EQ(h.train.labels[2].item<int64_t>(), 1);
  EXPECT_EQ(h.train.images[2][0][0][0].item<int>(), 990 % 256) << "the pixels of the record labelled 99";

  bm_write((hundred / "test.bin").string(), cifar_records({{1, 100}}));
  test::expect_bad_input([&] { load_task("cifar100:dir=" + hundred.string(), 0); },
                         {"test.bin: record 0 has label 100, out of range 0..99"});
  bm_write((hundred / "test.bin").string(), cifar_records({{20, 1}}));
  test::expect_bad_input([&] { load_task("cifar100:dir=" + hundred.string(), 0); },
                         {"has label 20, out of range 0..19"});
  bm_write((hundred / "test.bin").string(), cifar_records({{1, 1}}).substr(0, 3000));
  test::expect_bad_input([&] { load_task("cifar100:dir=" + hundred.string(), 0); },
                         {"3000 bytes is not a whole number of 3074-byte records"});
  bm_write((ten / "batches.meta.txt").string(), "airplane\n");
  test::expect_bad_input([&] { load_task("cifar10:dir=" + ten.string() + "/", 0); },
                         {"lists 1 class names, expected 10"});
  test::expect_bad_input([&] { DatasetSpec::parse("cifar10:dir=x:size=64"); },
                         {"size is only for image folders and image benchmarks"});
}

}  // namespace
}  // namespace xfer
