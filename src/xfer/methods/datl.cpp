#include "xfer/methods/datl.h"

#include <optional>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/methods/finetune.h"

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

void DatlConfig::check() {
  MethodConfig::check();
  options.check();
}

nlohmann::json DatlConfig::prepare_data(DataContext& ctx) {
  check();
  std::optional<ImportanceWeights> computed;
  if (!options.weights_from.empty()) {
    auto [model, file] = ctx.load_model(options.weights_from);
    computed = importance_weights_for_target(model, "", ctx.task.train, ctx.spec, options.weights_target,
                                             options.weights_temperature, ctx.seed);
    computed->provenance["model"] = file;
  }
  SampledSource sampled = sample_source(ctx.task.train, options, ctx.seed, computed ? &*computed : nullptr);
  ctx.task.train = std::move(sampled.data);
  loss_weights_ = std::move(sampled.loss_weights);
  return sampled.summary;
}

std::unique_ptr<Method> DatlConfig::build() {
  check();
  XFER_CHECK(!options.loss_weights || !loss_weights_.empty(),
             "internal: method datl with --loss-weights is built after prepare_data");
  if (options.loss_weights) return std::make_unique<ImportanceWeightedCrossEntropy>(loss_weights_);
  return std::make_unique<CrossEntropyMethod>();
}

void register_datl_methods(MethodRegistry& r) {
  MethodInfo datl;
  datl.name = "datl";
  datl.summary =
      "pre-train on the source resampled (or its loss weighted) by importance weights P_t(y) / P_s(y) "
      "for a target (xfer pretrain)";
  datl.paper = "Ngiam et al., Domain Adaptive Transfer Learning with Specialist Models, 2018";
  datl.allows_init = false;
  datl.finetunes = false;
  datl.pretrains = true;
  datl.make_config = [] { return std::make_unique<DatlConfig>(); };
  r.add(datl);
}

}  // namespace xfer
