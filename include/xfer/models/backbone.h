#pragma once
/// Backbones: networks that map an image batch to a pooled feature vector g(x).
///
/// A backbone is a stem followed by named stages ("layer1", "layer2", ...) and global average pooling.
/// `forward_features` returns the pooled features and every stage's feature map, and lets a hook
/// replace a stage's output (manifold mixup mixes there; SMILE reads there). Built-in backbones also
/// return each stage's last convolution output (before its batch norm, and in a residual stage before
/// the add: where DELTA's authors hook, e.g. layer4.2.conv3 of ResNet-50), which a second hook may replace.
///
/// Backbone specs: NAME[:key=value]...
///   cnn4[:width=16]                          4 conv+BN+ReLU stages (pool after 1 and 2), for 28x28 inputs;
///                                            channels w, 2w, 4w, 4w; features 4w
///   resnet20[:width=16]                      CIFAR ResNet-20: 3 stages of 3 basic blocks; features 4w
///   resnet18[:width=64][:stem=imagenet|cifar]  torchvision ResNet-18 (same parameter names); features 8w.
///                                            stem=cifar: 3x3 stride-1 stem without max-pool, for small
///                                            images
///   resnet50[:width=64][:stem=imagenet|cifar]  torchvision ResNet-50 (bottleneck blocks, same names);
///   features 32w script:path=FILE                         a TorchScript backbone (`--init
///   torchscript:FILE`): its stages
///                                            are conv1/bn1/relu/maxpool + layer1..4 for ResNets, else its
///                                            forward_features; see models/import.h
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>

namespace xfer {

/// Pooled features and the output of every stage, in order.
struct Features {
  torch::Tensor pooled;                                     // (N, feature_dim)
  std::vector<std::pair<std::string, torch::Tensor>> maps;  // stage name -> (N, C, H, W)
  /// Stage name -> the output of the stage's last convolution (N, C, H, W), as the stage went on with it
  /// (after the conv hook). Empty for TorchScript backbones.
  std::vector<std::pair<std::string, torch::Tensor>> convs;
  /// The map of a stage; BadInput naming the valid stages if absent.
  const torch::Tensor& map(const std::string& stage) const;
  /// The last convolution output of a stage; BadInput if the backbone does not expose it.
  const torch::Tensor& conv(const std::string& stage) const;
};

/// A convolution and the batch norm that follows it; `tapped`: the convolution is its stage's last, whose
/// output (before the norm) Features::convs reports.
struct ConvNorm {
  torch::nn::Conv2dImpl* conv;
  torch::nn::BatchNorm2dImpl* norm;
  bool tapped;
};

/// Called with each stage's output; returns the tensor the next stage receives.
using StageHook = std::function<torch::Tensor(const std::string& stage, const torch::Tensor& out)>;

class BackboneImpl : public torch::nn::Module {
 public:
  /// Pooled features g(x), shape (N, feature_dim()).
  torch::Tensor forward(const torch::Tensor& x) { return forward_features(x).pooled; }
  /// `hook` sees each stage's output, `conv_hook` each stage's last convolution output (built-in backbones);
  /// what they return is what the network continues with.
  Features forward_features(const torch::Tensor& x, const StageHook& hook = nullptr,
                            const StageHook& conv_hook = nullptr);

  int64_t feature_dim() const { return feature_dim_; }
  const std::vector<std::string>& stage_names() const { return stage_names_; }
  /// The normalised spec this backbone was built from, e.g. "cnn4:width=16".
  const std::string& spec() const { return spec_; }
  /// --bn-stats sync: in training mode, in a data-parallel run, the batch norms normalise with the statistics
  /// of the global batch, as torch.nn.SyncBatchNorm (dist::sync_batch_norm). Built-in backbones only.
  void set_sync_batch_norm(bool on);
  /// Every convolution followed by a batch norm, in a fixed order (empty for TorchScript backbones).
  virtual std::vector<ConvNorm> conv_norms() { return {}; }

 protected:
  virtual torch::Tensor stem(const torch::Tensor& x) = 0;
  virtual torch::Tensor stage(size_t index, const torch::Tensor& x) = 0;
  /// Built-in stages pass their last convolution's output through here: it is recorded in the Features
  /// being built and handed to the conv hook.
  torch::Tensor tap_last_conv(size_t index, const torch::Tensor& out);

  std::string spec_;
  std::vector<std::string> stage_names_;
  int64_t feature_dim_ = 0;
  bool sync_bn_ = false;

