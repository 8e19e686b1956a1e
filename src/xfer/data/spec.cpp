#include "xfer/data/spec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/text.h"
#include "xfer/data/benchmarks.h"
#include "xfer/data/idx.h"
#include "xfer/data/image_folder.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

constexpr const char* kFmnistDir = "/usr/share/datasets/fashion-mnist";
int64_t parse_count(const std::string& spec, const std::string& key, const std::string& v, int64_t min) {
  const std::optional<int64_t> n = parse_int64(v);
  XFER_CHECK(n, "dataset spec '", spec, "': ", key, " expects an integer, got '", v, "'");
  XFER_CHECK(*n >= min, "dataset spec '", spec, "': ", key, " must be >= ", min, ", got ", *n);
  return *n;
}

double parse_real(const std::string& spec, const std::string& key, const std::string& v) {
  const std::optional<double> x = parse_double(v);
  XFER_CHECK(x, "dataset spec '", spec, "': ", key, " expects a number, got '", v, "'");
  return *x;
}

std::vector<double> parse_reals(const std::string& spec, const std::string& key, const std::string& v,
                                size_t n) {
  std::vector<double> out;
  for (const auto& tok : split(v, ',')) out.push_back(parse_real(spec, key, tok));
  XFER_CHECK(out.size() == n, "dataset spec '", spec, "': ", key, " expects ", n,
             " comma-separated numbers, got '", v, "'");
  return out;
}

std::string normalise_shift(const std::string& spec, const std::string& s) {
  if (s == "invert") return s;
  if (s.rfind("rot", 0) == 0) {
    parse_real(spec, "shift rot", s.substr(3));
    return s;
  }
  if (s.rfind("noise", 0) == 0) {
    const double sd = parse_real(spec, "shift noise", s.substr(5));
    XFER_CHECK(sd >= 0 && sd <= 1, "dataset spec '", spec, "': noise std must be in [0, 1], got ", sd);
    return s;
  }
  throw BadInput(cat("dataset spec '", spec, "': unknown shift '", s,
                     "'; valid shifts: rotK (degrees), invert, noiseS (std in [0,1]), joined with +"));
}

/// One IDX image file + label file, decoded once per process.
struct RawSplit {
  torch::Tensor images;                     // uint8 (N, C, H, W)
  torch::Tensor labels;                     // int64 (N)
  std::shared_ptr<const ImageFiles> files;  // image folders: the files instead of images
};

torch::Tensor images_nchw(const IdxArray& a, const std::string& path) {
  XFER_CHECK(a.data.scalar_type() == torch::kUInt8, path, ": images must be unsigned bytes (IDX type 0x08)");
  if (a.data.dim() == 3) return a.data.unsqueeze(1);
  XFER_CHECK(a.data.dim() == 4, path, ": images must have 3 (N,H,W) or 4 dimensions, got ", a.data.dim());
  const int64_t last = a.data.size(3);
  if (last == 1 || last == 3 || last == 4) return a.data.permute({0, 3, 1, 2}).contiguous();
  return a.data;
}

RawSplit load_raw(const std::string& images_path, const std::string& labels_path) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, std::string>, RawSplit> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(images_path, labels_path);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const IdxArray img = read_idx(images_path);
  const IdxArray lab = read_idx(labels_path);
  XFER_CHECK(lab.data.dim() == 1, labels_path, ": labels must have 1 dimension, got ", lab.data.dim());
  XFER_CHECK(!lab.data.is_floating_point(), labels_path, ": labels must be integers, got ",
             lab.data.scalar_type());
  RawSplit raw{images_nchw(img, images_path), lab.data.to(torch::kInt64), nullptr};
  XFER_CHECK(raw.images.size(0) == raw.labels.size(0), images_path, " holds ", raw.images.size(0),
             " images but ", labels_path, " holds ", raw.labels.size(0), " labels");
  if (raw.labels.numel() > 0)
    XFER_CHECK(raw.labels.min().item<int64_t>() >= 0, labels_path, ": negative label ",
               raw.labels.min().item<int64_t>());
  cache.emplace(key, raw);
  return raw;
}

