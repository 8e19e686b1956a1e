#include "xfer/source/transferability.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kEps = std::numeric_limits<double>::epsilon();

/// Labels as int64 on the CPU, after checking what every metric assumes of them.
torch::Tensor tr_labels(const torch::Tensor& labels, int64_t n, int64_t num_classes,
                        const std::string& what) {
  XFER_CHECK(num_classes >= 2, what, " needs a target with at least 2 classes, got ", num_classes);
  XFER_CHECK(labels.defined() && labels.dim() == 1 && labels.scalar_type() == torch::kInt64, what,
             " needs int64 labels of shape (N), got ", labels.defined() ? labels.toString() : "none");
  XFER_CHECK(labels.size(0) == n, what, ": ", labels.size(0), " labels for ", n, " examples");
  XFER_CHECK(n > 0, what, " needs at least one example");
  const torch::Tensor y = labels.cpu().contiguous();
  const int64_t lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
  XFER_CHECK(lo >= 0 && hi < num_classes, what, ": labels must be in [0, ", num_classes, "), got [", lo, ", ",
             hi, "]");
  const torch::Tensor counts = torch::bincount(y, {}, num_classes);
  for (int64_t c = 0; c < num_classes; ++c)
    XFER_CHECK(counts[c].item<int64_t>() > 0, what, ": target class ", c, " has no examples");
  return y;
}

/// A finite (N, D) matrix in double precision on the CPU.
torch::Tensor tr_matrix(const torch::Tensor& m, const std::string& what, const std::string& name) {
  XFER_CHECK(m.defined() && m.dim() == 2 && m.size(1) >= 1, what, " needs ", name, " of shape (N, D), got ",
             m.defined() ? cat(m.sizes()) : std::string("none"));
  const torch::Tensor d = m.to(torch::kCPU, torch::kFloat64).contiguous();
  XFER_CHECK(d.isfinite().all().item<bool>(), what, ": the ", name, " hold NaN or infinite values");
  return d;
}

/// Singular values above s_max * max(N, D) * eps: the numerical rank (numpy's matrix_rank tolerance).
int64_t tr_rank(const torch::Tensor& s, int64_t n, int64_t d) {
  if (s.numel() == 0) return 0;
  const double s_max = s[0].item<double>();
  if (!(s_max > 0)) return 0;
  const double cutoff = s_max * static_cast<double>(std::max(n, d)) * kEps;
  return (s > cutoff).sum().item<int64_t>();
}

/// The sums of the LogME fixed point at t = alpha / beta, over the r non-zero eigenvalues sigma of F^T F.
struct LogMETerms {
  double gamma = 0, rest = 0, m2 = 0, res2 = 0;  // rest = N - gamma
};

LogMETerms logme_terms(const std::vector<double>& sigma, const std::vector<double>& x2, double res0,
                       double floor, int64_t n, double t) {
  LogMETerms k;
  k.rest = static_cast<double>(n - static_cast<int64_t>(sigma.size()));
  for (size_t i = 0; i < sigma.size(); ++i) {
    const double q = sigma[i] + t;
    k.gamma += sigma[i] / q;
    k.rest += t / q;
    k.m2 += sigma[i] * x2[i] / (q * q);
    k.res2 += t * t * x2[i] / (q * q);
  }
  k.res2 = std::max(k.res2 + res0, floor);
  return k;
}

struct LogMEClass {
  double evidence = 0, alpha = 0, beta = 0;
  int64_t iterations = 0;
};

