#pragma once
/// The Trainer's meters (as timm's AverageMeter): sums and counts over the steps of a logging window,
/// whose means make a metrics.jsonl step line, and over the whole session, whose totals go to result.json.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/methods/method.h"

namespace xfer {

/// The training metrics of one logging window: the steps since the last metrics.jsonl step line.
class MetricsWindow {
 public:
  /// A step that updated the model (not a skipped one): its loss and loss parts, its train accuracy
  /// where the method gave unmixed logits, and its part weights.
  void add(const LossTerms& terms);
  /// Any step's communication, a skipped step's included: its all-reduce seconds and the wait within them.
  void add_communication(double allreduce_seconds, double wait_seconds);
  /// Data-parallel: the loss sums become their means over the processes, so that the line describes the
  /// global batch. A collective: every process calls it at the same step. Nothing in one process.
  void average_over_processes();
  /// The steps added with add(); 0 when every step of the window was skipped.
  int64_t steps() const { return steps_; }
  /// The mean loss over the window's steps (NaN with none).
  double loss() const { return loss_sum_ / static_cast<double>(steps_); }
  /// Writes the window's means into `line`: "loss" and the loss parts when any step updated the model,
  /// "train_top1" when any step gave unmixed logits, "part_weights" (the latest updating step's, kept
  /// across windows) when the method weighs its parts, and with `communication` the all-reduce
  /// milliseconds per updating step, "allreduce_ms" and "allreduce_wait_ms".
  void write(nlohmann::json& line, bool communication) const;
  /// Starts the next window.
  void reset();

 private:
  double loss_sum_ = 0, allreduce_seconds_ = 0, wait_seconds_ = 0;
  int64_t steps_ = 0, seen_ = 0, correct_ = 0;  // seen/correct: train_top1's examples
  std::map<std::string, double> part_sums_, part_weights_;
};

/// The time a session spent in training steps, for result.json.
class StepTimes {
 public:
  /// One step: its wall time, and the all-reduce seconds and the wait within them.
  void add(double seconds, double allreduce_seconds, double wait_seconds);
  /// The steps added.
  int64_t steps() const { return static_cast<int64_t>(times_.size()); }
  /// Their total wall time.
  double seconds() const { return seconds_; }
  /// Training examples per second at `batch_size` examples a step; 0 before any time was measured.
  double samples_per_s(int64_t batch_size) const;
  /// The mean step in milliseconds; 0 with no step.
  double mean_ms() const;
  /// The median step in milliseconds, which the first step's setup and noise do not skew; 0 with no step.
  double median_ms() const;
  /// The share of the step time spent in all-reduces, waiting included, and the share spent waiting for
  /// the slowest process (load imbalance rather than moving gradients); 0 before any time was measured.
  double allreduce_share() const { return seconds_ > 0 ? allreduce_seconds_ / seconds_ : 0.0; }
  double wait_share() const { return seconds_ > 0 ? wait_seconds_ / seconds_ : 0.0; }

 private:
  double seconds_ = 0, allreduce_seconds_ = 0, wait_seconds_ = 0;
  std::vector<double> times_;
};

}  // namespace xfer
