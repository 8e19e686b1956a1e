#pragma once
/// The Trainer: the one training loop every method runs in.
///
/// A run is the method's phases (Method::phases; most methods have one of --iterations steps) laid end to
/// end; each phase starts with a fresh optimizer state and runs the schedule over its own steps.
/// Per step: lr from the schedule (a pure function of the step) -> method.compute_gradients ->
/// optimizer step -> method.after_step. Every `log_every` steps a line goes to metrics.jsonl and the
/// progress bar; every `eval_every` steps the validation split is evaluated and the best model is kept
/// as checkpoints/best.pt; every `checkpoint_every` steps checkpoints/last.pt holds everything needed to
/// continue bit for bit: model, optimizer, method state, the method's RNG, batch-stream positions and
/// the best-so-far record. At the end the selected model (best on validation, or last) is tested.
///
/// SIGINT/SIGTERM (with the command line's handlers installed) end the step in progress, write last.pt
/// and throw `Interrupted`; in a data-parallel run every process does so at the same step, whichever
/// process received the signal. A non-finite loss or gradient stops the run naming the step, or with
/// `on_nan = "skip"` drops that batch's update (counted in result.json, at most 25 in a row).
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/data/dataset.h"
#include "xfer/data/loader.h"
#include "xfer/methods/method.h"
#include "xfer/metrics/accuracy.h"
#include "xfer/models/model.h"
#include "xfer/optim/optim.h"
#include "xfer/optim/schedule.h"

#include "xfer/core/fields.h"

namespace xfer {

class Fields;

enum class ModelSelection { automatic, best, last };
XFER_ENUM_NAMES(ModelSelection, "auto", "best", "last")

enum class OnNan { stop, skip };
XFER_ENUM_NAMES(OnNan, "stop", "skip")

enum class BnStats { batch, sync, frozen };
XFER_ENUM_NAMES(BnStats, "batch", "sync", "frozen")

struct TrainerOptions {
  int64_t iterations = 300;
  double epochs = 0;  // > 0: replaces iterations (epochs_to_iterations), as timm's and torchvision's --epochs
  OptimizerOptions optim;
  ScheduleOptions schedule;
  double head_lr_mult = 1.0;     // learning-rate multiplier of the heads
  int64_t eval_every = 0;        // 0: iterations / 10
  int64_t checkpoint_every = 0;  // 0: the same as eval_every
  int64_t log_every = 10;
  int64_t eval_batch = 500;
  ModelSelection select =
      ModelSelection::automatic;      // the model tested at the end: best (on validation), last, auto
  int64_t stop_after = 0;             // stop after this many steps in this session (0: run to the end)
  OnNan on_nan = OnNan::stop;         // a non-finite loss or gradient: stop (the default), or skip the batch
  BnStats bn_stats = BnStats::batch;  // batch norm in training: batch (statistics of each process's batch),
                                      // sync (of the global batch), frozen (running statistics, as in eval
                                      // mode); sync and frozen match one process at any world size
  /// Called after each validation with the step and its top-1 (not an option: a search's pruner). An
  /// exception it throws ends the run there.
  std::function<void(int64_t step, double val_top1)> on_validation;

