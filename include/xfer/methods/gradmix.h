#pragma once
/// GradMix (Xu, Zhang, Wang, Hoi, WACV 2020, "GradMix: Multi-source Transfer across Domains and Tasks")
/// and the baselines of its Table 1.
///
/// Setting: labelled sources S_1..S_k (`--sources "SPEC;SPEC"`, each with its own label space), a small
/// labelled target set V (the --target spec's train split), the target's hyper-validation set (its
/// val split: the Trainer selects and reports on it), and unlabelled target images U (`--unlabelled`:
/// by default the target spec's unused training images). A source whose class names equal the target's
/// (same names, same order) shares the "target" head; every other source i gets its own head "s<i>"
/// (a copy of the --init model's "source" head when that has the same classes, else fresh).
///
/// `gradmix`, per step (section 3.3, 3.4):
///   g_i = grad of CE on a batch of S_i, for every shared parameter (the backbone)       one backward each
///   g_V = grad of CE on a batch of V (head "target")                                     one backward
///   per layer l:  w^l = argmax_{w>=0} cossim(sum_i w_i g_i^l, g_V^l), normalised to sum 1  (Eq. 6, 7; SLSQP)
///   rho = sum_l cossim(sum_i w_i^l g_i^l, g_V^l),  eta = 1/(1+exp(-(beta rho - gamma)))   (Eq. 8, 9)
///   backbone grad^l = eta * sum_i w_i^l g_i^l;  each head: the gradient of its own source(s), unscaled (Eq.
///   10)
/// eta scales this batch's mixed backbone gradient before the optimizer step, so with momentum an
/// unimportant batch enters the momentum buffer scaled by eta (not the learning rate, which would scale
/// the whole buffer and the heads). A --ssl term's gradient is added after, unscaled.
///
/// A layer (`--layers layer`, the paper's "layer with parameter theta^l") is a convolution or linear
/// layer together with its batch norm: cnn4 has 4, as the paper's digit network has 4 convolutions (and one
/// shared fully connected layer). See `gradmix_layers`. rho is Eq. 8's sum over the layers, not a mean,
/// so beta and gamma mean what the paper's Table 2 means for a network of 4-5 shared layers (gamma 0.6
/// with beta 10, its best, is the default); with a deeper backbone rho ranges over [-L, L] and eta
/// saturates sooner. `--layers module` weighs every module with parameters (a batch norm apart from its
/// convolution), `tensor` each parameter tensor and `global` uses one weight per source for the whole
/// backbone (Eq. 4). When SLSQP fails on a layer, that layer keeps its previous weights and the step's
/// `slsqp_failures` counts it; the run never stops for it. The weights are method state (checkpointed).
/// metrics.jsonl logs, averaged over each logging window, every layer's weights (`w/LAYER/s<i>`: their
/// mean) and `vertex/LAYER`: the fraction of steps whose weights sat at a vertex of the simplex (one
/// source alone), and `vertex`, that fraction over all layers. When several sources share the target head
/// (S_u, or two labelled sources with the target's classes), the target head is mixed among them in the
/// same way (`w/head/s<i>`; not part of rho, which sums layers 1..L-1).
///
/// `gradmix-sgd` (the paper's "GradMix SGD", Table 1): one weight per source by learning to reweight (Ren
/// et al. 2018), the paper's "SGD on w to directly minimise the validation error" of Eq. 3. As Ren et al.'s
/// code, the loss is sum_i eps_i L_i with eps = 0, one look-ahead step theta' = theta - alpha sum_i eps_i
/// grad L_i, and w_i = max(-d L_V(theta') / d eps_i, 0), normalised to sum 1 (all 0 when none is positive:
/// the batch then makes no source update). At eps = 0 theta' = theta, so the meta-gradient is exactly
/// -alpha grad L_V(theta) . grad L_i(theta) over every parameter V's loss depends on: the shared layers and
/// the target head (a source on another head meets V only in the backbone); no second forward is needed.
/// The update is the gradient of the weighted loss sum_i w_i L_i (heads included), with eta as above.
/// `--meta-gradient backbone` keeps the earlier closed form: dot products over the backbone only, heads
/// unweighted, and the previous weights when none is positive.
/// Baselines: `source-only` (backbone grad = sum_i g_i, Eq. 1), `target-only` (CE on V only) and
/// `finetune` (two phases, method.h: source-only for `--switch-at` of the run, then CE on V at
/// `--finetune-lr-scale` with a fresh optimizer and schedule).
///
/// Unlabelled target data (sections 3.5, 3.6), for gradmix and gradmix-sgd:
///   --pseudo FILE   ensemble probabilities written by `xfer gradmix-pseudo`; hard labels (all models agree,
///                   each above --pseudo-threshold) or soft labels (their mean, KL loss) form one more
///                   source S_u on the target head, mixed like the others; V is enlarged to --enlarge-v
///                   per class with hard-labelled images.
///   --ssl vat|mixmatch  adds VAT or MixMatch on U (methods/semi.h) to the mixed gradient, unmixed. MixMatch
///                   follows Berthelot et al.: lambda_U = 100, ramped up linearly over the first 1/64 of
///                   the run (their 16k of 2^20 steps).
#include <map>
#include <string>
#include <vector>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"

