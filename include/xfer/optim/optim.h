#pragma once
/// Optimizers over parameter groups with learning-rate multipliers.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/optim/optimizer.h>

#include "xfer/core/archive.h"

#include "xfer/core/fields.h"

namespace xfer {

class Fields;

/// A set of parameters trained together. Its learning rate is base_lr(step) * lr_mult; its weight decay
/// is the optimizer's unless overridden (L2-SP, for one, turns it off for the backbone).
struct ParamGroup {
  std::string name;
  std::vector<torch::Tensor> params;
  double lr_mult = 1.0;
  std::optional<double> weight_decay;
};

enum class OptimizerKind { sgd, adam };
XFER_ENUM_NAMES(OptimizerKind, "sgd", "adam")

struct OptimizerOptions {
  OptimizerKind optimizer = OptimizerKind::sgd;  // sgd | adam
  double lr = 0.01;
  double momentum = 0.9;  // sgd
  bool nesterov = false;  // sgd
  double weight_decay = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam

  void fields(Fields& f);
};

/// Builds the optimizer with one torch param group per ParamGroup, in order.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& opts,
                                                        const std::vector<ParamGroup>& groups);
/// Sets each group's learning rate to `base_lr * lr_mult`.
void set_learning_rates(torch::optim::Optimizer& opt, const std::vector<ParamGroup>& groups, double base_lr);

/// The per-parameter state of an SGD or Adam optimizer (momentum buffers; Adam's step and moments), by
/// position "GROUP.PARAM.name", for checkpoints. The learning rates are not stored: the schedule sets them.
Archive save_optimizer(const torch::optim::Optimizer& opt);
/// Restores what save_optimizer wrote into an optimizer built with the same parameter groups; BadInput
/// naming the first entry that does not fit.
void load_optimizer(torch::optim::Optimizer& opt, const Archive& in);

}  // namespace xfer
