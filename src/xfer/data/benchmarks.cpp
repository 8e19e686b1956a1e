#include "xfer/data/benchmarks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/text.h"
#include "xfer/data/mat.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A line of a text file, with its 1-based number.
struct BmLine {
  int64_t no;
  std::string text;
};

/// The non-empty lines of a text file, trailing whitespace and '\r' removed, '#' comments skipped.
std::vector<BmLine> bm_lines(const std::string& path) {
  const std::string bytes = read_file(path);
  std::vector<BmLine> out;
  int64_t no = 0;
  size_t start = 0;
  while (start < bytes.size()) {
    size_t end = bytes.find('\n', start);
    if (end == std::string::npos) end = bytes.size();
    std::string line = bytes.substr(start, end - start);
    start = end + 1;
    ++no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    check_utf8(line, cat(path, " line ", no));
    out.push_back({no, line});
  }
  return out;
}

/// "FIRST REST": the line split at its first space; BadInput when there is no second field.
std::pair<std::string, std::string> bm_two_fields(const BmLine& l, const std::string& path,
                                                  const std::string& form) {
  const size_t sp = l.text.find(' ');
  XFER_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < l.text.size(), path, " line ", l.no, ": '",
             printable(l.text), "' is not '", form, "'");
  return {l.text.substr(0, sp), l.text.substr(sp + 1)};
}

int64_t bm_int(const std::string& tok, const std::string& path, int64_t line, const std::string& what) {
  const std::optional<int64_t> v = parse_int64(tok);
  XFER_CHECK(v && *v >= 0, path, " line ", line, ": ", what, " must be a non-negative integer, got '",
             printable(tok), "'");
  return *v;
}

/// A label 1..classes of the layout as 0-based.
int64_t bm_label(int64_t one_based, int64_t classes, const std::string& path, int64_t line) {
  XFER_CHECK(one_based >= 1 && one_based <= classes, path, " line ", line, ": label ", one_based,
             " is out of range 1..", classes);
  return one_based - 1;
}

/// A path from a layout file that must stay inside its root: relative, no "..".
void bm_check_relative(const std::string& rel, const std::string& path, int64_t line) {
  const fs::path p(rel);
  XFER_CHECK(!rel.empty() && p.is_relative() &&
                 std::none_of(p.begin(), p.end(), [](const fs::path& c) { return c == ".."; }),
             path, " line ", line, ": '", printable(rel),
             "' must be a path inside the dataset (no '..', not absolute)");
}

/// A plain file name (an image id): no directory part.
void bm_check_name(const std::string& name, const std::string& path, int64_t line) {
  XFER_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", path,
             " line ", line, ": '", printable(name), "' must be a file name");
}

std::string bm_need(const fs::path& p, const std::string& layout) {
  XFER_CHECK(fs::exists(p), p.string(), " not found; the ", layout,
             " layout is described in docs/benchmarks.md");
  return p.string();
}

/// Checks that every image of a split is there (a missing folder is a wrong dir=, not a corrupt file).
void bm_check_files(const std::string& root, const BenchmarkSplit& s, const std::string& what) {
  for (const auto& f : s.files)
    XFER_CHECK(fs::is_regular_file(fs::path(root) / f), what, ": image ", (fs::path(root) / f).string(),
               " does not exist");
}

// ---- CUB-200-2011 ----

