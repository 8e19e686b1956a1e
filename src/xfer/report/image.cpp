#include "xfer/report/image.h"

#include <png.h>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace xfer {
namespace {
void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), length);
}
void no_flush(png_structp) {}

/// What encode_png reads and writes: all of its state lives here, behind one pointer, because libpng
/// reports errors by longjmp and locals live across setjmp may be clobbered.
struct PngJob {
  const uint8_t* rows;  // (height, width, channels), contiguous
  png_uint_32 height, width;
  int channels;
  std::string bytes;
};

bool encode_png(PngJob* job) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, &job->bytes, append_bytes, no_flush);
  png_set_IHDR(png, info, job->width, job->height, 8,
               job->channels == 1   ? PNG_COLOR_TYPE_GRAY
               : job->channels == 3 ? PNG_COLOR_TYPE_RGB
                                    : PNG_COLOR_TYPE_RGBA,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(job->width) * job->channels;
  for (png_uint_32 y = 0; y < job->height; ++y)
    png_write_row(png, const_cast<png_bytep>(job->rows + y * stride));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}
}  // namespace

void write_png(const std::string& path, const torch::Tensor& image) {
  XFER_CHECK(image.scalar_type() == torch::kUInt8, "write_png: image must be uint8");
  const torch::Tensor img = (image.dim() == 2 ? image.unsqueeze(2) : image).contiguous();
  XFER_CHECK(img.dim() == 3, "write_png: image must be (H, W) or (H, W, C)");
  const int64_t h = img.size(0), w = img.size(1), c = img.size(2);
  XFER_CHECK(c == 1 || c == 3 || c == 4, "write_png: 1, 3 or 4 channels, got ", c);
  XFER_CHECK(h > 0 && w > 0, "write_png: empty image");
  PngJob job{img.data_ptr<uint8_t>(),
             static_cast<png_uint_32>(h),
             static_cast<png_uint_32>(w),
             static_cast<int>(c),
             {}};
  XFER_CHECK(encode_png(&job), "cannot encode PNG for ", path);
  write_file_atomic(path, job.bytes);
}

torch::Tensor image_grid(const TensorDataset& data, int64_t per_class) {
  XFER_CHECK(per_class >= 1, "image grid: per_class must be >= 1, got ", per_class);
  const int64_t C = data.channels(), H = data.height(), W = data.width(), gap = 2;
  const int64_t rows = data.num_classes();
  torch::Tensor grid =
      torch::full({rows * (H + gap) + gap, per_class * (W + gap) + gap, C == 1 ? 1 : 3}, 128, torch::kUInt8);
  const auto by_class = data.indices_by_class();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < per_class && k < static_cast<int64_t>(by_class[r].size()); ++k) {
      torch::Tensor img =
          data.eval_images(by_class[r][k], by_class[r][k] + 1)[0].permute({1, 2, 0});  // (H, W, C)
      if (C != 1) img = img.slice(2, 0, 3);
      if (C == 2) img = torch::cat({img, img.slice(2, 0, 1)}, 2);
      grid.slice(0, gap + r * (H + gap), gap + r * (H + gap) + H)
          .slice(1, gap + k * (W + gap), gap + k * (W + gap) + W)
          .copy_(img);
    }
  }
  return C == 1 ? grid.squeeze(2) : grid;
}

}  // namespace xfer
