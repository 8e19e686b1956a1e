#pragma once
/// In-memory labelled image sets and tasks (train / validation / test splits).
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

class ImageFiles;

/// A labelled image set: int64 labels (N) in [0, num_classes()), the name of each class, and either
/// uint8 images (N, C, H, W) held in memory or, for image folders, `files`: one image file per example,
/// decoded on demand (then `images` is undefined). Cheap to copy (tensors and file lists are shared).
struct TensorDataset {
  torch::Tensor images;
  torch::Tensor labels;
  std::vector<std::string> class_names;
  std::shared_ptr<const ImageFiles> files;

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  bool is_folder() const { return files != nullptr; }
  /// The shape of one model input: the stored images', or an image folder's crop (3, size, size).
  int64_t channels() const;
  int64_t height() const;
  int64_t width() const;
  /// uint8 images (n, C, H, W) of examples [start, end): the stored ones, or for an image folder decoded
  /// with the evaluation transform (resize, center crop). What evaluation and feature extraction read.
  torch::Tensor eval_images(int64_t start, int64_t end) const;
  /// The same for the examples at `indices` (int64), in that order.
  torch::Tensor eval_images(const torch::Tensor& indices) const;
  /// BadInput "<what> is not supported on image folders yet" for code that needs every image in memory.
  void require_in_memory(const std::string& what) const;
  /// Examples per class, indexed by label.
  std::vector<int64_t> class_counts() const;
  /// The examples at `indices` (int64), in that order.
  TensorDataset subset(const torch::Tensor& indices) const;
  /// Indices of the examples of each class, ascending.
  std::vector<std::vector<int64_t>> indices_by_class() const;
};

/// The splits of one dataset spec. `val` or `test` may be empty (size 0) when the spec asks for none.
struct Task {
  std::string spec;  // the spec text it was built from
  TensorDataset train, val, test;

  int64_t num_classes() const { return train.num_classes(); }
  const std::vector<std::string>& class_names() const { return train.class_names; }
};

/// Per-channel mean and standard deviation of uint8 images scaled to [0, 1].
struct Normalization {
  std::vector<double> mean, std;
};
/// The statistics of a dataset's images.
Normalization compute_normalization(const torch::Tensor& images_uint8);

}  // namespace xfer
