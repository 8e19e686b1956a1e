#include "xfer/data/loader.h"

#include <unistd.h>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/rng.h"
#include "xfer/data/image_folder.h"

namespace xfer {

void LoaderOptions::fields(Fields& f) {
  f.add("batch_size", batch_size, "examples per batch (at most 65536, and what fits in half the memory)")
      .in_range(1, 65536);
  f.add("crop_pad", crop_pad,
        "random-crop augmentation: zero padding per side in pixels (0 = off; less than the "
        "image side)")
      .non_negative();
  f.add("flip", flip, "random horizontal flip augmentation");
  f.add("prefetch", prefetch, "assemble the next batch on a worker thread").execution();
  f.add("loader_workers", workers,
        "image folders: decoding threads (0 = all cores minus the training threads)")
      .non_negative()
      .execution();
  f.add("channels_last", channels_last, "channels-last memory format for batches and convolution weights");
}

ShuffleSampler::ShuffleSampler(int64_t size, uint64_t seed) : size_(size), seed_(seed) {
  XFER_CHECK(size > 0, "cannot sample batches from an empty dataset");
}

const std::vector<int64_t>& ShuffleSampler::permutation(int64_t epoch) {
  auto it = cache_.find(epoch);
  if (it != cache_.end()) return it->second;
  if (cache_.size() >= 4) cache_.erase(cache_.begin());
  std::vector<int64_t> perm(size_);
  for (int64_t i = 0; i < size_; ++i) perm[i] = i;
  shuffle_in_place(perm, derive_seed(seed_, static_cast<uint64_t>(epoch)));
  return cache_.emplace(epoch, std::move(perm)).first->second;
}

std::vector<int64_t> ShuffleSampler::indices(int64_t batch, int64_t batch_size) {
  std::vector<int64_t> out(batch_size);
  for (int64_t i = 0; i < batch_size; ++i) {
    const int64_t k = batch * batch_size + i;
    out[i] = permutation(k / size_)[k % size_];
  }
  return out;
}

std::unique_ptr<Sampler> default_sampler(int64_t size, uint64_t stream_seed) {
  return std::make_unique<ShuffleSampler>(size, derive_seed(stream_seed, "order"));
}

InputTransform::InputTransform(Normalization norm, int64_t crop_pad, bool flip)
    : norm_(std::move(norm)), crop_pad_(crop_pad), flip_(flip) {
  XFER_CHECK(!norm_.mean.empty() && norm_.mean.size() == norm_.std.size(), "normalisation needs a mean and ",
             "std per channel");
  for (size_t c = 0; c < norm_.mean.size(); ++c) {
    std::vector<float> lut(256);
    for (int v = 0; v < 256; ++v) lut[v] = static_cast<float>((v / 255.0 - norm_.mean[c]) / norm_.std[c]);
    lut_.push_back(std::move(lut));
  }
}

namespace {
BatchShard& shard_setting() {
  static BatchShard shard;
  return shard;
}
}  // namespace

void set_batch_shard(BatchShard shard) {
  XFER_CHECK(shard.count >= 1 && shard.rank >= 0 && shard.rank < shard.count, "batch shard ", shard.rank,
             " of ", shard.count, " is out of range");
  shard_setting() = shard;
}

BatchShard batch_shard() {
  return shard_setting();
}

int64_t global_batch_size(const Batch& b) {
  return b.global_size > 0 ? b.global_size : b.x.size(0);
}

torch::Tensor InputTransform::operator()(const torch::Tensor& images, const std::vector<int64_t>& indices,
                                         uint64_t seed, const std::vector<int64_t>* select) const {
  const int64_t total = static_cast<int64_t>(indices.size());
  const int64_t n = select ? static_cast<int64_t>(select->size()) : total;
  const int64_t C = images.size(1), H = images.size(2), W = images.size(3);
  XFER_CHECK(C == static_cast<int64_t>(lut_.size()), "images have ", C, " channels but the model expects ",
             lut_.size());
  torch::Tensor out = torch::empty({n, C, H, W}, torch::kFloat32);
  const uint8_t* src = images.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  // Every row's draws, in order, so a row is augmented the same whether or not it is selected.
  std::mt19937_64 engine(seed);
  std::vector<int64_t> shift_y(total, 0), shift_x(total, 0);
  std::vector<char> mirrors(total, 0);
  for (int64_t i = 0; i < total; ++i) {
    if (crop_pad_ > 0) {
      shift_y[i] = static_cast<int64_t>(uniform_index(engine, 2 * crop_pad_ + 1)) - crop_pad_;
      shift_x[i] = static_cast<int64_t>(uniform_index(engine, 2 * crop_pad_ + 1)) - crop_pad_;
    }
    if (flip_) mirrors[i] = (engine() >> 63) != 0;
  }
  const int64_t plane = H * W;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row_in_batch = select ? (*select)[i] : i;
    XFER_CHECK(row_in_batch >= 0 && row_in_batch < total, "batch row ", row_in_batch, " is out of range");
    const int64_t dy = shift_y[row_in_batch], dx = shift_x[row_in_batch];
    const bool mirror = mirrors[row_in_batch] != 0;
    const uint8_t* img = src + indices[row_in_batch] * C * plane;
    float* o = dst + i * C * plane;
    for (int64_t c = 0; c < C; ++c) {
      const float* lut = lut_[c].data();
      const float pad_value = lut[0];
      for (int64_t y = 0; y < H; ++y) {
        const int64_t sy = y + dy;
        float* row = o + c * plane + y * W;
        if (sy < 0 || sy >= H) {
          std::fill(row, row + W, pad_value);
          continue;
        }
        const uint8_t* srow = img + c * plane + sy * W;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t sx = (mirror ? W - 1 - x : x) + dx;
          row[x] = (sx < 0 || sx >= W) ? pad_value : lut[srow[sx]];
        }
      }
    }
  }
  return out;
}

