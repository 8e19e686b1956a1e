#include "xfer/data/dataset.h"

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/data/image_folder.h"

namespace xfer {

std::vector<int64_t> TensorDataset::class_counts() const {
  std::vector<int64_t> counts(num_classes(), 0);
  if (size() == 0) return counts;
  const torch::Tensor bins = torch::bincount(labels, {}, num_classes());
  for (int64_t c = 0; c < num_classes(); ++c) counts[c] = bins[c].item<int64_t>();
  return counts;
}

TensorDataset TensorDataset::subset(const torch::Tensor& indices) const {
  if (files) {
    const torch::Tensor ix = indices.to(torch::kInt64).contiguous();
    const std::vector<int64_t> idx(ix.data_ptr<int64_t>(), ix.data_ptr<int64_t>() + ix.numel());
    return {torch::Tensor(), labels.index_select(0, indices), class_names, files->subset(idx)};
  }
  return {images.index_select(0, indices), labels.index_select(0, indices), class_names, nullptr};
}

std::vector<std::vector<int64_t>> TensorDataset::indices_by_class() const {
  std::vector<std::vector<int64_t>> out(num_classes());
  const torch::Tensor y = labels.contiguous();
  const int64_t* p = y.data_ptr<int64_t>();
  for (int64_t i = 0; i < size(); ++i) {
    XFER_CHECK(p[i] >= 0 && p[i] < num_classes(), "label ", p[i], " of example ", i, " is out of range for ",
               num_classes(), " classes");
    out[static_cast<size_t>(p[i])].push_back(i);
  }
  return out;
}

Normalization compute_normalization(const torch::Tensor& images_uint8) {
  const torch::Tensor x = images_uint8.to(torch::kFloat64).div_(255.0);
  const torch::Tensor mean = x.mean({0, 2, 3});
  // Population std, written out: Tensor::std(dims, unbiased) is deprecated in LibTorch 2.x.
  const torch::Tensor std = (x - mean.view({1, -1, 1, 1})).pow(2).mean({0, 2, 3}).sqrt().clamp_min(1e-6);
  Normalization n;
  for (int64_t c = 0; c < mean.size(0); ++c) {
    n.mean.push_back(mean[c].item<double>());
    n.std.push_back(std[c].item<double>());
  }
  return n;
}

}  // namespace xfer