std::string find_idx(const std::string& dir, const std::string& stem) {
  for (const std::string& name : {stem, stem + ".gz"})
    if (fs::exists(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  return (fs::path(dir) / (stem + ".gz")).string();
}

void check_exists(const DatasetSpec& spec, const std::string& path) {
  if (fs::exists(path)) return;
  if (spec.source == "fmnist")
    throw BadInput(cat("Fashion-MNIST file not found: ", path,
                       "; install Debian's package with `apt-get install dataset-fashion-mnist` "
                       "(scripts/setup.sh does), or point dir= at the IDX files"));
  throw BadInput(cat("dataset spec '", spec.text, "': file not found: ", path));
}

}  // namespace

const std::vector<std::string>& fmnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

namespace {

/// Which datasets a spec key applies to.
enum class KeyScope {
  any,
  idx,        // idx:
  folder,     // folder: only (file lists)
  images,     // folder: and the image benchmarks (decoding and transforms)
  val_split,  // the benchmark layouts with a validation set
  dtd,
};

/// One key of a dataset spec: where it applies, whether it names a path (made absolute in config.json),
/// and how its value is read into the spec.
struct SpecKey {
  const char* name;
  KeyScope scope;
  bool path;
  void (*read)(DatasetSpec& s, const std::string& text, const std::string& v);
};

void read_classes(DatasetSpec& s, const std::string& text, const std::string& v) {
  for (const auto& tok : split(v, ',')) {
    const size_t dash = tok.find('-', 1);
    if (dash == std::string::npos) {
      s.classes.push_back(parse_count(text, "classes", tok, 0));
      continue;
    }
    const int64_t lo = parse_count(text, "classes", tok.substr(0, dash), 0);
    const int64_t hi = parse_count(text, "classes", tok.substr(dash + 1), 0);
    XFER_CHECK(lo <= hi, "dataset spec '", text, "': empty class range '", tok, "'");
    // No dataset has a million classes; a larger range is a typo that would exhaust memory.
    XFER_CHECK(hi - lo < 1000000, "dataset spec '", text, "': class range '", tok, "' is implausibly large");
    for (int64_t c = lo; c <= hi; ++c) s.classes.push_back(c);
  }
  const std::set<int64_t> uniq(s.classes.begin(), s.classes.end());
  XFER_CHECK(uniq.size() == s.classes.size(), "dataset spec '", text, "': a class is listed twice in '", v,
             "'");
}

/// The keys in the order `xfer data --help` and the unknown-key error list them.
const std::vector<SpecKey>& spec_keys() {
  using S = DatasetSpec;
  using T = const std::string&;
  static const std::vector<SpecKey> keys = {
      {"classes", KeyScope::any, false, read_classes},
      {"per_class", KeyScope::any, false,
       [](S& s, T t, T v) { s.per_class = parse_count(t, "per_class", v, 1); }},
      {"val", KeyScope::any, false,
       [](S& s, T t, T v) {
         const double x = parse_real(t, "val", v);
         if (x > 0 && x < 1)
           s.val_fraction = x;
         else
           s.val_count = parse_count(t, "val", v, 0);
       }},
      {"fraction", KeyScope::any, false,
       [](S& s, T t, T v) {
         const double f = parse_real(t, "fraction", v);
         XFER_CHECK(f > 0 && f <= 1, "dataset spec '", t, "': fraction must be in (0, 1], got ", v);
         s.fraction = f;
       }},
      {"test", KeyScope::any, false,
       [](S& s, T t, T v) {
         XFER_CHECK(v == "file" || v == "rest" || v == "none", "dataset spec '", t,
                    "': test must be file, rest or none, got '", v, "'");
         s.test = v;
       }},
      {"test_per_class", KeyScope::any, false,
       [](S& s, T t, T v) { s.test_per_class = parse_count(t, "test_per_class", v, 1); }},
      {"part", KeyScope::any, false,
       [](S& s, T t, T v) {
         const auto ab = split(v, '/');
         XFER_CHECK(ab.size() == 2, "dataset spec '", t, "': part expects I/N, got '", v, "'");
         s.part_index = parse_count(t, "part index", ab[0], 0);
         s.part_count = parse_count(t, "part count", ab[1], 1);
         XFER_CHECK(s.part_index < s.part_count, "dataset spec '", t, "': part ", v,
                    " needs I < N (I counts from 0)");
       }},
      {"shift", KeyScope::any, false,
       [](S& s, T t, T v) {
         for (const auto& sh : split(v, '+')) s.shifts.push_back(normalise_shift(t, sh));
       }},
      {"seed", KeyScope::any, false,
       [](S& s, T t, T v) { s.seed = static_cast<uint64_t>(parse_count(t, "seed", v, 0)); }},
      {"dir", KeyScope::any, true, [](S& s, T, T v) { s.dir = v; }},
      {"train_images", KeyScope::idx, true, [](S& s, T, T v) { s.train_images = v; }},
      {"train_labels", KeyScope::idx, true, [](S& s, T, T v) { s.train_labels = v; }},
      {"test_images", KeyScope::idx, true, [](S& s, T, T v) { s.test_images = v; }},
      {"test_labels", KeyScope::idx, true, [](S& s, T, T v) { s.test_labels = v; }},
      {"names", KeyScope::idx, false,
       [](S& s, T t, T v) {
         s.names = split(v, ',');
         for (const auto& n : s.names)
           check_utf8(n, cat("dataset spec '", printable(t), "': the class name"));
       }},
      {"test_dir", KeyScope::folder, true, [](S& s, T, T v) { s.test_dir = v; }},
      {"train_list", KeyScope::folder, true, [](S& s, T, T v) { s.train_list = v; }},
      {"val_list", KeyScope::folder, true, [](S& s, T, T v) { s.val_list = v; }},
      {"test_list", KeyScope::folder, true, [](S& s, T, T v) { s.test_list = v; }},
      {"size", KeyScope::images, false, [](S& s, T t, T v) { s.image.size = parse_count(t, "size", v, 8); }},
      {"resize", KeyScope::images, false,
       [](S& s, T t, T v) { s.image.resize = parse_count(t, "resize", v, 8); }},
      {"crop", KeyScope::images, false, [](S& s, T, T v) { s.image.crop = v; }},
      {"scale", KeyScope::images, false,
       [](S& s, T t, T v) {
         const auto r = parse_reals(t, "scale", v, 2);
         s.image.scale_min = r[0], s.image.scale_max = r[1];
       }},
      {"ratio", KeyScope::images, false,
       [](S& s, T t, T v) {
         const auto r = parse_reals(t, "ratio", v, 2);
         s.image.ratio_min = r[0], s.image.ratio_max = r[1];
       }},
      {"mean", KeyScope::images, false,
       [](S& s, T t, T v) { s.image.norm.mean = parse_reals(t, "mean", v, 3); }},
      {"std", KeyScope::images, false,
       [](S& s, T t, T v) { s.image.norm.std = parse_reals(t, "std", v, 3); }},
      {"corrupt", KeyScope::images, false,
       [](S& s, T t, T v) {
         XFER_CHECK(v == "skip" || v == "fail", "dataset spec '", t, "': corrupt must be skip or fail, got '",
                    v, "'");
         s.image.fail_on_corrupt = v == "fail";
       }},
      {"cache", KeyScope::images, true, [](S& s, T, T v) { s.cache = v; }},
      {"split", KeyScope::val_split, false,
       [](S& s, T t, T v) {
         XFER_CHECK(v == "train" || v == "trainval", "dataset spec '", t,
                    "': split must be train or trainval, got '", v, "'");
         s.layout_split = v;
       }},
      {"fold", KeyScope::dtd, false,
       [](S& s, T t, T v) {
         s.fold = parse_count(t, "fold", v, 1);
         XFER_CHECK(s.fold <= 10, "dataset spec '", t, "': fold must be 1..10, got ", s.fold);
       }},
  };
  return keys;
}

/// "classes, per_class, ...; folder: test_dir, ...; benchmarks: split, fold and the image keys".
std::string valid_keys_text() {
  std::string general, folder;
  for (const auto& k : spec_keys()) {
    if (k.scope == KeyScope::any || k.scope == KeyScope::idx)
      general += cat(general.empty() ? "" : ", ", k.name);
    if (k.scope == KeyScope::folder || k.scope == KeyScope::images)
      folder += cat(folder.empty() ? "" : ", ", k.name);
  }
  return cat(general, "; folder: ", folder, "; benchmarks: split, fold and the image keys");
}

/// Refuses `key` where the spec's dataset does not use it.
void check_scope(const DatasetSpec& s, const SpecKey& key, const std::string& text) {
  const bool folder = s.source == "folder";
  const bool images = folder || (is_benchmark_source(s.source) && !benchmark_in_memory(s.source));
  const std::string where = cat("dataset spec '", text, "': ", key.name);
  switch (key.scope) {
    case KeyScope::any:
      return;
    case KeyScope::idx:
      XFER_CHECK(s.source == "idx", where, " is only for idx datasets");
      return;
    case KeyScope::folder:
      XFER_CHECK(folder, where, " is only for image folders (folder:dir=ROOT)");
      return;
    case KeyScope::images:
      XFER_CHECK(images, where, " is only for image folders and image benchmarks");
      return;
    case KeyScope::val_split:
      XFER_CHECK(benchmark_has_val(s.source), where,
                 " is only for aircraft, dtd and flowers (the layouts with a validation set)");
      return;
    case KeyScope::dtd:
      XFER_CHECK(s.source == "dtd", where, " is only for dtd");
      return;
  }
}

/// The cross-key rules, once every key is read.
void check_combinations(DatasetSpec& s, const std::set<std::string>& seen) {
  const std::string& text = s.text;
  const bool bench = is_benchmark_source(s.source);
  const bool images = s.source == "folder" || (bench && !benchmark_in_memory(s.source));
  if (s.source == "idx")
    XFER_CHECK(!s.dir.empty() || (!s.train_images.empty() && !s.train_labels.empty()), "dataset spec '", text,
               "': idx needs dir=PATH or train_images= and train_labels=");
  XFER_CHECK(!(s.per_class && s.fraction), "dataset spec '", text,
             "': give per_class= or fraction=, not both");
  if (bench) {
    XFER_CHECK(!s.dir.empty(), "dataset spec '", text, "': ", s.source,
               " needs dir=PATH, the folder it was unpacked to (docs/benchmarks.md)");
    XFER_CHECK(s.layout_split != "train" || (s.val_count == 0 && s.val_fraction == 0), "dataset spec '", text,
               "': give val= or split=train (the layout's validation set), not both");
  }
  if (!images) return;
  XFER_CHECK(!s.dir.empty(), "dataset spec '", text, "': folder needs dir=ROOT (ROOT/CLASS_NAME/*.jpg|png)");
  XFER_CHECK(s.shifts.empty(), "dataset spec '", text, "': shift= is not supported on image folders yet");
  XFER_CHECK(s.test_dir.empty() || s.test_list.empty(), "dataset spec '", text,
             "': give test_dir= or test_list=, not both");
  XFER_CHECK(s.val_list.empty() || (s.val_count == 0 && s.val_fraction == 0), "dataset spec '", text,
             "': give val= or val_list=, not both");
  if (!seen.count("resize") && seen.count("size"))
    s.image.resize = static_cast<int64_t>(std::llround(s.image.size * 256.0 / 224.0));
  try {
    s.image.validate();
  } catch (const BadInput& e) {
    throw BadInput(cat("dataset spec '", text, "': ", e.what()));
  }
}

}  // namespace

DatasetSpec DatasetSpec::parse(const std::string& text) {
  DatasetSpec s;
  s.text = text;
  const auto parts = split(text, ':');
  s.source = parts[0];
  XFER_CHECK(
      s.source == "fmnist" || s.source == "idx" || s.source == "folder" || is_benchmark_source(s.source),
      "dataset spec '", text, "': unknown dataset '", s.source,
      "'; valid: fmnist, idx, folder, cub, aircraft, pets, dtd, flowers, cars, cifar10, cifar100 (see "
      "`xfer data --help`)");
  std::set<std::string> seen;
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    XFER_CHECK(eq != std::string::npos && eq > 0, "dataset spec '", text, "': expected key=value, got '",
               parts[i], "'");
    const std::string key = parts[i].substr(0, eq), v = parts[i].substr(eq + 1);
    XFER_CHECK(seen.insert(key).second, "dataset spec '", text, "': key '", key, "' given twice");
    XFER_CHECK(!v.empty(), "dataset spec '", text, "': ", key, " has an empty value");
    const auto& keys = spec_keys();
    const auto k = std::find_if(keys.begin(), keys.end(), [&](const SpecKey& sk) { return key == sk.name; });
    XFER_CHECK(k != keys.end(), "dataset spec '", text, "': unknown key '", key,
               "'; valid keys: ", valid_keys_text());
    check_scope(s, *k, text);
    k->read(s, text, v);
  }
  check_combinations(s, seen);
  return s;
}