/// One class of LogME: the fixed point over t, then the evidence per example.
LogMEClass logme_class(const std::vector<double>& sigma, const std::vector<double>& x2, double res0,
                       double y2, int64_t n) {
  const double N = static_cast<double>(n);
  const double r = static_cast<double>(sigma.size());
  const double floor = 1e-15 * y2;
  double m2_total = 0;
  for (size_t i = 0; i < sigma.size(); ++i) m2_total += x2[i];
  LogMEClass out;
  // Labels with no component along any feature direction: alpha -> infinity, m = 0, and what is left is
  // the evidence of pure noise, maximised at beta = N / ||y||^2.
  auto noise_only = [&] {
    out.alpha = std::numeric_limits<double>::infinity();
    out.beta = N / y2;
    out.evidence = 0.5 * std::log(out.beta) - 0.5 - 0.5 * std::log(kTwoPi);
    return out;
  };
  if (sigma.empty() || m2_total == 0) return noise_only();
  // Features that explain nothing of this class drive alpha/beta to infinity (the same limit, approached):
  // past 1e12 sigma_max the evidence is within 1e-12 of it, so the iteration stops there.
  const double t_max = 1e12 * *std::max_element(sigma.begin(), sigma.end());
  double t = 1.0;  // alpha = beta = 1, as the paper starts
  constexpr int64_t kMaxIterations = 10000;
  for (out.iterations = 1; out.iterations <= kMaxIterations; ++out.iterations) {
    const LogMETerms k = logme_terms(sigma, x2, res0, floor, n, t);
    if (!(k.m2 > 0)) return noise_only();
    const double next = (k.gamma / k.m2) / (k.rest / k.res2);
    if (!(std::isfinite(next) && next > 0))
      throw NumericalError(cat("LogME's fixed point left the positive numbers (alpha/beta = ", next, ")"));
    const bool converged = std::abs(next - t) <= 1e-12 * t;
    t = std::min(next, t_max);
    if (converged || t == t_max) break;
  }
  out.iterations = std::min(out.iterations, kMaxIterations);
  const LogMETerms k = logme_terms(sigma, x2, res0, floor, n, t);
  out.alpha = k.gamma / k.m2;
  out.beta = k.rest / k.res2;
  // log|A| = r log beta + sum log(t + sigma_i) + (D - r) log alpha, folded into the other log terms.
  double log_det = 0;
  for (double s : sigma) log_det += std::log(t + s);
  // D enters only through D/2 log alpha - (D - r)/2 log alpha = r/2 log alpha.
  const double evidence = 0.5 * (N - r) * std::log(out.beta) + 0.5 * r * std::log(out.alpha) - 0.5 * log_det -
                          0.5 * out.beta * k.res2 - 0.5 * out.alpha * k.m2 - 0.5 * N * std::log(kTwoPi);
  out.evidence = evidence / N;
  return out;
}

}  // namespace

const std::vector<std::string>& transferability_metrics() {
  static const std::vector<std::string> names = {"logme", "leep", "nce", "hscore"};
  return names;
}

std::vector<std::string> parse_transferability_metrics(const std::string& text) {
  const auto& valid = transferability_metrics();
  if (text == "all") return valid;
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string name = text.substr(start, comma - start);
    XFER_CHECK(std::find(valid.begin(), valid.end(), name) != valid.end(), "--metric: unknown metric '", name,
               "'; valid: logme, leep, nce, hscore, all (or a comma-separated list)");
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
    start = comma + 1;
  }
  return out;
}

bool metric_needs_source_head(const std::string& metric) {
  return metric == "leep" || metric == "nce";
}

std::string metric_label(const std::string& metric) {
  if (metric == "logme") return "LogME";
  if (metric == "hscore") return "H-score";
  std::string upper = metric;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return upper;
}

LogMEResult logme(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes) {
  const torch::Tensor f = tr_matrix(features, "LogME", "features");
  const int64_t n = f.size(0), d = f.size(1);
  const torch::Tensor y = tr_labels(labels, n, num_classes, "LogME");
  const auto svd = torch::linalg_svd(f, /*full_matrices=*/false);
  const int64_t r = tr_rank(std::get<1>(svd), n, d);
  const torch::Tensor u = std::get<0>(svd).slice(1, 0, r);
  const torch::Tensor s = std::get<1>(svd).slice(0, 0, r);
  const torch::Tensor onehot = torch::one_hot(y, num_classes).to(torch::kFloat64);  // (N, K)
  const torch::Tensor x = torch::mm(u.t(), onehot);                                 // (r, K)
  // The part of y outside the features' span, summed directly rather than as ||y||^2 - ||x||^2.
  const torch::Tensor res0 = (onehot - torch::mm(u, x)).square().sum(0);
  const torch::Tensor sq = s.square().contiguous();
  const std::vector<double> sigma(sq.data_ptr<double>(), sq.data_ptr<double>() + r);
  LogMEResult out;
  for (int64_t c = 0; c < num_classes; ++c) {
    const torch::Tensor xc = x.select(1, c).square().contiguous();
    const std::vector<double> x2(xc.data_ptr<double>(), xc.data_ptr<double>() + r);
    const double y2 = onehot.select(1, c).sum().item<double>();
    const LogMEClass k = logme_class(sigma, x2, res0[c].item<double>(), y2, n);
    out.evidence.push_back(k.evidence);
    out.alpha.push_back(k.alpha);
    out.beta.push_back(k.beta);
    out.iterations.push_back(k.iterations);
    out.score += k.evidence / static_cast<double>(num_classes);
  }
  return out;
}

