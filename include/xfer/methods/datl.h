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
/// most examples contribute little; this loss is the comparison (`--matcher none --loss-weights`).
///
/// Registered as `datl`, a method of `xfer pretrain` (not of `xfer finetune`): its options choose the
/// pre-training data (xfer/source/importance.h's PretrainSampling), which it builds before the model is.
#include <memory>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"
#include "xfer/source/importance.h"

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

/// `xfer pretrain --method datl`: prepare_data resamples the source by the importance weights (or, with
/// --loss-weights, keeps it whole and builds the class-weighted loss); the method is then cross-entropy on
/// the source head.
class DatlConfig : public MethodConfig {
 public:
  PretrainSampling options;

  void fields(Fields& f) override { options.fields(f); }
  void check() override;
  nlohmann::json prepare_data(DataContext& ctx) override;
  std::unique_ptr<Method> build() override;

 private:
  std::vector<double> loss_weights_;  // set by prepare_data with --loss-weights
};

/// Registers datl.
void register_datl_methods(MethodRegistry& registry);

}  // namespace xfer
