#pragma once
/// A frozen copy of a network that runs forward only: the source network that feature-map regularizers
/// compare against (DELTA), the mean teacher of SMILE.
///
/// Its forward passes run in inference mode on a second copy of the backbone whose batch norms are folded
/// into their convolutions (folded_backbone, channels-last on the CPU); the copy is refolded lazily after
/// anything changes the teacher (an EMA update, a load, a caller's write through model()).
/// Outputs are inference tensors: compute with them outside inference mode (mixing, differences) before
/// autograd saves anything.
///
/// Mean-teacher update (Tarvainen & Valpola 2017), over the backbone's parameters only, not the heads and
/// not the BN running statistics (as SMILE's code):
///     theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student
/// With `with_statistics` the backbone's floating-point buffers (BN running mean and variance) move the same
/// way: a teacher that starts from a random initialisation (SMILE's "w/o Source") has running statistics
/// of 0 and 1 that describe no data, so it tracks the student's.
/// The teacher's weights are method state: save/load them so --resume continues exactly.
#include <string>

#include "xfer/core/archive.h"
#include "xfer/models/model.h"

namespace xfer {

class Teacher {
 public:
  Teacher() = default;
  /// A deep copy of `source` (weights, buffers, heads), frozen, in eval mode, on the source's device.
  /// `keep_conv_taps`: Features::convs must be each stage's pre-norm convolution output (DELTA's maps),
  /// so those convolutions stay unfolded.
  explicit Teacher(const Model& source, bool keep_conv_taps = false);
  bool defined() const { return static_cast<bool>(model_); }

  /// Pooled features and every stage's map.
  Features features(const torch::Tensor& x);
  /// Logits of `head` from pooled features.
  torch::Tensor logits(const torch::Tensor& pooled, const std::string& head);

  /// The mean-teacher update towards `student`, whose backbone must have the same architecture.
  void ema_update(const Model& student, double decay, bool with_statistics = false);

  /// The unfolded teacher; writing through it is seen by the next forward pass.
  Model& model() {
    folded_stale_ = true;
    return model_;
  }
  void save(Archive& out, const std::string& key) const;
  void load(const Archive& in, const std::string& key);

 private:
  Model model_{nullptr};
  Backbone folded_;           // model_'s backbone with its batch norms folded, for forward passes
  bool folded_stale_ = true;  // model_ changed since folded_ was computed
  bool keep_conv_taps_ = false;
};

}  // namespace xfer