std::string absolute_spec_paths(const std::string& text) {
  try {
    DatasetSpec::parse(text);
  } catch (const BadInput&) {
    return text;  // the run reports it where it reads it
  }
  std::string out;
  for (const auto& part : split(text, ':')) {
    const size_t eq = part.find('=');
    std::string piece = part;
    const auto& keys = spec_keys();
    const bool path = eq != std::string::npos && std::any_of(keys.begin(), keys.end(), [&](const SpecKey& k) {
                        return k.path && part.compare(0, eq, k.name) == 0 && std::strlen(k.name) == eq;
                      });
    if (path) {
      std::error_code ec;
      const auto absolute = std::filesystem::absolute(part.substr(eq + 1), ec);
      if (!ec) piece = part.substr(0, eq + 1) + absolute.lexically_normal().string();
    }
    out += (out.empty() ? "" : ":") + piece;
  }
  return out;
}

const char* spec_help() {
  return R"(Dataset specs: SOURCE[:key=value]...   e.g. fmnist:classes=2,4,6,7,9:per_class=10:seed=0
  SOURCE  fmnist (Fashion-MNIST from Debian's dataset-fashion-mnist) | idx (your IDX files: dir=PATH)
          | folder (an image folder dir=ROOT: ROOT/CLASS_NAME/**/*.jpg|png, classes sorted by name)
          | cub | aircraft | pets | dtd | flowers | cars | cifar10 | cifar100 (a benchmark as its
          authors distribute it, dir=PATH: e.g. cub:dir=data/CUB_200_2011; see docs/benchmarks.md)
  classes=2,4,6 | 0-4     class subset, relabelled 0..k-1 in the order given (default all)
  per_class=N             few-shot: N training examples per class, drawn by the seed (default all)
  fraction=0.15           few-shot by share (0 < F <= 1): F x n of each class's n training examples,
                          rounded half up, at least 1, drawn by the seed; a smaller F's subset is part
                          of a larger one's (Transfer-Learning-Library's 15/30/50% protocol)
  val=N | val=0.1         validation examples per class held out from the training file (default 0)
  test=file|rest|none     test split: the test file (default), unused training examples, or none
  test_per_class=N        cap the test split per class
  part=I/N                the I-th of N disjoint slices of each class (for disjoint source/target sets)
  shift=rot30+invert+noise0.2   domain shifts: rotate K degrees, invert, gaussian noise (std in [0,1])
  seed=S                  sampling seed (default: --seed)
  dir=PATH                IDX directory; idx also takes train_images= train_labels= test_images=
                          test_labels= (paths) and names=a,b,c
folder only:
  test_dir=PATH | test_list=FILE   the test split (or test=rest|none); train_list= val_list= too:
                          split files of paths relative to dir=, one per line (class/file.jpg)
  size=224 resize=256     input side; evaluation resizes the shorter side to `resize`, center-crops `size`
  crop=rrc|random         training crop: RandomResizedCrop (scale=0.08,1 ratio=0.75,1.3333) or
                          resize + random crop; then the flip (--flip)
  mean=R,G,B std=R,G,B    normalisation (default ImageNet's; an xfer --init model brings its own)
  corrupt=skip|fail       unreadable images: skip with a counted warning (default), or fail
  cache=FILE              decode every image once into FILE (shorter side `resize`), read it from then on
benchmarks (image ones also take size= resize= crop= scale= ratio= mean= std= corrupt= cache=):
  split=train|trainval    aircraft, dtd, flowers: train on the training set and validate on the
                          layout's validation set, or train on both (default trainval)
  fold=K                  dtd: which of its ten splits, 1..10 (default 1)
)";
}

