#include "xfer/train/optim.h"

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"

namespace xfer {

void OptimizerOptions::fields(Fields& f) {
  f.add("optimizer", optimizer, "sgd (with momentum) or adam").choices({"sgd", "adam"});
  f.add("lr", lr, "base learning rate").positive();
  f.add("momentum", momentum, "sgd momentum").in_range(0, 0.999999);
  f.add("nesterov", nesterov, "sgd: Nesterov momentum");
  f.add("weight_decay", weight_decay, "L2 weight decay (added to the gradient, as torch.optim)").non_negative();
  f.add("beta1", beta1, "adam: first-moment decay").in_open_range(0, 1);
  f.add("beta2", beta2, "adam: second-moment decay").in_open_range(0, 1);
  f.add("eps", eps, "adam: denominator epsilon").positive();
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& opts,
                                                        const std::vector<ParamGroup>& groups) {
  check_options(const_cast<OptimizerOptions&>(opts));
  XFER_CHECK(!groups.empty(), "no parameters to optimise");
  XFER_CHECK(!(opts.nesterov && opts.momentum == 0), "--nesterov needs --momentum > 0");
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  for (const auto& g : groups) {
    XFER_CHECK(g.lr_mult >= 0, "parameter group '", g.name, "' has a negative lr multiplier ", g.lr_mult);
    const double wd = g.weight_decay.value_or(opts.weight_decay);
    if (opts.optimizer == "sgd") {
      torch_groups.emplace_back(g.params, std::make_unique<torch::optim::SGDOptions>(
                                              torch::optim::SGDOptions(opts.lr * g.lr_mult)
                                                  .momentum(opts.momentum)
                                                  .nesterov(opts.nesterov)
                                                  .weight_decay(wd)));
    } else {
      torch_groups.emplace_back(g.params, std::make_unique<torch::optim::AdamOptions>(
                                              torch::optim::AdamOptions(opts.lr * g.lr_mult)
                                                  .betas({opts.beta1, opts.beta2})
                                                  .eps(opts.eps)
                                                  .weight_decay(wd)));
    }
  }
  if (opts.optimizer == "sgd")
    return std::make_unique<torch::optim::SGD>(torch_groups, torch::optim::SGDOptions(opts.lr));
  return std::make_unique<torch::optim::Adam>(torch_groups, torch::optim::AdamOptions(opts.lr));
}

void set_learning_rates(torch::optim::Optimizer& opt, const std::vector<ParamGroup>& groups, double base_lr) {
  auto& torch_groups = opt.param_groups();
  for (size_t i = 0; i < torch_groups.size() && i < groups.size(); ++i)
    torch_groups[i].options().set_lr(base_lr * groups[i].lr_mult);
}

}  // namespace xfer
