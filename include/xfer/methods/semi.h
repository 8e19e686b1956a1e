#pragma once
/// Semi-supervised losses on unlabelled target images, the extra terms GradMix adds (Li et al. 2020,
/// section 3.6). Shapes: images x (N, C, H, W), normalised; logits (N, K); probabilities (N, K).
///
/// VAT (Miyato et al., "Virtual Adversarial Training", TPAMI 2018), one power iteration:
///   d ~ N(0, I), d <- xi * d / |d|                       (per example, over C*H*W)
///   g = grad_d KL(p(x) || p(x + d)),  p(x) fixed
///   r_adv = epsilon * g / |g|                            (per example)
///   L_vat = mean_n KL(p(x_n) || p(x_n + r_adv_n))
///
/// MixMatch (Berthelot et al., NeurIPS 2019), with labelled batch (x, y) and K augmentations u_1..u_K of
/// an unlabelled batch:
///   q = Sharpen(mean_k softmax(f(u_k)), T),  Sharpen(p, T)_c = p_c^(1/T) / sum_j p_j^(1/T)   (no grad)
///   W = shuffle([x; u_1..u_K]) with targets [onehot(y); q..q]
///   lambda ~ Beta(alpha, alpha) per example, lambda' = max(lambda, 1 - lambda)
///   X' = mix(x, W[:|x|]), U' = mix(u, W[|x|:])        (images and targets, weight lambda' on the first)
///   L_x = softCE(f(X'), p_X'),  L_u = mean over examples and classes of (softmax(f(U')) - q_U')^2
/// and the term is L_x + lambda_u L_u. X' and U' go through the network as one batch, so batch norm sees
/// them together (the reference code interleaves for the same reason).
#include <functional>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace xfer {

/// The network under training, as a function from images to logits.
using LogitsFn = std::function<torch::Tensor(const torch::Tensor& x)>;

/// Mean over the batch of KL(p || softmax(logits)) for target probabilities p (rows sum to 1).
torch::Tensor kl_divergence(const torch::Tensor& target_probs, const torch::Tensor& logits);

/// VAT's adversarial perturbation r_adv (same shape as x, per-example L2 norm `epsilon`), from one power
/// iteration started at a Gaussian direction drawn from `gen`. `clean_probs` = softmax(f(x)), fixed.
/// Examples whose power-iteration gradient vanishes (xi below the precision of x) keep the random direction.
torch::Tensor vat_perturbation(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& clean_probs,
                               double epsilon, double xi, at::Generator& gen);
/// The VAT loss: KL(p(x) || p(x + r_adv)) with p(x) fixed.
torch::Tensor vat_loss(const LogitsFn& f, const torch::Tensor& x, double epsilon, double xi,
                       at::Generator& gen);

/// p_c^(1/T) / sum_j p_j^(1/T), row-wise (T = 1: p unchanged; T -> 0: one-hot).
torch::Tensor sharpen(const torch::Tensor& probs, double temperature);

struct MixMatchLoss {
  torch::Tensor labelled;    // L_x
  torch::Tensor unlabelled;  // L_u (without lambda_u)
};
/// Where a data-parallel process's rows sit in the global labelled and unlabelled batches (global size 0:
/// the rows given are the whole batch, as in one process).
struct MixMatchShard {
  int64_t x_global = 0, x_offset = 0;
  int64_t u_global = 0, u_offset = 0;
};
/// MixMatch's two terms on labelled (x, y in [0, classes)) and K >= 1 augmentations of an unlabelled batch.
/// With a `shard`, the mixup runs over the global batch as one process would (the other ranks' images and
/// guessed labels gathered, the permutation and weights drawn over all rows) and the terms are this rank's
/// rows' means.
MixMatchLoss mixmatch_loss(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, int64_t classes,
                           const std::vector<torch::Tensor>& unlabelled_augmentations, double temperature,
                           double alpha, at::Generator& gen, const MixMatchShard& shard = {});

}  // namespace xfer
