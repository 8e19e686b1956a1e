#pragma once
/// Importance-weighted pre-training: Domain Adaptive Transfer Learning (Ngiam et al. 2018), section 3.3.
///
/// Pre-training on the source with each example's loss weighted by its class's importance weight
/// w(y) = P_t(y) / P_s(y) (xfer/source/importance.h) estimates the loss over the target's label
/// distribution:
///
///   L = mean_i w(y_i) * CE(h_s(g(x_i)), y_i)          logits (B, K), labels (B), w (K)
///
/// Over the source, the mean of w(y) is sum_y P_s(y) w(y) = sum_y P_t(y) = 1, so L has the scale of plain
/// cross-entropy. Section 4.1 prefers resampling (`--matcher same|elastic`) because w varies so much that
/// most examples contribute little; this loss is the comparison (`xfer pretrain --matcher none
/// --loss-weights`). Not a registered fine-tuning method: `run_pretrain` builds it.
#include <vector>

#include <torch/types.h>

#include "xfer/methods/method.h"

namespace xfer {

/// Mean over the batch of w[labels_i] * CE(logits_i, labels_i). `class_weights` (K) on any device.
torch::Tensor class_weighted_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                           const torch::Tensor& class_weights);

class ImportanceWeightedCrossEntropy : public Method {
 public:
  /// One weight per class of the head trained on.
  explicit ImportanceWeightedCrossEntropy(const std::vector<double>& class_weights);
  LossTerms loss(StepContext& ctx) override;

 private:
  torch::Tensor weights_;  // float (K)
};

}  // namespace xfer