torch::Tensor InputTransform::normalise(const torch::Tensor& images) const {
  std::vector<int64_t> all(images.size(0));
  for (int64_t i = 0; i < images.size(0); ++i) all[i] = i;
  return InputTransform(norm_)(images.contiguous(), all, 0);
}

BatchStream::BatchStream(TensorDataset data, const Normalization& norm, LoaderOptions opts, uint64_t seed,
                         std::unique_ptr<Sampler> sampler, torch::Device device)
    : data_(std::move(data)),
      opts_(opts),
      seed_(seed),
      sampler_(sampler ? std::move(sampler) : default_sampler(data_.size(), seed)),
      transform_(norm, data_.is_folder() ? 0 : opts.crop_pad, data_.is_folder() ? false : opts.flip),
      device_(device),
      shard_(batch_shard()) {
  check_options(opts_);
  XFER_CHECK(opts_.batch_size % shard_.count == 0, "the batch size ", opts_.batch_size,
             " must be a multiple of ", "the number of processes ", shard_.count,
             " (each process takes an equal share of every batch)");
  XFER_CHECK(data_.size() > 0, "cannot draw batches from an empty dataset");
  // A shift of a full side or more would leave nothing of the image: the batch would be all padding.
  const int64_t side = std::min(data_.height(), data_.width());
  XFER_CHECK(data_.is_folder() || opts_.crop_pad < side, "--crop-pad ", opts_.crop_pad,
             " must be less than the image side (", side, ")");
  // A batch of float images must fit in memory (with room for the model): a huge --batch-size is refused
  // here rather than swapping the machine to a halt.
  const double batch_bytes = 4.0 * static_cast<double>(opts_.batch_size) *
                             static_cast<double>(data_.channels()) * static_cast<double>(data_.height()) *
                             static_cast<double>(data_.width());
  const double memory =
      static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  XFER_CHECK(memory <= 0 || batch_bytes <= memory / 2, "--batch-size ", opts_.batch_size, ": a batch of ",
             data_.channels(), "x", data_.height(), "x", data_.width(), " images needs ",
             static_cast<int64_t>(batch_bytes / (1 << 20)), " MiB, more than half of this machine's ",
             static_cast<int64_t>(memory / (1 << 20)), " MiB");
  if (!data_.is_folder()) data_.images = data_.images.contiguous();
  data_.labels = data_.labels.contiguous();
}

BatchStream::~BatchStream() {
  if (pending_.valid()) pending_.wait();
}

