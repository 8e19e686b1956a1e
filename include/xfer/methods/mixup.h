#pragma once
/// The mixup family: data augmentation by mixing pairs of training examples and their labels.
///
///   mixup           Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
///                   lambda ~ Beta(alpha, alpha) once per batch, partners j = perm(i):
///                     x~ = lambda x_i + (1 - lambda) x_j
///                     L  = lambda CE(f(x~), y_i) + (1 - lambda) CE(f(x~), y_j)
///                   --fold uses max(lambda, 1 - lambda), as SMILE's code does; with symmetric Beta and a
///                   random permutation the two are the same in distribution. Defaults: alpha 0.2, no fold.
///   manifold_mixup  Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden
///                   States", ICML 2019. The same mixing, at a layer drawn uniformly per batch from
///                   --layers (default: the input, after stage 1, after stage 2), through a StageHook:
///                     h~ = lambda h_i + (1 - lambda) h_j;   L as for mixup. Default alpha 2.0.
///   cutmix          Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
///                   Localizable Features", ICCV 2019. With probability --prob (0.5), lambda ~ Beta(alpha,
///                   alpha) (alpha 1: uniform); a box of side sqrt(1 - lambda) H x sqrt(1 - lambda) W
///                   (truncated), centre uniform over the pixels, clipped to the image, is pasted from the
///                   partner; lambda is corrected to 1 - box area / (H W) and L is as for mixup. Otherwise
///                   the batch is trained with plain CE.
///
/// Shapes: images (N, C, H, W), labels int64 (N), logits (N, K). All randomness comes from the method's
/// checkpointed generator (StepContext::rng), in a fixed order per step, so runs resume bit for bit.
/// The draws and losses are free functions, so other methods (SMILE's vanilla mixup term) reuse them.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"
#include "xfer/methods/registry.h"

namespace xfer {

/// One mixup draw: the mixing weight of the batch and each example's partner.
struct MixupDraw {
  double lambda = 1.0;
  torch::Tensor perm;  // int64 (N), CPU: example i is mixed with example perm[i]
};

/// lambda ~ Beta(alpha, alpha), folded to max(lambda, 1 - lambda) when `fold`, then a permutation of n,
/// both from `gen` (in that order). BadInput if alpha <= 0.
MixupDraw draw_mixup(at::Generator& gen, int64_t n, double alpha, bool fold);
/// lambda * x + (1 - lambda) * x[perm], for images or any (N, ...) tensor.
torch::Tensor mix_with_partners(const torch::Tensor& x, const MixupDraw& draw);
/// The mixup loss lambda * CE(logits, y) + (1 - lambda) * CE(logits, y[perm]).
torch::Tensor mixup_loss(const torch::Tensor& logits, const torch::Tensor& labels, const MixupDraw& draw);

/// A CutMix box: rows [y1, y2), columns [x1, x2).
struct CutMixBox {
  int64_t y1 = 0, y2 = 0, x1 = 0, x2 = 0;
  int64_t area() const { return (y2 - y1) * (x2 - x1); }
};
/// The box of the CutMix reference code: cut_h = int(H sqrt(1 - lambda)), cut_w = int(W sqrt(1 - lambda)),
/// centred at (cy, cx), clipped: y1 = clip(cy - cut_h / 2, 0, H), y2 = clip(cy + cut_h / 2, 0, H) (integer
/// halves), the same for x.
CutMixBox cutmix_box(int64_t height, int64_t width, double lambda, int64_t cy, int64_t cx);
/// The mixing weight the box really gives: 1 - area / (H W).
double cutmix_lambda(const CutMixBox& box, int64_t height, int64_t width);
/// Mixup partners of this process's rows of batch `b`: rows perm[offset, offset + n) of the global batch
/// (`perm` drawn over the global batch, the same on every process). In one process x[perm], y[perm];
/// in a data-parallel run the partners may sit in another process's share, and `stream` rebuilds them, so
/// the run mixes exactly the pairs one process would.
struct MixupPartners {
  torch::Tensor x, y;
};
MixupPartners mixup_partners(const BatchStream& stream, const Batch& b, const torch::Tensor& perm);
/// Rows perm[offset, offset + n) of a per-example tensor `x` computed on this process's n rows of batch `b`
/// (hidden features, labels, a teacher's outputs; `perm` drawn over global_batch_size(b)): x[perm] in one
/// process; in a data-parallel run the global tensor is gathered from every rank first
/// (dist::all_gather_rows), differentiably, so the gradient through a partner's hidden features reaches
/// the rank that computed them and the run trains as one process would.
torch::Tensor partner_rows(const torch::Tensor& x, const Batch& b, const torch::Tensor& perm);
/// This process's rows of a per-example draw over the global batch of `b` (per-example mixing weights).
torch::Tensor shard_rows(const torch::Tensor& global, const Batch& b);

/// A copy of x with the box replaced by the same box of x[perm].
torch::Tensor cutmix_images(const torch::Tensor& x, const torch::Tensor& perm, const CutMixBox& box);

class MixupMethod : public Method {
 public:
  struct Options {
    double alpha = 0.2;  // Beta(alpha, alpha)
    bool fold = false;   // lambda = max(lambda, 1 - lambda)
    void fields(Fields& f);
  };
  explicit MixupMethod(Options opts) : opts_(opts) {}
  LossTerms loss(StepContext& ctx) override;

 private:
  Options opts_;
};

class ManifoldMixupMethod : public Method {
 public:
  struct Options {
    double alpha = 2.0;
    bool fold = false;
    std::string layers = "input,layer1,layer2";  // "input" and/or backbone stage names
    void fields(Fields& f);
  };
  explicit ManifoldMixupMethod(Options opts) : opts_(std::move(opts)) {}
  /// Checks the layer names against the backbone's stages.
  void setup(Model& model, SetupContext& ctx) override;
  LossTerms loss(StepContext& ctx) override;
  const std::vector<std::string>& layers() const { return layers_; }

 private:
  Options opts_;
  std::vector<std::string> layers_;
};

class CutMixMethod : public Method {
 public:
  struct Options {
    double alpha = 1.0;  // Beta(alpha, alpha); 1 = uniform
    double prob = 0.5;   // probability that a batch is cut and mixed
    void fields(Fields& f);
  };
  explicit CutMixMethod(Options opts) : opts_(opts) {}
  LossTerms loss(StepContext& ctx) override;

 private:
  Options opts_;
};

/// Registers mixup, manifold_mixup and cutmix.
void register_mixup_methods(MethodRegistry& registry);

}  // namespace xfer
