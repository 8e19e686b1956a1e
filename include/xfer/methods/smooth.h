#pragma once
/// Smooth Transfer Learning (Takayama, Sato, Suzuki, Kawakami, Uto, Shinoda, "Smooth Transfer Learning
/// for Source-to-Target Generalization", NeurIPS 2021 workshop): one backbone g with a target head h_T
/// and a source head h_S, trained jointly on a target and a source sub-batch whose loss weights follow a
/// schedule of the training step (Eq. 3, 4):
///
///   L(t) = lambda(t) * mean_{B_T} CE(h_T(g(x)), y) + (1 - lambda(t)) * mean_{B_S} CE(h_S(g(x)), y)
///   lambda(t) = 1 / (1 + exp(-(t - T/2 - t0) / tau + alpha)),   omega = {t0, tau, alpha}
///
/// t = 1..T counts the steps of the run (T = --iterations; the step with 0-based index s has t = s + 1).
/// B_T (--batch-size examples) comes from the target training split, B_S (--source-batch-size, default
/// the same) from the --source training split. omega is meant to be tuned on target validation accuracy
/// with `xfer search` (TPE; tau in log space, t0 and alpha in linear space, as in the paper).
///
/// Special cases (--lambda-schedule), the paper's baselines as limits of omega:
///   smooth             Eq. 4 with --t0 --tau --alpha (tau = 0 gives the step function of Eq. 5)
///   pretrain-finetune  tau -> 0: source only for t < T/2 + t0, target only after (Eq. 5)
///   multitask          tau -> infinity: the constant weight lambda = 1 / (1 + e^alpha) (Eq. 6)
///   target-only        lambda = 1: the target loss alone
/// A domain whose weight is exactly 0 at a step is not forwarded at that step, so pretrain-finetune
/// really is pre-training and then fine-tuning, and target-only costs what plain training costs.
///
/// BatchNorm (--bn): `shared` forwards the two sub-batches as one batch, so batch statistics and the
/// running statistics are shared (appendix A.1); `per-domain` forwards them separately, each with its own
/// batch statistics and running statistics (appendix A.2). The target's running statistics stay in the
/// model (evaluation and checkpoints use them); the source's are method state.
///
/// The paper trains both heads jointly from random initialisation, and so does `smooth` without --init:
/// one run of T steps holds the pre-training (the first half, lambda near 0) and the fine-tuning, and the
/// paper's T is about both phases' length together (380 source epochs against 200 + 200, appendix A).
/// With --init the backbone starts from the pretrained model, and so does the source head when the
/// pretrained model has a "source" head over the same classes as --source (otherwise it starts fresh).
/// The pretrained model then stands for the pre-training half, so by default (--t0-origin auto) t0 counts
/// from the run's first step instead of T/2: lambda(t) = 1/(1 + exp(-(t - t0)/tau + alpha)), the paper's
/// schedule from its switch on. Counting from T/2 after --init would spend the first half of a fine-tuning
/// run training the source again (measured in the demo's setting, 50 labels per class, 3 seeds: 73.6% test
/// top-1 against 78.3% counting from the start and 78.7% for l2; docs/methods/smooth.md).
/// Training details of appendix A (cosine lr with 2.5% linear warmup, momentum SGD, best-on-validation
/// early stopping) are run options: --schedule cosine --warmup 0.025 --select best.
#include <cstdint>
#include <string>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"
#include "xfer/models/domain_bn.h"

namespace xfer {

/// lambda_omega(t) of Eq. 4, evaluated stably: tau = 0 gives the step function (with the value
/// 1/(1+e^alpha) exactly at t = T/2 + t0, which every tau gives there), tau = +infinity the constant
/// 1/(1+e^alpha); alpha = -infinity gives 1, +infinity gives 0. Never NaN for tau >= 0.
double smooth_lambda(double t, double total_steps, double t0, double tau, double alpha);

enum class LambdaSchedule { smooth, pretrain_finetune, multitask, target_only };
XFER_ENUM_NAMES(LambdaSchedule, "smooth", "pretrain-finetune", "multitask", "target-only")

enum class T0Origin { automatic, half, start };
XFER_ENUM_NAMES(T0Origin, "auto", "half", "start")

enum class SmoothBatchNorm { shared, per_domain };
XFER_ENUM_NAMES(SmoothBatchNorm, "shared", "per-domain")

struct SmoothOptions {
  LambdaSchedule lambda_schedule =
      LambdaSchedule::smooth;                // smooth | pretrain-finetune | multitask | target-only
  double t0 = 0;                             // steps: the switch is at ORIGIN + t0
  T0Origin t0_origin = T0Origin::automatic;  // half (T/2, Eq. 4) | start (step 0) | auto (start with --init)
  double tau = 30;                           // steps: the width of the transition (0: a step)
  double alpha = 0;                          // the weight offset: lambda(T/2 + t0) = 1 / (1 + e^alpha)
  int64_t source_batch_size = 0;             // 0: the same as --batch-size
  SmoothBatchNorm bn = SmoothBatchNorm::shared;  // shared | per-domain

  void fields(Fields& f);
  /// lambda at the 0-based step `step` of `total_steps`, with the preset applied ("auto" counts as half).
  double lambda(int64_t step, int64_t total_steps) const;
  /// A copy with t0_origin "auto" resolved for a run that starts from a pretrained model or not.
  SmoothOptions resolved(bool from_pretrained) const;
};

class SmoothMethod : public Method {
 public:
  using Options = SmoothOptions;
  explicit SmoothMethod(const Options& opts) : opts_(opts) {}
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  /// The source-domain BatchNorm statistics (per-domain BN only; empty otherwise).
  const DomainBatchNorm& source_bn() const { return source_bn_; }

 private:
  Options opts_;
  DomainBatchNorm source_bn_;
};

/// lambda(t) of `opts` over a run of `total_steps` steps, at most `points` points (steps 1..T, evenly
/// spaced): the curve `xfer search` draws for smooth's best trials (the paper's Fig. 2). BadInput if
/// total_steps < 1.
std::pair<std::vector<double>, std::vector<double>> lambda_curve(const SmoothOptions& opts,
                                                                 int64_t total_steps, int64_t points = 400);

/// Registers smooth.
void register_smooth_methods(MethodRegistry& registry);

}  // namespace xfer
