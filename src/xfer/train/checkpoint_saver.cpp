#include "xfer/train/checkpoint_saver.h"

#include <filesystem>

#include "xfer/core/archive.h"
#include "xfer/optim/optim.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {

CheckpointSaver::CheckpointSaver(const std::string& out_dir, nlohmann::json meta, bool writer)
    : last_path_((fs::path(out_dir) / "checkpoints" / "last.pt").string()),
      best_path_((fs::path(out_dir) / "checkpoints" / "best.pt").string()),
      meta_(std::move(meta)),
      writer_(writer) {}

void CheckpointSaver::resumed(int64_t step, double best_val, int64_t best_step) {
  last_saved_ = step;
  best_val_ = best_val;
  best_step_ = best_step;
}

bool CheckpointSaver::validated(const Model& model, int64_t step, double val_top1) {
  if (!(val_top1 > best_val_)) return false;
  best_val_ = val_top1;
  best_step_ = step;
  if (writer_) {
    nlohmann::json m = meta_;
    m["kind"] = "model";
    m["step"] = step;
    m["val_top1"] = val_top1;
    CheckpointWriter w(m);
    w.write_model(model);
    w.commit(best_path_);
  }
  return true;
}

void CheckpointSaver::save_last(int64_t step, const nlohmann::json& state, const Model& model,
                                const torch::optim::Optimizer& optimizer, const Method& method,
                                const at::Generator& rng) {
  last_saved_ = step;
  if (!writer_) return;
  nlohmann::json m = meta_;
  m.update(state);
  m["kind"] = "train";
  m["step"] = step;
  m["best_val"] = best_val_;
  m["best_step"] = best_step_;
  CheckpointWriter w(m);
  w.write_model(model);
  w.write("optimizer", save_optimizer(optimizer));
  Archive method_state;
  method.save(method_state);
  w.write("method", method_state);
  w.write("rng", rng.get_state());
  w.commit(last_path_);
}

}  // namespace xfer
