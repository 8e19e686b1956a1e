#include "xfer/data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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

Normalization imagenet_normalization() {
  return {{0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}};
}

void ImageOptions::validate() const {
  XFER_CHECK(size >= 8 && size <= 4096, "image size must be in [8, 4096], got ", size);
  XFER_CHECK(resize >= size, "image resize must be >= size (", size, "), got ", resize);
  XFER_CHECK(crop == "rrc" || crop == "random", "image crop must be rrc or random, got '", crop, "'");
  XFER_CHECK(scale_min > 0 && scale_min <= scale_max && scale_max <= 1,
             "RandomResizedCrop scale must satisfy ", "0 < min <= max <= 1, got ", scale_min, ",", scale_max);
  XFER_CHECK(ratio_min > 0 && ratio_min <= ratio_max,
             "RandomResizedCrop ratio must satisfy 0 < min <= max, got ", ratio_min, ",", ratio_max);
  XFER_CHECK(norm.mean.size() == 3 && norm.std.size() == 3, "image mean and std need 3 values (RGB), got ",
             norm.mean.size(), " and ", norm.std.size());
  for (double s : norm.std) XFER_CHECK(s > 0, "image std values must be > 0, got ", s);
}

ImageCache::~ImageCache() {
  if (data_) munmap(data_, bytes_);
}

bool ImageCache::map(const std::string& file) {
  const int fd = ::open(file.c_str(), O_RDONLY);
  if (fd < 0) return false;
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < 24) {
    ::close(fd);
    return false;
  }
  bytes_ = static_cast<size_t>(st.st_size);
  data_ = mmap(nullptr, bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (data_ == MAP_FAILED) {
    data_ = nullptr;
    return false;
  }
  const auto* p = static_cast<const uint8_t*>(data_);
  const uint8_t* end = p + bytes_;
  auto u64 = [&](const uint8_t*& q) {
    uint64_t v;
    std::memcpy(&v, q, 8);
    q += 8;
    return v;
  };
  auto u32 = [&](const uint8_t*& q) {
    uint32_t v;
    std::memcpy(&v, q, 4);
    q += 4;
    return v;
  };
  if (std::memcmp(p, "XFERIMC1", 8) != 0) return false;
  const uint8_t* q = p + 8;
  const uint64_t count = u64(q);
  side_ = static_cast<int64_t>(u64(q));
  for (uint64_t i = 0; i < count; ++i) {
    if (q + 20 > end) return false;
    const uint64_t offset = u64(q);
    Entry e;
    e.height = u32(q);
    e.width = u32(q);
    const uint32_t len = u32(q);
    if (q + len > end || offset + static_cast<uint64_t>(e.height * e.width * 3) > bytes_) return false;
    std::string path(reinterpret_cast<const char*>(q), len);
    q += len;
    e.rgb = e.height > 0 ? p + offset : nullptr;
    entries_[path] = e;
  }
  return true;
}

const ImageCache::Entry* ImageCache::find(const std::string& path) const {
  auto it = entries_.find(path);
  return it == entries_.end() ? nullptr : &it->second;
}

