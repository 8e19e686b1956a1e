#include "xfer/methods/semi.h"

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/losses.h"

namespace xfer {
namespace {

/// Per-example L2 norms over all but the first dimension, shaped to broadcast against `t`.
torch::Tensor semi_example_norms(const torch::Tensor& t) {
  std::vector<int64_t> shape(t.dim(), 1);
  shape[0] = t.size(0);
  return t.flatten(1).norm(2, 1).view(shape);
}

}  // namespace

torch::Tensor kl_divergence(const torch::Tensor& target_probs, const torch::Tensor& logits) {
  // sum_c p_c (log p_c - log q_c), with 0 log 0 = 0.
  const torch::Tensor log_p = torch::log(target_probs.clamp_min(1e-30));
  return (target_probs * (log_p - torch::log_softmax(logits, 1))).sum(1).mean();
}

torch::Tensor vat_perturbation(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& clean_probs,
                               double epsilon, double xi, at::Generator& gen) {
  XFER_CHECK(epsilon > 0 && xi > 0, "VAT needs epsilon > 0 and xi > 0, got ", epsilon, " and ", xi);
  torch::Tensor d =
      torch::randn(x.sizes(), gen, torch::TensorOptions().dtype(x.scalar_type())).to(x.device());
  d = d / semi_example_norms(d).clamp_min(1e-12);
  torch::Tensor r = (xi * d).detach().requires_grad_(true);
  const torch::Tensor kl = kl_divergence(clean_probs.detach(), f(x.detach() + r));
  torch::Tensor g = torch::autograd::grad({kl}, {r})[0].detach();
  const torch::Tensor norms = semi_example_norms(g);
  // Where the power iteration gives nothing usable, keep the random direction.
  const torch::Tensor usable = torch::isfinite(norms) & (norms > 0);
  g = torch::where(usable, g / norms.clamp_min(1e-30), d);
  return (epsilon * g).detach();
}

torch::Tensor vat_loss(const LogitsFn& f, const torch::Tensor& x, double epsilon, double xi,
                       at::Generator& gen) {
  torch::Tensor p;
  {
    torch::NoGradGuard no_grad;
    p = torch::softmax(f(x), 1);
  }
  const torch::Tensor r = vat_perturbation(f, x, p, epsilon, xi, gen);
  return kl_divergence(p, f(x + r));
}

torch::Tensor sharpen(const torch::Tensor& probs, double temperature) {
  XFER_CHECK(temperature > 0, "the sharpening temperature must be > 0, got ", temperature);
  const torch::Tensor powered = probs.pow(1.0 / temperature);
  return powered / powered.sum(1, true);
}

MixMatchLoss mixmatch_loss(const LogitsFn& f, const torch::Tensor& x, const torch::Tensor& y, int64_t classes,
                           const std::vector<torch::Tensor>& unlabelled_augmentations, double temperature,
                           double alpha, at::Generator& gen, const MixMatchShard& shard) {
  XFER_CHECK(!unlabelled_augmentations.empty(),
             "MixMatch needs at least one augmentation of the unlabelled batch");
  XFER_CHECK(alpha > 0, "MixMatch's mixup alpha must be > 0, got ", alpha);
  const int64_t nx = x.size(0);
  const auto k = static_cast<int64_t>(unlabelled_augmentations.size());
  // Label guessing: the sharpened mean prediction over the K augmentations.
  torch::Tensor guess;
  {
    torch::NoGradGuard no_grad;
    torch::Tensor mean;
    for (const auto& u : unlabelled_augmentations) {
      const torch::Tensor p = torch::softmax(f(u), 1);
      mean = mean.defined() ? mean + p : p;
    }
    guess = sharpen(mean / static_cast<double>(k), temperature);
  }
  // The global batch: X's rows, then each augmentation's (gathered from every rank in a data-parallel run),
  // and this process's rows in it.
  const int64_t nu = unlabelled_augmentations.front().size(0);
  const int64_t bx = shard.x_global > 0 ? shard.x_global : nx, bu = shard.u_global > 0 ? shard.u_global : nu;
  std::vector<torch::Tensor> images = {dist::all_gather_rows(x, bx, shard.x_offset)},
                             targets = {dist::all_gather_rows(
                                 torch::one_hot(y, classes).to(guess.scalar_type()), bx, shard.x_offset)};
  std::vector<torch::Tensor> mine = {torch::arange(shard.x_offset, shard.x_offset + nx)};
  for (int64_t j = 0; j < k; ++j) {
    images.push_back(
        dist::all_gather_rows(unlabelled_augmentations[static_cast<size_t>(j)], bu, shard.u_offset));
    targets.push_back(dist::all_gather_rows(guess, bu, shard.u_offset));
    mine.push_back(torch::arange(nu) + (bx + j * bu + shard.u_offset));
  }
  const torch::Tensor all_x = torch::cat(images), all_p = torch::cat(targets);
  const torch::Tensor rows = torch::cat(mine);
  const int64_t n = all_x.size(0);
  const torch::Tensor perm = sample_permutation(gen, n);
  torch::Tensor lambda = sample_beta(gen, alpha, alpha, n);
  lambda = torch::max(lambda, 1 - lambda);  // the mix stays closer to its own example
  const torch::Tensor own = rows.to(all_x.device()), partner = perm.index_select(0, rows).to(all_x.device());
  lambda = lambda.index_select(0, rows);
  const torch::Tensor mixed_x = mix(all_x.index_select(0, own), all_x.index_select(0, partner), lambda);
  const torch::Tensor mixed_p = mix(all_p.index_select(0, own), all_p.index_select(0, partner), lambda);
  const torch::Tensor logits = f(mixed_x);
  MixMatchLoss out;
  out.labelled = soft_cross_entropy(logits.slice(0, 0, nx), mixed_p.slice(0, 0, nx));
  out.unlabelled = (torch::softmax(logits.slice(0, nx), 1) - mixed_p.slice(0, nx)).pow(2).mean();
  return out;
}

}  // namespace xfer
