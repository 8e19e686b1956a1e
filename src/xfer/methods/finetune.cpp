#include "xfer/methods/finetune.h"

#include <torch/torch.h>

namespace xfer {

LossTerms CrossEntropyMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  const torch::Tensor logits = ctx.model->forward(b.x, ctx.head);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  return LossTerms{ce, {{"ce", ce.detach()}}}.with_train_accuracy(logits, b.y);
}

void register_finetune_methods(MethodRegistry& r) {
  MethodInfo scratch;
  scratch.name = "scratch";
  scratch.summary = "train on the target only, from random initialisation";
  scratch.allows_init = false;
  scratch.pretrains = true;  // `xfer pretrain`'s default: plain pre-training on the source labels
  scratch.core = true;
  scratch.make_config = [] { return std::make_unique<OptionsConfig<CrossEntropyMethod>>(); };
  r.add(scratch);

  MethodInfo l2;
  l2.name = "l2";
  l2.summary = "fine-tune the pretrained model with a new target head and weight decay";
  l2.needs_init = true;
  l2.core = true;
  l2.make_config = [] { return std::make_unique<OptionsConfig<CrossEntropyMethod>>(); };
  r.add(l2);
}

}  // namespace xfer
