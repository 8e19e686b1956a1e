#pragma once
/// Plain training on the target labels: the baselines every paper compares against.
///
///   scratch   random init, target head only:           L = CE(h_t(g(x)), y)
///   l2        fine-tune the pretrained backbone with a new target head and weight decay
///             (the "L2" / "fine-tuning" baseline of XMixup Table 1 and SMILE Table 2):
///                                                      L = CE(h_t(g(x)), y), decay via --weight-decay
/// Both are the same loss; they differ in the initialisation, which the registry records.
#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"

namespace xfer {

class CrossEntropyMethod : public Method {
 public:
  struct Options {
    void fields(Fields&) {}
  };
  explicit CrossEntropyMethod(const Options& = {}) {}
  LossTerms loss(StepContext& ctx) override;
};

/// Registers scratch and l2.
void register_finetune_methods(MethodRegistry& registry);

}  // namespace xfer