torch::Tensor apply_shifts(const torch::Tensor& images, const std::vector<std::string>& shifts, uint64_t seed,
                           const torch::Tensor& ids) {
  if (shifts.empty() || images.size(0) == 0) return images;
  torch::Tensor x = images.to(torch::kFloat32);
  for (const auto& s : shifts) {
    if (s == "invert") {
      x = 255.0f - x;
    } else if (s.rfind("rot", 0) == 0) {
      const double deg = std::stod(s.substr(3));
      const double turns = deg / 90.0;
      if (std::abs(turns - std::round(turns)) < 1e-12) {
        const int64_t k = static_cast<int64_t>(std::llround(turns));
        x = torch::rot90(x, -k, {2, 3}).contiguous();  // clockwise for positive degrees, like k turns
      } else {
        const double r = deg * M_PI / 180.0;
        const float c = static_cast<float>(std::cos(r)), sn = static_cast<float>(std::sin(r));
        const torch::Tensor theta =
            torch::tensor({c, -sn, 0.0f, sn, c, 0.0f}).view({1, 2, 3}).expand({x.size(0), 2, 3});
        const torch::Tensor grid = torch::nn::functional::affine_grid(theta, x.sizes().vec(), false);
        x = torch::nn::functional::grid_sample(
            x, grid,
            torch::nn::functional::GridSampleFuncOptions().mode(torch::kBilinear).align_corners(false));
      }
    } else {  // noise
      const double sd = std::stod(s.substr(5)) * 255.0;
      const torch::Tensor id = ids.contiguous();
      const int64_t* p = id.data_ptr<int64_t>();
      for (int64_t i = 0; i < x.size(0); ++i) {
        auto gen = make_generator(derive_seed(seed, static_cast<uint64_t>(p[i])));
        x[i].add_(torch::randn(x[i].sizes(), gen) * sd);
      }
    }
  }
  return x.round_().clamp_(0, 255).to(torch::kUInt8);
}

