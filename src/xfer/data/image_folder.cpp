#include "xfer/data/image_folder.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
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

/// A directory's identity, to see one reached twice through links.
std::pair<dev_t, ino_t> dir_id(const fs::path& dir) {
  struct stat st {};
  XFER_CHECK(::stat(dir.c_str(), &st) == 0, "image folder: cannot read ", dir.string(), " (",
             std::strerror(errno), ")");
  return {st.st_dev, st.st_ino};
}

/// Whether canonical path `inner` is `outer` or lies below it.
bool path_within(const fs::path& inner, const fs::path& outer) {
  auto o = outer.begin(), i = inner.begin();
  for (; o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

/// Image files under the class folder `dir`, relative to `root`, in torchvision's order: sorted by
/// (directory, name). Links are followed only while they stay inside the class folder: a link to a parent
/// would loop, and one to another class would give its images this class's label. Either is refused, as is
/// a name that is not UTF-8 (results and configs are JSON).
std::vector<std::string> walk_images(const fs::path& root, const fs::path& dir) {
  std::error_code ec;
  const fs::path home = fs::canonical(dir, ec);
  XFER_CHECK(!ec, "image folder: cannot resolve ", dir.string(), " (", ec.message(), ")");
  std::vector<std::pair<std::string, std::string>> found;
  std::set<std::pair<dev_t, ino_t>> seen{dir_id(home)};
  std::vector<fs::path> todo{dir};
  while (!todo.empty()) {
    const fs::path d = todo.back();
    todo.pop_back();
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path p = it->path();
      check_utf8(p.filename().string(), cat("image folder: the name ", p.string()));
      const bool link = it->is_symlink(ec);
      if (link) {
        const fs::path target = fs::canonical(p, ec);
        if (ec) {  // a dangling link: nothing to read, as a missing file
          ec.clear();
          continue;
        }
        XFER_CHECK(path_within(target, home), "image folder: ", p.string(), " links to ", target.string(),
                   ", outside its class folder ", dir.string(), " (its images would be labelled ",
                   dir.filename().string(), ")");
      }
      if (it->is_directory(ec)) {
        XFER_CHECK(seen.insert(dir_id(p)).second, "image folder: ", p.string(),
                   " leads to a folder already walked (a link cycle, or two links to one folder)");
        todo.push_back(p);
      } else if (it->is_regular_file(ec) && is_image_name(p.filename().string())) {
        found.emplace_back(p.parent_path().lexically_relative(root).string(), p.filename().string());
      }
      ec.clear();
    }
    XFER_CHECK(!ec, d.string(), ": cannot list the folder (", ec.message(), ")");
  }
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
  // Every size is checked against what the file holds, without overflow: a crafted header must not point
  // outside the mapping.
  if (count > (bytes_ - 24) / 20) return false;
  for (uint64_t i = 0; i < count; ++i) {
    if (static_cast<size_t>(end - q) < 20) return false;
    const uint64_t offset = u64(q);
    const uint64_t height = u32(q), width = u32(q), len = u32(q);
    if (len > static_cast<size_t>(end - q)) return false;
    if (height > 0 && width > static_cast<uint64_t>(kMaxImagePixels) / height) return false;
    const uint64_t pixels = height * width * 3;
    if (offset > bytes_ || pixels > bytes_ - offset) return false;
    std::string path(reinterpret_cast<const char*>(q), len);
    q += len;
    Entry e;
    e.height = static_cast<int64_t>(height);
    e.width = static_cast<int64_t>(width);
    e.rgb = pixels > 0 ? p + offset : nullptr;
    entries_[path] = e;
  }
  return true;
}

std::shared_ptr<const ImageCache> ImageCache::open(const std::string& file) {
  std::shared_ptr<ImageCache> c(new ImageCache());
  return c->map(file) ? c : nullptr;
}

std::vector<std::string> ImageCache::paths() const {
  std::vector<std::string> out;
  for (const auto& [p, e] : entries_) out.push_back(p);
  return out;
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
  AtomicFile out(file);
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
    out.write(paths[i].data(), paths[i].size());
    offset += images[i].rgb.size();
  }
  for (const auto& img : images) out.write(reinterpret_cast<const char*>(img.rgb.data()), img.rgb.size());
  out.commit();
  std::shared_ptr<ImageCache> c(new ImageCache());
  XFER_CHECK(c->map(file), "image cache ", file, ": cannot read back the file just written");
  return c;
}

