#pragma once
/// Regularized fine-tuning: baselines that keep the fine-tuned network close to what the source model
/// knew, or shake its classifier. The formulas follow the authors' public code where the papers are vague.
///
///   l2sp      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
///             Networks", ICML 2018. w0 = the pretrained backbone (parameters, not BN statistics):
///               L = CE + alpha/2 sum_backbone ||w - w0||^2 + beta/2 ||w_head||^2
///             --decay beta (default): the optimizer's weight decay is off for all groups, the beta term is
///             the head's decay, as in the paper and DELTA's authors' code. --decay optimizer: no beta term,
///             the run's --weight-decay on every parameter (SMILE's code: alpha 1e-3 with weight decay 1e-4).
///             Defaults alpha 0.01, beta 0.01.
///   delta     see delta.h.
///   bss       Chen et al., "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral Shrinkage for
///             Safe Transfer Learning", NeurIPS 2019. F = the batch's pooled features (N, D):
///               L = CE + eta sum_{i=1..k} sigma_{-i}(F)^2   (the k smallest singular values)
///             Defaults k 1, eta 0.001.
///   cotuning  You et al., "Co-Tuning for Transfer Learning", NeurIPS 2020. The source head is kept
///             (copied from --init) and trained at --source-lr-mult (1) of the run's learning rate, i.e. at
///             the backbone's, as Transfer-Learning-Library's Classifier.get_parameters does. Before
///             training, p(y_s | y_t = c) is the mean of softmax(source logits) over the training images of
///             target class c (evaluation transform, the frozen source model):
///               L = CE(h_t(g(x)), y) + lambda softCE(h_s(g(x)), p(. | y))
///             Default lambda 2.3.
///   rifle     Li et al., "RIFLE: Backpropagation in Depth for Deep Transfer Learning through
///             Re-Initializing the Fully-connected LayEr", ICML 2020. Plain CE; the target head is
///             re-initialised after steps floor(j T / k), j = 1..k-1 (T = iterations), so training has k
///             equal periods. Default k 3.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"

namespace xfer {

/// alpha/2 sum_i ||w_i - w0_i||^2 over matching tensors (w0 is a constant).
torch::Tensor l2sp_penalty(const std::vector<torch::Tensor>& params,
                           const std::vector<torch::Tensor>& params0, double alpha);
/// beta/2 sum_i ||w_i||^2.
torch::Tensor l2_penalty(const std::vector<torch::Tensor>& params, double beta);
/// sum_{i=1..k} sigma_{-i}^2 of features (N, D): the squares of its k smallest singular values (of the
/// min(N, D) there are). BadInput if k < 1 or k > min(N, D).
torch::Tensor bss_penalty(const torch::Tensor& features, int64_t k);
/// p(y_s | y_t): row c is the mean of source_probs (N, Ks) over the examples with labels == c; (K, Ks).
/// BadInput if a class has no example.
torch::Tensor cotuning_relationship(const torch::Tensor& source_probs, const torch::Tensor& labels,
                                    int64_t num_classes);
/// The Co-Tuning regularizer softCE(source_logits, relationship[labels]): mean_i -sum_s p(s|y_i) log q_i(s).
torch::Tensor cotuning_penalty(const torch::Tensor& source_logits, const torch::Tensor& labels,
                               const torch::Tensor& relationship);
/// RIFLE's re-initialisation points: the step counts floor(j T / k), j = 1..k-1, after which the head is
/// re-initialised. BadInput if k < 1 or k > T.
std::vector<int64_t> rifle_reinit_steps(int64_t total_steps, int64_t k);

class L2SPMethod : public Method {
 public:
  struct Options {
    double alpha = 0.01;  // weight of the distance to the pretrained backbone
    double beta = 0.01;   // weight of the head's L2 norm
    HeadDecay decay = HeadDecay::beta;
    void fields(Fields& f);
  };
  explicit L2SPMethod(Options opts) : opts_(std::move(opts)) {}
  /// Keeps a copy of the pretrained backbone's parameters (w0).
  void setup(Model& model, SetupContext& ctx) override;
  /// --decay beta: backbone and heads with weight decay 0; optimizer: the default groups.
  std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult) override;
  LossTerms loss(StepContext& ctx) override;

 private:
  Options opts_;
  std::vector<torch::Tensor> w0_;  // in the order of model->backbone_parameters()
};

class BssMethod : public Method {
 public:
  struct Options {
    int64_t k = 1;       // how many of the smallest singular values are shrunk
    double eta = 0.001;  // their weight
    void fields(Fields& f);
  };
  explicit BssMethod(Options opts) : opts_(opts) {}
  /// Checks k against the feature dimension and the batch size.
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;

 private:
  Options opts_;
};

class CoTuningMethod : public Method {
 public:
  struct Options {
    double lambda = 2.3;          // weight of the source-head term
    double source_lr_mult = 1.0;  // learning-rate multiplier of the source head (1: the backbone's rate)
    std::string source_head = "source";  // the --init model's head to keep
    void fields(Fields& f);
  };
  explicit CoTuningMethod(Options opts) : opts_(std::move(opts)) {}
  /// Copies the source head into the model and computes p(y_s | y_t).
  void setup(Model& model, SetupContext& ctx) override;
  /// Backbone, target head at head_lr_mult, source head at source_lr_mult.
  std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;
  /// p(y_s | y_t), (target classes, source classes).
  const torch::Tensor& relationship() const { return relationship_; }

 private:
  Options opts_;
  std::string head_;
  torch::Tensor relationship_;
};

class RifleMethod : public Method {
 public:
  struct Options {
    int64_t k = 3;  // training periods; the head is re-initialised k - 1 times
    void fields(Fields& f);
  };
  explicit RifleMethod(Options opts) : opts_(opts) {}
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  /// Re-initialises the head after the steps of rifle_reinit_steps, as torch's Linear.reset_parameters
  /// (U(-1/sqrt(in), 1/sqrt(in)) for weight and bias), from a generator seeded by (run seed, index). As in
  /// the authors' code, the optimizer state (the head's momentum) is kept.
  void after_step(StepContext& ctx) override;
  const std::vector<int64_t>& reinit_steps() const { return reinit_steps_; }

 private:
  Options opts_;
  uint64_t seed_ = 0;
  std::vector<int64_t> reinit_steps_;
};

/// Registers l2sp, delta, bss, cotuning and rifle.
void register_regularization_methods(MethodRegistry& registry);

}  // namespace xfer
