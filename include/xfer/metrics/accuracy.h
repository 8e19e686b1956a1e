#pragma once
/// Classification metrics from a confusion matrix.
#include <cmath>
#include <cstdint>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json_fwd.hpp>

namespace xfer {

/// confusion[t][p] counts examples of true class t predicted as p.
struct Evaluation {
  int64_t count = 0;
  double top1 = 0;                // fraction correct
  double mean_class = 0;          // mean over classes present of the per-class accuracy
  std::vector<double> per_class;  // accuracy per class (NaN for classes absent)
  std::vector<std::vector<int64_t>> confusion;
  double loss = NAN;  // mean cross-entropy of the logits; NaN when only predictions were counted
  double top5 = NAN;  // fraction with the true class among the 5 highest logits; NaN with 5 classes or fewer

  nlohmann::json to_json() const;
};

/// Accumulates predictions into a confusion matrix.
class ConfusionMatrix {
 public:
  explicit ConfusionMatrix(int64_t classes);
  /// `predicted` and `target`: int64 (N) on any device.
  void add(const torch::Tensor& predicted, const torch::Tensor& target);
  /// Counts the argmax of `logits` (N, classes) and also sums their cross-entropy and top-5 hits.
  void add_logits(const torch::Tensor& logits, const torch::Tensor& target);
  Evaluation evaluation() const;
  /// The counts, int64 (classes * classes) row-major (true class, predicted): summed over the processes of
  /// a data-parallel evaluation.
  torch::Tensor& counts() { return counts_; }
  /// float64 (2): the cross-entropy sum and the top-5 hits of add_logits; summed over processes as counts().
  torch::Tensor& logit_sums() { return logit_sums_; }

 private:
  int64_t classes_;
  torch::Tensor counts_;  // int64 (classes * classes) on the CPU
  torch::Tensor logit_sums_;
  bool saw_logits_ = false;
};

}  // namespace xfer
