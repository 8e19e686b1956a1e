#include "xfer/data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/data/image.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

bool is_image_name(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string ext = name.substr(dot + 1);
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == "jpg" || ext == "jpeg" || ext == "png";
}

/// Image files under `dir`, relative to `root`, in torchvision's order: sorted by (directory, name).
std::vector<std::string> walk_images(const fs::path& root, const fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> found;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = it->path().filename().string();
    if (!is_image_name(name)) continue;
    found.emplace_back(it->path().parent_path().lexically_relative(root).string(), name);
  }
  XFER_CHECK(!ec, dir.string(), ": cannot list the folder (", ec.message(), ")");
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  out.reserve(found.size());
  for (const auto& [d, name] : found) out.push_back((fs::path(d) / name).string());
  return out;
}

}  // namespace

Normalization imagenet_normalization() { return {{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}}; }

void ImageOptions::validate() const {
  XFER_CHECK(size >= 8 && size <= 4096, "image size must be in [8, 4096], got ", size);
  XFER_CHECK(resize >= size, "image resize must be >= size (", size, "), got ", resize);
  XFER_CHECK(crop == "rrc" || crop == "random", "image crop must be rrc or random, got '", crop, "'");
  XFER_CHECK(scale_min > 0 && scale_min <= scale_max && scale_max <= 1, "RandomResizedCrop scale must satisfy ",
             "0 < min <= max <= 1, got ", scale_min, ",", scale_max);
  XFER_CHECK(ratio_min > 0 && ratio_min <= ratio_max, "RandomResizedCrop ratio must satisfy 0 < min <= max, got ",
             ratio_min, ",", ratio_max);
  XFER_CHECK(norm.mean.size() == 3 && norm.std.size() == 3, "image mean and std need 3 values (RGB), got ",
             norm.mean.size(), " and ", norm.std.size());
  for (double s : norm.std) XFER_CHECK(s > 0, "image std values must be > 0, got ", s);
}

ImageFiles::ImageFiles(std::string root, std::vector<std::string> paths, ImageOptions opts,
                       std::shared_ptr<CorruptLog> corrupt)
    : root_(std::move(root)),
      paths_(std::move(paths)),
      opts_(std::move(opts)),
      corrupt_(corrupt ? std::move(corrupt) : std::make_shared<CorruptLog>()) {
  opts_.validate();
}

std::shared_ptr<const ImageFiles> ImageFiles::subset(const std::vector<int64_t>& indices) const {
  std::vector<std::string> paths;
  paths.reserve(indices.size());
  for (int64_t i : indices) paths.push_back(path(i));
  return std::make_shared<ImageFiles>(root_, std::move(paths), opts_, corrupt_);
}

void ImageFiles::load(int64_t i, bool train, bool flip, uint64_t seed, uint8_t* out) const {
  const int64_t n = size();
  XFER_CHECK(i >= 0 && i < n, "image index ", i, " out of range for ", n, " images");
  // Training crops may take a small part of the image: keep the decoded size at least the crop size.
  const int64_t min_side = train && opts_.crop == "rrc" ? opts_.size : opts_.resize;
  for (int64_t k = 0; k < n; ++k) {
    const std::string& p = path((i + k) % n);
    Image img;
    try {
      img = decode_image_file(p, min_side);
    } catch (const BadInput& e) {
      if (opts_.fail_on_corrupt) throw;
      {
        std::lock_guard<std::mutex> lock(corrupt_->mutex);
        if (corrupt_->paths.insert(p).second)
          log_warn(cat("skipping an unreadable image (", corrupt_->paths.size(), " so far): ", e.what()));
      }
      corrupt_->skipped.fetch_add(1);
      continue;
    }
    std::mt19937_64 engine(seed);
    CropBox box;
    if (!train) {
      box = center_crop_box(img.height, img.width, opts_.resize, opts_.size);
    } else if (opts_.crop == "rrc") {
      box = random_resized_crop_box(img.height, img.width, opts_.scale_min, opts_.scale_max, opts_.ratio_min,
                                    opts_.ratio_max, engine);
    } else {
      box = random_crop_box(img.height, img.width, opts_.resize, opts_.size, engine);
    }
    const bool mirror = train && flip && (engine() >> 63) != 0;
    resample_crop(img, box, opts_.size, opts_.size, mirror, out);
    return;
  }
  throw BadInput(cat(root_, ": none of the ", n, " images of this split can be decoded"));
}