std::shared_ptr<const ImageCache> ImageCache::open_or_build(const std::string& file,
                                                            const std::vector<std::string>& paths,
                                                            int64_t side, int workers) {
  {
    std::shared_ptr<ImageCache> c(new ImageCache());
    if (c->map(file) && c->side_ == side) {
      bool complete = true;
      for (const auto& p : paths) complete = complete && c->find(p) != nullptr;
      if (complete) return c;
    }
    if (fs::exists(file))
      log_info(
          cat("image cache ", file, ": it does not cover this folder at side ", side, "; rebuilding it"));
  }
  log_info(cat("image cache ", file, ": decoding ", paths.size(), " images once (shorter side ", side, ")"));
  // Decode (in the DCT domain where possible), then shrink so that the shorter side is `side`.
  std::vector<Image> images(paths.size());
  const int nw = std::max(1, workers);
  auto work = [&](int w) {
    for (size_t i = static_cast<size_t>(w); i < paths.size(); i += static_cast<size_t>(nw)) {
      Image img;
      try {
        img = decode_image_file(paths[i], side);
      } catch (const BadInput&) {
        continue;  // recorded with an empty size: unreadable
      }
      const int64_t s = std::min(img.height, img.width);
      if (s > side) {
        const int64_t h = std::max<int64_t>(1, img.height * side / s),
                      w2 = std::max<int64_t>(1, img.width * side / s);
        std::vector<uint8_t> planar(static_cast<size_t>(3 * h * w2));
        resample_crop(img, {0, 0, double(img.height), double(img.width)}, h, w2, false, planar.data());
        Image small;
        small.height = h;
        small.width = w2;
        small.rgb.resize(planar.size());
        for (int64_t k = 0; k < h * w2; ++k)
          for (int c = 0; c < 3; ++c) small.rgb[k * 3 + c] = planar[c * h * w2 + k];
        img = std::move(small);
      }
      images[i] = std::move(img);
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < nw; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  // Header, then pixels.
  uint64_t header = 8 + 8 + 8;
  for (const auto& p : paths) header += 20 + p.size();
  const std::string tmp = file + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    XFER_CHECK(out.good(), "image cache ", file, ": cannot write ", tmp);
    auto put64 = [&](uint64_t v) { out.write(reinterpret_cast<const char*>(&v), 8); };
    auto put32 = [&](uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
    out.write("XFERIMC1", 8);
    put64(paths.size());
    put64(static_cast<uint64_t>(side));
    uint64_t offset = header;
    for (size_t i = 0; i < paths.size(); ++i) {
      put64(offset);
      put32(static_cast<uint32_t>(images[i].height));
      put32(static_cast<uint32_t>(images[i].width));
      put32(static_cast<uint32_t>(paths[i].size()));
      out.write(paths[i].data(), static_cast<std::streamsize>(paths[i].size()));
      offset += images[i].rgb.size();
    }
    for (const auto& img : images)
      out.write(reinterpret_cast<const char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
    XFER_CHECK(out.good(), "image cache ", file, ": cannot write ", tmp, " (disk full?)");
  }
  fs::rename(tmp, file);
  std::shared_ptr<ImageCache> c(new ImageCache());
  XFER_CHECK(c->map(file), "image cache ", file, ": cannot read back the file just written");
  return c;
}

ImageFiles::ImageFiles(std::string root, std::vector<std::string> paths, ImageOptions opts,
                       std::shared_ptr<CorruptLog> corrupt, std::shared_ptr<const ImageCache> cache)
    : root_(std::move(root)),
      paths_(std::move(paths)),
      opts_(std::move(opts)),
      corrupt_(corrupt ? std::move(corrupt) : std::make_shared<CorruptLog>()),
      cache_(std::move(cache)) {
  opts_.validate();
}

std::shared_ptr<const ImageFiles> ImageFiles::subset(const std::vector<int64_t>& indices) const {
  std::vector<std::string> paths;
  paths.reserve(indices.size());
  for (int64_t i : indices) paths.push_back(path(i));
  return std::make_shared<ImageFiles>(root_, std::move(paths), opts_, corrupt_, cache_);
}

std::shared_ptr<const ImageFiles> ImageFiles::with_cache(std::shared_ptr<const ImageCache> cache) const {
  return std::make_shared<ImageFiles>(root_, paths_, opts_, corrupt_, std::move(cache));
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
      const ImageCache::Entry* cached = cache_ ? cache_->find(p) : nullptr;
      if (cached && !cached->rgb) throw BadInput(cat(p, ": unreadable (recorded in the image cache)"));
      if (cached) {
        img.height = cached->height;
        img.width = cached->width;
        img.rgb.assign(cached->rgb, cached->rgb + cached->height * cached->width * 3);
      } else {
        img = decode_image_file(p, min_side);
      }
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

torch::Tensor ImageFiles::load_batch(const std::vector<int64_t>& indices, bool train, bool flip,
                                     uint64_t seed, int workers, bool pinned,
                                     const std::vector<int64_t>* positions) const {
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
        load(indices[static_cast<size_t>(k)], train, flip,
             derive_seed(seed, static_cast<uint64_t>(positions ? (*positions)[static_cast<size_t>(k)] : k)),
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
  XFER_CHECK(!classes.empty(), "image folder ", root,
             ": no class folders (expected ROOT/CLASS_NAME/*.jpg|png)");
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

FolderScan read_split_list(const std::string& root, const std::string& list,
                           const std::vector<std::string>& classes) {
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
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const std::string cls = fs::path(line).begin()->string();
    auto it = label_of.find(cls);
    XFER_CHECK(it != label_of.end() && line.find('/') != std::string::npos, "split list ", list, " line ",
               line_no, ": '", line, "' is not CLASS/FILE for a class folder of ", root);
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

int64_t TensorDataset::channels() const {
  return files ? 3 : images.size(1);
}
int64_t TensorDataset::height() const {
  return files ? files->options().size : images.size(2);
}
int64_t TensorDataset::width() const {
  return files ? files->options().size : images.size(3);
}

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