  void fields(Fields& f);
};

/// The steps of `epochs` passes over `examples` training examples in batches of `batch_size` (the last pass
/// rounded up to a whole batch): what --epochs means. BadInput if it comes to more than 10^9 steps.
int64_t epochs_to_iterations(double epochs, int64_t examples, int64_t batch_size);

/// The method's parameter groups with frozen parameters dropped, and empty groups with them.
std::vector<ParamGroup> trainable_param_groups(Method& method, Model& model, double head_lr_mult);

/// What a data-parallel step agreed on, and what its communication cost.
struct StepReport {
  double allreduce_seconds = 0;  // the step's all-reduces, waiting included
  double wait_seconds = 0;       // the part spent waiting for the slowest process
  int stop_signal = 0;  // SIGINT/SIGTERM if any process had received one before this step's agreement
};

/// One training step, exactly as the Trainer runs it: set each group's learning rate from `lr`, zero the
/// gradients, let the method compute them (drawing its own batches), check that the loss is finite, in
/// a data-parallel run average the gradients over the processes (unless the method synchronised them
/// itself), check that the gradients are finite (NumericalError naming the step and the parameter, before
/// any update), scale the learning rates by the loss terms' `lr_scale`, step the optimizer, then
/// `after_step`. Data-parallel: one tiny all-reduce before the gradients' makes every process take the same
/// decisions at the same step: a non-finite loss on any process is a NumericalError on all of them, and a
/// stop signal received by any process is reported in `report` on all of them.
LossTerms training_step(Method& method, torch::optim::Optimizer& optimizer,
                        const std::vector<ParamGroup>& groups, double lr, StepContext& ctx,
                        StepReport* report = nullptr);

/// NumericalError naming the first parameter of `model` whose gradient holds a NaN or an infinity.
void check_finite_gradients(Model& model, int64_t step);

/// Evaluates `head` of `model` on a dataset (eval mode, no grad), in batches. In a data-parallel run each
/// process evaluates a contiguous share and the confusion counts are summed over the processes. A
/// `progress_label` shows the images done (rank 0) as `xfer eval` and the final test do.
Evaluation evaluate(Model& model, const TensorDataset& data, const std::string& head,
                    int64_t batch_size = 500, const std::string& progress_label = "");

/// What Trainer::fit did: a finished run's training record and test, or the step at which --stop-after
/// stopped this session. to_json() is the training part of result.json.
struct FitResult {
  /// Set when --stop-after ended the session early: the step last.pt holds (continue with --resume).
  /// Nothing else is set then: the run is neither finished nor tested.
  std::optional<int64_t> stopped_at;

  int64_t iterations = 0;               // the steps of all phases
  bool selected_best = false;           // the model tested: best on validation, or the last
  int64_t selected_step = 0;            // the step of the model tested
  std::optional<double> best_val_top1;  // the best validation and its step; unset if none ran
  std::optional<int64_t> best_val_step;
  double train_seconds = 0;  // this session's steps
  double step_ms = 0, step_ms_median = 0;
  double samples_per_s = 0;
  int64_t skipped_steps = 0;  // batches dropped by --on-nan skip, over the whole run
  int world_size = 1;
  std::vector<Phase> phases;  // the method's phases when it has more than one; else empty
  std::optional<double> allreduce_share, allreduce_wait_share;  // data-parallel runs
  std::optional<Evaluation> test;  // the selected model on the test split, if the task has one

  bool stopped() const { return stopped_at.has_value(); }
  /// {"stopped_at": step} for a stopped session; else "iterations", "selected" ("best" or "last"),
  /// "selected_step", "best_val_top1" and "best_val_step" (null without validation), "train_seconds",
  /// "step_ms", "step_ms_median", "skipped_steps", "samples_per_s", "world_size", "phases" ({"name",
  /// "steps"} each) with several, "allreduce_share" and "allreduce_wait_share" when data-parallel, and
  /// "test_top1", "test_mean_class" and "test" (Evaluation::to_json) with a test split.
  nlohmann::json to_json() const;
};
/// nlohmann::json's conversion: `nlohmann::json j = result;` is result.to_json().
inline void to_json(nlohmann::json& j, const FitResult& r) {
  j = r.to_json();
}

class Trainer {
 public:
  /// `out_dir` receives metrics.jsonl and checkpoints/; it must exist.
  Trainer(TrainerOptions opts, std::string out_dir);

  /// Trains and tests. With `resume`, continues from out_dir/checkpoints/last.pt. `meta` is stored in
  /// every checkpoint (method name, specs). With `stop_after`, a session that stops early returns
  /// after checkpointing, stopped at its last step.
  FitResult fit(Model& model, Method& method, Batches& batches, const Task& task, const std::string& head,
                uint64_t seed, bool resume, const nlohmann::json& meta = {});

  const TrainerOptions& options() const { return opts_; }
  std::string last_checkpoint() const;
  std::string best_checkpoint() const;

 private:
  TrainerOptions opts_;
  std::string out_dir_;
};

}  // namespace xfer
