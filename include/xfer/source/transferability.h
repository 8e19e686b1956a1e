#pragma once
/// Transferability estimators: how well a pretrained model (or a source) will transfer to a labelled
/// target, from one forward pass over the target's training images and no fine-tuning. Each is a pure
/// function of tensors, computed in double precision; a higher score means a better expected transfer.
///
/// N target examples with labels y_i in [0, K), K >= 2, every class present.
///
/// LogME (You, Liu, Wang, Long, ICML 2021, Algorithm 1). For each class k a Bayesian linear regression of
/// the one-hot column y = Y[:, k] on the features F (N, D): w ~ N(0, 1/alpha I), y | F, w ~ N(F w, 1/beta I).
/// Its log evidence, maximised over alpha and beta by the fixed point
///     A = alpha I + beta F^T F,  m = beta A^-1 F^T y,  gamma = sum_i beta sigma_i / (alpha + beta sigma_i),
///     alpha <- gamma / m^T m,    beta <- (N - gamma) / ||F m - y||^2      (sigma_i: eigenvalues of F^T F)
/// from alpha = beta = 1 until alpha / beta changes by less than 1e-12 (relative), is
///     L_k = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log |A|
/// and LogME = 1/K sum_k L_k / N. One thin SVD F = U S V^T serves every class and iteration: with
/// x = U^T y and t = alpha / beta every term is a sum over the r non-zero singular values (singular values
/// below s_max max(N, D) eps count as zero), N - gamma is summed as (N - r) + sum t / (sigma_i + t) and
/// log |A| as r log beta + sum log(t + sigma_i) + (D - r) log alpha, so no term cancels: the noise-free
/// limit beta -> infinity that few-shot targets (N <= D) reach stays finite. Residuals are floored at
/// 1e-15 ||y||^2, the resolution of a double, so features that fit the labels exactly give a large
/// finite evidence instead of an infinite one. The other boundary, features that explain nothing of a
/// class (alpha / beta -> infinity, the evidence of pure noise), is approached until alpha / beta passes
/// 1e12 sigma_max, within 1e-12 of the limit. At most 10,000 iterations.
///
/// LEEP (Nguyen, Hassner, Seeger, Archambeau, ICML 2020). theta(x) is the source head's softmax over its
/// Z classes; P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z, P(y | z) = P(y, z) / sum_y' P(y', z), and
///     LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z.
///
/// NCE (Tran, Nguyen, Hassner, ICCV 2019). z_i = argmax_z theta(x_i)_z (ties: the lowest z); with the
/// empirical joint P(y, z) of (y_i, z_i),  NCE = -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)  (0 log 0 = 0).
/// 0 when the source label determines the target label; -H(Y) when it tells nothing.
///
/// H-score (Bao, Li, Huang et al., ICIP 2019).  H = tr(cov(f)^+ cov(E[f | y])), the
/// covariances over the N examples, E[f | y] the class means. Computed from the SVD of the centred
/// features, Fc = U S V^T:  H = ||Gc V S^-1||_F^2 with Gc the centred class means of each example, so the
/// covariance is never formed (its condition number would be squared); singular values below
/// s_max max(N, D) eps are dropped, as a pseudo-inverse does. When N - 1 <= D the centred features span
/// every direction the labels can take and H = K - 1 whatever the features: the paper's estimator needs
/// more examples than feature dimensions.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

/// The metrics `xfer rank` knows, in their display order: logme, leep, nce, hscore.
const std::vector<std::string>& transferability_metrics();
/// "all", one name, or a comma-separated list, in the order given (duplicates dropped). BadInput naming
/// the valid names.
std::vector<std::string> parse_transferability_metrics(const std::string& text);
/// Whether the metric reads a source head's outputs (LEEP, NCE) rather than features (LogME, H-score).
bool metric_needs_source_head(const std::string& metric);
/// The name papers print: LogME, LEEP, NCE, H-score.
std::string metric_label(const std::string& metric);

/// LogME with its per-class details.
struct LogMEResult {
  double score = 0;                 // mean over classes of the per-example log evidence
  std::vector<double> evidence;     // L_k / N per class
  std::vector<double> alpha, beta;  // the maximising hyperparameters per class
  std::vector<int64_t> iterations;  // fixed-point iterations per class
};

/// LogME of `features` (N, D) for `labels` (int64, N) in [0, num_classes).
LogMEResult logme(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes);
/// LEEP of the source head's probabilities `source_probs` (N, Z), rows summing to 1.
double leep(const torch::Tensor& source_probs, const torch::Tensor& labels, int64_t num_classes);
/// NCE of source labels `source_labels` (int64, N) in [0, num_source_classes).
double nce(const torch::Tensor& source_labels, int64_t num_source_classes, const torch::Tensor& labels,
           int64_t num_classes);
/// H-score of `features` (N, D).
double h_score(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes);

/// Each of `metrics` for one candidate: LogME and H-score read `features`, LEEP `source_probs`, NCE its
/// row-wise argmax. `source_probs` may be undefined when no metric needs it.
std::map<std::string, double> transferability_scores(const std::vector<std::string>& metrics,
                                                     const torch::Tensor& features,
                                                     const torch::Tensor& source_probs,
                                                     const torch::Tensor& labels, int64_t num_classes);

/// A candidate source's classes as a classifier in a model's feature space, for ranking sources under
/// one model (`xfer rank --sources`): one Gaussian per class with a shared isotropic variance, fitted by
/// maximum likelihood on the source's features,
///     mu_z = mean of class z,  pi_z = n_z / n,  var = sum_i ||f_i - mu_{z_i}||^2 / (n D),
///     theta(x)_z = pi_z N(f(x); mu_z, var I) / sum_z' pi_z' N(f(x); mu_z', var I),
/// XMixup's class centroids (Eq. 1) turned into posteriors. The variance is floored at 1e-12 of the mean
/// squared feature norm, so a source of one example per class gives nearest-centroid posteriors.
struct SourceClasses {
  torch::Tensor means;       // (Z, D) float64
  torch::Tensor log_priors;  // (Z) float64
  double variance = 1;
};
/// Fits the classes of a source (features (n, D), labels in [0, num_classes), every class present).
SourceClasses fit_source_classes(const torch::Tensor& features, const torch::Tensor& labels,
                                 int64_t num_classes);
/// theta(x) for every row of `features` (N, D): (N, Z) float64, rows summing to 1.
torch::Tensor source_class_posteriors(const SourceClasses& classes, const torch::Tensor& features);

}  // namespace xfer
