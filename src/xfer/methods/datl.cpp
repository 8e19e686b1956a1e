#include "xfer/methods/datl.h"

#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {

torch::Tensor class_weighted_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels,
                                           const torch::Tensor& class_weights) {
  XFER_CHECK(class_weights.dim() == 1 && class_weights.size(0) == logits.size(1), "class weights: expected ",
             logits.size(1), " (one per class), got ", class_weights.sizes());
  namespace F = torch::nn::functional;
  const torch::Tensor ce =
      F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().reduction(torch::kNone));
  const torch::Tensor w = class_weights.to(logits.device(), logits.scalar_type()).index_select(0, labels);
  return (w * ce).mean();
}

ImportanceWeightedCrossEntropy::ImportanceWeightedCrossEntropy(const std::vector<double>& class_weights)
    : weights_(torch::tensor(class_weights, torch::kFloat64).to(torch::kFloat32)) {
  XFER_CHECK(!class_weights.empty(), "importance-weighted loss: no class weights");
}

LossTerms ImportanceWeightedCrossEntropy::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  const torch::Tensor logits = ctx.model->forward(b.x, ctx.head);
  const torch::Tensor weighted = class_weighted_cross_entropy(logits, b.y, weights_);
  const torch::Tensor ce = torch::nn::functional::cross_entropy(logits.detach(), b.y);
  return LossTerms{weighted, {{"weighted_ce", weighted.detach()}, {"ce", ce}}}.with_train_accuracy(logits,
                                                                                                   b.y);
}

}  // namespace xfer
