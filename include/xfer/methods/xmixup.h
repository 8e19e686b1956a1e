#pragma once
/// Transfer with auxiliary source examples: XMixup and the multi-task baselines it compares against.
///
/// All three draw on an auxiliary set chosen by class pairing (source/pairing.h, XMixup section 3):
/// `--aux paired|random|all`, `--aux-size`, `--pairing FILE`. They need --init (the source model, with
/// its "source" head) and --source (the data it was trained on).
///
///   xmixup    XMixup: Efficient Transfer Learning with Auxiliary Samples by Cross-domain Mixup
///             (anonymous ICLR 2021 submission). For each target example (x_t, y_t) of the batch, one
///             auxiliary example (x_s, y_s) from the source classes paired with y_t (Eq. 3), and
///             lambda ~ Beta(alpha, beta) per example (beta = 1 in the paper):
///                 x = lambda x_t + (1 - lambda) x_s                                  (Eq. 4)
///             --label-space joint (default): the "target" head covers the T target classes, then
///             the auxiliary set's source classes (predicting only the first T); its soft label is
///             lambda at y_t and 1 - lambda at T + rank(y_s):   L = -sum_k p_k log softmax(h(g(x)))_k
///             --label-space two-heads: a "source" head copied from the pretrained one:
///                 L = mean_i [lambda_i CE(h_t(g(x_i)), y_t,i) + (1 - lambda_i) CE(h_s(g(x_i)), y_s,i)]
///             Ablations (Table 4): --no-aux-label, L = CE(h_t(g(x)), y_t) on the mixed input. The
///             "Mixup" column ("traditional Mixup ... using only samples in the target dataset") is the
///             `mixup` method (methods/mixup.h: Beta(alpha, alpha) once per batch, a permutation of the
///             batch as partners), not an option here. Shapes: x (B, C, H, W), lambda (B).
///             Cost: one forward/backward of B examples, as l2.
///
///   seqtrain  Cui et al., Large Scale Fine-Grained Categorization and Domain-Specific Transfer
///             Learning (CVPR 2018): "mid-tune" on the auxiliary set with source labels, then fine-tune
///             on the target, as two trainings (XMixup section 1). Two phases (method.h): "aux",
///             --aux-iterations steps of CE(h_s(g(x_s)), y_s) on the source head copied from --init, not
///             validated; then "target", exactly --iterations steps of CE(h_t(g(x_t)), y_t). The Trainer
///             starts the target phase with a fresh optimizer (zero momentum) and the run's --schedule
///             from its start.
///
///   cotrain   Ge & Yu, Borrowing Treasures from the Wealthy: Deep Transfer Learning through Selective
///             Joint Fine-Tuning (CVPR 2017): each step one target and one auxiliary batch of B go
///             through the shared backbone together (2B, one forward/backward) into two heads:
///                 L = CE(h_t(g(x_t)), y_t) + aux_weight * CE(h_s(g(x_s)), y_s)
///             About twice the cost of l2 per step.
#include <memory>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"
#include "xfer/source/pairing.h"

namespace xfer {

/// The auxiliary data of a run: the pairing, the pools, and each source class's row in the pretrained
/// "source" head. Shared by the three methods; its pairs are checkpointed so a resume that would pair
/// differently fails instead of training on another auxiliary set.
class AuxData {
 public:
  /// Resolves the pairing (file or selection) and the pools of `opts.aux`. BadInput when --init has no
  /// "source" head holding every --source class.
  void setup(const AuxOptions& opts, const std::string& method, SetupContext& ctx);
  const Pairing& pairing() const { return pairing_; }
  const AuxPools& pools() const { return *pools_; }
  std::shared_ptr<const AuxPools> shared_pools() const { return pools_; }
  /// int64 (S) on the run's device: each source label's row in the copied "source" head.
  const torch::Tensor& head_rows() const { return head_rows_; }
  /// The same rows as a vector.
  const std::vector<int64_t>& head_row_list() const { return head_row_list_; }
  void save(Archive& out) const;
  void load(const Archive& in);