BenchmarkData read_cub(const fs::path& dir) {
  const std::string layout = "CUB-200-2011";
  BenchmarkData b;
  b.root = (dir / "images").string();
  const std::string classes_txt = bm_need(dir / "classes.txt", layout);
  for (const auto& l : bm_lines(classes_txt)) {
    const auto [id, name] = bm_two_fields(l, classes_txt, "ID NAME");
    XFER_CHECK(
        bm_int(id, classes_txt, l.no, "the class id") == static_cast<int64_t>(b.class_names.size()) + 1,
        classes_txt, " line ", l.no, ": class ids must run 1, 2, ... in order, got ", id);
    b.class_names.push_back(name);
  }
  XFER_CHECK(!b.class_names.empty(), classes_txt, ": lists no classes");
  const int64_t k = static_cast<int64_t>(b.class_names.size());

  const std::string images_txt = bm_need(dir / "images.txt", layout);
  const std::string labels_txt = bm_need(dir / "image_class_labels.txt", layout);
  const std::string split_txt = bm_need(dir / "train_test_split.txt", layout);
  std::map<int64_t, int64_t> label_of, train_of;
  for (const auto& l : bm_lines(labels_txt)) {
    const auto [id, lab] = bm_two_fields(l, labels_txt, "IMAGE_ID CLASS_ID");
    const int64_t i = bm_int(id, labels_txt, l.no, "the image id");
    XFER_CHECK(
        label_of.emplace(i, bm_label(bm_int(lab, labels_txt, l.no, "the class id"), k, labels_txt, l.no))
            .second,
        labels_txt, " line ", l.no, ": image ", i, " is listed twice");
  }
  for (const auto& l : bm_lines(split_txt)) {
    const auto [id, flag] = bm_two_fields(l, split_txt, "IMAGE_ID IS_TRAINING_IMAGE");
    const int64_t i = bm_int(id, split_txt, l.no, "the image id");
    XFER_CHECK(flag == "0" || flag == "1", split_txt, " line ", l.no,
               ": is_training_image must be 0 or 1, got '", printable(flag), "'");
    XFER_CHECK(train_of.emplace(i, flag == "1").second, split_txt, " line ", l.no, ": image ", i,
               " is listed twice");
  }
  std::set<int64_t> seen;
  for (const auto& l : bm_lines(images_txt)) {
    const auto [id, rel] = bm_two_fields(l, images_txt, "IMAGE_ID PATH");
    const int64_t i = bm_int(id, images_txt, l.no, "the image id");
    XFER_CHECK(seen.insert(i).second, images_txt, " line ", l.no, ": image ", i, " is listed twice");
    bm_check_relative(rel, images_txt, l.no);
    const auto lab = label_of.find(i);
    const auto tr = train_of.find(i);
    XFER_CHECK(lab != label_of.end(), images_txt, " line ", l.no, ": image ", i, " has no label in ",
               labels_txt);
    XFER_CHECK(tr != train_of.end(), images_txt, " line ", l.no, ": image ", i, " is not in ", split_txt);
    BenchmarkSplit& s = tr->second ? b.train : b.test;
    s.files.push_back(rel);
    s.labels.push_back(lab->second);
  }
  XFER_CHECK(seen.size() == label_of.size(), labels_txt, " labels ", label_of.size(), " images but ",
             images_txt, " lists ", seen.size());
  return b;
}

// ---- FGVC-Aircraft ----

BenchmarkData read_aircraft(const fs::path& dir, const std::string& split) {
  const std::string layout = "FGVC-Aircraft";
  const fs::path data = fs::exists(dir / "data" / "variants.txt") ? dir / "data" : dir;
  BenchmarkData b;
  b.root = (data / "images").string();
  const std::string variants = bm_need(data / "variants.txt", layout);
  std::map<std::string, int64_t> label_of;
  for (const auto& l : bm_lines(variants)) {
    XFER_CHECK(label_of.emplace(l.text, static_cast<int64_t>(b.class_names.size())).second, variants,
               " line ", l.no, ": variant '", printable(l.text), "' is listed twice");
    b.class_names.push_back(l.text);
  }
  XFER_CHECK(!b.class_names.empty(), variants, ": lists no variants");
  auto read = [&](const std::string& which, BenchmarkSplit& s) {
    const std::string list = bm_need(data / ("images_variant_" + which + ".txt"), layout);
    for (const auto& l : bm_lines(list)) {
      const auto [id, variant] = bm_two_fields(l, list, "IMAGE_ID VARIANT");
      bm_check_name(id, list, l.no);
      const auto it = label_of.find(variant);
      XFER_CHECK(it != label_of.end(), list, " line ", l.no, ": variant '", printable(variant),
                 "' is not in ", variants);
      s.files.push_back(id + ".jpg");
      s.labels.push_back(it->second);
    }
  };
  read(split, b.train);
  b.has_val = split == "train";
  if (b.has_val) read("val", b.val);
  read("test", b.test);
  return b;
}

// ---- Oxford-IIIT Pets ----

