// Image-folder loading speed (issue #12).
//
//   xfer_image_bench make   --dir D [--count 2000] [--classes 10] [--seed 0]
//       writes a folder of photo-like JPEGs (smooth colour fields, edges, texture noise; 300-500 px sides)
//   xfer_image_bench decode --dir D [--count 500] [--size 224] [--workers 1] [--cache FILE]
//       decode + RandomResizedCrop + flip to size x size through ImageFiles::load_batch: images/s, and
//       images/s per worker thread; with --cache, read from the folder's decoded-image cache (cache=FILE,
//       built first if needed) instead of decoding JPEGs
//   xfer_image_bench step   --dir D [--threads 1] [--workers 1] [--batch 16] [--steps 6] [--channels-last 0]
//       a resnet18 fine-tuning step at 224 (forward, cross-entropy, backward, SGD) on one fixed batch (bare)
//       against the same step drawing its batch from the folder's BatchStream (loader running, prefetch on)
// Each prints one JSON line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/runtime.h"
#include "xfer/data/image.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/models/model.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string mode, dir, cache;
  int64_t count = 0, classes = 10, seed = 0, size = 224, workers = 1, threads = 1, batch = 16, steps = 6;
  bool channels_last = false;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

xfer::Image photo_like(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> side(300, 500);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> noise(0.0, 6.0);
  xfer::Image img;
  img.height = side(rng);
  img.width = side(rng);
  img.rgb.resize(static_cast<size_t>(img.height * img.width * 3));
  double fx[3], fy[3], ph[3], base[3];
  for (int c = 0; c < 3; ++c)
    fx[c] = 2 + 10 * u(rng), fy[c] = 2 + 10 * u(rng), ph[c] = 6.28 * u(rng), base[c] = 60 + 120 * u(rng);
  // A few rectangles with their own colour: edges like objects in a photo.
  struct Rect {
    int64_t y0, x0, y1, x1;
    double col[3];
  };
  std::vector<Rect> rects(4);
  for (auto& r : rects) {
    r.y0 = static_cast<int64_t>(u(rng) * img.height), r.x0 = static_cast<int64_t>(u(rng) * img.width);
    r.y1 = r.y0 + static_cast<int64_t>(u(rng) * img.height / 2),
    r.x1 = r.x0 + static_cast<int64_t>(u(rng) * img.width / 2);
    for (double& v : r.col) v = 255 * u(rng);
  }
  for (int64_t y = 0; y < img.height; ++y)
    for (int64_t x = 0; x < img.width; ++x) {
      const double sy = double(y) / img.height, sx = double(x) / img.width;
      double v[3];
      for (int c = 0; c < 3; ++c) v[c] = base[c] + 50 * std::sin(fx[c] * sx + fy[c] * sy * sy + ph[c]);
      for (const auto& r : rects)
        if (y >= r.y0 && y < r.y1 && x >= r.x0 && x < r.x1)
          for (int c = 0; c < 3; ++c) v[c] = 0.3 * v[c] + 0.7 * r.col[c];
      const double n = noise(rng);
      for (int c = 0; c < 3; ++c)
        img.rgb[(y * img.width + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(v[c] + n + noise(rng) * 0.5, 0.0, 255.0));
    }
  return img;
}

int make(const Args& a) {
  std::mt19937_64 rng(static_cast<uint64_t>(a.seed));
  const int64_t count = a.count > 0 ? a.count : 2000;
  for (int64_t i = 0; i < count; ++i) {
    const fs::path dir = fs::path(a.dir) / xfer::cat("class", i % a.classes);
    fs::create_directories(dir);
    xfer::write_jpeg_rgb((dir / xfer::cat("img", i, ".jpg")).string(), photo_like(rng), 90);
  }
  std::cout << nlohmann::json{{"mode", "make"}, {"dir", a.dir}, {"images", count}}.dump() << std::endl;
  return 0;
}

int decode(const Args& a) {
  const std::string cache = a.cache.empty() ? "" : ":cache=" + a.cache;
  const xfer::Task task =
      xfer::load_task(xfer::cat("folder:dir=", a.dir, ":test=none:size=", a.size, cache), 0);
  const auto& files = *task.train.files;
  const int64_t n = std::min<int64_t>(a.count > 0 ? a.count : 500, files.size());
  const int64_t chunk = 64;
  // Warm the page cache with a first pass over the files, then time.
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  files.load_batch(std::vector<int64_t>(idx.begin(), idx.begin() + std::min<int64_t>(n, chunk)), true, true,
                   0, static_cast<int>(a.workers));
  const auto t0 = Clock::now();
  for (int64_t s = 0; s < n; s += chunk) {
    std::vector<int64_t> part(idx.begin() + s, idx.begin() + std::min(n, s + chunk));
    files.load_batch(part, true, true, static_cast<uint64_t>(s), static_cast<int>(a.workers));
  }
  const double secs = seconds_since(t0);
  std::cout << nlohmann::json{{"mode", "decode"},
                              {"images", n},
                              {"size", a.size},
                              {"workers", a.workers},
                              {"cache", !a.cache.empty()},
                              {"seconds", secs},
                              {"images_per_s", n / secs},
                              {"images_per_s_per_worker", n / secs / static_cast<double>(a.workers)}}
                   .dump()
            << std::endl;
  return 0;
}

int step(const Args& a) {
  xfer::set_threads(static_cast<int>(a.threads));
  const xfer::Task task = xfer::load_task(xfer::cat("folder:dir=", a.dir, ":test=none:size=224"), 0);
  xfer::Arch arch;
  arch.backbone = "resnet18";
  arch.in_channels = 3;
  arch.height = arch.width = 224;
  arch.input = xfer::imagenet_normalization();
  arch.heads = {{"target", task.class_names()}};
  xfer::Model model(arch);
  model->train();
  if (a.channels_last) {
    torch::NoGradGuard g;
    for (auto& p : model->parameters())
      if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
  }
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(1e-4));
  xfer::LoaderOptions lo;
  lo.batch_size = a.batch;
  lo.workers = a.workers;
  lo.channels_last = a.channels_last;
  xfer::BatchStream stream(task.train, arch.input, lo, 1);
  const xfer::Batch fixed = stream.next();
  auto one = [&](const torch::Tensor& x, const torch::Tensor& y) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    opt.step();
  };
  one(fixed.x, fixed.y);  // warm-up
  std::vector<double> bare, loaded;
  for (int64_t s = 0; s < a.steps; ++s) {
    auto t = Clock::now();
    one(fixed.x, fixed.y);
    bare.push_back(seconds_since(t));
    t = Clock::now();
    const xfer::Batch b = stream.next();
    one(b.x, b.y);
    loaded.push_back(seconds_since(t));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::cout << nlohmann::json{{"mode", "step"},
                              {"batch", a.batch},
                              {"threads", a.threads},
                              {"workers", a.workers},
                              {"channels_last", a.channels_last},
                              {"bare_step_s", median(bare)},
                              {"loader_step_s", median(loaded)},
                              {"ratio", median(loaded) / median(bare)}}
                   .dump()
            << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  if (argc < 2) {
    std::cerr << "usage: xfer_image_bench make|decode|step --dir D [options] (see the top of "
                 "bench/image_bench.cpp)\n";
    return 2;
  }
  a.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir")
      a.dir = v;
    else if (k == "--count")
      a.count = std::stoll(v);
    else if (k == "--classes")
      a.classes = std::stoll(v);
    else if (k == "--seed")
      a.seed = std::stoll(v);
    else if (k == "--size")
      a.size = std::stoll(v);
    else if (k == "--cache")
      a.cache = v;
    else if (k == "--workers")
      a.workers = std::stoll(v);
    else if (k == "--threads")
      a.threads = std::stoll(v);
    else if (k == "--batch")
      a.batch = std::stoll(v);
    else if (k == "--steps")
      a.steps = std::stoll(v);
    else if (k == "--channels-last")
      a.channels_last = v != "0";
    else {
      std::cerr << "unknown flag " << k << "\n";
      return 2;
    }
  }
  try {
    if (a.dir.empty()) throw xfer::BadInput("--dir is required");
    if (a.mode == "make") return make(a);
    if (a.mode == "decode") return decode(a);
    if (a.mode == "step") return step(a);
    std::cerr << "unknown mode " << a.mode << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
