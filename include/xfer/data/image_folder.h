#pragma once
/// Image folders (torchvision's ImageFolder convention): ROOT/CLASS_NAME/**/*.jpg|jpeg|png. Classes are
/// the sorted directory names, relabelled 0..k-1 in that order; each class's files are walked
/// recursively, sorted by (directory, file name) like `sorted(os.walk(...))`. Images are decoded on
/// demand by worker threads, with the ImageNet recipe's transforms.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <torch/types.h>

#include "xfer/data/dataset.h"

namespace xfer {

/// ImageNet's per-channel mean and std (torchvision's pretrained weights expect them).
Normalization imagenet_normalization();

/// The transforms of an image folder.
struct ImageOptions {
  int64_t size = 224;        // side of the square model input, training and evaluation
  int64_t resize = 256;      // evaluation: shorter side resized to this, then a center crop of `size`
  std::string crop = "rrc";  // training: rrc (RandomResizedCrop) | random (resize to `resize`, random crop)
  double scale_min = 0.08, scale_max = 1.0;             // RandomResizedCrop area fraction
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;  // RandomResizedCrop aspect ratio
  bool fail_on_corrupt = false;  // unreadable image: fail (BadInput), or skip it with a counted warning
  Normalization norm = imagenet_normalization();

  /// Echoes the bad value (BadInput).
  void validate() const;
};

/// Unreadable files met so far, shared by every subset of one folder: each is warned about once.
struct CorruptLog {
  std::mutex mutex;
  std::set<std::string> paths;
  std::atomic<int64_t> skipped{0};  // examples replaced by a readable neighbour
};

/// Decoded images stored in one file (FFCV-style), memory-mapped: every image of a folder decoded once and
/// downscaled so that its shorter side is `side` (never upscaled), raw RGB. Later epochs and later runs
/// skip JPEG decoding. Unreadable files are recorded as such, so the corrupt-file policy still applies.
///
/// File layout: "XFERIMC1", u64 count, u64 side, then per image {u64 offset, u32 height, u32 width,
/// u32 path length, path bytes}, then the pixels (offsets from the start of the file).
class ImageCache {
 public:
  /// Opens `file` if it holds every path of `paths` at `side`; otherwise decodes them all on `workers`
  /// threads and writes it (to a temporary name, then renamed).
  static std::shared_ptr<const ImageCache> open_or_build(const std::string& file,
                                                         const std::vector<std::string>& paths, int64_t side,
                                                         int workers);
  /// The cache in `file` as it is, or nullptr when it is missing or malformed (every offset and size is
  /// checked against the file's length).
  static std::shared_ptr<const ImageCache> open(const std::string& file);
  ~ImageCache();
  ImageCache(const ImageCache&) = delete;
  ImageCache& operator=(const ImageCache&) = delete;

  struct Entry {
    const uint8_t* rgb = nullptr;  // (height, width, 3); null for an unreadable file
    int64_t height = 0, width = 0;
  };
  /// The entry of `path`, or nullptr when the cache does not hold it.
  const Entry* find(const std::string& path) const;
  int64_t side() const { return side_; }
  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  std::vector<std::string> paths() const;

 private:
  ImageCache() = default;
  bool map(const std::string& file);
  std::map<std::string, Entry> entries_;
  int64_t side_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

/// The files of an image folder's examples and how to turn them into model inputs.
class ImageFiles {
 public:
  /// `labels`, one per path, keep stand-ins for unreadable files within their class (empty: one class).
  ImageFiles(std::string root, std::vector<std::string> paths, ImageOptions opts,
             std::shared_ptr<CorruptLog> corrupt = nullptr, std::shared_ptr<const ImageCache> cache = nullptr,
             std::vector<int64_t> labels = {});

  int64_t size() const { return static_cast<int64_t>(paths_.size()); }
  const std::string& root() const { return root_; }
  /// The path of example i (root joined with its relative path).
  const std::string& path(int64_t i) const { return paths_.at(static_cast<size_t>(i)); }
  const ImageOptions& options() const { return opts_; }
  std::shared_ptr<const ImageFiles> subset(const std::vector<int64_t>& indices) const;
  /// The same files, read from `cache` (which must hold them) instead of decoded from disk.
  std::shared_ptr<const ImageFiles> with_cache(std::shared_ptr<const ImageCache> cache) const;

  /// Decodes example i and writes its crop, planar uint8 (3, size, size), to `out`: the training crop
  /// (RandomResizedCrop or random crop, then a flip if `flip`), drawn from `seed` alone, or the
  /// evaluation crop. An unreadable file fails (BadInput) or, by default, is replaced by the next readable
  /// example of the same class (i+1, i+2, ...) with a warning the first time it is met; a class none of
  /// whose images can be read fails (BadInput).
  void load(int64_t i, bool train, bool flip, uint64_t seed, uint8_t* out) const;
  /// uint8 (n, 3, size, size) for `indices`: example k with seed derive_seed(seed, positions[k]) (its
  /// position in the global batch; k itself without `positions`), on `workers` threads.
  torch::Tensor load_batch(const std::vector<int64_t>& indices, bool train, bool flip, uint64_t seed,
                           int workers, bool pinned = false,
                           const std::vector<int64_t>* positions = nullptr) const;
  /// Unreadable files met so far, and the examples replaced because of them.
  std::vector<std::string> corrupt_files() const;
  int64_t skipped() const { return corrupt_->skipped.load(); }

 private:
  std::string root_;
  std::vector<std::string> paths_;
  std::vector<int64_t> labels_;
  ImageOptions opts_;
  std::shared_ptr<CorruptLog> corrupt_;
  std::shared_ptr<const ImageCache> cache_;
};

/// The examples of a folder: paths relative to the root, labels, class names.
struct FolderScan {
  std::vector<std::string> class_names;
  std::vector<std::string> files;  // relative to the root, e.g. "cat/001.jpg"
  std::vector<int64_t> labels;
};

/// Scans ROOT/CLASS/**/*.{jpg,jpeg,png} (extensions case-insensitive). BadInput naming the path for a
/// missing root, a root without class folders, a class folder without images, a name that is not UTF-8, or
/// a link that loops or leaves its class folder (class folders themselves may be links elsewhere).
FolderScan scan_image_folder(const std::string& root);
/// Reads a split file: one path relative to `root` per line ("class/file.jpg"; blank lines and lines
/// starting with '#' are skipped). The class is the first path component and must be one of `classes`.
FolderScan read_split_list(const std::string& root, const std::string& list,
                           const std::vector<std::string>& classes);

/// The worker threads for decoding when `requested` is 0: all cores minus the training threads, at least 1.
int default_loader_workers(int requested);

}  // namespace xfer
