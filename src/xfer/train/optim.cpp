#include "xfer/train/optim.h"

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"

namespace xfer {

void OptimizerOptions::fields(Fields& f) {
  f.add("optimizer", optimizer, "sgd (with momentum) or adam").choices({"sgd", "adam"});
  // Bounded so that lr times its multipliers stays far inside float32 (1e308 overflowed inside the optimizer).
  f.add("lr", lr, "base learning rate (at most 1e10)").positive().at_most(1e10);
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

namespace {
std::string state_key(const at::Tensor& param) { return c10::guts::to_string(param.unsafeGetTensorImpl()); }

std::string slot(size_t group, size_t param) { return cat(group, ".", param, "."); }
}  // namespace

Archive save_optimizer(const torch::optim::Optimizer& opt) {
  Archive out;
  out.write_text("kind", dynamic_cast<const torch::optim::Adam*>(&opt) ? "adam" : "sgd");
  const auto& groups = opt.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& params = groups[g].params();
    out.write(cat("group", g, ".size"), torch::tensor(static_cast<int64_t>(params.size())));
    for (size_t i = 0; i < params.size(); ++i) {
      const auto it = opt.state().find(state_key(params[i]));
      if (it == opt.state().end()) continue;  // no step has touched it yet
      const std::string at = slot(g, i);
      if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(it->second.get())) {
        if (sgd->momentum_buffer().defined()) out.write(at + "momentum_buffer", sgd->momentum_buffer());
      } else if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(it->second.get())) {
        out.write(at + "step", torch::tensor(adam->step()));
        out.write(at + "exp_avg", adam->exp_avg());
        out.write(at + "exp_avg_sq", adam->exp_avg_sq());
        if (adam->max_exp_avg_sq().defined()) out.write(at + "max_exp_avg_sq", adam->max_exp_avg_sq());
      } else {
        throw std::logic_error("save_optimizer: an optimizer other than SGD or Adam");
      }
    }
  }
  return out;
}

void load_optimizer(torch::optim::Optimizer& opt, const Archive& in) {
  const bool adam = dynamic_cast<torch::optim::Adam*>(&opt) != nullptr;
  const std::string kind = in.has("kind") ? in.read_text("kind") : "";
  XFER_CHECK(kind == (adam ? "adam" : "sgd"), "the checkpoint's optimizer is '", kind, "', this run's is ",
             adam ? "adam" : "sgd");
  auto& groups = opt.param_groups();
  // A stored tensor must have its parameter's shape: anything else would fail later, inside a step.
  auto like = [](const torch::Tensor& stored, const torch::Tensor& param, const std::string& key) {
    XFER_CHECK(stored.sizes() == param.sizes(), "the optimizer state '", key, "' does not fit its parameter");
    return stored.to(param.options()).clone();
  };
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& params = groups[g].params();
    torch::Tensor size;
    XFER_CHECK(in.try_read(cat("group", g, ".size"), size) && size.numel() == 1 &&
                   size.item<int64_t>() == static_cast<int64_t>(params.size()),
               "the optimizer state does not match the parameter groups (group ", g, ")");
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string at = slot(g, i);
      torch::Tensor a, b, c;
      if (!adam && in.try_read(at + "momentum_buffer", a)) {
        auto state = std::make_unique<torch::optim::SGDParamState>();
        state->momentum_buffer(like(a, params[i], at + "momentum_buffer"));
        opt.state()[state_key(params[i])] = std::move(state);
      } else if (adam && in.try_read(at + "step", a)) {
        XFER_CHECK(a.numel() == 1 && in.try_read(at + "exp_avg", b) && in.try_read(at + "exp_avg_sq", c),
                   "the optimizer state '", at, "' is incomplete");
        auto state = std::make_unique<torch::optim::AdamParamState>();
        state->step(a.to(torch::kInt64).item<int64_t>());
        state->exp_avg(like(b, params[i], at + "exp_avg"));
        state->exp_avg_sq(like(c, params[i], at + "exp_avg_sq"));
        if (in.try_read(at + "max_exp_avg_sq", a)) state->max_exp_avg_sq(like(a, params[i], at + "max_exp_avg_sq"));
        opt.state()[state_key(params[i])] = std::move(state);
      }
    }
  }
  XFER_CHECK(!in.has(cat("group", groups.size(), ".size")), "the optimizer state has more parameter groups than ",
             groups.size());
}

}  // namespace xfer
