#pragma once
/// The Method interface: what a transfer-learning method adds to the one training loop.
///
/// A method never owns the loop: the Trainer does (optimizer, schedule, checkpoints, evaluation,
/// logging). Most methods implement only `loss`. Hooks, in the order the Trainer calls them:
///
///   phases           once: the trainings the run is made of, in order (default: one of --iterations steps)
///   setup            once, before training: copy the source model, build teachers, add batch streams
///   param_groups     once: which parameters train, with which lr multipliers and weight decay
///   per step:        compute_gradients (default: loss, then backward, then after_backward)
///                    -> optimizer step -> after_step (EMA teachers, head re-initialisation)
///   save / load      method state, checkpointed with the run so --resume is exact
///
/// Loss weights and schedules must be pure functions of ctx.step (no hidden counters).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>

#include "xfer/core/archive.h"
#include "xfer/data/dataset.h"
#include "xfer/data/loader.h"
#include "xfer/methods/losses.h"
#include "xfer/models/model.h"
#include "xfer/optim/optim.h"
#include "xfer/optim/schedule.h"

namespace xfer {

/// What a method may use while setting up.
struct SetupContext {
  const Task& task;    // the task trained on (its train split feeds the "target" stream)
  const Task* source;  // --source data, or nullptr when none was given
  Model pretrained;    // the --init model, a frozen copy (empty holder when there is none)
  Batches& batches;    // the trainer has added "target", seeded by derive_seed(seed, "target") like
                       // add_stream's streams; methods may add streams ("source", ...)
  const LoaderOptions& loader;
  uint64_t seed;  // the run seed; derive stream seeds with derive_seed(seed, "name")
  torch::Device device;
  std::string head;     // the head the task's labels index ("target"; "source" when pre-training)
  int64_t total_steps;  // all phases together

  /// Adds the batch stream `name` over `data`, normalised as `model` expects, seeded by (seed, name).
  /// `batch_size` 0 means the run's --batch-size; `sampler` nullptr means seeded epoch shuffles. BadInput
  /// if the images' shape differs from the model's input.
  void add_stream(const std::string& name, const TensorDataset& data, const Model& model,
                  std::unique_ptr<Sampler> sampler = nullptr, int64_t batch_size = 0);
  /// The --source data, or BadInput telling `method` to pass --source.
  const Task& require_source(const std::string& method) const;
  /// The --init model, or BadInput telling `method` to pass --init.
  const Model& require_pretrained(const std::string& method) const;
};

/// One training of a run. A method made of several (Seq-Train: mid-tune on the auxiliary set, then fine-tune
/// on the target) declares them; at the first step of each phase the Trainer builds a fresh optimizer (zero
/// momentum) and restarts the learning-rate schedule over the phase's own steps, as a second training would.
struct Phase {
  std::string name;
  int64_t steps = 0;     // >= 1
  double lr_mult = 1.0;  // multiplies the run's learning rate in this phase
  bool validate = true;  // evaluate on the validation split (and keep the best model) during this phase
};

/// What a method sees at each step.
struct StepContext {
  Batches& batches;
  Model& model;
  int64_t step;         // 0-based, counted over all phases
  int64_t total_steps;  // all phases together
  at::Generator& rng;   // the method's own stream, checkpointed
  const std::string& head;
  int64_t phase = 0;       // index into the method's phases()
  int64_t phase_step = 0;  // 0-based step within the phase
};

/// A method's loss: the total to minimise and its named parts, which are logged.
struct LossTerms {
  torch::Tensor total;
  std::map<std::string, torch::Tensor> parts;
  /// Multiplies this step's learning rate (a phase's rate: GradMix's fine-tune baseline, Seq-Train); 1 for
  /// most methods. GradMix's adaptive eta scales its mixed gradient instead, not the rate.
  double lr_scale = 1.0;
  /// The coefficient of a part in the total where the logged part is not already its summand (SMILE's
  /// gamma_fe x fe); parts not listed enter with weight 1 or are diagnostics. Logged as "part_weights".
  std::map<std::string, double> weights = {};
  /// This step's target logits (detached) and labels where its inputs are not mixed: the trainer logs their
  /// accuracy as train_top1. Undefined for mixed batches, whose argmax has no single right class.
  torch::Tensor train_logits = {}, train_labels = {};

  LossTerms& with_train_accuracy(const torch::Tensor& logits, const torch::Tensor& labels) {
    train_logits = logits.detach();
    train_labels = labels;
    return *this;
  }
};

class Method {
 public:
  virtual ~Method() = default;
  /// The phases of a run of --iterations `iterations`, in order; depends on the options only. Default: one
  /// phase "train" of `iterations` steps.
  virtual std::vector<Phase> phases(int64_t iterations) const { return {{"train", iterations}}; }
  virtual void setup(Model& model, SetupContext& ctx) {}
  /// Default: the backbone, and the heads at --head-lr-mult.
  virtual std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult);
  virtual LossTerms loss(StepContext& ctx) = 0;
  /// Fills the parameters' gradients for this step and returns the loss. The default computes `loss`,
  /// runs backward, then `after_backward`. A method that needs several backward passes (GradMix: one
  /// per source) overrides this. The Trainer stops with a NumericalError if the loss is not finite.
  virtual LossTerms compute_gradients(StepContext& ctx);
  virtual void after_backward(StepContext& ctx) {}
  /// Data-parallel runs: whether compute_gradients already leaves gradients that are the same on every
  /// process (GradMix all-reduces each per-source gradient before it solves for the mixing weights). If
  /// false, the Trainer averages the gradients over the processes after compute_gradients.
  virtual bool synchronises_gradients() const { return false; }
  virtual void after_step(StepContext& ctx) {}
  virtual void save(Archive& out) const {}
  virtual void load(const Archive& in) {}
};

/// The steps of all `phases` together. BadInput for no phase or a phase of fewer than one step, naming it.
int64_t phase_total_steps(const std::vector<Phase>& phases);

/// Throws NumericalError naming the step and the non-finite parts if the total loss is NaN or infinite.
void check_finite(const LossTerms& terms, int64_t step);

}  // namespace xfer