double leep(const torch::Tensor& source_probs, const torch::Tensor& labels, int64_t num_classes) {
  const torch::Tensor p = tr_matrix(source_probs, "LEEP", "source probabilities");
  const torch::Tensor y = tr_labels(labels, p.size(0), num_classes, "LEEP");
  XFER_CHECK(p.min().item<double>() >= 0, "LEEP: source probabilities must be >= 0, got ",
             p.min().item<double>());
  const double worst = (p.sum(1) - 1).abs().max().item<double>();
  XFER_CHECK(worst <= 1e-6,
             "LEEP: each row of source probabilities must sum to 1 (a softmax), one is off by ", worst);
  const double n = static_cast<double>(p.size(0));
  const torch::Tensor joint =
      torch::zeros({num_classes, p.size(1)}, p.options()).index_add_(0, y, p) / n;  // P(y, z)
  const torch::Tensor pz = joint.sum(0, /*keepdim=*/true);
  // A source class no example puts any mass on has no conditional; it never weighs in below either.
  const torch::Tensor conditional =
      torch::where(pz > 0, joint / pz.clamp_min(std::numeric_limits<double>::min()),
                   torch::zeros_like(joint));                             // P(y | z), (K, Z)
  const torch::Tensor eep = (p * conditional.index_select(0, y)).sum(1);  // sum_z P(y_i | z) theta_i,z
  return eep.log().mean().item<double>();
}

double nce(const torch::Tensor& source_labels, int64_t num_source_classes, const torch::Tensor& labels,
           int64_t num_classes) {
  XFER_CHECK(
      source_labels.defined() && source_labels.dim() == 1 && source_labels.scalar_type() == torch::kInt64,
      "NCE needs int64 source labels of shape (N)");
  XFER_CHECK(num_source_classes >= 1, "NCE needs at least one source class, got ", num_source_classes);
  const int64_t n = source_labels.size(0);
  const torch::Tensor y = tr_labels(labels, n, num_classes, "NCE");
  const torch::Tensor z = source_labels.cpu().contiguous();
  XFER_CHECK(z.min().item<int64_t>() >= 0 && z.max().item<int64_t>() < num_source_classes,
             "NCE: source labels must be in [0, ", num_source_classes, ")");
  const torch::Tensor counts =
      torch::bincount(y * num_source_classes + z, {}, num_classes * num_source_classes)
          .view({num_classes, num_source_classes})
          .to(torch::kFloat64);
  const torch::Tensor per_z = counts.sum(0, /*keepdim=*/true).expand_as(counts);
  const torch::Tensor seen = counts > 0;
  // sum over (y, z) with counts > 0 of P(y, z) log P(y | z); 0 log 0 = 0.
  const torch::Tensor terms =
      torch::where(seen, counts * (counts / per_z.clamp_min(1)).log(), torch::zeros_like(counts));
  return terms.sum().item<double>() / static_cast<double>(n);
}

