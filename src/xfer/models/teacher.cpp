#include "xfer/models/teacher.h"

#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {

Teacher::Teacher(const Model& source, bool keep_conv_taps)
    : model_(clone_model(source)), keep_conv_taps_(keep_conv_taps) {
  freeze(*model_);
  model_->eval();
}

Features Teacher::features(const torch::Tensor& x) {
  XFER_CHECK(defined(), "the teacher network was not set up");
  if (!folded_)
    folded_ = folded_backbone(model_, keep_conv_taps_);
  else if (folded_stale_ && folded_ != model_->backbone)  // TorchScript backbones run as they are
    fold_batch_norms(*folded_, *model_->backbone, keep_conv_taps_);
  folded_stale_ = false;
  c10::InferenceMode inference;
  return folded_->forward_features(x);
}

torch::Tensor Teacher::logits(const torch::Tensor& pooled, const std::string& head) {
  c10::InferenceMode inference;
  return model_->head(head)->forward(pooled);
}

void Teacher::ema_update(const Model& student, double decay, bool with_statistics) {
  XFER_CHECK(decay >= 0 && decay <= 1, "the teacher's EMA decay must be in [0, 1], got ", decay);
  const std::string why =
      student->arch().mismatch(model_->arch(), /*with_heads=*/false);  // the teacher is the saved side
  XFER_CHECK(why.empty(), "teacher and student differ: ", why);
  folded_stale_ = true;
  torch::NoGradGuard no_grad;
  const auto mine = model_->backbone->named_parameters();
  const auto theirs = student->backbone->named_parameters();
  for (const auto& p : mine) {
    const torch::Tensor* s = theirs.find(p.key());
    XFER_CHECK(s != nullptr && s->sizes() == p.value().sizes(), "teacher and student differ at ", p.key());
    p.value().mul_(decay).add_(*s, 1.0 - decay);
  }
  if (!with_statistics) return;
  const auto their_buffers = student->backbone->named_buffers();
  for (const auto& b : model_->backbone->named_buffers()) {
    if (!b.value().is_floating_point()) continue;  // num_batches_tracked: a count, not a statistic
    const torch::Tensor* s = their_buffers.find(b.key());
    XFER_CHECK(s != nullptr && s->sizes() == b.value().sizes(), "teacher and student differ at ", b.key());
    b.value().mul_(decay).add_(*s, 1.0 - decay);
  }
}

void Teacher::save(Archive& out, const std::string& key) const {
  Archive nested;
  nested.write_module(*model_);
  out.write(key, nested);
}

void Teacher::load(const Archive& in, const std::string& key) {
  Archive nested;
  XFER_CHECK(in.try_read(key, nested), "the checkpoint holds no '", key, "' teacher");
  nested.read_module(*model_, cat("the checkpoint's '", key, "' teacher"));
  folded_stale_ = true;
}

}  // namespace xfer
