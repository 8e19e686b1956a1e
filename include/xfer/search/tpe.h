#pragma once
/// Samplers for hyperparameter search: random search, and the Tree-structured Parzen Estimator (TPE,
/// Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization") with the defaults of Optuna's
/// TPESampler (independent sampling):
///
///   - the first `startup_trials` (10) complete trials are sampled at random;
///   - then the n complete trials are split by value: the best gamma(n) = min(ceil(0.1 n), 25) are "below"
///     (good), the rest "above";
///   - for each parameter separately (univariate), a Parzen estimator l(x) is fit to the good values and
///     g(x) to the others: a mixture of truncated Gaussians, one per observation (mu = the value, sigma =
///     the larger distance to its neighbours among the sorted observations, the prior's centre and the
///     bounds, the end kernels using their inner neighbour), plus a prior kernel (mu = the middle of the
///     range, sigma = its width) of weight `prior_weight` (1); observation weights are 1 below 25
///     observations, then a ramp from 1/n up for the older ones;
///   - the "magic clip" floors sigma at (high - low) / min(100, 1 + number of kernels), and caps it at
///     high - low;
///   - `ei_candidates` (24) draws from l are scored by log l(x) - log g(x), and the best is taken (which
///     maximises expected improvement);
///   - log-domain parameters are modelled in log space; integers as discretised Gaussians on [lo - 1/2,
///     hi + 1/2] (a value's probability is the mass of [v - 1/2, v + 1/2]); log integers, as Optuna's, by
///     the continuous density of log(v) on [log(lo - 1/2), log(hi + 1/2)]; categorical parameters as a
///     mixture of distributions over the choices, each observed choice with one extra count on top of
///     prior_weight / (n + 1) per choice;
///   - pruned trials count as observations (as Optuna's): ranked after every complete trial, those that
///     got further first, then by their last intermediate value.
///
/// The Parzen estimators' weights, mus, sigmas and log densities equal Optuna 3.1's to 1e-6 relative
/// (tests/golden/make_tpe_golden.py); bench/tpe_bench.sh compares whole searches against python3-optuna.
/// That includes a quirk of Optuna up to 3.4: its truncated normal's log density leaves out -log(sigma)
/// (optuna issue 5109, fixed in 3.5), so in l(x) and g(x) each continuous kernel counts sigma times its
/// density, and wide kernels (the prior's, isolated observations') weigh more. It is what the default
/// `optuna31_kernels` reproduces; false gives normalised kernels, as Optuna 3.5 on.
/// One difference remains: among observations with equal values (an integer drawn twice) numpy's unstable
/// argsort may hand the bandwidths to them in another order; that changes the estimator only when their
/// weights differ (more than 25 observations).
///
/// Samplers are pure functions of (space, complete trials, seed): the same inputs give the same values
/// on every platform (their own uniform draws from a 64-bit Mersenne Twister, no std distributions).
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "xfer/core/fields.h"
#include "xfer/search/space.h"

namespace xfer {

/// A finished trial as a sampler sees it. Samplers maximise `value`. A pruned trial's value is its last
/// intermediate value and `pruned_step` the step of it (-1 with none: it ranks last, as value 0).
struct Observation {
  ParamValues params;
  double value = 0;
  bool pruned = false;
  int64_t pruned_step = -1;
};

class ParamSampler {
 public:
  virtual ~ParamSampler() = default;
  /// Values for every parameter of `space`, given the finished (complete and pruned) trials in the order
  /// they were created.
  virtual ParamValues sample(const SearchSpace& space, const std::vector<Observation>& complete,
                             uint64_t seed) = 0;
  virtual std::string name() const = 0;
};

class RandomParamSampler : public ParamSampler {
 public:
  ParamValues sample(const SearchSpace& space, const std::vector<Observation>& complete,
                     uint64_t seed) override;
  std::string name() const override { return "random"; }
};

struct TpeOptions {
  int64_t startup_trials = 10;
  int64_t ei_candidates = 24;
  double prior_weight = 1.0;
  bool magic_clip = true;
  bool consider_endpoints = false;
  bool optuna31_kernels = true;  // continuous kernels' log densities without -log(sigma), as Optuna <= 3.4
};

class TpeSampler : public ParamSampler {
 public:
  explicit TpeSampler(TpeOptions opts = {});
  ParamValues sample(const SearchSpace& space, const std::vector<Observation>& complete,
                     uint64_t seed) override;
  std::string name() const override { return "tpe"; }

 private:
  TpeOptions opts_;
  RandomParamSampler random_;
};

enum class SamplerKind { tpe, random };
XFER_ENUM_NAMES(SamplerKind, "tpe", "random")

std::unique_ptr<ParamSampler> make_param_sampler(SamplerKind kind, const TpeOptions& tpe = {});

// The pieces of TPE, exposed for tests.

/// The indices of `done`, best first, as Optuna's _split_observation_pairs orders them (stably): complete
/// trials by value, then pruned trials by their last step (later first), then by value.
std::vector<size_t> tpe_rank(const std::vector<Observation>& done);
/// Optuna's default gamma: min(ceil(0.1 n), 25) good trials out of n.
int64_t tpe_gamma(int64_t n);
/// Optuna's default weights of n observations (oldest first): 1 each below 25, else a linear ramp from
/// 1/n for the oldest n - 25 and 1 for the newest 25.
std::vector<double> tpe_weights(int64_t n);

/// A univariate Parzen estimator over one parameter, in the parameter's internal space (log space for
/// log parameters): a weighted mixture of Gaussians truncated to the range, or of categorical
/// distributions.
class ParzenEstimator {
 public:
  ParzenEstimator(const ParamSpec& spec, const std::vector<double>& observations, const TpeOptions& opts);
  /// A draw (an internal value: a number in the parameter's own units, or a choice index).
  double sample(std::mt19937_64& engine) const;
  /// log density (log probability for integers and choices) of an internal value.
  double log_pdf(double value) const;

  const std::vector<double>& weights() const { return weights_; }
  const std::vector<double>& mus() const { return mus_; }        // transformed space, prior last
  const std::vector<double>& sigmas() const { return sigmas_; }  // transformed space, prior last

 private:
  ParamSpec spec_;
  bool optuna31_kernels_ = true;
  std::vector<double> weights_;  // mixture weights, summing to 1, prior last
  std::vector<double> mus_, sigmas_;
  double low_ = 0, high_ = 0;                      // truncation bounds in transformed space
  std::vector<std::vector<double>> choice_probs_;  // categorical: one row per kernel
};

/// A uniform double in [0, 1) with 53 random bits.
double tpe_uniform(std::mt19937_64& engine);
/// The standard normal CDF, and its inverse (accurate to ~1e-15 relative away from 0 and 1).
double normal_cdf(double x);
double normal_quantile(double p);

}  // namespace xfer
