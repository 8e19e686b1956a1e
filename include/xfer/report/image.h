#pragma once
/// Pictures of data: PNG files and grids of example images.
#include <string>

#include <torch/types.h>

#include "xfer/data/dataset.h"

namespace xfer {

/// Writes a uint8 image (H, W) or (H, W, C) with C in {1, 3, 4} as a PNG file, atomically.
void write_png(const std::string& path, const torch::Tensor& image);

/// A grid of example images: one row per class, the first `per_class` examples of each, 2-pixel
/// gaps. Returns uint8 (H, W) for 1-channel data, (H, W, 3) otherwise.
torch::Tensor image_grid(const TensorDataset& data, int64_t per_class);

}  // namespace xfer
