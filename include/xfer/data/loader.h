#pragma once
/// Batches: samplers, batch augmentation and a prefetching, infinite, resumable batch stream.
///
/// A stream's batch b is a pure function of (seed, b): the sampler picks the indices, the augmentation
/// draws its crops and flips from a generator seeded by (seed, b). Resuming a run only needs each
/// stream's position. The next batch is assembled on a worker thread while the current step runs.
/// Image folders are decoded and augmented per example by `workers` threads, example k of batch b drawing
/// its crop and flip from derive_seed(derive_seed(seed, b), k) alone, so batches stay pure functions too.
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "xfer/data/dataset.h"

namespace xfer {

class Fields;

struct LoaderOptions {
  int64_t batch_size = 64;
  int64_t crop_pad = 2;  // random crop after zero-padding this many pixels per side; 0 turns it off
  bool flip = true;      // random horizontal flip
  bool prefetch = true;  // assemble the next batch on a worker thread
  int64_t workers = 0;   // --loader-workers: image folders' decoding threads (0 = cores - training threads)
  bool channels_last = false;  // batches (and the model's convolution weights) in channels-last layout

  void fields(Fields& f);
};

struct Batch {
  torch::Tensor x;      // float (B, C, H, W), normalised
  torch::Tensor y;      // int64 (B)
  torch::Tensor index;  // int64 (B): positions in the stream's dataset
  // Data-parallel runs: this process holds rows [offset, offset + B) of the global batch `number`, whose
  // `global_size` dataset indices are `global_index`. In one process: offset 0, the whole batch.
  int64_t number = 0;
  int64_t offset = 0;
  int64_t global_size = 0;
  std::vector<int64_t> global_index;
};

/// The rows of the global batch `b` belongs to: global_size, or its own rows when it carries none.
int64_t global_batch_size(const Batch& b);

/// This process's part of every batch: with `count` processes, batch b's rows
/// [rank * B / count, (rank + 1) * B / count), so that the processes together see exactly the batch one
/// process would. Set once by a data-parallel run (from dist::rank() and dist::world_size()) before it
/// builds its streams; streams built afterwards read it.
struct BatchShard {
  int64_t rank = 0;
  int64_t count = 1;
};
void set_batch_shard(BatchShard shard);
BatchShard batch_shard();

/// Chooses the dataset indices of each batch. Must be a pure function of the batch number, so that a
/// stream can be resumed or replayed from its position alone.
class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual std::vector<int64_t> indices(int64_t batch, int64_t batch_size) = 0;
};

/// Epochs of seeded permutations, read back to back: batch b holds samples [b*B, (b+1)*B) of the
/// infinite sequence perm(epoch 0), perm(epoch 1), ... A batch larger than the dataset spans epochs.
class ShuffleSampler : public Sampler {
 public:
  ShuffleSampler(int64_t size, uint64_t seed);
  std::vector<int64_t> indices(int64_t batch, int64_t batch_size) override;

 private:
  const std::vector<int64_t>& permutation(int64_t epoch);
  int64_t size_;
  uint64_t seed_;
  std::map<int64_t, std::vector<int64_t>> cache_;  // the last epochs used
};

/// The sampler a BatchStream seeded with `stream_seed` uses when given none: seeded epoch shuffles. A
/// second one built with the same arguments replays that stream's indices batch for batch, without
/// sharing state with it (XMixup's auxiliary stream pairs each of its slots with a target slot).
std::unique_ptr<Sampler> default_sampler(int64_t size, uint64_t stream_seed);

/// uint8 images -> normalised float input, with optional random crop (zero padding) and flip.
class InputTransform {
 public:
  explicit InputTransform(Normalization norm, int64_t crop_pad = 0, bool flip = false);
  /// Transforms images[indices[i]] for each i. `seed` drives the crops and flips. With `select`, only the
  /// rows at those positions of `indices`, augmented exactly as in the whole batch (a shard of it).
  torch::Tensor operator()(const torch::Tensor& images, const std::vector<int64_t>& indices, uint64_t seed,
                           const std::vector<int64_t>* select = nullptr) const;
  /// The evaluation transform of a whole tensor of images: normalisation only.
  torch::Tensor normalise(const torch::Tensor& images) const;

 private:
  Normalization norm_;
  int64_t crop_pad_;
  bool flip_;
  std::vector<std::vector<float>> lut_;  // per channel: byte value -> normalised float
};

/// An infinite stream of batches over one dataset.
class BatchStream {
 public:
  BatchStream(TensorDataset data, const Normalization& norm, LoaderOptions opts, uint64_t seed,
              std::unique_ptr<Sampler> sampler = nullptr, torch::Device device = torch::kCPU);
  ~BatchStream();
  BatchStream(const BatchStream&) = delete;
  BatchStream& operator=(const BatchStream&) = delete;

  /// The next batch: the whole batch, or this process's shard of it (see BatchShard). Its global batch
  /// size is options().batch_size either way.
  Batch next();
  /// Rows `positions` (int64, indices into the global batch) of `batch`, transformed exactly as the
  /// process holding them did: mixup partners that may live in another process's shard.
  Batch rows(const Batch& batch, const torch::Tensor& positions) const;
  /// Batches handed out so far.
  int64_t position() const { return position_; }
  /// Continues from `position` (after a resume).
  void seek(int64_t position);
  const TensorDataset& dataset() const { return data_; }
  const LoaderOptions& options() const { return opts_; }

 private:
  Batch make(int64_t b);
  /// Training crops of image-folder examples `indices`, example k seeded by (seed, positions[k] or k).
  torch::Tensor folder_rows(const std::vector<int64_t>& indices, uint64_t seed,
                            const std::vector<int64_t>* positions) const;
  void launch(int64_t b);

  TensorDataset data_;
  LoaderOptions opts_;
  uint64_t seed_;
  std::unique_ptr<Sampler> sampler_;
  InputTransform transform_;
  torch::Device device_;
  BatchShard shard_;
  int64_t position_ = 0;
  std::future<Batch> pending_;
  int64_t pending_for_ = -1;
};

/// The named batch streams of a run ("target", "source", ...). Methods draw from them by name.
class Batches {
 public:
  void add(const std::string& name, std::unique_ptr<BatchStream> stream);
  bool has(const std::string& name) const { return streams_.count(name) > 0; }
  BatchStream& stream(const std::string& name);
  Batch next(const std::string& name = "target") { return stream(name).next(); }
  std::map<std::string, int64_t> positions() const;
  void seek(const std::map<std::string, int64_t>& positions);

 private:
  std::map<std::string, std::unique_ptr<BatchStream>> streams_;
};

}  // namespace xfer
