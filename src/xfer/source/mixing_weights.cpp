#include "xfer/source/mixing_weights.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>
#include <nlopt.hpp>

#include "xfer/core/error.h"

namespace xfer {

LayerGeometry LayerGeometry::from_rows(const torch::Tensor& grads) {
  XFER_CHECK(grads.dim() == 2 && grads.size(0) >= 2, "layer gradients must be (k + 1, n) with k >= 1, got ",
             grads.sizes());
  // Double precision: the solver compares cosines that differ in the 6th digit.
  const torch::Tensor g = grads.to(torch::kCPU, torch::kFloat64).contiguous();
  const torch::Tensor all = g.mm(g.t()).contiguous();  // (k+1, k+1)
  const int64_t k = g.size(0) - 1;
  const double* a = all.data_ptr<double>();
  LayerGeometry out;
  out.k = k;
  out.gram.resize(static_cast<size_t>(k * k));
  out.dots.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) out.gram[i * k + j] = a[i * (k + 1) + j];
    out.dots[i] = a[i * (k + 1) + k];
  }
  out.target_norm = std::sqrt(std::max(0.0, a[k * (k + 1) + k]));
  return out;
}

namespace {

/// w'Gw and Gw.
double mixing_quadratic(const LayerGeometry& l, const std::vector<double>& w, std::vector<double>* gw) {
  const int64_t k = l.k;
  double q = 0;
  if (gw) gw->assign(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < k; ++i) {
    double row = 0;
    for (int64_t j = 0; j < k; ++j) row += l.gram[i * k + j] * w[j];
    if (gw) (*gw)[i] = row;
    q += w[i] * row;
  }
  return q;
}

double mixing_dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

double LayerGeometry::cossim(const std::vector<double>& w) const {
  const double q = mixing_quadratic(*this, w, nullptr);
  if (!(q > 0) || !(target_norm > 0)) return 0.0;
  return mixing_dot(w, dots) / (std::sqrt(q) * target_norm);
}

std::vector<double> LayerGeometry::cossim_gradient(const std::vector<double>& w) const {
  std::vector<double> gw;
  const double q = mixing_quadratic(*this, w, &gw);
  std::vector<double> grad(static_cast<size_t>(k), 0.0);
  if (!(q > 0) || !(target_norm > 0)) return grad;
  const double s = std::sqrt(q), wb = mixing_dot(w, dots);
  for (int64_t i = 0; i < k; ++i) grad[i] = dots[i] / (s * target_norm) - wb * gw[i] / (q * s * target_norm);
  return grad;
}

std::vector<double> normalise_weights(const std::vector<double>& w) {
  double sum = 0;
  for (double v : w) {
    XFER_CHECK(std::isfinite(v) && v >= 0, "mixing weights must be finite and >= 0, got ", v);
    sum += v;
  }
  XFER_CHECK(sum > 0, "mixing weights sum to 0; they cannot be normalised");
  std::vector<double> out(w);
  for (double& v : out) v /= sum;
  return out;
}

double adaptive_lr_scale(double rho, double beta, double gamma) {
  return 1.0 / (1.0 + std::exp(-(beta * rho - gamma)));
}

std::vector<double> reweight_by_meta_gradient(const std::vector<double>& dots) {
  std::vector<double> w(dots.size());
  double sum = 0;
  for (size_t i = 0; i < dots.size(); ++i) {
    w[i] = std::isfinite(dots[i]) ? std::max(dots[i], 0.0) : 0.0;
    sum += w[i];
  }
  if (!(sum > 0)) return {};
  for (double& v : w) v /= sum;
  return w;
}

namespace {

double mixing_objective(unsigned n, const double* x, double* grad, void* data) {
  const auto& layer = *static_cast<const LayerGeometry*>(data);
  const std::vector<double> w(x, x + n);
  if (grad) {
    const std::vector<double> g = layer.cossim_gradient(w);
    std::copy(g.begin(), g.end(), grad);
  }
  return layer.cossim(w);
}

}  // namespace

MixingSolution solve_mixing_weights(const LayerGeometry& layer, const std::vector<double>& previous,
                                    const MixingSolverOptions& options) {
  const int64_t k = layer.k;
  XFER_CHECK(k >= 1 && static_cast<int64_t>(previous.size()) == k, "solve_mixing_weights: ", previous.size(),
             " previous weights for ", k, " sources");
  MixingSolution out;
  auto fail = [&](const std::string& why) {
    out.weights = previous;
    out.cossim = layer.cossim(previous);
    out.ok = false;
    out.why = why;
    return out;
  };
  bool any_source = false;
  for (int64_t i = 0; i < k; ++i) any_source = any_source || layer.gram[i * k + i] > 0;
  if (!(layer.target_norm > 0) || !std::isfinite(layer.target_norm))
    return fail("the target gradient is zero");
  if (!any_source) return fail("every source gradient is zero");
  if (k == 1) {
    out.weights = {1.0};
    out.cossim = layer.cossim(out.weights);
    out.ok = true;
    return out;
  }

  // The cosine of a non-negative mix is not concave where it is negative, so SLSQP can stop in a local
  // optimum: it starts from the uniform mix and from each single source, and the best end point wins.
  const std::vector<double> uniform(static_cast<size_t>(k), 1.0 / static_cast<double>(k));
  const double start = layer.cossim(uniform);
  std::vector<std::vector<double>> starts = {uniform};
  for (int64_t i = 0; i < k; ++i) {
    std::vector<double> vertex(static_cast<size_t>(k), 1e-3);  // just inside the bounds
    vertex[static_cast<size_t>(i)] = 1.0;
    starts.push_back(vertex);
  }
  std::string last_error;
  std::vector<double> best_w;
  double best_value = -std::numeric_limits<double>::infinity();
  for (std::vector<double> w : starts) {
    double reached = 0;
    nlopt::opt opt(nlopt::LD_SLSQP, static_cast<unsigned>(k));
    try {
      opt.set_lower_bounds(0.0);
      opt.set_upper_bounds(1.0);
      opt.set_max_objective(mixing_objective, const_cast<LayerGeometry*>(&layer));
      opt.set_xtol_rel(options.xtol_rel);
      opt.set_ftol_abs(options.ftol_abs);
      opt.set_maxeval(options.max_evaluations);
      opt.optimize(w, reached);
    } catch (const nlopt::roundoff_limited&) {
      // SLSQP often ends here at the optimum, when no step improves in double precision; `w` holds the
      // best point so far, which the checks below accept only if it is no worse than the start.
    } catch (const std::exception& e) {
      out.evaluations += opt.get_numevals();
      last_error = cat("SLSQP failed: ", e.what());
      continue;
    }
    out.evaluations += opt.get_numevals();
    bool finite = true;
    double sum = 0;
    for (double& v : w) {
      finite = finite && std::isfinite(v);
      v = std::min(1.0, std::max(0.0, v));  // bounds hold up to rounding
      sum += v;
    }
    if (!finite || !(sum > 0)) {
      last_error = "SLSQP returned non-finite or all-zero weights";
      continue;
    }
    for (double& v : w) v /= sum;
    const double value = layer.cossim(w);
    if (std::isfinite(value) && value > best_value) {
      best_value = value;
      best_w = std::move(w);
    }
  }
  if (best_w.empty()) return fail(last_error);
  if (best_value < start - 1e-9)
    return fail(cat("SLSQP ended below its start (", best_value, " < ", start, ")"));
  out.weights = std::move(best_w);
  out.cossim = best_value;
  out.ok = true;
  return out;
}

}  // namespace xfer
