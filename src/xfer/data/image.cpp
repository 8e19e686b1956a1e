#include "xfer/data/image.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>

#include <png.h>
#include <turbojpeg.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"

namespace xfer {
namespace {

/// One TurboJPEG decompressor per thread: creating one costs more than decoding a thumbnail. After any
/// error it is destroyed and created again: libjpeg-turbo leaves a handle whose header read failed in a
/// state where every later decode on it fails too.
struct TjHandle {
  tjhandle handle = nullptr;
  bool compress;
  explicit TjHandle(bool c) : compress(c) { reset(); }
  ~TjHandle() {
    if (handle) tjDestroy(handle);
  }
  void reset() {
    if (handle) tjDestroy(handle);
    handle = compress ? tjInitCompress() : tjInitDecompress();
  }
};

TjHandle& tj_decompressor() {
  thread_local TjHandle h(false);
  if (!h.handle) h.reset();
  XFER_CHECK(h.handle != nullptr, "libjpeg-turbo: cannot create a decompressor");
  return h;
}

/// Refuses images larger than PIL does (a decompression bomb: a small file declaring a huge image).
void check_pixels(int64_t w, int64_t h, const std::string& what) {
  XFER_CHECK(w <= kMaxImagePixels / std::max<int64_t>(h, 1), what, ": a ", w, "x", h, " image; at most ",
             kMaxImagePixels, " pixels are decoded");
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& what, int64_t min_side) {
  TjHandle& handle = tj_decompressor();
  tjhandle tj = handle.handle;
  const auto fail = [&](const char* problem) {
    const std::string msg = tjGetErrorStr2(tj);
    handle.reset();
    throw BadInput(cat(what, ": ", problem, " (", msg, ")"));
  };
  int w = 0, h = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, data, static_cast<unsigned long>(size), &w, &h, &subsamp, &colorspace) != 0)
    fail("not a readable JPEG");
  XFER_CHECK(w > 0 && h > 0, what, ": JPEG with an empty image (", w, "x", h, ")");
  check_pixels(w, h, what);
  // The smallest scaled size whose shorter side still covers min_side.
  int n = 0;
  const tjscalingfactor* factors = tjGetScalingFactors(&n);
  tjscalingfactor best{1, 1};
  if (min_side > 0) {
    int best_side = std::min(w, h);
    for (int i = 0; i < n; ++i) {
      const tjscalingfactor f = factors[i];
      if (f.num > f.denom) continue;
      const int side = std::min(TJSCALED(w, f), TJSCALED(h, f));
      if (side >= min_side && side < best_side) best = f, best_side = side;
    }
  }
  Image img;
  img.width = TJSCALED(w, best);
  img.height = TJSCALED(h, best);
  img.rgb.resize(static_cast<size_t>(img.width * img.height * 3));
  if (tjDecompress2(tj, data, static_cast<unsigned long>(size), img.rgb.data(), static_cast<int>(img.width),
                    0, static_cast<int>(img.height), TJPF_RGB, 0) != 0) {
    // Warnings (for example extraneous bytes) leave a usable image, as PIL accepts them too.
    if (tjGetErrorCode(tj) != TJERR_WARNING) fail("corrupt JPEG");
    handle.reset();
  }
  return img;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& what) {
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, data, size))
    throw BadInput(cat(what, ": not a readable PNG (", png.message, ")"));
  png.format = PNG_FORMAT_RGB;
  try {
    check_pixels(png.width, png.height, what);
  } catch (const BadInput&) {
    png_image_free(&png);
    throw;
  }
  Image img;
  img.width = png.width;
  img.height = png.height;
  img.rgb.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, img.rgb.data(), 0, nullptr)) {
    const std::string msg = png.message;
    png_image_free(&png);
    throw BadInput(cat(what, ": corrupt PNG (", msg, ")"));
  }
  XFER_CHECK(img.width > 0 && img.height > 0, what, ": PNG with an empty image");
  return img;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& what, int64_t min_side) {
  static const uint8_t kPng[] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
    return decode_jpeg(data, size, what, min_side);
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return decode_png(data, size, what);
  throw BadInput(cat(what, ": neither a JPEG nor a PNG (", size, " bytes)"));
}

Image decode_image_file(const std::string& path, int64_t min_side) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  XFER_CHECK(in.good(), path, ": cannot open the image file");
  const std::streamsize n = in.tellg();
  XFER_CHECK(n >= 0, path, ": cannot read the image file");
  std::vector<uint8_t> bytes(static_cast<size_t>(n));
  in.seekg(0);
  XFER_CHECK(in.read(reinterpret_cast<char*>(bytes.data()), n).good() || n == 0, path,
             ": cannot read the image file");
  return decode_image(bytes.data(), bytes.size(), path, min_side);
}

void write_png_rgb(const std::string& path, const Image& image) {
  png_image png;
  std::memset(&png, 0, sizeof png);
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = PNG_FORMAT_RGB;
  XFER_CHECK(png_image_write_to_file(&png, path.c_str(), 0, image.rgb.data(), 0, nullptr), path,
             ": cannot write PNG (", png.message, ")");
}

