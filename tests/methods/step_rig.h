#pragma once
// Independent checks of one training step: a registered method runs step k in a StepRig, and a twin rig
// built alike and advanced to step k hands the test what that step saw (the model before it, the batches
// it drew, its generator), so the test can recompute the loss with its own code and compare the loss,
// every gradient and every updated parameter. Unlike MethodHarness it passes --source data to the method
// (Co-Train) and exposes its batches and generator. A method of several phases (GradMix's finetune) steps
// through them as the Trainer does.
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/rng.h"
#include "xfer/methods/registry.h"
#include "xfer/optim/optim.h"
#include "xfer/train/trainer.h"

namespace xfer::test {

struct RigSetup {
  RigSetup(std::string method_, const Task& task_, uint64_t seed_, int64_t total_steps_,
           std::map<std::string, std::string> options_ = {}, Model pretrained_ = nullptr,
           const Task* source_ = nullptr)
      : method(std::move(method_)),
        task(&task_),
        source(source_),
        pretrained(std::move(pretrained_)),
        seed(seed_),
        total_steps(total_steps_),
        options(std::move(options_)) {}
  std::string method;
  const Task* task;
  const Task* source;  // --source, or nullptr
  Model pretrained;    // --init, or empty
  uint64_t seed;
  int64_t total_steps;
  std::map<std::string, std::string> options;  // method flags by field name
  int64_t batch_size = 8;
  double lr = 0.05;
  // The optimizer's weight decay, for groups that do not set their own: larger than the default 1e-4, so
  // that an update made without it differs by more than float rounding.
  double weight_decay = 0.01;
};

class StepRig {
 public:
  explicit StepRig(const RigSetup& s) : setup_(s), rng_(make_generator(derive_seed(s.seed, "method"))) {
    const Task& task = *s.task;
    Arch arch;
    arch.backbone = s.pretrained ? s.pretrained->arch().backbone : "cnn4:width=4";
    arch.in_channels = task.train.channels();
    arch.height = task.train.height();
    arch.width = task.train.width();
    arch.input = s.pretrained ? s.pretrained->arch().input : compute_normalization(task.train.images);
    arch.heads = {{"target", task.class_names()}};
    seed_global(derive_seed(s.seed, "init"));
    model_ = Model(arch);
    if (s.pretrained) copy_state(*s.pretrained, *model_, "backbone.");
    loader_.batch_size = s.batch_size;
    loader_.prefetch = false;
    batches_.add("target", std::make_unique<BatchStream>(task.train, arch.input, loader_,
                                                         derive_seed(s.seed, "target")));
    auto config = methods().get(s.method).make_config();
    Fields f;
    config->fields(f);
    for (const auto& [name, value] : s.options) f.set(name, value);
    method_ = config->build();
    SetupContext ctx{task,   s.source,    s.pretrained, batches_,     loader_,
                     s.seed, torch::kCPU, "target",     s.total_steps};
    method_->setup(model_, ctx);
    phases_ = method_->phases(s.total_steps);
    groups_ = trainable_param_groups(*method_, model_, 1.0);
    optimizer_ = make_optimizer(optimizer_options(), groups_);
    model_->train();
  }
  /// One training step, as the Trainer runs it: in the method's phase for this step, at the run's
  /// learning rate times the phase's multiplier (no schedule), with a fresh optimizer from each phase's
  /// first step on.
  LossTerms step() {
    const size_t phase = phase_of(step_);
    const int64_t local = step_ - phase_start(phase);
    StepContext ctx{batches_, model_, step_, setup_.total_steps, rng_, head_, static_cast<int64_t>(phase),
                    local};
    LossTerms t = training_step(*method_, *optimizer_, groups_, setup_.lr * phases_[phase].lr_mult, ctx);
    ++step_;
    if (phase_of(step_) != phase) optimizer_ = make_optimizer(optimizer_options(), groups_);
    return t;
  }
  /// The learning-rate multiplier of the phase of the next step.
  double lr_mult() const { return phases_[phase_of(step_)].lr_mult; }
  /// The phase of step `step` (the last phase past its end).
  size_t phase_of(int64_t step) const {
    size_t i = 0;
    while (i + 1 < phases_.size() && step >= phase_start(i + 1)) ++i;
    return i;
  }
  int64_t phase_start(size_t phase) const {
    int64_t start = 0;
    for (size_t i = 0; i < phase; ++i) start += phases_[i].steps;
    return start;
  }
  void advance(int steps) {
    for (int i = 0; i < steps; ++i) step();
  }
  Model& model() { return model_; }
  Method& method() { return *method_; }
  Batches& batches() { return batches_; }
  at::Generator& rng() { return rng_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }
  /// The SGD momentum buffer of `param` (undefined before its first step).
  torch::Tensor momentum_buffer(const torch::Tensor& param) const {
    const auto it = optimizer_->state().find(c10::guts::to_string(param.unsafeGetTensorImpl()));
    if (it == optimizer_->state().end()) return {};
    return dynamic_cast<const torch::optim::SGDParamState&>(*it->second).momentum_buffer();
  }

 private:
  RigSetup setup_;
  at::Generator rng_;
  Model model_{nullptr};
  LoaderOptions loader_;
  Batches batches_;
  std::unique_ptr<Method> method_;
  std::vector<ParamGroup> groups_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<Phase> phases_;
  std::string head_ = "target";
  int64_t step_ = 0;

