#include "xfer/optim/optim.h"

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"

namespace xfer {
namespace {

std::string state_key(const at::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

/// SGD exactly as torch::optim::SGD computes it, bit for bit, but on one flat buffer per parameter group: the
/// group's parameters and momentum buffers are views into two flat tensors, so a step is about five kernels
/// over the whole group rather than four per tensor (BN weights and biases are many small tensors). The
/// per-element arithmetic is torch's: d = g + wd p; b = m b + (1 - dampening) d (b = d at first); d = b
/// (or d + m b, Nesterov); p -= lr d. A group in which some parameter has no gradient this step (Seq-Train's
/// idle head) steps tensor by tensor, as torch does, skipping it. Views replaced from outside (a loaded
/// optimizer state, a parameter given new data) are gathered into the flat buffers again, values unchanged.
class FlatSGD : public torch::optim::SGD {
 public:
  FlatSGD(const std::vector<torch::optim::OptimizerParamGroup>& groups,
          const torch::optim::SGDOptions& defaults)
      : torch::optim::SGD(groups, defaults), flats_(param_groups().size()) {}

  torch::Tensor step(LossClosure closure = nullptr) override {
    XFER_CHECK(closure == nullptr, "SGD takes no closure");
    torch::NoGradGuard no_grad;
    for (size_t g = 0; g < param_groups().size(); ++g) {
      auto& group = param_groups()[g];
      const auto& o = static_cast<const torch::optim::SGDOptions&>(group.options());
      const std::vector<torch::Tensor>& params = group.params();
      bool all_grads = !params.empty();
      for (const auto& p : params) all_grads = all_grads && p.grad().defined();
      if (all_grads && flatten_params(g))
        step_flat(g, o);
      else
        step_tensors(params, o);
    }
    return {};
  }

 private:
  struct Flat {
    // The gradients are gathered into `grads`, allocated once: a fresh buffer of a large model's size each
    // step would be mapped and faulted in anew (above glibc's mmap threshold), which cost resnet18 3x.
    torch::Tensor params, grads, momentum;
    std::vector<int64_t> offsets;  // of each parameter in the flat buffers
  };

  static bool is_view_of(const torch::Tensor& t, const torch::Tensor& flat, int64_t offset) {
    return t.defined() && flat.defined() && t.is_contiguous() &&
           t.data_ptr() ==
               static_cast<char*>(flat.data_ptr()) + offset * static_cast<int64_t>(flat.element_size());
  }

  /// Makes the group's parameters views of one flat buffer (values unchanged); false where they cannot share
  /// one (different dtypes or devices).
  bool flatten_params(size_t g) {
    const std::vector<torch::Tensor>& params = param_groups()[g].params();
    Flat& f = flats_[g];
    bool views = static_cast<int64_t>(f.offsets.size()) == static_cast<int64_t>(params.size());
    for (size_t i = 0; views && i < params.size(); ++i) views = is_view_of(params[i], f.params, f.offsets[i]);
    if (views) return true;
    for (const auto& p : params)
      if (p.scalar_type() != params[0].scalar_type() || p.device() != params[0].device()) return false;
    std::vector<torch::Tensor> parts;
    f.offsets.clear();
    int64_t at = 0;
    for (const auto& p : params) {
      parts.push_back(p.detach().reshape(-1));
      f.offsets.push_back(at);
      at += p.numel();
    }
    f.params = torch::cat(parts);
    f.grads = torch::empty_like(f.params);
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor p = params[i];
      p.set_data(f.params.slice(0, f.offsets[i], f.offsets[i] + p.numel()).view(p.sizes()));
    }
    f.momentum = torch::Tensor();
    return true;
  }

  torch::optim::SGDParamState* momentum_state(const torch::Tensor& p) {
    const auto it = state().find(state_key(p));
    return it == state().end() ? nullptr : static_cast<torch::optim::SGDParamState*>(it->second.get());
  }

  void step_flat(size_t g, const torch::optim::SGDOptions& o) {
    const std::vector<torch::Tensor>& params = param_groups()[g].params();
    Flat& f = flats_[g];
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) grads.push_back(p.grad().reshape(-1));
    torch::Tensor d = torch::cat_out(f.grads, grads);
    // In place where torch goes out of place (it must not change p.grad; f.grads is a copy): the same
    // kernels, so the same values, without a new buffer per step.
    if (o.weight_decay() != 0) d.add_(f.params, o.weight_decay());
    if (o.momentum() != 0) {
      size_t with_state = 0;
      bool views = true;
      for (size_t i = 0; i < params.size(); ++i) {
        const auto* s = momentum_state(params[i]);
        with_state += s != nullptr;
        views = views && s && is_view_of(s->momentum_buffer(), f.momentum, f.offsets[i]);
      }
      if (with_state != 0 && with_state != params.size()) return step_tensors(params, o);  // torch's own path
      if (with_state == 0) {
        f.momentum = torch::clone(d).detach();
      } else {
        if (!views) {  // gather the buffers (a loaded state) into one
          std::vector<torch::Tensor> parts;
          for (const auto& p : params) parts.push_back(momentum_state(p)->momentum_buffer().reshape(-1));
          f.momentum = torch::cat(parts);
        }
        f.momentum.mul_(o.momentum()).add_(d, 1 - o.dampening());
      }
      if (with_state == 0 || !views)
        for (size_t i = 0; i < params.size(); ++i) {
          auto s = std::make_unique<torch::optim::SGDParamState>();
          s->momentum_buffer(
              f.momentum.slice(0, f.offsets[i], f.offsets[i] + params[i].numel()).view(params[i].sizes()));
          state()[state_key(params[i])] = std::move(s);
        }
      if (o.nesterov())
        d.add_(f.momentum, o.momentum());
      else
        d = f.momentum;
    }
    f.params.add_(d, -1 * o.lr());
  }

