#pragma once
/// A frozen copy of a network that runs in eval mode under no-grad: the source network that feature-map
/// regularizers compare against (DELTA), the mean teacher of SMILE.
///
/// Mean-teacher update (Tarvainen & Valpola 2017), over the backbone's parameters only, not the heads and
/// not the BN running statistics (as SMILE's code):
///     theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student
/// The teacher's weights are method state: save/load them so --resume continues exactly.
#include <string>


#include "xfer/core/archive.h"
#include "xfer/models/model.h"

namespace xfer {

class Teacher {
 public:
  Teacher() = default;
  /// A deep copy of `source` (weights, buffers, heads), frozen, in eval mode, on the source's device.
  explicit Teacher(const Model& source);
  bool defined() const { return static_cast<bool>(model_); }

  /// Pooled features and every stage's map.
  Features features(const torch::Tensor& x);
  /// Logits of `head` from pooled features.
  torch::Tensor logits(const torch::Tensor& pooled, const std::string& head);

  /// The mean-teacher update towards `student`, whose backbone must have the same architecture.
  void ema_update(const Model& student, double decay);

  Model& model() { return model_; }
  void save(Archive& out, const std::string& key) const;
  void load(const Archive& in, const std::string& key);

 private:
  Model model_{nullptr};
};

}  // namespace xfer