namespace xfer {

/// What one GradMix weight covers: a layer (the paper's), a module with parameters, a parameter tensor, or
/// the whole backbone.
enum class MixingGranularity { layer, module, tensor, global };
XFER_ENUM_NAMES(MixingGranularity, "layer", "module", "tensor", "global")
/// How gradmix-sgd finds its weights: Ren et al.'s look-ahead meta-gradient, or backbone dot products only.
enum class MetaGradient { lookahead, backbone };
XFER_ENUM_NAMES(MetaGradient, "lookahead", "backbone")
/// The semi-supervised term on the unlabelled target images U.
enum class SslTerm { none, vat, mixmatch };
XFER_ENUM_NAMES(SslTerm, "none", "vat", "mixmatch")
/// Ensemble pseudo-labels as hard labels (every model agrees; CE) or soft ones (mean probability; KL).
enum class PseudoLabels { hard, soft };
XFER_ENUM_NAMES(PseudoLabels, "hard", "soft")

class GradMixMethod : public Method {
 public:
  enum class Mode { gradmix, sgd, source_only, target_only, finetune };

  struct Options {
    Mode mode = Mode::gradmix;            // set by the registry entry, not a flag
    std::string sources;                  // "SPEC;SPEC;..."; empty: --source
    std::string shared_sources = "auto";  // "auto" (same class names as the target) or indices "0,2"
    int64_t v_batch = 0;                  // V batch size; 0: min(|V|, --batch-size)
    // gradmix, gradmix-sgd
    bool adalr = true;
    double beta = 10, gamma = 0.6;  // Table 2's best
    MixingGranularity layers = MixingGranularity::layer;
    MetaGradient meta_gradient = MetaGradient::lookahead;  // gradmix-sgd
    std::string unlabelled = "rest";  // "rest" (the target spec's unused training images) or a spec
    SslTerm ssl = SslTerm::none;
    double vat_epsilon = 2.0, vat_xi = 1e-6, vat_weight = 1.0;
    double mixmatch_weight = 100, mixmatch_rampup = 1.0 / 64, mixmatch_t = 0.5, mixmatch_alpha = 0.75;
    int64_t mixmatch_k = 2;
    std::string pseudo;  // ensemble file of `xfer gradmix-pseudo`
    PseudoLabels pseudo_mode = PseudoLabels::hard;
    double pseudo_threshold = 0.8;
    int64_t enlarge_v = 100;  // per class, with hard labels (0: off)
    // finetune
    double switch_at = 0.5, finetune_lr_scale = 0.1;

    void fields(Fields& f);
    /// Cross-field checks (fields() checks each value alone).
    void check() const;
  };

  explicit GradMixMethod(Options options);
  static const char* mode_name(Mode mode);

  /// finetune: "sources" then "v"; the other modes one phase.
  std::vector<Phase> phases(int64_t iterations) const override;
  void setup(Model& model, SetupContext& ctx) override;
  /// CE on a V batch (target-only, and gradmix-finetune's second phase).
  LossTerms loss(StepContext& ctx) override;
  LossTerms compute_gradients(StepContext& ctx) override;
  /// Mixed steps average each per-source gradient and V's over the processes before solving.
  bool synchronises_gradients() const override { return synchronised_; }
  void save(Archive& out) const override;
  void load(const Archive& in) override;

  /// The mixing layers (short module names, "all" for --layers global) and their current weights
  /// (one row per layer, one weight per source, the pseudo-labelled source last).
  const std::vector<std::string>& layer_names() const { return layer_names_; }
  const std::vector<std::vector<double>>& weights() const { return weights_; }
  /// The sources' names, "s0", "s1", ..., and "pseudo".
  std::vector<std::string> source_names() const;
  int64_t solver_failures() const { return failures_; }
  /// Seconds spent computing the layers' inner products and solving for the weights, since setup.
  double solver_seconds() const { return solver_seconds_; }