int64_t fraction_count(double fraction, int64_t n) {
  const int64_t k = static_cast<int64_t>(std::floor(fraction * static_cast<double>(n) + 0.5 + 1e-9));
  return std::clamp<int64_t>(k, 1, std::max<int64_t>(n, 1));
}

Task load_task(const std::string& spec, uint64_t run_seed) {
  return load_task(DatasetSpec::parse(spec), run_seed);
}

namespace {

/// An image folder's splits as RawSplits of files: the training pool, and the validation and test files
/// when the spec names them. Every split shares one log of unreadable files.
void load_folder_raw(const DatasetSpec& spec, RawSplit& train, RawSplit& val, RawSplit& test,
                     std::vector<std::string>& class_names) {
  const FolderScan all = scan_image_folder(spec.dir);
  class_names = all.class_names;
  auto corrupt = std::make_shared<CorruptLog>();
  auto to_raw = [&](const std::string& root, const FolderScan& sc) {
    RawSplit r;
    r.labels = torch::tensor(sc.labels, torch::kInt64);
    std::vector<std::string> full;
    full.reserve(sc.files.size());
    for (const auto& f : sc.files) full.push_back((fs::path(root) / f).string());
    r.files = std::make_shared<ImageFiles>(root, std::move(full), spec.image, corrupt, nullptr, sc.labels);
    return r;
  };
  train = to_raw(spec.dir,
                 spec.train_list.empty() ? all : read_split_list(spec.dir, spec.train_list, class_names));
  if (!spec.val_list.empty()) val = to_raw(spec.dir, read_split_list(spec.dir, spec.val_list, class_names));
  if (spec.test != "file") return;
  XFER_CHECK(
      !spec.test_dir.empty() || !spec.test_list.empty(), "dataset spec '", spec.text,
      "': the image folder has no test files; give test_dir= or test_list=, or test=rest, or test=none ",
      "(with val= for model selection)");
  if (!spec.test_list.empty()) {
    test = to_raw(spec.dir, read_split_list(spec.dir, spec.test_list, class_names));
    return;
  }
  const FolderScan t = scan_image_folder(spec.test_dir);
  XFER_CHECK(t.class_names == class_names, "dataset spec '", spec.text, "': test_dir ", spec.test_dir,
             " has ", t.class_names.size(), " class folders (", t.class_names.front(), " ...) but dir ",
             spec.dir, " has ", class_names.size(), " (", class_names.front(),
             " ...); their class folders must be the same");
  test = to_raw(spec.test_dir, t);
}

/// A benchmark's splits as RawSplits: image files (decoded like a folder's) or CIFAR's images in memory.
void load_benchmark_raw(const DatasetSpec& spec, RawSplit& train, RawSplit& val, RawSplit& test,
                        std::vector<std::string>& class_names) {
  const BenchmarkData b = read_benchmark(spec.source, spec.dir, spec.layout_split, spec.fold);
  class_names = b.class_names;
  auto corrupt = std::make_shared<CorruptLog>();
  auto to_raw = [&](const BenchmarkSplit& s) {
    RawSplit r;
    r.labels = torch::tensor(s.labels, torch::kInt64);
    if (s.images.defined()) {
      r.images = s.images;
      return r;
    }
    std::vector<std::string> full;
    full.reserve(s.files.size());
    for (const auto& f : s.files) full.push_back((fs::path(b.root) / f).string());
    r.files = std::make_shared<ImageFiles>(b.root, std::move(full), spec.image, corrupt, nullptr, s.labels);
    return r;
  };
  train = to_raw(b.train);
  if (b.has_val) val = to_raw(b.val);
  if (spec.test == "file") test = to_raw(b.test);
}

/// With cache=FILE: every split's files come from one decoded-image cache (built on first use).
void attach_image_cache(const DatasetSpec& spec, std::vector<RawSplit*> splits) {
  if (spec.cache.empty()) return;
  std::vector<std::string> paths;
  for (RawSplit* r : splits)
    if (r->files)
      for (int64_t i = 0; i < r->files->size(); ++i) paths.push_back(r->files->path(i));
  const int64_t side = std::max(spec.image.resize, spec.image.size);
  auto cache = ImageCache::open_or_build(spec.cache, paths, side, default_loader_workers(0));
  for (RawSplit* r : splits) {
    if (!r->files) continue;
    r->files = r->files->with_cache(cache);
  }
}

/// The IDX files of `spec` (fmnist's or the user's): the training split, and the test file unless the spec
/// takes its test split elsewhere. Returns the labels file's path, for messages.
std::string load_idx_raw(const DatasetSpec& spec, const std::string& dir, RawSplit& train_raw,
                         RawSplit& test_raw) {
  const std::string train_images =
      !spec.train_images.empty() ? spec.train_images : find_idx(dir, "train-images-idx3-ubyte");
  const std::string train_labels =
      !spec.train_labels.empty() ? spec.train_labels : find_idx(dir, "train-labels-idx1-ubyte");
  check_exists(spec, train_images);
  check_exists(spec, train_labels);
  train_raw = load_raw(train_images, train_labels);
  if (spec.test != "file") return train_labels;
  const bool explicit_test = !spec.test_images.empty() || !spec.test_labels.empty();
  XFER_CHECK(!explicit_test || (!spec.test_images.empty() && !spec.test_labels.empty()), "dataset spec '",
             spec.text, "': give both test_images= and test_labels=");
  XFER_CHECK(explicit_test || !dir.empty(), "dataset spec '", spec.text,
             "': no test files; give test_images= and test_labels=, or test=rest or test=none");
  const std::string ti = explicit_test ? spec.test_images : find_idx(dir, "t10k-images-idx3-ubyte");
  const std::string tl = explicit_test ? spec.test_labels : find_idx(dir, "t10k-labels-idx1-ubyte");
  check_exists(spec, ti);
  check_exists(spec, tl);
  test_raw = load_raw(ti, tl);
  XFER_CHECK(test_raw.images.sizes().slice(1) == train_raw.images.sizes().slice(1), "dataset spec '",
             spec.text, "': test images have shape ", test_raw.images.sizes().slice(1),
             " but training images have ", train_raw.images.sizes().slice(1));
  return train_labels;
}

/// The class names of the files' label space: the folder's or benchmark's, Fashion-MNIST's, names= or the
/// label numbers of an IDX file.
std::vector<std::string> file_class_names(const DatasetSpec& spec, const RawSplit& train_raw,
                                          const std::vector<std::string>& folder_classes,
                                          const std::string& train_labels) {
  if (spec.source == "folder" || is_benchmark_source(spec.source)) return folder_classes;
  if (spec.source == "fmnist") return fmnist_class_names();
  const int64_t file_classes = train_raw.labels.numel() > 0 ? train_raw.labels.max().item<int64_t>() + 1 : 0;
  // Classes are numbered by label: one label of 2^31 would name 2^31 classes.
  XFER_CHECK(file_classes <= kMaxClasses, train_labels, ": label ", file_classes - 1, " implies ",
             file_classes, " classes; at most ", kMaxClasses, " are supported");
  if (!spec.names.empty()) {
    XFER_CHECK(static_cast<int64_t>(spec.names.size()) >= file_classes, "dataset spec '", spec.text,
               "': names lists ", spec.names.size(), " classes but the labels go up to ", file_classes - 1);
    return spec.names;
  }
  std::vector<std::string> names;
  for (int64_t c = 0; c < file_classes; ++c) names.push_back(std::to_string(c));
  return names;
}

/// Examples (indices into a split's file) and their new labels 0..k-1.
struct Picked {
  std::vector<int64_t> index, label;
  void add(int64_t i, size_t j) {
    index.push_back(i);
    label.push_back(static_cast<int64_t>(j));
  }
};
struct PickedSplits {
  Picked train, val, test;
};

std::vector<std::vector<int64_t>> indices_by_class(const RawSplit& raw,
                                                   const std::vector<std::string>& names) {
  TensorDataset d;
  d.labels = raw.labels;
  d.class_names = names;
  return d.indices_by_class();
}

/// Draws each class's examples, in the spec's class order: its part of the training file, shuffled by the
/// seed, split into val (val=), train (per_class= or fraction=) and, with test=rest, the rest; the test
/// file's (or the val file's) examples of the class.
PickedSplits pick_examples(const DatasetSpec& spec, uint64_t seed, const std::vector<int64_t>& classes,
                           const std::vector<std::string>& file_names, const RawSplit& train_raw,
                           const RawSplit& val_raw, const RawSplit& test_raw) {
  const auto train_by_class = indices_by_class(train_raw, file_names);
  std::vector<std::vector<int64_t>> test_by_class(file_names.size()), val_by_class(file_names.size());
  if (spec.test == "file") test_by_class = indices_by_class(test_raw, file_names);
  const bool val_file = val_raw.labels.defined();
  if (val_file) val_by_class = indices_by_class(val_raw, file_names);
  PickedSplits out;
  for (size_t j = 0; j < classes.size(); ++j) {
    const int64_t c = classes[j];
    const std::string cname = cat("class ", c, " (", file_names[c], ")");
    const auto& all = train_by_class[c];
    const size_t lo = all.size() * spec.part_index / spec.part_count;
    const size_t hi = all.size() * (spec.part_index + 1) / spec.part_count;
    std::vector<int64_t> pool(all.begin() + lo, all.begin() + hi);
    shuffle_in_place(pool, derive_seed(seed, "split/" + std::to_string(c)));
    const int64_t n = static_cast<int64_t>(pool.size());
    const int64_t n_val =
        spec.val_fraction > 0 ? static_cast<int64_t>(std::llround(spec.val_fraction * n)) : spec.val_count;
    const char* part = spec.part_count > 1 ? " part" : "";
    XFER_CHECK((n_val < n), "dataset spec '", spec.text, "': val=", n_val,
               " leaves no training examples for ", cname, ", which has ", n, " in the training file", part);
    const int64_t rest = n - n_val;
    const int64_t n_train = spec.per_class  ? *spec.per_class
                            : spec.fraction ? fraction_count(*spec.fraction, rest)
                                            : rest;
    XFER_CHECK(n_train <= rest, "dataset spec '", spec.text, "': per_class=", n_train, " but ", cname,
               " has only ", rest, " training examples",
               n_val > 0 ? cat(" after val=", n_val) : std::string());
    for (int64_t i = 0; i < n_val; ++i) out.val.add(pool[i], j);
    if (val_file)
      for (int64_t i : val_by_class[c]) out.val.add(i, j);
    for (int64_t i = n_val; i < n_val + n_train; ++i) out.train.add(pool[i], j);

    std::vector<int64_t> test_pool;
    if (spec.test == "file") test_pool = test_by_class[c];
    if (spec.test == "rest") test_pool.assign(pool.begin() + n_val + n_train, pool.end());
    if (spec.test_per_class && static_cast<int64_t>(test_pool.size()) > *spec.test_per_class) {
      shuffle_in_place(test_pool, derive_seed(seed, "test/" + std::to_string(c)));
      test_pool.resize(*spec.test_per_class);
    }
    XFER_CHECK(spec.test == "none" || !test_pool.empty(), "dataset spec '", spec.text,
               "': the test split has no ", "examples of ", cname,
               spec.test == "rest" ? " (every training example is used; try test=file)" : "");
    for (int64_t i : test_pool) out.test.add(i, j);
  }
  return out;
}

/// One split of the task: the picked examples of `raw` (files, or images with the spec's shifts; a shifted
/// image's noise is drawn by its id, its index plus `id_offset`).
TensorDataset build_split(const DatasetSpec& spec, const RawSplit& raw, const Picked& picked,
                          const std::vector<std::string>& names, uint64_t shift_seed, int64_t id_offset,
                          const RawSplit& train_raw) {
  const torch::Tensor index = torch::tensor(picked.index, torch::kInt64);
  TensorDataset d;
  d.class_names = names;
  if (raw.files) {
    d.labels = torch::tensor(picked.label, torch::kInt64);
    d.files = raw.files->subset(picked.index);
    return d;
  }
  if (picked.index.empty()) {
    d.images = torch::empty({0, train_raw.images.size(1), train_raw.images.size(2), train_raw.images.size(3)},
                            torch::kUInt8);
    d.labels = torch::empty({0}, torch::kInt64);
    return d;
  }
  d.images = apply_shifts(raw.images.index_select(0, index), spec.shifts, shift_seed, index + id_offset);
  d.labels = torch::tensor(picked.label, torch::kInt64);
  return d;
}

}  // namespace

