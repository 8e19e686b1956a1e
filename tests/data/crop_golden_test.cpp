// RandomResizedCrop against torchvision (tests/golden/make_sampling_golden.py): the same random numbers
// give the same box, and a box gives torchvision's pixels.
#include <random>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/image.h"

namespace xfer {
namespace {

const nlohmann::json& crop_golden() {
  static const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/sampling.json");
  return g;
}

TEST(CropGolden, RandomResizedCropBoxIsTorchvisionsFromTheSameNumbers) {
  for (const auto& c : crop_golden()["rrc"]) {
    const int64_t h = c["height"].get<int64_t>(), w = c["width"].get<int64_t>();
    std::mt19937_64 engine(c["seed"].get<uint64_t>());
    const CropBox box =
        random_resized_crop_box(h, w, c["scale"][0].get<double>(), c["scale"][1].get<double>(),
                                c["ratio"][0].get<double>(), c["ratio"][1].get<double>(), engine);
    const auto want = c["box"].get<std::vector<int64_t>>();  // torchvision's (i, j, h, w)
    EXPECT_EQ((std::vector<double>{box.y, box.x, box.h, box.w}),
              (std::vector<double>{double(want[0]), double(want[1]), double(want[2]), double(want[3])}))
        << c.dump().substr(0, 120);
    // As many numbers drawn as torchvision drew: the engine's next output agrees.
    EXPECT_EQ(std::to_string(engine()), c["next"].get<std::string>()) << "seed " << c["seed"];
  }
}

/// The golden image as xfer's Image.
Image crop_golden_image() {
  const auto& g = crop_golden()["crop"];
  Image img;
  img.height = g["height"].get<int64_t>();
  img.width = g["width"].get<int64_t>();
  for (int64_t v : g["image"].get<std::vector<int64_t>>()) img.rgb.push_back(static_cast<uint8_t>(v));
  return img;
}

TEST(CropGolden, ResampledCropIsTorchvisionsResizedCrop) {
  const Image img = crop_golden_image();
  int64_t ties = 0;
  for (const auto& c : crop_golden()["crop"]["crops"]) {
    const auto b = c["box"].get<std::vector<int64_t>>();  // top, left, height, width
    const int64_t size = c["size"].get<int64_t>();
    std::vector<uint8_t> out(static_cast<size_t>(3 * size * size));
    resample_crop(img, CropBox{double(b[0]), double(b[1]), double(b[2]), double(b[3])}, size, size, false,
                  out.data());
    const auto want = c["pixels"].get<std::vector<int64_t>>();
    const auto exact = c["unrounded"].get<std::vector<double>>();
    ASSERT_EQ(want.size(), out.size());
    // torchvision crops, then resizes: its taps stop at the box. xfer resamples the box inside the image, so
    // an upscaled box's first and last output rows and columns also read the pixels just outside it (a known
    // difference, reported in issue 30's notes); they are left out here. Everywhere else the pixels are
    // torchvision's, but at halves (exact, or within float rounding of one), which xfer rounds up and torch
    // to even.
    const bool upscaled = size > b[2] || size > b[3];
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t y = 0; y < size; ++y)
        for (int64_t x = 0; x < size; ++x) {
          if (upscaled && (y == 0 || x == 0 || y == size - 1 || x == size - 1)) continue;
          const size_t i = static_cast<size_t>((ch * size + y) * size + x);
          if (int64_t(out[i]) == want[i]) continue;
          const bool tie = std::abs(exact[i] - std::floor(exact[i]) - 0.5) < 1e-3;
          EXPECT_TRUE(tie && std::abs(int64_t(out[i]) - want[i]) == 1)
              << "box " << c["box"].dump() << " size " << size << ", channel " << ch << " (" << y << ", " << x
              << "): xfer " << int(out[i]) << ", torchvision " << want[i] << " (" << exact[i]
              << " before rounding)";
          ties += tie;
        }
  }
  EXPECT_LT(ties, 100) << "differences only at the rare exact halves";
}

}  // namespace
}  // namespace xfer