 private:
  struct Source {
    std::string name;    // "s0", ..., "pseudo"
    std::string stream;  // batch stream
    std::string head;    // "target" or "s<i>"
    torch::Tensor
        soft;  // soft pseudo-labels (N, K) indexed by the stream's positions; undefined: hard labels
  };
  using Parts = std::map<std::string, torch::Tensor>;
  /// One step's gradients: per source its backbone (g) and head (h) gradients; V's batch, and its gradient
  /// over the backbone then the target head.
  struct StepGradients {
    std::vector<std::vector<torch::Tensor>> g, h;
    Batch v;
    std::vector<torch::Tensor> gv;
  };
  /// setup's parts: the labelled sources (streams, heads); S_u from --pseudo, returning V (enlarged by
  /// --enlarge-v); the backbone's trainable parameters grouped into mixing layers; uniform weights.
  void add_labelled_sources(Model& model, SetupContext& ctx);
  TensorDataset add_pseudo_source(Model& model, SetupContext& ctx);
  void group_shared_layers(Model& model);
  void reset_weights(const std::string& target_head);
  LossTerms mixed_step(StepContext& ctx);
  /// One backward per source: fills grads.g and grads.h, logs the losses and adds them to `total`.
  void source_gradients(StepContext& ctx, StepGradients& grads, Parts& parts, torch::Tensor& total);
  /// V's backward on grads.v, then the weights of every layer (and of the target head); returns rho and
  /// counts the layers whose solve failed in `failed`.
  double solve_weights(StepContext& ctx, StepGradients& grads, Parts& parts, int64_t& failed);
  /// Sets the gradients: each layer's mixed (summed without `mixing`) backbone gradient times eta, and
  /// each head's gradient of its sources.
  void set_gradients(StepContext& ctx, const StepGradients& grads, bool mixing, double eta);
  void log_weights(StepContext& ctx, Parts& parts) const;
  bool lookahead() const { return opts_.mode == Mode::sgd && opts_.meta_gradient == MetaGradient::lookahead; }
  LossTerms target_step(StepContext& ctx, double lr_scale);
  /// The --ssl term on a U batch (MixMatch also mixes in the V batch `v`).
  torch::Tensor ssl_loss(StepContext& ctx, const Batch& v, Parts& parts);
  /// Adds the --ssl term's gradient to the parameters' (averaged over the processes); returns the term.
  torch::Tensor ssl_gradients(StepContext& ctx, const Batch& v, Parts& parts);

  Options opts_;
  std::vector<Source> sources_;
  std::vector<torch::Tensor> shared_;        // backbone parameters that train
  std::vector<std::vector<size_t>> layers_;  // indices into shared_, per layer
  std::vector<std::string> layer_names_;
  std::vector<std::vector<double>> weights_;  // per layer, per source
  std::vector<double> head_weights_;          // per source: its weight on the target head (0: other head)
  int64_t failures_ = 0;
  bool synchronised_ = false;
  double solver_seconds_ = 0;
  int64_t classes_ = 0;
  TensorDataset unlabelled_;  // U, for --ssl
  uint64_t aug_seed_ = 0;     // MixMatch's extra augmentations
  int64_t crop_pad_ = 0;
  bool flip_ = false;
};

/// One GradMix mixing layer: its name (the convolution's or linear layer's module) and its parameters
/// (indices into the list given to `gradmix_layers`).
struct MixingLayer {
  std::string name;
  std::vector<size_t> params;
};
/// The paper's layers from a backbone's parameters (names and numbers of dimensions, in order): each module
/// owning a parameter of 2+ dimensions (a convolution, a linear layer) is a layer, and a module owning only
/// vectors (a batch norm, a bias) joins the layer it normalises, by name: "P.bnK" joins "P.convK", "P.N"
/// joins "P.(N-1)" (a Sequential's conv and batch norm, a downsample's), any other joins the layer before
/// it. Parameters keep their order within a layer.
std::vector<MixingLayer> gradmix_layers(const std::vector<std::string>& names,
                                        const std::vector<int64_t>& dims);

/// U for `--unlabelled OPTION`: "rest" gives the training images of the target spec that neither V nor its
/// val split uses (the spec needs per_class=N); anything else is a spec whose train split is taken, labels
/// ignored. Shared by the method and `xfer gradmix-pseudo`.
TensorDataset unlabelled_target_images(const std::string& option, const Task& target, uint64_t seed);

/// Registers gradmix, gradmix-sgd, source-only, target-only and finetune.
void register_gradmix_methods(MethodRegistry& registry);

/// MixMatch's lambda_U at `step` of a run of `total_steps`: --mixmatch-weight, ramped up linearly from 0
/// over the first --mixmatch-rampup of the run (Berthelot et al.'s linear ramp-up).
double mixmatch_unlabelled_weight(const GradMixMethod::Options& o, int64_t step, int64_t total_steps);

}  // namespace xfer