Task load_task(const DatasetSpec& spec, uint64_t run_seed) {
  const uint64_t seed = spec.seed.value_or(run_seed);
  const std::string dir = !spec.dir.empty() ? spec.dir : spec.source == "fmnist" ? kFmnistDir : "";
  RawSplit train_raw, test_raw, val_raw;
  std::vector<std::string> folder_classes;
  std::string train_labels = dir;
  if (spec.source == "folder") {
    load_folder_raw(spec, train_raw, val_raw, test_raw, folder_classes);
    attach_image_cache(spec, {&train_raw, &val_raw, &test_raw});
  } else if (is_benchmark_source(spec.source)) {
    load_benchmark_raw(spec, train_raw, val_raw, test_raw, folder_classes);
    attach_image_cache(spec, {&train_raw, &val_raw, &test_raw});
  } else {
    train_labels = load_idx_raw(spec, dir, train_raw, test_raw);
  }

  const std::vector<std::string> file_names = file_class_names(spec, train_raw, folder_classes, train_labels);
  const int64_t file_classes = static_cast<int64_t>(file_names.size());
  XFER_CHECK(train_raw.labels.numel() == 0 || train_raw.labels.max().item<int64_t>() < file_classes,
             train_labels, ": label ", train_raw.labels.max().item<int64_t>(), " is out of range for ",
             file_classes, " classes");
  std::vector<int64_t> classes = spec.classes;
  if (classes.empty())
    for (int64_t c = 0; c < file_classes; ++c) classes.push_back(c);
  for (int64_t c : classes)
    XFER_CHECK(c < file_classes, "dataset spec '", spec.text, "': unknown class ", c, "; ", spec.source,
               " has classes 0-", file_classes - 1);
  std::vector<std::string> names;
  for (int64_t c : classes) names.push_back(file_names[c]);

  const PickedSplits picked = pick_examples(spec, seed, classes, file_names, train_raw, val_raw, test_raw);
  const uint64_t shift_seed = derive_seed(seed, "shift");
  const bool val_file = val_raw.labels.defined();
  Task task;
  task.spec = spec.text;
  task.train = build_split(spec, train_raw, picked.train, names, shift_seed, 0, train_raw);
  task.val = build_split(spec, val_file ? val_raw : train_raw, picked.val, names, shift_seed, 0, train_raw);
  task.test =
      spec.test == "file"
          ? build_split(spec, test_raw, picked.test, names, shift_seed, train_raw.labels.size(0), train_raw)
          : build_split(spec, train_raw, picked.test, names, shift_seed, 0, train_raw);
  XFER_CHECK(task.train.size() > 0, "dataset spec '", spec.text, "': the training split is empty");
  return task;
}

}  // namespace xfer
