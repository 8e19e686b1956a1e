#include "xfer/search/tpe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "xfer/core/error.h"

namespace xfer {
namespace {

constexpr double kTpeEps = 1e-12;
const double kSqrt2 = std::sqrt(2.0);
const double kLogSqrt2Pi = 0.5 * std::log(2 * M_PI);

/// log(Phi(zu) - Phi(zl)) for zl < zu, computed on the side of the tail where it does not cancel.
double tpe_log_mass(double zl, double zu) {
  double diff;
  if (zl >= 0)
    diff = 0.5 * (std::erfc(zl / kSqrt2) - std::erfc(zu / kSqrt2));
  else if (zu <= 0)
    diff = 0.5 * (std::erfc(-zu / kSqrt2) - std::erfc(-zl / kSqrt2));
  else
    diff = 1 - 0.5 * std::erfc(zu / kSqrt2) - 0.5 * std::erfc(-zl / kSqrt2);
  if (diff > 0) return std::log(diff);
  // Both ends so far in one tail that erfc underflows: the density at the middle times the width.
  const double mid = 0.5 * (zl + zu);
  return -0.5 * mid * mid - kLogSqrt2Pi + std::log(zu - zl);
}

double tpe_log_sum_exp(const std::vector<double>& v) {
  double m = -std::numeric_limits<double>::infinity();
  for (double x : v) m = std::max(m, x);
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  return m + std::log(s);
}

/// An index drawn with probabilities proportional to `weights` (which sum to ~1).
size_t tpe_pick(const std::vector<double>& weights, std::mt19937_64& engine) {
  const double u = tpe_uniform(engine);
  double acc = 0;
  for (size_t i = 0; i + 1 < weights.size(); ++i) {
    acc += weights[i];
    if (u < acc) return i;
  }
  return weights.size() - 1;
}

/// A draw from N(mu, sigma^2) truncated to [lo, hi], by inverting the CDF on the tail side that keeps
/// precision.
double tpe_truncated_normal(double mu, double sigma, double lo, double hi, std::mt19937_64& engine) {
  const double a = (lo - mu) / sigma, b = (hi - mu) / sigma;
  const double u = tpe_uniform(engine);
  double z;
  if (a >= 0) {  // the whole interval is in the upper tail: use Q(x) = Phi(-x)
    const double qa = normal_cdf(-a), qb = normal_cdf(-b);
    z = -normal_quantile(qa + u * (qb - qa));
  } else {
    const double pa = normal_cdf(a), pb = normal_cdf(b);
    z = normal_quantile(pa + u * (pb - pa));
  }
  z = std::min(std::max(z, a), b);
  return mu + sigma * z;
}

double tpe_transform(const ParamSpec& spec, double v) {
  return spec.log() ? std::log(v) : v;
}

}  // namespace

double tpe_uniform(std::mt19937_64& engine) {
  return static_cast<double>(engine() >> 11) * 0x1.0p-53;
}

double normal_cdf(double x) {
  return 0.5 * std::erfc(-x / kSqrt2);
}

double normal_quantile(double p) {
  if (p <= 0) return -std::numeric_limits<double>::infinity();
  if (p >= 1) return std::numeric_limits<double>::infinity();
  // Acklam's rational approximation, then one Halley step on the erfc-based CDF.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double p_low = 0.02425;
  double x;
  if (p < p_low) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - p_low) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  const double e = normal_cdf(x) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(0.5 * x * x);
  return x - u / (1 + 0.5 * x * u);
}

