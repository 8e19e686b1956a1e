#pragma once
/// The Trainer's checkpoints (as timm's CheckpointSaver): when a run writes checkpoints/last.pt and
/// checkpoints/best.pt, what goes in them, and the best-on-validation record that decides best.pt.
#include <cstdint>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/methods/method.h"
#include "xfer/models/model.h"

namespace xfer {

class CheckpointSaver {
 public:
  /// The checkpoints of the run in `out_dir`. `meta` goes into every checkpoint (the command, the method,
  /// the spec). Only a `writer` (rank 0 of a data-parallel run) writes files; every process keeps the same
  /// record, so that all of them test the same model at the end.
  CheckpointSaver(const std::string& out_dir, nlohmann::json meta, bool writer);

  /// out_dir/checkpoints/last.pt: everything needed to continue the run bit for bit.
  std::string last_path() const { return last_path_; }
  /// out_dir/checkpoints/best.pt: the model at the best validation so far.
  std::string best_path() const { return best_path_; }

  /// Continues the record of a run resumed from its last.pt, written at `step`, whose best validation
  /// top-1 was `best_val` at `best_step` (-1: no validation yet).
  void resumed(int64_t step, double best_val, int64_t best_step);
  /// A validation after `step` steps scored `val_top1`: if it beats the best so far, it becomes the best
  /// and the model goes to best.pt (meta "kind": "model", the step and its "val_top1"). True if it did.
  bool validated(const Model& model, int64_t step, double val_top1);
  /// Writes last.pt after `step` steps: the meta with "kind": "train", the step, the best-so-far record
  /// ("best_val", "best_step") and the loop's own `state` (its phases, skip counts, batch positions), then
  /// the model, the optimizer's state, the method's state ("method") and the method's RNG ("rng").
  void save_last(int64_t step, const nlohmann::json& state, const Model& model,
                 const torch::optim::Optimizer& optimizer, const Method& method, const at::Generator& rng);

  /// The step of this run's latest last.pt, -1 if it has none yet.
  int64_t last_saved() const { return last_saved_; }
  /// Whether any validation was recorded; the best top-1 and its step (-1 before any).
  bool has_best() const { return best_step_ >= 0; }
  double best_val() const { return best_val_; }
  int64_t best_step() const { return best_step_; }

 private:
  std::string last_path_, best_path_;
  nlohmann::json meta_;
  bool writer_;
  int64_t last_saved_ = -1, best_step_ = -1;
  double best_val_ = -1;
};

}  // namespace xfer