torch::Tensor ImageFiles::load_batch(const std::vector<int64_t>& indices, bool train, bool flip, uint64_t seed,
                                     int workers, bool pinned) const {
  const int64_t n = static_cast<int64_t>(indices.size());
  const int64_t s = opts_.size;
  auto options = torch::TensorOptions().dtype(torch::kUInt8);
  if (pinned) options = options.pinned_memory(true);
  torch::Tensor out = torch::empty({n, 3, s, s}, options);
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int nw = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(workers, n)));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nw));
  auto work = [&](int w) {
    try {
      for (int64_t k = w; k < n; k += nw)
        load(indices[static_cast<size_t>(k)], train, flip, derive_seed(seed, static_cast<uint64_t>(k)),
             dst + k * 3 * s * s);
    } catch (...) {
      errors[static_cast<size_t>(w)] = std::current_exception();
    }
  };
  if (nw == 1) {
    work(0);
  } else {
    std::vector<std::thread> threads;
    for (int w = 1; w < nw; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& t : threads) t.join();
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

std::vector<std::string> ImageFiles::corrupt_files() const {
  std::lock_guard<std::mutex> lock(corrupt_->mutex);
  return {corrupt_->paths.begin(), corrupt_->paths.end()};
}

FolderScan scan_image_folder(const std::string& root) {
  XFER_CHECK(!root.empty(), "image folder: no root directory given (dir=PATH)");
  std::error_code ec;
  XFER_CHECK(fs::is_directory(root, ec), "image folder ", root, ": not a directory");
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink, ec))
    if (entry.is_directory(ec)) classes.push_back(entry.path().filename().string());
  XFER_CHECK(!ec, "image folder ", root, ": cannot list it (", ec.message(), ")");
  XFER_CHECK(!classes.empty(), "image folder ", root, ": no class folders (expected ROOT/CLASS_NAME/*.jpg|png)");
  std::sort(classes.begin(), classes.end());
  FolderScan scan;
  scan.class_names = classes;
  for (size_t c = 0; c < classes.size(); ++c) {
    const fs::path dir = fs::path(root) / classes[c];
    const std::vector<std::string> files = walk_images(root, dir);
    XFER_CHECK(!files.empty(), "image folder ", root, ": class folder ", dir.string(),
               " holds no images (*.jpg, *.jpeg, *.png)");
    for (const auto& f : files) {
      scan.files.push_back(f);
      scan.labels.push_back(static_cast<int64_t>(c));
    }
  }
  return scan;
}

FolderScan read_split_list(const std::string& root, const std::string& list, const std::vector<std::string>& classes) {
  std::ifstream in(list);
  XFER_CHECK(in.good(), "split list ", list, ": cannot open it");
  std::map<std::string, int64_t> label_of;
  for (size_t c = 0; c < classes.size(); ++c) label_of[classes[c]] = static_cast<int64_t>(c);
  FolderScan scan;
  scan.class_names = classes;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string cls = fs::path(line).begin()->string();
    auto it = label_of.find(cls);
    XFER_CHECK(it != label_of.end() && line.find('/') != std::string::npos, "split list ", list, " line ", line_no,
               ": '", line, "' is not CLASS/FILE for a class folder of ", root);
    XFER_CHECK(fs::is_regular_file(fs::path(root) / line), "split list ", list, " line ", line_no, ": ",
               (fs::path(root) / line).string(), " does not exist");
    scan.files.push_back(line);
    scan.labels.push_back(it->second);
  }
  XFER_CHECK(!scan.files.empty(), "split list ", list, ": lists no images");
  return scan;
}

int default_loader_workers(int requested) {
  if (requested > 0) return requested;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores - at::get_num_threads());
}

// TensorDataset's image-folder-aware accessors live here, next to the decoder.

int64_t TensorDataset::channels() const { return files ? 3 : images.size(1); }
int64_t TensorDataset::height() const { return files ? files->options().size : images.size(2); }
int64_t TensorDataset::width() const { return files ? files->options().size : images.size(3); }

torch::Tensor TensorDataset::eval_images(int64_t start, int64_t end) const {
  if (!files) return images.slice(0, start, end);
  std::vector<int64_t> idx;
  for (int64_t i = start; i < std::min(end, size()); ++i) idx.push_back(i);
  return files->load_batch(idx, /*train=*/false, /*flip=*/false, 0, default_loader_workers(0));
}

torch::Tensor TensorDataset::eval_images(const torch::Tensor& indices) const {
  if (!files) return images.index_select(0, indices);
  const torch::Tensor ix = indices.to(torch::kInt64).contiguous();
  std::vector<int64_t> idx(ix.data_ptr<int64_t>(), ix.data_ptr<int64_t>() + ix.numel());
  return files->load_batch(idx, /*train=*/false, /*flip=*/false, 0, default_loader_workers(0));
}

void TensorDataset::require_in_memory(const std::string& what) const {
  if (files) throw BadInput(cat(what, " is not supported on image folders yet (", files->root(), ")"));
}

}  // namespace xfer