ImageFiles::ImageFiles(std::string root, std::vector<std::string> paths, ImageOptions opts,
                       std::shared_ptr<CorruptLog> corrupt, std::shared_ptr<const ImageCache> cache,
                       std::vector<int64_t> labels)
    : root_(std::move(root)),
      paths_(std::move(paths)),
      labels_(std::move(labels)),
      opts_(std::move(opts)),
      corrupt_(corrupt ? std::move(corrupt) : std::make_shared<CorruptLog>()),
      cache_(std::move(cache)) {
  opts_.validate();
  XFER_CHECK(labels_.empty() || labels_.size() == paths_.size(), "image folder ", root_, ": ", labels_.size(),
             " labels for ", paths_.size(), " files");
}

std::shared_ptr<const ImageFiles> ImageFiles::subset(const std::vector<int64_t>& indices) const {
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  paths.reserve(indices.size());
  for (int64_t i : indices) {
    paths.push_back(path(i));
    if (!labels_.empty()) labels.push_back(labels_.at(static_cast<size_t>(i)));
  }
  return std::make_shared<ImageFiles>(root_, std::move(paths), opts_, corrupt_, cache_, std::move(labels));
}

std::shared_ptr<const ImageFiles> ImageFiles::with_cache(std::shared_ptr<const ImageCache> cache) const {
  return std::make_shared<ImageFiles>(root_, paths_, opts_, corrupt_, std::move(cache), labels_);
}

void ImageFiles::load(int64_t i, bool train, bool flip, uint64_t seed, uint8_t* out) const {
  const int64_t n = size();
  XFER_CHECK(i >= 0 && i < n, "image index ", i, " out of range for ", n, " images");
  // Training crops may take a small part of the image: keep the decoded size at least the crop size.
  const int64_t min_side = train && opts_.crop == "rrc" ? opts_.size : opts_.resize;
  const auto label_of = [&](int64_t j) { return labels_.empty() ? 0 : labels_[static_cast<size_t>(j)]; };
  for (int64_t k = 0; k < n; ++k) {
    if (label_of((i + k) % n) != label_of(i)) continue;  // a stand-in must have the example's label
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
  throw BadInput(labels_.empty()
                     ? cat(root_, ": none of the ", n, " images of this split can be decoded")
                     : cat(root_, ": no image of class ", label_of(i), " in this split can be decoded (",
                           path(i), " ...): a class cannot be trained or tested without one"));
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
  // Class folders may be links (a dataset spread over disks), but no two may share images and none may
  // hold the root: either would give images two labels.
  const fs::path canonical_root = fs::canonical(root, ec);
  std::vector<fs::path> homes;
  for (const auto& c : classes) {
    check_utf8(c, cat("image folder ", root, ": the class folder name"));
    homes.push_back(fs::canonical(fs::path(root) / c, ec));
    XFER_CHECK(!ec, "image folder ", root, ": cannot resolve class folder ", c, " (", ec.message(), ")");
    XFER_CHECK(!path_within(canonical_root, homes.back()), "image folder ", root, ": class folder ", c,
               " links to ", homes.back().string(), ", which holds the whole folder");
  }
  for (size_t a = 0; a < homes.size(); ++a)
    for (size_t b = 0; b < homes.size(); ++b)
      XFER_CHECK(a == b || !path_within(homes[a], homes[b]), "image folder ", root, ": class folder ",
                 classes[a], " lies inside class folder ", classes[b],
                 " (through a link): its images would have two labels");
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
    const fs::path rel(line);
    XFER_CHECK(rel.is_relative() &&
                   std::none_of(rel.begin(), rel.end(), [](const fs::path& c) { return c == ".."; }),
               "split list ", list, " line ", line_no, ": '", printable(line), "' must be a path inside ",
               root, " (no '..', not absolute)");
    check_utf8(line, cat("split list ", list, " line ", line_no));
    const std::string cls = rel.begin()->string();
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
