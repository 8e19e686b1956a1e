#pragma once
/// Per-domain BatchNorm statistics: a second set of running statistics for every BatchNorm layer of a
/// network, swapped in while another domain's batch runs (Smooth Transfer Learning, appendix A.2:
/// "the source and target datasets have different sets of batch statistics").
///
/// The network's own buffers hold the primary domain's statistics (the target's), so evaluation and
/// checkpoints see them; the second set belongs to the caller (a method saves and loads it). While a
/// `Scope` from `use_second()` is alive, each BN layer normalises with the batch's own statistics (in
/// training mode) and updates the second set. The swap exchanges tensor handles rather than copying
/// values, so no tensor saved for backward by an earlier forward is modified in place.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "xfer/core/archive.h"

namespace xfer {

class DomainBatchNorm {
 public:
  DomainBatchNorm() = default;
  /// Finds the BatchNorm1d/2d/3d layers of `module` (which must outlive this object); the second set
  /// starts as a copy of their current running statistics.
  explicit DomainBatchNorm(torch::nn::Module& module);

  /// Swaps the second set in; swaps it back out when destroyed.
  class Scope {
   public:
    explicit Scope(DomainBatchNorm* owner);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    DomainBatchNorm* owner_;
  };
  Scope use_second() { return Scope(this); }

  size_t layers() const { return layers_.size(); }
  /// The second set's running mean of layer `i` (for tests and reports).
  const torch::Tensor& second_mean(size_t i) const { return layers_.at(i).mean; }
  const torch::Tensor& second_var(size_t i) const { return layers_.at(i).var; }

  void save(Archive& out, const std::string& key) const;
  void load(const Archive& in, const std::string& key);

 private:
  struct Layer {
    std::shared_ptr<torch::nn::Module> module;  // keeps the layer alive
    torch::Tensor* running_mean = nullptr;      // the layer's members that its forward reads
    torch::Tensor* running_var = nullptr;
    torch::Tensor* num_batches_tracked = nullptr;
    torch::Tensor mean, var, count;  // the second set (while swapped in: the primary set)
  };
  void swap_all();
  std::vector<Layer> layers_;
  bool swapped_ = false;
};

}  // namespace xfer