double h_score(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes) {
  const torch::Tensor f = tr_matrix(features, "H-score", "features");
  const int64_t n = f.size(0), d = f.size(1);
  const torch::Tensor y = tr_labels(labels, n, num_classes, "H-score");
  const torch::Tensor mean = f.mean(0, /*keepdim=*/true);
  const torch::Tensor centred = f - mean;
  const auto svd = torch::linalg_svd(centred, /*full_matrices=*/false);
  const int64_t r = tr_rank(std::get<1>(svd), n, d);
  if (r == 0) return 0;  // constant features: no covariance, nothing explained
  const torch::Tensor s = std::get<1>(svd).slice(0, 0, r);
  const torch::Tensor v = std::get<2>(svd).slice(0, 0, r).t();  // (D, r)
  const torch::Tensor counts = torch::bincount(y, {}, num_classes).to(torch::kFloat64);
  const torch::Tensor sums = torch::zeros({num_classes, d}, f.options()).index_add_(0, y, f);
  const torch::Tensor class_means = sums / counts.unsqueeze(1) - mean;  // E[f | y] - E[f], (K, D)
  const torch::Tensor whitened = torch::mm(class_means, v) / s;         // (K, r)
  // tr((Fc^T Fc)^+ Gc^T Gc) with Gc's rows the centred class means of each example.
  return (whitened.square().sum(1) * counts).sum().item<double>();
}

std::map<std::string, double> transferability_scores(const std::vector<std::string>& metrics,
                                                     const torch::Tensor& features,
                                                     const torch::Tensor& source_probs,
                                                     const torch::Tensor& labels, int64_t num_classes) {
  std::map<std::string, double> out;
  for (const auto& m : metrics) {
    if (m == "logme") {
      out[m] = logme(features, labels, num_classes).score;
    } else if (m == "hscore") {
      out[m] = h_score(features, labels, num_classes);
    } else if (m == "leep") {
      out[m] = leep(source_probs, labels, num_classes);
    } else if (m == "nce") {
      XFER_CHECK(source_probs.defined() && source_probs.dim() == 2,
                 "NCE needs the source head's probabilities");
      out[m] = nce(source_probs.argmax(1), source_probs.size(1), labels, num_classes);
    } else {
      throw BadInput(cat("unknown transferability metric '", m, "'"));
    }
  }
  return out;
}

SourceClasses fit_source_classes(const torch::Tensor& features, const torch::Tensor& labels,
                                 int64_t num_classes) {
  const torch::Tensor f = tr_matrix(features, "a source's classes", "features");
  const int64_t n = f.size(0), d = f.size(1);
  XFER_CHECK(num_classes >= 1, "a source needs at least one class, got ", num_classes);
  XFER_CHECK(
      labels.defined() && labels.dim() == 1 && labels.scalar_type() == torch::kInt64 && labels.size(0) == n,
      "a source's classes need int64 labels, one per example");
  const torch::Tensor y = labels.cpu().contiguous();
  XFER_CHECK(y.min().item<int64_t>() >= 0 && y.max().item<int64_t>() < num_classes,
             "source labels must be in [0, ", num_classes, ")");
  const torch::Tensor counts = torch::bincount(y, {}, num_classes).to(torch::kFloat64);
  for (int64_t c = 0; c < num_classes; ++c)
    XFER_CHECK(counts[c].item<double>() > 0, "source class ", c, " has no examples");
  SourceClasses out;
  out.means = torch::zeros({num_classes, d}, f.options()).index_add_(0, y, f) / counts.unsqueeze(1);
  out.log_priors = (counts / static_cast<double>(n)).log();
  const double within = (f - out.means.index_select(0, y)).square().sum().item<double>();
  const double scale = f.square().sum().item<double>() / static_cast<double>(n * d);
  out.variance =
      std::max({within / static_cast<double>(n * d), 1e-12 * scale, std::numeric_limits<double>::min()});
  return out;
}

torch::Tensor source_class_posteriors(const SourceClasses& classes, const torch::Tensor& features) {
  const torch::Tensor f = tr_matrix(features, "source posteriors", "features");
  XFER_CHECK(classes.means.defined() && classes.means.size(1) == f.size(1), "source posteriors: ", f.size(1),
             "-dimensional features for classes fitted on ",
             classes.means.defined() ? classes.means.size(1) : int64_t{0}, " dimensions");
  std::vector<torch::Tensor> logits;
  // Squared distances class by class, (f - mu)^2 summed: the |f|^2 - 2 f.mu + |mu|^2 shortcut cancels.
  for (int64_t z = 0; z < classes.means.size(0); ++z)
    logits.push_back(classes.log_priors[z] - (f - classes.means[z]).square().sum(1) / (2 * classes.variance));
  return torch::softmax(torch::stack(logits, 1), 1);
}

}  // namespace xfer