  /// torch::optim::SGD's step for one group, tensor by tensor.
  void step_tensors(const std::vector<torch::Tensor>& params, const torch::optim::SGDOptions& o) {
    for (const auto& p : params) {
      if (!p.grad().defined()) continue;
      torch::Tensor d = p.grad().data();
      if (o.weight_decay() != 0) d = d.add(p.data(), o.weight_decay());
      if (o.momentum() != 0) {
        torch::Tensor buf;
        if (auto* s = momentum_state(p)) {
          buf = s->momentum_buffer();
          buf.mul_(o.momentum()).add_(d, 1 - o.dampening());
        } else {
          buf = torch::clone(d).detach();
          auto fresh = std::make_unique<torch::optim::SGDParamState>();
          fresh->momentum_buffer(buf);
          state()[state_key(p)] = std::move(fresh);
        }
        d = o.nesterov() ? d.add(buf, o.momentum()) : buf;
      }
      p.data().add_(d, -1 * o.lr());
    }
  }

  std::vector<Flat> flats_;
};

}  // namespace

void OptimizerOptions::fields(Fields& f) {
  f.add("optimizer", optimizer, "sgd (with momentum) or adam");
  // Bounded so that lr times its multipliers stays far inside float32 (1e308 overflowed inside the
  // optimizer).
  f.add("lr", lr, "base learning rate (at most 1e10)").positive().at_most(1e10);
  f.add("momentum", momentum, "sgd momentum").in_range(0, 0.999999);
  f.add("nesterov", nesterov, "sgd: Nesterov momentum");
  f.add("weight_decay", weight_decay, "L2 weight decay (added to the gradient, as torch.optim)")
      .non_negative();
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
    if (opts.optimizer == OptimizerKind::sgd) {
      torch_groups.emplace_back(
          g.params, std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(opts.lr * g.lr_mult)
                                                                   .momentum(opts.momentum)
                                                                   .nesterov(opts.nesterov)
                                                                   .weight_decay(wd)));
    } else {
      torch_groups.emplace_back(
          g.params, std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(opts.lr * g.lr_mult)
                                                                    .betas({opts.beta1, opts.beta2})
                                                                    .eps(opts.eps)
                                                                    .weight_decay(wd)));
    }
  }
  if (opts.optimizer == OptimizerKind::sgd)
    return std::make_unique<FlatSGD>(torch_groups, torch::optim::SGDOptions(opts.lr));
  return std::make_unique<torch::optim::Adam>(torch_groups, torch::optim::AdamOptions(opts.lr));
}

void set_learning_rates(torch::optim::Optimizer& opt, const std::vector<ParamGroup>& groups, double base_lr) {
  auto& torch_groups = opt.param_groups();
  for (size_t i = 0; i < torch_groups.size() && i < groups.size(); ++i)
    torch_groups[i].options().set_lr(base_lr * groups[i].lr_mult);
}

namespace {
std::string slot(size_t group, size_t param) {
  return cat(group, ".", param, ".");
}
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
        if (in.try_read(at + "max_exp_avg_sq", a))
          state->max_exp_avg_sq(like(a, params[i], at + "max_exp_avg_sq"));
        opt.state()[state_key(params[i])] = std::move(state);
      }
    }
  }
  XFER_CHECK(!in.has(cat("group", groups.size(), ".size")),
             "the optimizer state has more parameter groups than ", groups.size());
}

}  // namespace xfer