  OptimizerOptions optimizer_options() const {
    OptimizerOptions o;
    o.lr = setup_.lr;
    o.weight_decay = setup_.weight_decay;
    return o;
  }
};

/// What step k of a rig saw, from a twin advanced to step k: the model before the step (in train mode,
/// its gradients cleared), and the twin itself, whose batches and generator are next to be drawn.
struct StepView {
  std::unique_ptr<StepRig> twin;
  Model& model() { return twin->model(); }
  Batch next(const std::string& stream = "target") { return twin->batches().next(stream); }
  at::Generator& rng() { return twin->rng(); }
};
inline StepView view_step(const RigSetup& s, int64_t k) {
  StepView v{std::make_unique<StepRig>(s)};
  v.twin->advance(static_cast<int>(k));
  for (auto& p : v.model()->parameters())
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
  return v;
}

/// Runs step k of a fresh rig for `s` and compares it with `independent`, which recomputes the loss from
/// the view of step k with the test's own code: the total loss (relative `rtol`), every parameter's
/// gradient, and every parameter after the optimizer's step (those `check_update` accepts, when given),
/// recomputed as torch.optim.SGD with the phase's and the group's learning-rate multipliers and the weight
/// decay `decay_of` gives for each parameter (without it: the group's, which only checks that the optimizer
/// applies it).
/// Returns the rig after the step and its loss terms.
struct CheckedStep {
  std::unique_ptr<StepRig> rig;
  LossTerms terms;
};
inline CheckedStep expect_step_matches(const RigSetup& s, int64_t k,
                                       const std::function<torch::Tensor(StepView&)>& independent,
                                       const std::function<bool(const std::string&)>& check_update = nullptr,
                                       double rtol = 1e-5,
                                       const std::function<double(const std::string&)>& decay_of = nullptr) {
  StepView view = view_step(s, k);
  const torch::Tensor expected = independent(view);
  // The twin's parameters and what the optimizer will do with them, by name.
  std::map<std::string, torch::Tensor> before, grad, buffer;
  std::map<std::string, std::pair<double, double>> lr_wd;  // per parameter: learning rate, weight decay
  const auto named = view.model()->named_parameters();
  std::vector<torch::Tensor> params;
  std::vector<std::string> names;
  for (const auto& p : named)
    if (p.value().requires_grad()) params.push_back(p.value()), names.push_back(p.key());
  const auto grads = torch::autograd::grad({expected}, params, {}, false, false, /*allow_unused=*/true);
  for (size_t i = 0; i < params.size(); ++i) {
    before[names[i]] = params[i].detach().clone();
    grad[names[i]] = grads[i].defined() ? grads[i] : torch::zeros_like(params[i]);
    buffer[names[i]] = view.twin->momentum_buffer(params[i]);
  }
  const OptimizerOptions defaults;
  for (const auto& g : view.twin->groups())
    for (const auto& p : g.params)
      for (size_t i = 0; i < params.size(); ++i)
        if (p.is_same(params[i]))
          lr_wd[names[i]] = {s.lr * view.twin->lr_mult() * g.lr_mult,
                             decay_of ? decay_of(names[i]) : g.weight_decay.value_or(s.weight_decay)};

  CheckedStep out{std::make_unique<StepRig>(s), {}};
  out.rig->advance(static_cast<int>(k));
  out.terms = out.rig->step();
  const double got = out.terms.total.item<double>(), want = expected.item<double>();
  EXPECT_NEAR(got, want, rtol * std::abs(want) + 1e-7) << s.method << " step " << k << ": the loss";
  for (const auto& p : out.rig->model()->named_parameters()) {
    if (!grad.count(p.key())) continue;
    const torch::Tensor g = p.value().grad().defined() ? p.value().grad() : torch::zeros_like(p.value());
    const double scale = grad[p.key()].abs().max().item<double>();
    EXPECT_LE((g - grad[p.key()]).abs().max().item<double>(), 1e-4 * scale + 1e-6)
        << s.method << " step " << k << ": the gradient of " << p.key();
    if (check_update && !check_update(p.key())) continue;
    // torch.optim.SGD: d = g + wd w; buf = momentum buf + d (buf = d at first); w -= lr buf.
    const auto [lr, wd] = lr_wd.at(p.key());
    const torch::Tensor d = grad[p.key()] + wd * before[p.key()];
    const torch::Tensor buf = buffer[p.key()].defined() ? defaults.momentum * buffer[p.key()] + d : d;
    const torch::Tensor after = before[p.key()] - lr * buf;
    EXPECT_LE((p.value().detach() - after).abs().max().item<double>(),
              1e-4 * lr * buf.abs().max().item<double>() + 1e-7)
        << s.method << " step " << k << ": the update of " << p.key() << " (lr " << lr << ", weight decay "
        << wd << ")";
  }
  return out;
}

/// Plain-torch cross-entropy, mean over the batch: -mean_i log softmax(z_i)[y_i].
inline torch::Tensor plain_ce(const torch::Tensor& logits, const torch::Tensor& labels) {
  return -torch::log_softmax(logits, 1).gather(1, labels.unsqueeze(1)).mean();
}

/// Replays Beta(a, b) as xfer draws it from a torch generator: two standard gammas and the uniform of the
/// (unused) underflow fallback, in that order.
inline double replay_beta(at::Generator& gen, double a, double b) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x = at::_standard_gamma(torch::full({1}, a, f64), gen);
  const torch::Tensor y = at::_standard_gamma(torch::full({1}, b, f64), gen);
  torch::rand({1}, gen, f64);
  return (x / (x + y)).item<double>();
}

}  // namespace xfer::test