Batch BatchStream::make(int64_t b) {
  const uint64_t seed = derive_seed(seed_, static_cast<uint64_t>(b));
  Batch batch;
  batch.number = b;
  batch.global_size = opts_.batch_size;
  batch.global_index = sampler_->indices(b, opts_.batch_size);
  std::vector<int64_t> rows;  // this process's rows of the global batch (all of them in one process)
  if (shard_.count > 1) {
    const int64_t share = opts_.batch_size / shard_.count;
    batch.offset = shard_.rank * share;
    for (int64_t i = 0; i < share; ++i) rows.push_back(batch.offset + i);
  }
  const int64_t local = shard_.count > 1 ? static_cast<int64_t>(rows.size()) : opts_.batch_size;
  const std::vector<int64_t> idx(batch.global_index.begin() + batch.offset,
                                 batch.global_index.begin() + batch.offset + local);
  if (data_.is_folder()) {
    batch.x = folder_rows(idx, seed, shard_.count > 1 ? &rows : nullptr);
  } else {
    batch.x = transform_(data_.images, batch.global_index, seed, shard_.count > 1 ? &rows : nullptr);
  }
  if (opts_.channels_last) batch.x = batch.x.contiguous(at::MemoryFormat::ChannelsLast);
  // Image batches for a GPU are staged in pinned memory here, on the worker thread, for an async copy.
  if (data_.is_folder() && device_.is_cuda()) batch.x = batch.x.pin_memory();
  batch.index = torch::tensor(idx, torch::kInt64);
  batch.y = torch::empty({static_cast<int64_t>(idx.size())}, torch::kInt64);
  const int64_t* labels = data_.labels.data_ptr<int64_t>();
  int64_t* y = batch.y.data_ptr<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i) y[i] = labels[idx[i]];
  return batch;
}

Batch BatchStream::rows(const Batch& batch, const torch::Tensor& positions) const {
  const torch::Tensor pos = positions.to(torch::kCPU, torch::kInt64).contiguous();
  std::vector<int64_t> select(pos.data_ptr<int64_t>(), pos.data_ptr<int64_t>() + pos.numel());
  XFER_CHECK(static_cast<int64_t>(batch.global_index.size()) == batch.global_size,
             "rows(): the batch carries no ", "global indices");
  Batch out;
  out.number = batch.number;
  out.global_size = batch.global_size;
  out.global_index = batch.global_index;
  const uint64_t seed = derive_seed(seed_, static_cast<uint64_t>(batch.number));
  std::vector<int64_t> idx(select.size());
  for (size_t i = 0; i < select.size(); ++i) idx[i] = batch.global_index[static_cast<size_t>(select[i])];
  out.x = data_.is_folder() ? folder_rows(idx, seed, &select)
                            : transform_(data_.images, batch.global_index, seed, &select);
  out.index = torch::tensor(idx, torch::kInt64);
  out.y = data_.labels.index_select(0, out.index);
  if (device_ != torch::kCPU) {
    out.x = out.x.to(device_);
    out.y = out.y.to(device_);
  }
  return out;
}

torch::Tensor BatchStream::folder_rows(const std::vector<int64_t>& indices, uint64_t seed,
                                       const std::vector<int64_t>* positions) const {
  // Decode + crop + flip per example on the worker threads, each example seeded by its position in the
  // global batch (so a data-parallel shard is augmented as in one process), then normalise the uint8 batch.
  const torch::Tensor raw = data_.files->load_batch(indices, /*train=*/true, opts_.flip, seed,
                                                    default_loader_workers(static_cast<int>(opts_.workers)),
                                                    /*pinned=*/false, positions);
  std::vector<int64_t> all(indices.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  return transform_(raw, all, 0);
}

void BatchStream::launch(int64_t b) {
  pending_for_ = b;
  pending_ = std::async(std::launch::async, [this, b] { return make(b); });
}

Batch BatchStream::next() {
  Batch batch;
  if (pending_.valid() && pending_for_ == position_) {
    batch = pending_.get();
  } else {
    if (pending_.valid()) pending_.wait();
    batch = make(position_);
  }
  ++position_;
  if (opts_.prefetch) launch(position_);
  if (device_ != torch::kCPU) {
    batch.x = batch.x.to(device_, /*non_blocking=*/batch.x.is_pinned());
    batch.y = batch.y.to(device_);
  }
  return batch;
}

void BatchStream::seek(int64_t position) {
  XFER_CHECK(position >= 0, "batch stream position must be >= 0, got ", position);
  if (pending_.valid()) pending_.wait();
  pending_ = {};
  pending_for_ = -1;
  position_ = position;
}

void Batches::add(const std::string& name, std::unique_ptr<BatchStream> stream) {
  streams_[name] = std::move(stream);
}

BatchStream& Batches::stream(const std::string& name) {
  auto it = streams_.find(name);
  XFER_CHECK(it != streams_.end(), "no batch stream named '", name, "' in this run");
  return *it->second;
}

std::map<std::string, int64_t> Batches::positions() const {
  std::map<std::string, int64_t> out;
  for (const auto& [name, s] : streams_) out[name] = s->position();
  return out;
}

void Batches::seek(const std::map<std::string, int64_t>& positions) {
  for (const auto& [name, pos] : positions)
    if (has(name)) stream(name).seek(pos);
}

}  // namespace xfer
