#pragma once
/// DELTA: Li et al., "DELTA: DEep Learning Transfer using Feature Map with Attention for Convolutional
/// Networks", ICLR 2019; the formulas follow the authors' code (github.com/lixingjian/DELTA).
///
/// A feature-map regularizer between the network being fine-tuned and a frozen copy of the source network
/// (a Teacher, eval mode, no grad), at chosen backbone stages (default: the output of every stage):
///
///   L = CE + alpha * 0.5 sum_layers sum_n sum_c C a_c ||FM_nc - FM0_nc||^2 / (H W) + beta/2 ||w_head||^2
///
/// FM, FM0: (N, C, H, W) maps of the fine-tuned and the source network on the same batch. As in the
/// authors' code the distance is summed over the batch (not averaged) and the optimizer's weight decay is
/// off: the beta term is the head's decay. Defaults alpha 0.01, beta 0.01.
///
/// Channel attention a (per stage, C values summing to 1), computed once in setup as the authors'
/// channel_eval.py does: a linear classifier is first trained on the frozen source backbone's pooled
/// features of the target training set (full-batch L-BFGS from zero, L2 --probe-decay, evaluation
/// transform; the authors train the new fc for 10 epochs with the backbone frozen). Then, on
/// --attention-examples target training images (a seeded draw, evaluation transform), for each stage and
/// channel c, the rise of the cross-entropy of that source-backbone + classifier network when channel c
/// is zeroed:   r_c = CE(channel c zeroed) - CE(intact),   z = (r - mean r) / std r,   a = softmax(z / T).
/// The authors zero the filter of the stage's last conv; here the channel of the stage's output is zeroed
/// through a StageHook, which works for any backbone and removes exactly the signal the regularizer
/// compares. Both remove the channel's input-dependent signal: where a BN and ReLU follow the conv (cnn4),
/// a zeroed filter leaves the constant relu(beta_bn - gamma mu / sigma) in the channel where we leave 0;
/// in a residual stage the filter only feeds the last block's branch, while the stage output also carries
/// the skip path, so our ablation is the stronger one. The rises of all channels of a stage are measured
/// in one forward pass: the hook returns the stage's output replicated once per ablated channel.
/// --attention off sets a_c = 1/C (the plain feature-map distance).
#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/train/teacher.h"

namespace xfer {

/// 0.5 sum_l sum_{n,c} C_l a_lc ||maps_l[n,c] - maps0_l[n,c]||^2 / (H_l W_l), for maps (N, C, H, W) and
/// attention (C) per layer; maps0 is a constant.
torch::Tensor delta_penalty(const std::vector<torch::Tensor>& maps, const std::vector<torch::Tensor>& maps0,
                            const std::vector<torch::Tensor>& attention);
/// softmax(z / temperature) of z = (rises - mean) / std (population std); uniform if all rises are equal.
torch::Tensor delta_attention_weights(const torch::Tensor& rises, double temperature);
/// For each stage in `stages`, the rise of the mean cross-entropy of classifier(backbone(x)) against y
/// when each channel of that stage's output is zeroed, (C) per stage. Runs under no-grad; the backbone
/// should be in eval mode (batch statistics would mix the replicated copies otherwise).
std::vector<torch::Tensor> delta_channel_rises(BackboneImpl& backbone, torch::nn::Linear& classifier,
                                               const torch::Tensor& x, const torch::Tensor& y,
                                               const std::vector<std::string>& stages);

class DeltaMethod : public Method {
 public:
  struct Options {
    double alpha = 0.01;               // weight of the feature-map distance
    double beta = 0.01;                // weight of the head's L2 norm
    std::string stages = "all";        // backbone stages compared: "all" or names, comma-separated
    std::string attention = "on";      // on: channel attention; off: a_c = 1/C
    int64_t attention_examples = 128;  // target training images the attention is measured on
    double temperature = 5.0;          // softmax temperature of the attention
    int64_t probe_iterations = 100;    // L-BFGS iterations of the attention's linear classifier
    double probe_decay = 1e-4;         // its L2 weight
    void fields(Fields& f);
  };
  explicit DeltaMethod(Options opts) : opts_(std::move(opts)) {}
  /// Builds the frozen source network and the channel attention.
  void setup(Model& model, SetupContext& ctx) override;
  /// Backbone and heads with weight decay 0.
  std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  const std::vector<std::string>& stages() const { return stages_; }
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