 private:
  AuxMode mode_ = AuxMode::paired;
  Pairing pairing_;
  std::shared_ptr<const AuxPools> pools_;
  torch::Tensor head_rows_;
  std::vector<int64_t> head_row_list_;
};

enum class LabelSpace { joint, two_heads };
XFER_ENUM_NAMES(LabelSpace, "joint", "two-heads")

struct XMixupOptions {
  AuxOptions aux;
  double alpha = 4.0;  // lambda ~ Beta(alpha, beta); larger alpha weighs the target more
  double beta = 1.0;
  LabelSpace label_space = LabelSpace::joint;  // joint | two-heads
  bool aux_label = true;                       // false: --no-aux-label, the target label only

  void fields(Fields& f);
};

/// One step's mixed batch, before the loss (public so tests can check what each option changes).
struct MixedBatch {
  torch::Tensor x;             // float (B, C, H, W): lambda x_t + (1 - lambda) x_s
  torch::Tensor y_target;      // int64 (B)
  torch::Tensor target_index;  // int64 (B), CPU: the target examples in the target train split
  torch::Tensor y_aux;         // int64 (B): the auxiliary examples' source labels
  torch::Tensor aux_index;     // int64 (B), CPU: the auxiliary examples in the source train split
  torch::Tensor lambda;        // float64 (B), CPU
};

/// lambda ~ Beta(alpha, beta), one per example: float64 (n), from the method's generator.
torch::Tensor xmixup_lambda(at::Generator& gen, double alpha, double beta, int64_t n);
/// Soft labels (B, K): lambda_i at column y_a,i and 1 - lambda_i at column y_b,i (summed if equal).
torch::Tensor mixed_soft_labels(const torch::Tensor& y_a, const torch::Tensor& y_b,
                                const torch::Tensor& lambda, int64_t num_classes);
/// The two-heads loss: mean_i [lambda_i CE(target_logits_i, y_t,i) + (1 - lambda_i) CE(source_logits_i,
/// y_s,i)].
torch::Tensor two_heads_mixed_cross_entropy(const torch::Tensor& target_logits,
                                            const torch::Tensor& source_logits, const torch::Tensor& y_target,
                                            const torch::Tensor& y_source, const torch::Tensor& lambda);

class XMixup : public Method {
 public:
  using Options = XMixupOptions;
  explicit XMixup(const Options& opts) : opts_(opts) {}
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  /// Draws this step's target batch, its auxiliary batch and the lambdas.
  MixedBatch mixed_batch(StepContext& ctx);
  const AuxData& aux() const { return aux_; }
  /// int64 (S) on the run's device: each source label's column in the joint head (-1 if not in it).
  const torch::Tensor& joint_columns() const { return joint_columns_; }

 private:
  /// Every auxiliary example comes from the classes paired with its target example (the aux stream is
  /// in step with the target stream); a logic_error otherwise.
  void check_paired(const Batch& target, const Batch& aux) const;

  Options opts_;
  AuxData aux_;
  int64_t target_classes_ = 0;
  torch::Tensor joint_columns_;
  std::vector<std::vector<char>> allowed_;       // [target class][source class]: paired
  torch::Tensor target_labels_, source_labels_;  // CPU, for check_paired
};

struct SeqTrainOptions {
  AuxOptions aux;
  int64_t aux_iterations = 0;  // steps of the auxiliary phase; 0: as many as --iterations

  void fields(Fields& f);
};

class SeqTrain : public Method {
 public:
  using Options = SeqTrainOptions;
  explicit SeqTrain(const Options& opts) : opts_(opts) {}
  /// "aux" (--aux-iterations, not validated), then "target" (--iterations).
  std::vector<Phase> phases(int64_t iterations) const override;
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override { aux_.save(out); }
  void load(const Archive& in) override { aux_.load(in); }

 private:
  Options opts_;
  AuxData aux_;
};

struct CoTrainOptions {
  AuxOptions aux;
  double aux_weight = 1.0;  // weight of the auxiliary cross-entropy

  void fields(Fields& f);
};

class CoTrain : public Method {
 public:
  using Options = CoTrainOptions;
  explicit CoTrain(const Options& opts) : opts_(opts) {}
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  void save(Archive& out) const override { aux_.save(out); }
  void load(const Archive& in) override { aux_.load(in); }

 private:
  Options opts_;
  AuxData aux_;
};

/// Registers xmixup, seqtrain and cotrain.
void register_xmixup_methods(MethodRegistry& registry);

}  // namespace xfer
