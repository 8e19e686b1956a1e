#pragma once
/// Model = backbone + named linear heads ("target", "source", ...), plus what it expects as input.
#include <map>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <nlohmann/json_fwd.hpp>

#include "xfer/data/dataset.h"
#include "xfer/models/backbone.h"

namespace xfer {

struct HeadInfo {
  std::string name;
  std::vector<std::string> class_names;
  /// Predictions use only the first `predict_classes` classes (0: all). XMixup's joint head covers the
  /// target classes and then the paired source classes, but predicts only target classes.
  int64_t predict_classes = 0;
  int64_t predicted() const {
    return predict_classes > 0 ? predict_classes : static_cast<int64_t>(class_names.size());
  }
};

/// Bounds on what a stored architecture record may declare (Arch::from_json).
constexpr int64_t kMaxInChannels = 4096;
constexpr int64_t kMaxImageSide = 65536;

/// BadInput unless `name` can name a head: 1-64 letters, digits, '_' or '-' (LibTorch refuses '.' and "").
void check_head_name(const std::string& name);

/// Everything needed to rebuild a model and feed it: stored in every checkpoint, compared on load.
struct Arch {
  std::string backbone;  // normalised backbone spec
  int64_t in_channels = 1;
  int64_t height = 0, width = 0;
  Normalization input;  // the normalisation the model was trained with
  std::vector<HeadInfo> heads;

  nlohmann::json to_json() const;
  /// BadInput on a malformed record or values out of bounds (kMaxInChannels, kMaxImageSide).
  static Arch from_json(const nlohmann::json& j);
  /// Elements (parameters and buffers) of the model this describes, computed without building it; -1 for a
  /// script backbone.
  int64_t numel() const;
  /// Why a checkpoint of `saved` cannot be loaded into this architecture (empty if it can). Heads are
  /// compared only when `with_heads`.
  std::string mismatch(const Arch& saved, bool with_heads) const;
  const HeadInfo* head(const std::string& name) const;
};

class ModelImpl : public torch::nn::Module {
 public:
  explicit ModelImpl(const Arch& arch);

  /// Logits of `head` for a batch of normalised images.
  torch::Tensor forward(const torch::Tensor& x, const std::string& head = "target");
  torch::nn::Linear head(const std::string& name) const;
  bool has_head(const std::string& name) const;
  /// Adds a freshly initialised linear head (the global generator drives its init).
  void add_head(const HeadInfo& info);
  void remove_head(const std::string& name);

  const Arch& arch() const { return arch_; }
  Backbone backbone;

  /// Parameters of the backbone, and of all heads.
  std::vector<torch::Tensor> backbone_parameters() const;
  std::vector<torch::Tensor> head_parameters() const;

 private:
  Arch arch_;
  std::shared_ptr<torch::nn::Module> heads_;  // a plain container: its children are the heads, by name
};
TORCH_MODULE(Model);

/// BadInput when images of `height` x `width` are too small for the model's backbone (a pooling stage would
/// leave nothing): one forward of a zero image, without gradients, in eval mode (the mode is restored).
void check_input_fits(ModelImpl& model, int64_t height, int64_t width);

/// Stores every convolution weight (4-d parameter) of `module` in the channels-last (NHWC) layout, in place,
/// as batches in that layout want: oneDNN then runs without layout conversions.
void convolutions_channels_last(torch::nn::Module& module);
/// A deep copy with the same weights, buffers and train/eval mode.
Model clone_model(const Model& model);
/// An eval-mode copy of `model`'s backbone with its batch norms folded into its convolutions
/// (fold_batch_norms), for inference-mode passes: the same outputs, fewer kernels. On the CPU its
/// convolutions are channels-last: LibTorch 1.13's channels-last forward kernels are faster there for the
/// small maps of these backbones (an evaluation pass of cnn4 by about 1.5x). `keep_taps` keeps each
/// stage's last convolution unfolded (Features::convs stays pre-norm). A TorchScript backbone is returned
/// itself, unfolded; so is any backbone on which folding has nothing to do.
Backbone folded_backbone(const Model& model, bool keep_taps = false);
/// Copies the values of every parameter and buffer whose name starts with `prefix` from `src` into
/// `dst`. Names and shapes must match; BadInput lists the first mismatches.
void copy_state(const torch::nn::Module& src, torch::nn::Module& dst, const std::string& prefix = "");
/// Adds to `to` a head named `as` (default: `name`) holding a copy of `from`'s head `name`: its classes
/// and weights. SMILE's auxiliary head, Co-Tuning's and XMixup's source heads start this way.
void copy_head(const Model& from, const std::string& name, Model& to, const std::string& as = "");
/// Sets requires_grad=false on every parameter (frozen teachers).
void freeze(torch::nn::Module& module);

}  // namespace xfer
