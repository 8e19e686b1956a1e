#pragma once
/// Analyses of a trained model beyond accuracy:
///   - interpolation loss (SMILE, Eq. 7; Feature-IL and Label-IL of its Table 6): how linearly the model
///     behaves between pairs of examples;
///   - parameter distance to the pretrained model (SMILE Table 7): how much the backbone forgot;
///   - feature spectrum (XMixup Fig. 2): the smallest singular values of the feature matrix, relative to
///     the largest (small tail values go with less negative transfer, Chen et al. 2019);
///   - forgetting probe (XMixup Table 2): how well the fine-tuned backbone still serves the source task,
///     on the auxiliary set's classes and on the others.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include "xfer/core/fields.h"
#include "xfer/core/stats.h"
#include "xfer/models/model.h"

namespace xfer {

/// What Label-IL measures: the head's logits or its softmax probabilities.
enum class LabelOutput { logits, softmax };
XFER_ENUM_NAMES(LabelOutput, "logits", "softmax")

struct InterpolationOptions {
  int64_t pairs = 1000;  // random pairs (x, x') of distinct examples
  double alpha = 0.2;    // lambda ~ Beta(alpha, alpha)
  uint64_t seed = 0;     // draws the pairs, delta1, delta2 and lambda
  int64_t batch = 500;   // pairs per forward pass
};

/// A function of a batch of inputs (N, ...) with one or more outputs, each (N, D).
using BatchFunction = std::function<std::vector<torch::Tensor>(const torch::Tensor&)>;

/// The interpolation loss (SMILE Eq. 7) of each output of `f`, over random pairs of rows of `inputs`: for a
/// pair (x, x'), delta1, delta2 ~ U(0, 1) and lambda ~ Beta(alpha, alpha), the Euclidean distance between
///     f(Mix_{lambda delta1 + (1 - lambda) delta2}(x, x'))   and   lambda f(Mix_delta1) + (1 - lambda)
///     f(Mix_delta2),
/// with Mix_d(x, x') = (1 - d) x + d x'. Returns the mean and std over pairs, one per output. 0 for an
/// affine f. BadInput for fewer than 2 inputs, pairs < 1 or alpha <= 0.
std::vector<MeanStd> interpolation_loss(const BatchFunction& f, const torch::Tensor& inputs,
                                        const InterpolationOptions& opts);

struct ModelInterpolation {
  MeanStd feature;  // f = pooled features g(x)
  MeanStd label;    // f = the head's logits (over the classes it predicts), or their softmax
};
/// Feature-IL and Label-IL of `model` (eval mode, no grad) on normalised inputs (N, C, H, W). Label-IL is
/// measured on `label_output` "logits" (default: SMILE's Table 6 reports Label-IL of 1.65-2.00, above the
/// sqrt(2) that bounds distances between probability vectors, so the paper measured unnormalised outputs)
/// or "softmax".
ModelInterpolation model_interpolation_loss(Model& model, const torch::Tensor& inputs,
                                            const std::string& head, const InterpolationOptions& opts,
                                            LabelOutput label_output = LabelOutput::logits);

/// Sum over the backbone's parameter tensors of ||w - w0||_2 between `model` and `reference` (SMILE
/// Table 7). Heads and BN running statistics are excluded. BadInput if the backbones differ.
double parameter_distance(const Model& model, const Model& reference);

/// Pooled features g(x) (N, D) of normalised inputs, in eval mode under no-grad, in batches.
torch::Tensor pooled_features(Model& model, const torch::Tensor& inputs, int64_t batch = 500);

/// A linear classifier (D -> `classes`) fitted to `features` (N, D) and `labels` int64 (N) by full-batch
/// L-BFGS (strong Wolfe line search, `iterations` iterations) on the mean cross-entropy plus decay/2 (||W||^2
/// +
/// ||b||^2). It starts from zero, or with a `seed` from torch's Linear initialisation (U(-1/sqrt(D),
/// 1/sqrt(D))) drawn from that seed: a fresh random head. On the features' device.
torch::nn::Linear fit_linear_probe(const torch::Tensor& features, const torch::Tensor& labels,
                                   int64_t classes, int64_t iterations, double decay,
                                   std::optional<uint64_t> seed = std::nullopt);

/// Top-1 accuracy on the subsets of XMixup's Table 2; a subset with no example has accuracy 0 and n 0.
struct SubsetAccuracy {
  double auxiliary = 0, aba = 0, all = 0;  // fractions in [0, 1]
  int64_t auxiliary_n = 0, aba_n = 0, all_n = 0;
};

/// XMixup's forgetting probe (section 5.1, Table 2): "we use models fine-tuned on target tasks as feature
/// extractors for images in source domains. A randomly initialized fully connected layer is trained to
/// adapt to each specified source task." Given a frozen backbone's pooled features of a source task's
/// training split (N, D) and test split (M, D), a fresh linear head over `classes` classes (random init
/// from `seed`, fit_linear_probe with `iterations` and `decay`) is trained on the training features, and
/// its top-1 on the test split is reported over the test examples of the `auxiliary` classes (the source
/// classes of the auxiliary set), over the rest (ABA: all but auxiliary) and over all.
SubsetAccuracy forgetting_probe(const torch::Tensor& train_features, const torch::Tensor& train_labels,
                                const torch::Tensor& test_features, const torch::Tensor& test_labels,
                                int64_t classes, const std::vector<int64_t>& auxiliary, int64_t iterations,
                                double decay, uint64_t seed);

/// The singular values of `features` (N, D) divided by the largest, the `k` smallest in ascending order
/// (XMixup Fig. 2); k is capped at min(N, D). BadInput for an empty matrix or k < 1.
std::vector<double> feature_spectrum(const torch::Tensor& features, int64_t k);

}  // namespace xfer
