#pragma once
/// DELTA: Li et al., "DELTA: DEep Learning Transfer using Feature Map with Attention for Convolutional
/// Networks", ICLR 2019; the formulas follow the authors' code (github.com/lixingjian/DELTA).
///
/// A feature-map regularizer between the network being fine-tuned and a frozen copy of the source network
/// (a Teacher, eval mode, no grad), at chosen backbone stages (default: every stage):
///
///   L = CE + alpha * 0.5 sum_layers sum_n sum_c C a_c ||FM_nc - FM0_nc||^2 / (H W) + beta/2 ||w_head||^2
///
/// FM, FM0: (N, C, H, W) maps of the fine-tuned and the source network on the same batch. Which map of a
/// stage (--feature-maps):
///   last-conv (default)  the output of the stage's last convolution, before its batch norm and (ResNets)
///                        before the residual add: the authors hook layer1.2.conv3 ... layer4.2.conv3 of
///                        ResNet-50 (for ResNet-18/20, layerN.<last>.conv2; for cnn4, each stage's conv);
///   stage                the stage's output, after the add and ReLU (SMILE's code hooks layer4 so).
/// As in the authors' code the distance is summed over the batch (not averaged). --decay beta (default,
/// the authors' code): the optimizer's weight decay is off and the beta term is the head's decay; --decay
/// optimizer: no beta term, the run's --weight-decay on every parameter (SMILE's code). Defaults alpha
/// 0.01, beta 0.01.
///
/// Channel attention a (per stage, C values summing to 1), computed once in setup as the authors'
/// channel_eval.py does: a linear classifier is first trained on the frozen source backbone's pooled
/// features of the target training set (full-batch L-BFGS from zero, L2 --probe-decay, evaluation
/// transform; the authors train the new fc for 10 epochs with the backbone frozen). Then, on
/// --attention-examples target training images (a seeded draw, evaluation transform), for each stage and
/// channel c, the rise of the cross-entropy of that source-backbone + classifier network when channel c
/// of the compared map is zeroed:   r_c = CE(channel c zeroed) - CE(intact),   z = (r - mean r) / std r,
/// a = softmax(z / T). With last-conv maps this is the authors' ablation exactly (they zero filter c of
/// the hooked convolution, which has no bias: its output channel c becomes 0 and the batch norm after it
/// still runs). The rises of a group of channels are measured in one forward pass: the stage's input is
/// replicated once per ablated channel, and each copy has its own channel zeroed.
/// --attention off sets a_c = 1/C (the plain feature-map distance).
#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/models/teacher.h"

namespace xfer {

/// 0.5 sum_l sum_{n,c} C_l a_lc ||maps_l[n,c] - maps0_l[n,c]||^2 / (H_l W_l), for maps (N, C, H, W) and
/// attention (C) per layer; maps0 is a constant.
torch::Tensor delta_penalty(const std::vector<torch::Tensor>& maps, const std::vector<torch::Tensor>& maps0,
                            const std::vector<torch::Tensor>& attention);
/// softmax(z / temperature) of z = (rises - mean) / std (population std); uniform if all rises are equal.
torch::Tensor delta_attention_weights(const torch::Tensor& rises, double temperature);
/// For each stage in `stages`, the rise of the mean cross-entropy of classifier(backbone(x)) against y
/// when each channel of that stage's compared map is zeroed, (C) per stage: the stage's last convolution
/// output with `last_conv`, else its output. Runs under no-grad; the backbone should be in eval mode
/// (batch statistics would mix the replicated copies otherwise).
std::vector<torch::Tensor> delta_channel_rises(BackboneImpl& backbone, torch::nn::Linear& classifier,
                                               const torch::Tensor& x, const torch::Tensor& y,
                                               const std::vector<std::string>& stages, bool last_conv = true);
/// The maps DELTA compares at `stages`: each stage's last convolution output with `last_conv`, else its
/// output.
std::vector<torch::Tensor> delta_maps(const Features& f, const std::vector<std::string>& stages,
                                      bool last_conv);

enum class DeltaFeatureMaps { last_conv, stage };
XFER_ENUM_NAMES(DeltaFeatureMaps, "last-conv", "stage")

enum class DeltaAttention { on, off };
XFER_ENUM_NAMES(DeltaAttention, "on", "off")

class DeltaMethod : public Method {
 public:
  struct Options {
    double alpha = 0.01;         // weight of the feature-map distance
    double beta = 0.01;          // weight of the head's L2 norm
    std::string stages = "all";  // backbone stages compared: "all" or names, comma-separated
    DeltaFeatureMaps feature_maps =
        DeltaFeatureMaps::last_conv;  // last-conv | stage: which map of each stage
    HeadDecay decay =
        HeadDecay::beta;  // beta: optimizer decay off, beta/2 ||w_head||^2; optimizer: --weight-decay
    DeltaAttention attention = DeltaAttention::on;  // on: channel attention; off: a_c = 1/C
    int64_t attention_examples = 128;               // target training images the attention is measured on
    double temperature = 5.0;                       // softmax temperature of the attention
    int64_t probe_iterations = 100;                 // L-BFGS iterations of the attention's linear classifier
    double probe_decay = 1e-4;                      // its L2 weight
    void fields(Fields& f);
  };
  explicit DeltaMethod(Options opts) : opts_(std::move(opts)) {}
  /// Builds the frozen source network and the channel attention.
  void setup(Model& model, SetupContext& ctx) override;
  /// --decay beta: backbone and heads with weight decay 0; optimizer: the default groups.
  std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  const std::vector<std::string>& stages() const { return stages_; }
  bool last_conv() const { return opts_.feature_maps == DeltaFeatureMaps::last_conv; }
  /// Per stage, the weights a (C).
  const std::vector<torch::Tensor>& attention() const { return attention_; }

 private:
  std::vector<torch::Tensor> measure_attention(SetupContext& ctx);

  Options opts_;
  Teacher source_;
  std::vector<std::string> stages_;
  std::vector<torch::Tensor> attention_;
};

}  // namespace xfer