void write_jpeg_rgb(const std::string& path, const Image& image, int quality) {
  TjHandle tj(true);
  XFER_CHECK(tj.handle != nullptr, "libjpeg-turbo: cannot create a compressor");
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  XFER_CHECK(tjCompress2(tj.handle, image.rgb.data(), static_cast<int>(image.width), 0,
                         static_cast<int>(image.height), TJPF_RGB, &buf, &size, TJSAMP_420, quality, 0) == 0,
             path, ": cannot encode JPEG (", tjGetErrorStr2(tj.handle), ")");
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> owned(buf, [](unsigned char* p) { tjFree(p); });
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(buf), static_cast<std::streamsize>(size));
  XFER_CHECK(out.good(), path, ": cannot write the file");
}

CropBox random_resized_crop_box(int64_t height, int64_t width, double scale_min, double scale_max,
                                double ratio_min, double ratio_max, std::mt19937_64& engine) {
  const double area = static_cast<double>(height * width);
  const double lr_min = std::log(ratio_min), lr_max = std::log(ratio_max);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * (scale_min + (scale_max - scale_min) * unit(engine));
    const double aspect = std::exp(lr_min + (lr_max - lr_min) * unit(engine));
    const int64_t w = std::llround(std::sqrt(target * aspect));
    const int64_t h = std::llround(std::sqrt(target / aspect));
    if (w > 0 && h > 0 && w <= width && h <= height) {
      const int64_t y = static_cast<int64_t>(uniform_index(engine, static_cast<uint64_t>(height - h + 1)));
      const int64_t x = static_cast<int64_t>(uniform_index(engine, static_cast<uint64_t>(width - w + 1)));
      return {double(y), double(x), double(h), double(w)};
    }
  }
  // Fallback: the whole image, cropped to the nearest allowed aspect ratio.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width, h = height;
  if (in_ratio < ratio_min) {
    h = std::llround(static_cast<double>(w) / ratio_min);
  } else if (in_ratio > ratio_max) {
    w = std::llround(static_cast<double>(h) * ratio_max);
  }
  return {double((height - h) / 2), double((width - w) / 2), double(h), double(w)};
}

CropBox center_crop_box(int64_t height, int64_t width, int64_t resize, int64_t size) {
  const double f = static_cast<double>(resize) / static_cast<double>(std::min(height, width));
  const double side = std::min(static_cast<double>(size) / f, static_cast<double>(std::min(height, width)));
  return {(static_cast<double>(height) - side) / 2, (static_cast<double>(width) - side) / 2, side, side};
}

CropBox random_crop_box(int64_t height, int64_t width, int64_t resize, int64_t size,
                        std::mt19937_64& engine) {
  const double f = static_cast<double>(resize) / static_cast<double>(std::min(height, width));
  const double side = std::min(static_cast<double>(size) / f, static_cast<double>(std::min(height, width)));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  return {(static_cast<double>(height) - side) * unit(engine),
          (static_cast<double>(width) - side) * unit(engine), side, side};
}

void resample_crop(const Image& image, const CropBox& box, int64_t out_h, int64_t out_w, bool mirror,
                   uint8_t* out) {
  XFER_CHECK(image.height > 0 && image.width > 0 && box.h > 0 && box.w > 0,
             "resample_crop: empty image or box");
  // Per output column / row: the two source taps and the weight of the second.
  struct Tap {
    int64_t a, b;
    float wb;
  };
  auto taps = [](double start, double extent, int64_t n_out, int64_t n_src) {
    std::vector<Tap> t(static_cast<size_t>(n_out));
    const double step = extent / static_cast<double>(n_out);
    for (int64_t i = 0; i < n_out; ++i) {
      double s = start + (static_cast<double>(i) + 0.5) * step - 0.5;
      s = std::clamp(s, 0.0, static_cast<double>(n_src - 1));
      const int64_t a = static_cast<int64_t>(std::floor(s));
      const int64_t b = std::min(a + 1, n_src - 1);
      t[static_cast<size_t>(i)] = {a, b, static_cast<float>(s - static_cast<double>(a))};
    }
    return t;
  };
  std::vector<Tap> tx = taps(box.x, box.w, out_w, image.width);
  const std::vector<Tap> ty = taps(box.y, box.h, out_h, image.height);
  if (mirror) std::reverse(tx.begin(), tx.end());
  const int64_t plane = out_h * out_w;
  const int64_t stride = image.width * 3;
  for (int64_t y = 0; y < out_h; ++y) {
    const Tap& t = ty[static_cast<size_t>(y)];
    const uint8_t* ra = image.rgb.data() + t.a * stride;
    const uint8_t* rb = image.rgb.data() + t.b * stride;
    const float wy = t.wb;
    for (int64_t x = 0; x < out_w; ++x) {
      const Tap& s = tx[static_cast<size_t>(x)];
      const float wx = s.wb;
      const uint8_t* p00 = ra + s.a * 3;
      const uint8_t* p01 = ra + s.b * 3;
      const uint8_t* p10 = rb + s.a * 3;
      const uint8_t* p11 = rb + s.b * 3;
      for (int c = 0; c < 3; ++c) {
        const float top = p00[c] + wx * (p01[c] - p00[c]);
        const float bottom = p10[c] + wx * (p11[c] - p10[c]);
        const float v = top + wy * (bottom - top);
        out[c * plane + y * out_w + x] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, v + 0.5f)));
      }
    }
  }
}

}  // namespace xfer
