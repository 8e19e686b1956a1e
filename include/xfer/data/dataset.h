#pragma once
/// In-memory labelled image sets and tasks (train / validation / test splits).
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

/// A labelled image set held in memory: uint8 images (N, C, H, W), int64 labels (N) in
/// [0, num_classes()), and the name of each class. Cheap to copy (tensors are shared).
struct TensorDataset {
  torch::Tensor images;
  torch::Tensor labels;
  std::vector<std::string> class_names;

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  int64_t num_classes() const { return static_cast<int64_t>(class_names.size()); }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
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