std::vector<size_t> tpe_rank(const std::vector<Observation>& done) {
  // Optuna's key (-step, -value) ascending, a complete trial's step being +infinity.
  auto key = [&](size_t i) {
    const Observation& o = done[i];
    const double step =
        o.pruned ? -static_cast<double>(o.pruned_step) : -std::numeric_limits<double>::infinity();
    return std::make_pair(step, o.pruned && o.pruned_step < 0 ? 0.0 : -o.value);
  };
  std::vector<size_t> order(done.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
  return order;
}

int64_t tpe_gamma(int64_t n) {
  return std::min<int64_t>(static_cast<int64_t>(std::ceil(0.1 * static_cast<double>(n))), 25);
}

std::vector<double> tpe_weights(int64_t n) {
  if (n <= 0) return {};
  if (n < 25) return std::vector<double>(static_cast<size_t>(n), 1.0);
  // numpy.linspace(1/n, 1, n - 25), then 25 ones.
  std::vector<double> w;
  const int64_t ramp = n - 25;
  const double start = 1.0 / static_cast<double>(n);
  for (int64_t i = 0; i < ramp; ++i)
    w.push_back(ramp == 1 ? start
                          : start + (1.0 - start) * static_cast<double>(i) / static_cast<double>(ramp - 1));
  w.insert(w.end(), 25, 1.0);
  return w;
}

ParzenEstimator::ParzenEstimator(const ParamSpec& spec, const std::vector<double>& observations,
                                 const TpeOptions& opts)
    : spec_(spec), optuna31_kernels_(opts.optuna31_kernels) {
  const size_t n = observations.size();
  weights_ = tpe_weights(static_cast<int64_t>(n));
  if (n == 0)
    weights_ = {1.0};
  else
    weights_.push_back(opts.prior_weight);
  const double total = std::accumulate(weights_.begin(), weights_.end(), 0.0);
  for (double& w : weights_) w /= total;

  if (!spec.numeric()) {
    const size_t k = spec.choices.size();
    if (n == 0) {
      choice_probs_.assign(1, std::vector<double>(k, 1.0 / static_cast<double>(k)));
      return;
    }
    const double kernels = static_cast<double>(n + 1);
    choice_probs_.assign(n + 1, std::vector<double>(k, opts.prior_weight / kernels));
    for (size_t i = 0; i < n; ++i) choice_probs_[i][static_cast<size_t>(std::llround(observations[i]))] += 1;
    for (auto& row : choice_probs_) {
      const double s = std::accumulate(row.begin(), row.end(), 0.0);
      for (double& p : row) p /= s > 0 ? s : 1;
    }
    return;
  }

  // Transformed space: integers widen by half a step each side, log parameters live in log space.
  double lo = spec.low, hi = spec.high;
  if (spec.integer()) {
    lo -= 0.5;
    hi += 0.5;
  }
  if (spec.log()) {
    lo = std::log(lo);
    hi = std::log(hi);
  }
  low_ = lo;
  high_ = hi;
  std::vector<double> mus(n);
  for (size_t i = 0; i < n; ++i) mus[i] = tpe_transform(spec, observations[i]);

  // Bandwidths: the larger gap to the sorted neighbours, with the prior's centre among them and the
  // bounds at the ends (Optuna's univariate rule).
  const double prior_mu = 0.5 * (lo + hi);
  std::vector<double> with_prior = mus;
  with_prior.push_back(prior_mu);
  std::vector<size_t> order(with_prior.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return with_prior[x] < with_prior[y]; });
  const size_t m = with_prior.size();
  std::vector<double> s(m + 2);
  s[0] = lo;
  for (size_t i = 0; i < m; ++i) s[i + 1] = with_prior[order[i]];
  s[m + 1] = hi;
  std::vector<double> sorted_sigmas(m);
  for (size_t i = 0; i < m; ++i) sorted_sigmas[i] = std::max(s[i + 1] - s[i], s[i + 2] - s[i + 1]);
  if (!opts.consider_endpoints && s.size() >= 4) {
    sorted_sigmas[0] = s[2] - s[1];
    sorted_sigmas[m - 1] = s[m] - s[m - 1];
  }
  std::vector<double> sigmas(m);
  for (size_t i = 0; i < m; ++i) sigmas[order[i]] = sorted_sigmas[i];
  sigmas.resize(n);
  const double max_sigma = hi - lo;
  const double min_sigma =
      opts.magic_clip ? (hi - lo) / std::min(100.0, 1.0 + static_cast<double>(n + 1)) : kTpeEps;
  for (double& sg : sigmas) sg = std::min(std::max(sg, min_sigma), max_sigma);

  mus_ = mus;
  mus_.push_back(prior_mu);
  sigmas_ = sigmas;
  sigmas_.push_back(hi - lo);
}

double ParzenEstimator::sample(std::mt19937_64& engine) const {
  const size_t k = tpe_pick(weights_, engine);
  if (!spec_.numeric()) return static_cast<double>(tpe_pick(choice_probs_[k], engine));
  double x = tpe_truncated_normal(mus_[k], std::max(sigmas_[k], kTpeEps), low_, high_, engine);
  if (spec_.log()) x = std::exp(x);
  if (spec_.integer()) x = std::round(x);
  return std::min(std::max(x, spec_.low), spec_.high);
}