BenchmarkData read_pets(const fs::path& dir) {
  const std::string layout = "Oxford-IIIT Pets";
  constexpr int64_t kPetsClasses = 37;
  BenchmarkData b;
  b.root = (dir / "images").string();
  std::map<int64_t, std::string> name_of;
  auto read = [&](const std::string& file, BenchmarkSplit& s) {
    const std::string list = bm_need(dir / "annotations" / file, layout);
    for (const auto& l : bm_lines(list)) {
      const auto [image, rest] = bm_two_fields(l, list, "IMAGE CLASS_ID SPECIES BREED_ID");
      bm_check_name(image, list, l.no);
      const std::string id = rest.substr(0, rest.find(' '));
      const int64_t label = bm_label(bm_int(id, list, l.no, "the class id"), kPetsClasses, list, l.no);
      // The breed is the image name without its trailing _NUMBER (Abyssinian_100 -> Abyssinian).
      const size_t us = image.rfind('_');
      const std::string breed = us == std::string::npos || us == 0 ? image : image.substr(0, us);
      const auto [it, fresh] = name_of.emplace(label, breed);
      XFER_CHECK(fresh || it->second == breed, list, " line ", l.no, ": class ", label + 1, " is '",
                 it->second, "' elsewhere but '", printable(breed), "' here");
      s.files.push_back(image + ".jpg");
      s.labels.push_back(label);
    }
  };
  read("trainval.txt", b.train);
  read("test.txt", b.test);
  XFER_CHECK(!name_of.empty(), layout, ": annotations/trainval.txt and test.txt list no images");
  const int64_t k = name_of.rbegin()->first + 1;
  for (int64_t c = 0; c < k; ++c) {
    const auto it = name_of.find(c);
    XFER_CHECK(it != name_of.end(), (dir / "annotations").string(), ": class ", c + 1,
               " has no image (classes run 1..", k, ")");
    b.class_names.push_back(it->second);
  }
  return b;
}

// ---- DTD ----

BenchmarkData read_dtd(const fs::path& dir, const std::string& split, int64_t fold) {
  const std::string layout = "DTD";
  BenchmarkData b;
  b.root = (dir / "images").string();
  std::vector<std::pair<std::string, std::vector<BmLine>>> lists;
  std::set<std::string> classes;
  for (const std::string which : {"train", "val", "test"}) {
    const std::string list = bm_need(dir / "labels" / cat(which, fold, ".txt"), layout);
    lists.emplace_back(list, bm_lines(list));
    for (const auto& l : lists.back().second) {
      bm_check_relative(l.text, list, l.no);
      const size_t slash = l.text.find('/');
      XFER_CHECK(slash != std::string::npos && slash > 0, list, " line ", l.no, ": '", printable(l.text),
                 "' is not CLASS/FILE");
      classes.insert(l.text.substr(0, slash));
    }
  }
  b.class_names.assign(classes.begin(), classes.end());  // sorted, as the images/ folders are
  std::map<std::string, int64_t> label_of;
  for (size_t c = 0; c < b.class_names.size(); ++c) label_of[b.class_names[c]] = static_cast<int64_t>(c);
  b.has_val = split == "train";
  BenchmarkSplit* into[] = {&b.train, b.has_val ? &b.val : &b.train, &b.test};
  for (size_t i = 0; i < 3; ++i)
    for (const auto& l : lists[i].second) {
      into[i]->files.push_back(l.text);
      into[i]->labels.push_back(label_of.at(l.text.substr(0, l.text.find('/'))));
    }
  return b;
}

// ---- Flowers-102 ----

/// A numeric MAT variable's values as integers in [lo, hi].
std::vector<int64_t> bm_mat_ints(const std::map<std::string, MatArray>& vars, const std::string& var,
                                 const std::string& path, int64_t lo, int64_t hi) {
  const auto it = vars.find(var);
  XFER_CHECK(it != vars.end(), path, ": no variable '", var, "'");
  XFER_CHECK(it->second.kind == MatArray::Kind::kNumeric, path, ": variable '", var, "' is ",
             it->second.mclass, ", not numeric");
  std::vector<int64_t> out;
  out.reserve(it->second.values.size());
  for (size_t i = 0; i < it->second.values.size(); ++i) {
    const double v = it->second.values[i];
    XFER_CHECK(std::isfinite(v) && v == std::floor(v) && v >= static_cast<double>(lo) &&
                   v <= static_cast<double>(hi),
               path, ": ", var, "(", i + 1, ") = ", v, " is out of range ", lo, "..", hi);
    out.push_back(static_cast<int64_t>(v));
  }
  return out;
}

