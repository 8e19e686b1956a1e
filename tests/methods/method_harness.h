#pragma once
// A registered method run in-process, step by step, on a tiny task: the pieces run() and the Trainer
// assemble, without files, so tests can look at each step's loss and at the model in between.
#include <map>
#include <memory>
#include <string>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/rng.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/train/trainer.h"

namespace xfer::test {

/// A source model for `task`: cnn4:width=4 with a "source" head over `source_classes` classes, seeded.
inline Model harness_source_model(const Task& task, int64_t source_classes, uint64_t seed) {
  Arch arch;
  arch.backbone = "cnn4:width=4";
  arch.in_channels = task.train.channels();
  arch.height = task.train.height();
  arch.width = task.train.width();
  arch.input = compute_normalization(task.train.images);
  std::vector<std::string> names;
  for (int64_t c = 0; c < source_classes; ++c) names.push_back("s" + std::to_string(c));
  arch.heads = {{"source", names}};
  seed_global(seed);
  Model m(arch);
  freeze(*m);
  m->eval();
  return m;
}

class MethodHarness {
 public:
  /// `options` are method flags by field name ("alpha" -> "0.5"); `source` may be empty (no --init).
  MethodHarness(const std::string& method, const Task& task, Model source, uint64_t seed, int64_t total_steps,
                const std::map<std::string, std::string>& options = {}, int64_t batch_size = 8)
      : task_(task), total_(total_steps), rng_(make_generator(derive_seed(seed, "method"))) {
    Arch arch;
    arch.backbone = "cnn4:width=4";
    arch.in_channels = task.train.channels();
    arch.height = task.train.height();
    arch.width = task.train.width();
    arch.input = source ? source->arch().input : compute_normalization(task.train.images);
    arch.heads = {{"target", task.class_names()}};
    seed_global(derive_seed(seed, "init"));
    model_ = Model(arch);
    if (source) copy_state(*source, *model_, "backbone.");
    loader_.batch_size = batch_size;
    loader_.prefetch = false;
    batches_.add("target",
                 std::make_unique<BatchStream>(task.train, arch.input, loader_, derive_seed(seed, "target")));
    auto config = methods().get(method).make_config();
    Fields f;
    config->fields(f);
    for (const auto& [name, value] : options) f.set(name, value);
    method_ = config->build();
    SetupContext ctx{task_, nullptr, source, batches_, loader_, seed, torch::kCPU, "target", total_steps};
    method_->setup(model_, ctx);
    for (auto& g : method_->param_groups(model_, 1.0)) groups_.push_back(g);
    OptimizerOptions o;
    o.lr = 0.05;
    optimizer_ = make_optimizer(o, groups_);
    model_->train();
  }

  /// One training step, as the Trainer runs it; returns the loss terms.
  LossTerms step() {
    StepContext ctx{batches_, model_, step_, total_, rng_, head_};
    LossTerms t = training_step(*method_, *optimizer_, groups_, 0.05, ctx);
    ++step_;
    return t;
  }
  /// The total loss of each of `n` steps.
  std::vector<double> losses(int n) {
    std::vector<double> out;
    for (int i = 0; i < n; ++i) out.push_back(step().total.item<double>());
    return out;
  }

  Model& model() { return model_; }
  Method& method() { return *method_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

 private:
  const Task& task_;
  int64_t total_;
  at::Generator rng_;
  std::string head_ = "target";
  Model model_{nullptr};
  LoaderOptions loader_;
  Batches batches_;
  std::unique_ptr<Method> method_;
  std::vector<ParamGroup> groups_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  int64_t step_ = 0;
};

}  // namespace xfer::test