double ParzenEstimator::log_pdf(double value) const {
  std::vector<double> terms(weights_.size());
  if (!spec_.numeric()) {
    double p = 0;
    const auto c = static_cast<size_t>(std::llround(value));
    for (size_t k = 0; k < weights_.size(); ++k) p += weights_[k] * choice_probs_[k][c];
    return std::log(p);
  }
  for (size_t k = 0; k < weights_.size(); ++k) {
    const double sigma = std::max(sigmas_[k], kTpeEps), mu = mus_[k];
    const double log_norm = tpe_log_mass((low_ - mu) / sigma, (high_ - mu) / sigma);
    double log_p;
    if (spec_.kind == ParamSpec::Kind::Int) {
      const double lo = tpe_transform(spec_, value - 0.5), hi = tpe_transform(spec_, value + 0.5);
      log_p = tpe_log_mass((lo - mu) / sigma, (hi - mu) / sigma);
    } else {
      const double z = (tpe_transform(spec_, value) - mu) / sigma;
      log_p = -0.5 * z * z - kLogSqrt2Pi - (optuna31_kernels_ ? 0.0 : std::log(sigma));
    }
    terms[k] = std::log(weights_[k]) + log_p - log_norm;
  }
  return tpe_log_sum_exp(terms);
}

ParamValues RandomParamSampler::sample(const SearchSpace& space, const std::vector<Observation>&,
                                       uint64_t seed) {
  std::mt19937_64 engine(seed);
  ParamValues out;
  for (const auto& p : space.params) {
    const double u = tpe_uniform(engine);
    double v;
    switch (p.kind) {
      case ParamSpec::Kind::Linear:
        v = p.low + u * (p.high - p.low);
        break;
      case ParamSpec::Kind::Log:
        v = std::exp(std::log(p.low) + u * (std::log(p.high) - std::log(p.low)));
        break;
      case ParamSpec::Kind::Int:
        v = p.low + std::floor(u * (p.high - p.low + 1));
        break;
      case ParamSpec::Kind::LogInt:
        v = std::round(
            std::exp(std::log(p.low - 0.5) + u * (std::log(p.high + 0.5) - std::log(p.low - 0.5))));
        break;
      default:
        v = std::floor(u * static_cast<double>(p.choices.size()));
        break;
    }
    if (p.numeric())
      v = std::min(std::max(v, p.low), p.high);
    else
      v = std::min(v, static_cast<double>(p.choices.size() - 1));
    out[p.name] = v;
  }
  return out;
}

TpeSampler::TpeSampler(TpeOptions opts) : opts_(opts) {
  XFER_CHECK(opts_.startup_trials >= 0, "TPE: startup trials must be >= 0, got ", opts_.startup_trials);
  XFER_CHECK(opts_.ei_candidates >= 1, "TPE: EI candidates must be >= 1, got ", opts_.ei_candidates);
  XFER_CHECK(opts_.prior_weight > 0, "TPE: the prior weight must be > 0, got ", opts_.prior_weight);
}

ParamValues TpeSampler::sample(const SearchSpace& space, const std::vector<Observation>& complete,
                               uint64_t seed) {
  const auto n = static_cast<int64_t>(complete.size());
  if (n < opts_.startup_trials || n == 0) return random_.sample(space, complete, seed);
  std::mt19937_64 engine(seed);

  // The best gamma(n) trials are "below"; both groups keep their chronological order (the weights ramp
  // over age).
  const std::vector<size_t> by_value = tpe_rank(complete);
  const auto n_below = static_cast<size_t>(tpe_gamma(n));
  std::vector<size_t> below(by_value.begin(), by_value.begin() + n_below),
      above(by_value.begin() + n_below, by_value.end());
  std::sort(below.begin(), below.end());
  std::sort(above.begin(), above.end());

  ParamValues out;
  for (const auto& p : space.params) {
    std::vector<double> below_values, above_values;
    for (size_t i : below) below_values.push_back(complete[i].params.at(p.name));
    for (size_t i : above) above_values.push_back(complete[i].params.at(p.name));
    const ParzenEstimator l(p, below_values, opts_), g(p, above_values, opts_);
    std::vector<double> candidates(static_cast<size_t>(opts_.ei_candidates));
    for (double& c : candidates) c = l.sample(engine);
    double best_score = -std::numeric_limits<double>::infinity(), best = candidates[0];
    for (double c : candidates) {
      const double score = l.log_pdf(c) - g.log_pdf(c);
      if (score > best_score) {
        best_score = score;
        best = c;
      }
    }
    out[p.name] = best;
  }
  return out;
}

std::unique_ptr<ParamSampler> make_param_sampler(SamplerKind kind, const TpeOptions& tpe) {
  if (kind == SamplerKind::random) return std::make_unique<RandomParamSampler>();
  return std::make_unique<TpeSampler>(tpe);
}

}  // namespace xfer
