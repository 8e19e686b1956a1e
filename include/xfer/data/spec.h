#pragma once
/// Dataset specs: one string describes a task, e.g. `fmnist:classes=2,4,6,7,9:per_class=10:seed=0`.
///
///   SPEC    := SOURCE { ':' KEY '=' VALUE }
///   SOURCE  := fmnist                          Fashion-MNIST (Debian package dataset-fashion-mnist)
///            | idx                             any IDX files (give dir= or the four *_images/_labels keys)
///            | folder                          an image folder dir=ROOT: ROOT/CLASS_NAME/**/*.jpg|png
///            | cub | aircraft | pets | dtd | flowers | cars | cifar10 | cifar100
///                                              a benchmark as distributed, dir=PATH (data/benchmarks.h)
///
///   classes=2,4,6 | 0-4 | 0-2,7   class subset, relabelled 0..k-1 in the order given (default: all)
///   per_class=N        few-shot: N training examples per class, drawn by the seed (default: all)
///   fraction=F         few-shot by share, 0<F<=1: fraction_count(F, n) of each class's n training examples,
///                      drawn by the seed (Transfer-Learning-Library's 15/30/50% protocol); the subset of a
///                      smaller F is part of the subset of a larger one under the same seed
///   val=N | val=F      held-out validation examples per class carved from the training file, a count
///                      or a fraction 0<F<1 of each class (default: 0, no validation split)
///   test=file|rest|none  the test split: the test file (default), the training-file examples this
///                      spec does not use, or none
///   test_per_class=N   cap the test split at N examples per class, drawn by the seed
///   part=I/N           keep only the I-th of N disjoint slices of each class's training examples
///                      (fixed by index order, independent of the seed), for disjoint source/target sets
///   shift=S[+S...]     domain shifts applied to every split: rotK (rotate K degrees), invert,
///                      noiseS (gaussian noise, std S in [0,1] pixel units); composed left to right
///   seed=S             the sampling seed (default: the run's --seed)
///   dir=PATH           directory of the IDX files (fmnist: /usr/share/datasets/fashion-mnist)
///   train_images= train_labels= test_images= test_labels=   explicit IDX paths (idx only)
///   names=a,b,c        class names (idx only; default "0", "1", ...)
///
/// Image folders (folder only): classes are the sorted class-folder names, so classes= takes their
/// indices in that order. test=file reads test_dir= (same class folders) or test_list=; without either, use
/// test=rest, test=none or a val= split.
///   train_list= val_list= test_list=   split files: one path relative to dir= per line (class/file.jpg)
///   test_dir=PATH      the test split's own image folder
///   size=224           model input side; resize=256  evaluation: shorter side to 256, center crop `size`
///   crop=rrc|random    training crop: RandomResizedCrop (scale=0.08,1 ratio=0.75,1.3333) or resize +
///                      random crop; then a horizontal flip (--flip)
///   mean=R,G,B std=R,G,B  normalisation (ImageNet's by default; a --init xfer model brings its own)
///   corrupt=skip|fail  unreadable images: skip with a counted warning (default) or fail
///   cache=FILE         decoded, downscaled images stored in one file (FFCV-style), built on first use
///
/// Benchmarks: the image keys above (size= ... cache=) apply to the image benchmarks too, not the list keys.
///   split=train|trainval  aircraft, dtd, flowers: train on the layout's training set and validate on its
///                      validation set, or train on both (default trainval)
///   fold=K             dtd: which of the ten splits, 1..10 (default 1)
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "xfer/data/dataset.h"
#include "xfer/data/image_folder.h"

namespace xfer {

/// The most classes an IDX dataset's labels may number (labels run 0 .. kMaxClasses - 1).
constexpr int64_t kMaxClasses = int64_t(1) << 20;

struct DatasetSpec {
  std::string text;
  std::string source;  // "fmnist", "idx", "folder" or a benchmark (benchmark_sources())
  std::vector<int64_t> classes;
  std::optional<int64_t> per_class;
  std::optional<double> fraction;  // 0 < F <= 1
  int64_t val_count = 0;           // per class, when val_fraction is 0
  double val_fraction = 0;         // 0 < f < 1, or 0 for a count
  std::string test = "file";
  std::optional<int64_t> test_per_class;
  int64_t part_index = 0, part_count = 1;
  std::vector<std::string> shifts;  // normalised, e.g. {"rot90", "invert", "noise0.2"}
  std::optional<uint64_t> seed;
  std::string dir, train_images, train_labels, test_images, test_labels;
  std::vector<std::string> names;
  // Image folders.
  std::string test_dir, train_list, val_list, test_list, cache;
  ImageOptions image;
  // Benchmarks.
  std::string layout_split = "trainval";  // split=
  int64_t fold = 1;

  /// Parses a spec; BadInput naming the bad key or value and listing the valid keys.
  static DatasetSpec parse(const std::string& text);
};

/// `text` with every path in it (dir=, train_images= ... test_labels=, test_dir=, *_list=, cache=) made
/// absolute against the working directory, so that a run's config.json means the same from anywhere. A text
/// that is no valid spec ("rest") comes back as it was.
std::string absolute_spec_paths(const std::string& text);

/// The training examples fraction=F keeps of a class with n: F n rounded to the nearest integer, halves
/// up (F n within 1e-9 of a half counts as one, so 0.15 x 10 keeps 2 although 0.15 is not exact in binary),
/// at least 1 and at most n.
int64_t fraction_count(double fraction, int64_t n);

/// The text of the help section on specs (shared by --help and the README).
const char* spec_help();

/// Loads the splits of a spec. `run_seed` is used when the spec gives no seed=.
Task load_task(const DatasetSpec& spec, uint64_t run_seed);
Task load_task(const std::string& spec, uint64_t run_seed);

/// Applies a normalised list of shifts to uint8 images (N, C, H, W). `seed` drives the noise; each
/// image's noise depends only on (seed, its index in `ids`), so a shifted image is the same whichever
/// split it lands in.
torch::Tensor apply_shifts(const torch::Tensor& images, const std::vector<std::string>& shifts, uint64_t seed,
                           const torch::Tensor& ids);

/// Fashion-MNIST's class names, indexed by label.
const std::vector<std::string>& fmnist_class_names();

}  // namespace xfer