BenchmarkData read_flowers(const fs::path& dir, const std::string& split) {
  const std::string layout = "Flowers-102";
  constexpr int64_t kFlowersClasses = 102;
  BenchmarkData b;
  b.root = (dir / "jpg").string();
  const std::string labels_mat = bm_need(dir / "imagelabels.mat", layout);
  const std::string setid_mat = bm_need(dir / "setid.mat", layout);
  const auto labels = bm_mat_ints(read_mat(labels_mat), "labels", labels_mat, 1, kFlowersClasses);
  XFER_CHECK(!labels.empty(), labels_mat, ": labels is empty");
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t k = *std::max_element(labels.begin(), labels.end());
  for (int64_t c = 1; c <= k; ++c) b.class_names.push_back(std::to_string(c));
  const auto sets = read_mat(setid_mat);
  auto read = [&](const std::string& var, BenchmarkSplit& s) {
    std::set<int64_t> seen;
    for (int64_t id : bm_mat_ints(sets, var, setid_mat, 1, n)) {
      XFER_CHECK(seen.insert(id).second, setid_mat, ": ", var, " lists image ", id, " twice");
      char name[32];
      std::snprintf(name, sizeof name, "image_%05lld.jpg", static_cast<long long>(id));
      s.files.push_back(name);
      s.labels.push_back(labels[static_cast<size_t>(id - 1)] - 1);
    }
  };
  read("trnid", b.train);
  b.has_val = split == "train";
  read("valid", b.has_val ? b.val : b.train);
  read("tstid", b.test);
  return b;
}

// ---- Stanford Cars ----

BenchmarkData read_cars(const fs::path& dir) {
  const std::string layout = "Stanford Cars";
  BenchmarkData b;
  b.root = dir.string();
  const std::string meta = bm_need(dir / "devkit" / "cars_meta.mat", layout);
  const auto mvars = read_mat(meta);
  const auto names = mvars.find("class_names");
  XFER_CHECK(names != mvars.end() && names->second.kind == MatArray::Kind::kCell, meta,
             ": no cell array 'class_names'");
  for (size_t i = 0; i < names->second.elements.size(); ++i) {
    const MatArray& e = names->second.elements[i];
    XFER_CHECK(e.kind == MatArray::Kind::kChar, meta, ": class_names{", i + 1, "} is ", e.mclass,
               ", not text");
    b.class_names.push_back(e.text);
  }
  XFER_CHECK(!b.class_names.empty(), meta, ": class_names is empty");
  const int64_t k = static_cast<int64_t>(b.class_names.size());
  auto read = [&](const std::string& path, const std::string& folder, BenchmarkSplit& s) {
    const auto vars = read_mat(path);
    const auto it = vars.find("annotations");
    XFER_CHECK(it != vars.end(), path, ": no variable 'annotations'");
    const MatArray& a = it->second;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const std::string what = cat(path, ": annotations(", i + 1, ")");
      const MatArray& fname = a.field(i, "fname", cat(path, ": annotations"));
      const MatArray& cls = a.field(i, "class", cat(path, ": annotations"));
      XFER_CHECK(fname.kind == MatArray::Kind::kChar, what, ".fname is ", fname.mclass, ", not text");
      XFER_CHECK(cls.kind == MatArray::Kind::kNumeric && cls.values.size() == 1, what,
                 ".class is not one number");
      const double c = cls.values[0];
      XFER_CHECK(std::isfinite(c) && c == std::floor(c) && c >= 1 && c <= static_cast<double>(k), what,
                 ".class = ", c, " is out of range 1..", k);
      XFER_CHECK(!fname.text.empty() && fname.text.find('/') == std::string::npos && fname.text != "..", what,
                 ".fname '", printable(fname.text), "' must be a file name");
      s.files.push_back(folder + "/" + fname.text);
      s.labels.push_back(static_cast<int64_t>(c) - 1);
    }
  };
  read(bm_need(dir / "devkit" / "cars_train_annos.mat", layout), "cars_train", b.train);
  const fs::path test_in_devkit = dir / "devkit" / "cars_test_annos_withlabels.mat";
  read(bm_need(fs::exists(test_in_devkit) ? test_in_devkit : dir / "cars_test_annos_withlabels.mat", layout),
       "cars_test", b.test);
  return b;
}

// ---- CIFAR-10 / CIFAR-100 (binary version) ----

