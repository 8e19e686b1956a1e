#include "xfer/methods/finetune.h"

#include <torch/torch.h>

namespace xfer {

LossTerms CrossEntropyMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  torch::Tensor ce = cross_entropy(ctx.model->forward(b.x, ctx.head), b.y);
  return {ce, {{"ce", ce.detach()}}};
}

}  // namespace xfer