 private:
  Features* building_ = nullptr;          // set during forward_features
  const StageHook* conv_hook_ = nullptr;  // likewise
};

using Backbone = std::shared_ptr<BackboneImpl>;

/// Makes `folded` (a copy of `source`'s architecture, used only in eval mode and inference mode) compute what
/// `source` computes in eval mode with each batch norm folded into the convolution before it:
///     w' = w * gamma / sqrt(var + eps),   b' = beta - mean * gamma / sqrt(var + eps)
/// so that an inference pass skips the norms' kernels. With `keep_taps`, tapped convolutions stay unfolded so
/// that Features::convs is still each stage's pre-norm output (DELTA's maps). Call again after `source`
/// changes (a mean teacher's update): the weights are recomputed in place. A folded norm holds no statistics
/// (its running mean is undefined), which is how the forward pass knows to skip it; the folded backbone
/// must not be trained or saved. Weights keep `folded`'s own memory format (channels-last stays so).
void fold_batch_norms(BackboneImpl& folded, BackboneImpl& source, bool keep_taps);

/// Builds a backbone from its spec for `in_channels` input channels; BadInput lists the valid names.
Backbone make_backbone(const std::string& spec, int64_t in_channels);
/// The spec with defaults filled in ("cnn4" -> "cnn4:width=16"), so equal architectures compare equal.
std::string normalise_backbone_spec(const std::string& spec);
/// A TorchScript module's backbone (defined in models/import.cpp). Loading it runs the module's code.
Backbone make_script_backbone(const std::string& path);
/// TorchScript runs code, so make_backbone builds a script:path=FILE backbone only for a FILE the user named
/// (--init torchscript:FILE, --backbone script:path=FILE): those entry points call trust_script(FILE). A spec
/// that arrives any other way, such as a checkpoint's metadata, is refused (BadInput) before anything is
/// read.
void trust_script(const std::string& path);
bool is_trusted_script(const std::string& path);

/// The number of elements (parameters and buffers) and the feature width of a built-in backbone, computed
/// from its spec without building it: a checkpoint's declared architecture is checked against the tensors
/// it holds before anything is allocated. numel -1 for script backbones.
struct BackboneSize {
  int64_t numel = -1, feature_dim = 0;
};
BackboneSize backbone_size(const std::string& spec, int64_t in_channels);
/// The names of the available backbones, for help texts.
const char* backbone_help();

/// Conv-BN-ReLU stages for small images.
class Cnn4Impl : public BackboneImpl {
 public:
  Cnn4Impl(int64_t in_channels, int64_t width);
  std::vector<ConvNorm> conv_norms() override;

 protected:
  torch::Tensor stem(const torch::Tensor& x) override { return x; }
  torch::Tensor stage(size_t index, const torch::Tensor& x) override;

 private:
  std::vector<torch::nn::Sequential> blocks_;
};

/// The basic residual block of ResNet-18/20 (torchvision names: conv1 bn1 conv2 bn2 downsample).
/// What a block does with its last convolution's output before going on (ResNetImpl's conv tap).
using ConvTap = std::function<torch::Tensor(const torch::Tensor&)>;

class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x) { return forward_tapped(x, nullptr); }
  /// `tap`, if given, receives conv2's output (before bn2 and the add) and returns what goes on.
  torch::Tensor forward_tapped(const torch::Tensor& x, const ConvTap& tap);
  /// `last`: the stage's last block, whose conv2 is tapped.
  std::vector<ConvNorm> conv_norms(bool last);
  bool sync_bn = false;  // set by BackboneImpl::set_sync_batch_norm

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(BasicBlock);

/// torchvision's Bottleneck (ResNet-50 v1.5: the stride on the 3x3 conv; names conv1..3 bn1..3 downsample).
class BottleneckImpl : public torch::nn::Module {
 public:
  BottleneckImpl(int64_t in, int64_t width, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x) { return forward_tapped(x, nullptr); }
  /// `tap`, if given, receives conv3's output (before bn3 and the add) and returns what goes on.
  torch::Tensor forward_tapped(const torch::Tensor& x, const ConvTap& tap);
  /// `last`: the stage's last block, whose conv3 is tapped.
  std::vector<ConvNorm> conv_norms(bool last);
  bool sync_bn = false;  // set by BackboneImpl::set_sync_batch_norm

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv3{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  torch::nn::Sequential downsample{nullptr};
};
TORCH_MODULE(Bottleneck);

/// ResNets: ResNet-20 (CIFAR), ResNet-18 and ResNet-50 (torchvision layout and names).
class ResNetImpl : public BackboneImpl {
 public:
  /// `blocks` per stage, `widths` per stage; `imagenet_stem`: 7x7 stride-2 conv + 3x3 max-pool;
  /// `bottleneck`: Bottleneck blocks (output 4x width) instead of basic blocks.
  ResNetImpl(std::string spec, int64_t in_channels, std::vector<int64_t> blocks, std::vector<int64_t> widths,
             bool imagenet_stem, bool bottleneck = false);
  std::vector<ConvNorm> conv_norms() override;

 protected:
  torch::Tensor stem(const torch::Tensor& x) override;
  torch::Tensor stage(size_t index, const torch::Tensor& x) override;

 private:
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr};
  bool imagenet_stem_;
  std::vector<torch::nn::Sequential> layers_;
};

}  // namespace xfer