/// Records of a CIFAR binary file: `label_bytes` label bytes (the last one is the label used), then 3072
/// pixels (1024 red, 1024 green, 1024 blue, rows top to bottom).
void read_cifar_file(const std::string& path, int64_t label_bytes, const std::vector<int64_t>& label_limits,
                     std::vector<torch::Tensor>& images, std::vector<int64_t>& labels) {
  const std::string bytes = read_file(path);
  const int64_t record = label_bytes + 3072;
  XFER_CHECK(!bytes.empty() && static_cast<int64_t>(bytes.size()) % record == 0, path, ": ", bytes.size(),
             " bytes is not a whole number of ", record, "-byte records (truncated?)");
  const int64_t n = static_cast<int64_t>(bytes.size()) / record;
  torch::Tensor img = torch::empty({n, 3, 32, 32}, torch::kUInt8);
  uint8_t* dst = img.data_ptr<uint8_t>();
  const auto* src = reinterpret_cast<const uint8_t*>(bytes.data());
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* r = src + i * record;
    for (int64_t j = 0; j < label_bytes; ++j)
      XFER_CHECK(r[j] < label_limits[static_cast<size_t>(j)], path, ": record ", i, " has label ", int(r[j]),
                 ", out of range 0..", label_limits[static_cast<size_t>(j)] - 1);
    labels.push_back(r[label_bytes - 1]);
    std::memcpy(dst + i * 3072, r + label_bytes, 3072);
  }
  images.push_back(img);
}

std::vector<std::string> bm_names_file(const std::string& path, size_t count) {
  std::vector<std::string> names;
  for (const auto& l : bm_lines(path)) names.push_back(l.text);
  XFER_CHECK(names.size() == count, path, ": lists ", names.size(), " class names, expected ", count);
  return names;
}

BenchmarkData read_cifar(const fs::path& dir, bool hundred) {
  const std::string layout = hundred ? "CIFAR-100 binary" : "CIFAR-10 binary";
  BenchmarkData b;
  b.root = dir.string();
  std::vector<torch::Tensor> train_images, test_images;
  if (hundred) {
    b.class_names = bm_names_file(bm_need(dir / "fine_label_names.txt", layout), 100);
    read_cifar_file(bm_need(dir / "train.bin", layout), 2, {20, 100}, train_images, b.train.labels);
    read_cifar_file(bm_need(dir / "test.bin", layout), 2, {20, 100}, test_images, b.test.labels);
  } else {
    b.class_names = bm_names_file(bm_need(dir / "batches.meta.txt", layout), 10);
    for (int i = 1; i <= 5; ++i)
      read_cifar_file(bm_need(dir / cat("data_batch_", i, ".bin"), layout), 1, {10}, train_images,
                      b.train.labels);
    read_cifar_file(bm_need(dir / "test_batch.bin", layout), 1, {10}, test_images, b.test.labels);
  }
  b.train.images = torch::cat(train_images);
  b.test.images = torch::cat(test_images);
  return b;
}

}  // namespace

const std::vector<std::string>& benchmark_sources() {
  static const std::vector<std::string> s = {"cub",     "aircraft", "pets",    "dtd",
                                             "flowers", "cars",     "cifar10", "cifar100"};
  return s;
}

bool is_benchmark_source(const std::string& source) {
  const auto& s = benchmark_sources();
  return std::find(s.begin(), s.end(), source) != s.end();
}

bool benchmark_in_memory(const std::string& source) {
  return source == "cifar10" || source == "cifar100";
}

bool benchmark_has_val(const std::string& source) {
  return source == "aircraft" || source == "dtd" || source == "flowers";
}

BenchmarkData read_benchmark(const std::string& source, const std::string& dir, const std::string& split,
                             int64_t fold) {
  XFER_CHECK(is_benchmark_source(source), "unknown benchmark '", source, "'");
  XFER_CHECK(split == "train" || split == "trainval", source, ": split must be train or trainval, got '",
             split, "'");
  XFER_CHECK(fold >= 1 && fold <= 10, source, ": fold must be 1..10, got ", fold);
  XFER_CHECK(fs::is_directory(dir), source, ": dir ", dir, " is not a directory");
  const fs::path d(dir);
  BenchmarkData b = source == "cub"        ? read_cub(d)
                    : source == "aircraft" ? read_aircraft(d, split)
                    : source == "pets"     ? read_pets(d)
                    : source == "dtd"      ? read_dtd(d, split, fold)
                    : source == "flowers"  ? read_flowers(d, split)
                    : source == "cars"     ? read_cars(d)
                                           : read_cifar(d, source == "cifar100");
  const std::pair<const BenchmarkSplit*, const char*> splits[] = {
      {&b.train, "training"}, {&b.val, "validation"}, {&b.test, "test"}};
  for (const auto& [s, what] : splits) {
    XFER_CHECK((s == &b.val && !b.has_val) || !s->labels.empty(), source, " in ", dir, ": the ", what,
               " set is empty");
    if (!benchmark_in_memory(source)) bm_check_files(b.root, *s, cat(source, " ", what, " set"));
  }
  return b;
}

}  // namespace xfer
