#pragma once
/// GradMix's source-gradient weights for one layer (Li et al., "GradMix: Multi-source Transfer across
/// Domains and Tasks", WACV 2020, section 3.3), and the adaptive learning rate of section 3.4.
///
/// For a layer l with source gradients g_1..g_k and the gradient g_V of the loss on the small labelled
/// target set V (each flattened over the layer's parameters):
///
///   w* = argmax_{w >= 0} cossim(sum_i w_i g_i, g_V)                                    (Eq. 6)
///   w~_i = w*_i / sum_j w*_j                                                            (Eq. 7)
///   rho = sum_l cossim(sum_i w~_i^l g_i^l, g_V^l)                                       (Eq. 8)
///   eta = 1 / (1 + exp(-(beta * rho - gamma)))          multiplies the learning rate   (Eq. 9, 10)
///
/// The objective depends on the gradients only through their inner products, so a layer is summarised
/// by `LayerGeometry` (the k x k Gram matrix G_ij = g_i.g_j, b_i = g_i.g_V and |g_V|), computed in one
/// matrix product; the solver then works in k dimensions:
///
///   f(w)  = w.b / (sqrt(w'Gw) |g_V|)
///   df/dw = b / (s |g_V|) - (w.b) G w / (s^3 |g_V|),   s = sqrt(w'Gw)
///
/// The maximisation runs NLopt's LD_SLSQP (as the paper) with these analytic gradients, bounds
/// 0 <= w_i <= 1 (f is scale-invariant, so the upper bound only keeps the problem bounded), from uniform
/// weights. Everything here is pure: no state, no torch autograd.
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

/// The inner products of one layer's gradients that the mixing objective needs.
struct LayerGeometry {
  int64_t k = 0;             // number of sources
  std::vector<double> gram;  // k * k, row-major: g_i . g_j
  std::vector<double> dots;  // k: g_i . g_V
  double target_norm = 0;    // |g_V|

  /// From `grads`: (k + 1, n) with the k source gradients in its first rows and g_V in its last.
  static LayerGeometry from_rows(const torch::Tensor& grads);
  /// cossim(sum_i w_i g_i, g_V); 0 where it is undefined (a zero vector).
  double cossim(const std::vector<double>& w) const;
  /// The gradient of `cossim` with respect to w (k values).
  std::vector<double> cossim_gradient(const std::vector<double>& w) const;
};

struct MixingSolverOptions {
  double xtol_rel = 1e-6;   // SLSQP's relative tolerance on w
  double ftol_abs = 1e-10;  // and on the cosine similarity
  int max_evaluations = 200;
};

/// The outcome for one layer. On failure `weights` are `previous` unchanged and `why` says what failed.
struct MixingSolution {
  std::vector<double> weights;  // normalised to sum 1 (Eq. 7)
  double cossim = 0;            // cossim of the mixed gradient with g_V under `weights`
  bool ok = false;
  int evaluations = 0;  // objective evaluations SLSQP used
  std::string why;      // "" when ok
};

/// Solves Eq. 6 for one layer with SLSQP from uniform weights and normalises (Eq. 7). Never throws for
/// a failed solve: when SLSQP reports failure, returns a non-finite point or one no better than the
/// start, when g_V or every source gradient is zero, or when the weights sum to 0, the solution keeps
/// `previous` (which must have k entries) and sets ok = false. With one source the weight is 1.
MixingSolution solve_mixing_weights(const LayerGeometry& layer, const std::vector<double>& previous,
                                    const MixingSolverOptions& options = {});

/// w / sum(w). BadInput if a weight is negative or not finite, or if they sum to 0.
std::vector<double> normalise_weights(const std::vector<double>& w);

/// Eq. 9: 1 / (1 + exp(-(beta * rho - gamma))).
double adaptive_lr_scale(double rho, double beta, double gamma);

/// GradMix-SGD's per-source weights, by learning to reweight (Ren et al., ICML 2018): with per-source
/// loss weights eps (initialised to 0), one look-ahead step theta' = theta - alpha sum_i eps_i g_i and
/// the V loss at theta', the meta-gradient is d f_V(theta') / d eps_i |_{eps=0} = -alpha g_V . g_i.
/// Ren et al. take w_i = max(-d/d eps_i, 0) normalised to sum 1, i.e. w_i ∝ max(g_V . g_i, 0) over the
/// whole shared network. `dots` are the g_V . g_i. Returns an empty vector when no weight is positive.
std::vector<double> reweight_by_meta_gradient(const std::vector<double>& dots);

}  // namespace xfer
