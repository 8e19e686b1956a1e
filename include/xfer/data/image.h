#pragma once
/// Image files: JPEG (libjpeg-turbo, DCT-domain downscaling) and PNG (libpng) decoding, and the
/// geometric transforms of the ImageNet recipe (RandomResizedCrop, resize + center crop, flip).
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace xfer {

/// A decoded 8-bit RGB image, rows of interleaved pixels (H, W, 3).
struct Image {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;
  const uint8_t* pixel(int64_t y, int64_t x) const { return rgb.data() + (y * width + x) * 3; }
};

/// The largest image decoded, in pixels: PIL's limit (2 x Image.MAX_IMAGE_PIXELS), against decompression
/// bombs.
constexpr int64_t kMaxImagePixels = 178956970;

/// Decodes a JPEG or PNG (recognised by its first bytes). With `min_side` > 0 a JPEG is decoded at the
/// smallest libjpeg-turbo scaling factor (1/8 ... 1) whose shorter side is still >= min_side, which skips
/// most of the inverse DCT for large photos. Grayscale and palette images become RGB; alpha is dropped.
/// Throws BadInput naming `what` (the path) for truncated, corrupt or unsupported data, or an image of more
/// than kMaxImagePixels pixels.
Image decode_image(const uint8_t* data, size_t size, const std::string& what, int64_t min_side = 0);
/// Reads and decodes a file; BadInput naming the path if it cannot be read or decoded.
Image decode_image_file(const std::string& path, int64_t min_side = 0);

/// Writes an RGB image as PNG (tests and the benchmark generate folders with it).
void write_png_rgb(const std::string& path, const Image& image);
/// Writes an RGB image as baseline JPEG at `quality` (1-100).
void write_jpeg_rgb(const std::string& path, const Image& image, int quality = 90);

/// A crop rectangle in source pixels (may be fractional: the box of a center crop after a resize).
struct CropBox {
  double y = 0, x = 0, h = 0, w = 0;
};

/// torchvision's RandomResizedCrop box: area fraction in [scale_min, scale_max], log-uniform aspect ratio
/// in [ratio_min, ratio_max], 10 tries, then a center crop of the clamped ratio.
CropBox random_resized_crop_box(int64_t height, int64_t width, double scale_min, double scale_max,
                                double ratio_min, double ratio_max, std::mt19937_64& engine);
/// The box that "resize the shorter side to `resize`, then center-crop `size` x `size`" takes.
CropBox center_crop_box(int64_t height, int64_t width, int64_t resize, int64_t size);
/// "Resize the shorter side to `resize`, then crop `size` x `size` at a uniformly random position".
CropBox random_crop_box(int64_t height, int64_t width, int64_t resize, int64_t size, std::mt19937_64& engine);

/// Resamples `box` of `image` to out_h x out_w (bilinear, pixel centres at +0.5, edges clamped, no
/// antialiasing: JPEGs arrive already downscaled in the DCT domain), optionally mirrored, into planar uint8
/// `out` (3, out_h, out_w).
void resample_crop(const Image& image, const CropBox& box, int64_t out_h, int64_t out_w, bool mirror,
                   uint8_t* out);

}  // namespace xfer
