#pragma once
/// SMILE: sample-to-feature mixup with a mean teacher.
///
/// Li, Xiong, Dou, Xu. "SMILE: Sample-to-feature Mixup for Efficient Transfer LEarning", TMLR 2023
/// (../shared/papers/001, sections 3 and 5, Algorithm 1). Where the paper is loose this follows the authors'
/// code (github.com/lixingjian/SMILE, finetune.py).
///
/// Networks. Student: the pretrained backbone, a new "target" head and an "aux" head over the source
/// classes, initialised from the pretrained "source" head. Teacher: a copy of the pretrained backbone and
/// source head, in eval mode under no-grad (models/teacher.h).
///
/// Each step, for a batch x (N, C, H, W) with labels y (N):
///   lambda ~ Beta(alpha, alpha), folded to max(lambda, 1 - lambda) by default; p a random permutation;
///   x_m = lambda x + (1 - lambda) x[p]
///   student on x_m: target logits z (N, K), aux logits z' (N, S), last-stage map F_s (N, C', h, w)
///   teacher once on the unmixed x: last-stage map F (N, C', h, w), source probabilities P = softmax (N, S);
///   mixing the teacher's outputs with p gives the mixed targets without a second teacher forward.
///   L_MXP = lambda CE(z, y) + (1 - lambda) CE(z, y[p])
///   L_FE  = || mix(F, F[p]) - F_s ||_F / (h w)       Frobenius norm of the whole batch tensor, not squared
///                                                      (the authors' code); --fe-form paper gives Eq. 5:
///           mean_i || mix(g, g[p])_i - g_s,i ||^2      on pooled features g (N, C')
///   L_FC  = mean_i sum_c -mix(P, P[p])_ic log softmax(z')_ic
///   L     = L_MXP + gamma_FE L_FE + gamma_FC L_FC      (gamma_FE 0.01, gamma_FC 0.1)
/// where mix(a, b) = lambda a + (1 - lambda) b. Every `ema_period` steps, after the optimizer step, the mean
/// teacher moves: theta_T <- decay theta_T + (1 - decay) theta_S over the backbone's parameters only (not the
/// heads, not the BN statistics). Only the target head is used at test time.
///
/// Ablations (Tables 5, 8 and 9): --no-fe, --no-fc; --teacher frozen (no EMA: "w/o Target");
/// --teacher student-init ("w/o Source"): the student is built from --init, so its own starting point
/// already holds the source knowledge. The teacher instead starts from the random initialisation the
/// student's architecture gets from the run seed (the weights the student's backbone held before the
/// pretrained ones were copied in) and tracks the student as the mean teacher does, its BN running
/// statistics included (they start at 0 and 1, which describe no data). It has no source knowledge, so
/// L_FC (and the aux head) is off. Without --init ("SMILE from scratch", Table 9) the student is the random
/// initialisation itself; the teacher is its copy, tracked the same way, and L_FC is off (--teacher
/// frozen is refused). With both regularizers off (or their gammas 0) no teacher is built or run: what is
/// left is vanilla mixup.
#include <string>

#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"
#include "xfer/models/teacher.h"

namespace xfer {

/// The form of SMILE's L_FE: the authors' code or the paper's Eq. 5 (smile_feature_loss).
enum class FeatureLossForm { code, paper };
XFER_ENUM_NAMES(FeatureLossForm, "code", "paper")

/// L_FE between the student's map on the mixed batch and the teacher's maps on the unmixed batch, both
/// (N, C, h, w): the teacher's are mixed here, lambda T + (1 - lambda) T[p] with `teacher_partners` = T[p].
/// `form` "code": ||mix - F_s||_F / (h w) over the whole batch (in a data-parallel run the ranks' squared
/// sums are added before the root, so it is the global batch's norm); "paper": the squared distance of the
/// pooled (spatially averaged) features, averaged over the batch (Eq. 5). The teacher's side carries no
/// gradient.
torch::Tensor smile_feature_loss(const torch::Tensor& student_map, const torch::Tensor& teacher_map,
                                 const torch::Tensor& teacher_partners, double lambda,
                                 FeatureLossForm form = FeatureLossForm::code);
/// L_FC: the soft cross-entropy of the aux logits (N, S) against mix(P, P[p]) of the teacher's
/// probabilities P (N, S), with `teacher_partners` = P[p].
torch::Tensor smile_label_loss(const torch::Tensor& aux_logits, const torch::Tensor& teacher_probs,
                               const torch::Tensor& teacher_partners, double lambda);

enum class SmileTeacher { ema, frozen, student_init };
XFER_ENUM_NAMES(SmileTeacher, "ema", "frozen", "student-init")

class SmileMethod : public Method {
 public:
  struct Options {
    double alpha = 0.2;      // Beta(alpha, alpha) of the mixing weight
    bool fold = true;        // lambda <- max(lambda, 1 - lambda), as the authors' mixup_data
    double gamma_fe = 0.01;  // weight of L_FE
    double gamma_fc = 0.1;   // weight of L_FC
    bool fe = true;          // --no-fe drops L_FE
    bool fc = true;          // --no-fc drops L_FC (and the aux head)
    FeatureLossForm fe_form = FeatureLossForm::code;
    SmileTeacher teacher = SmileTeacher::ema;  // ema | frozen | student-init
    double ema_decay = 0.999;
    int64_t ema_period = 10;             // steps between mean-teacher updates
    std::string source_head = "source";  // the --init model's head over the source classes

    void fields(Fields& f);
  };

  explicit SmileMethod(const Options& opts);
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  void after_step(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  /// The teacher network (undefined when both regularizers are off).
  Teacher& teacher() { return teacher_; }
  bool uses_fe() const { return opts_.fe && opts_.gamma_fe > 0; }
  /// L_FC needs source knowledge: off with a teacher that follows the student from its random start.
  bool uses_fc() const { return opts_.fc && opts_.gamma_fc > 0 && !from_student_; }
  /// Whether the teacher moves (and is therefore checkpointed).
  bool teacher_moves() const { return opts_.teacher != SmileTeacher::frozen; }

 private:
  Options opts_;
  bool
      from_student_;  // the teacher starts from the student's random initialisation (student-init, no --init)
  Teacher teacher_;
};

/// Registers smile.
void register_smile_methods(MethodRegistry& registry);

}  // namespace xfer
