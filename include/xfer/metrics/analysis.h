#pragma once
/// Analyses of a trained model beyond accuracy:
///   - interpolation loss (SMILE, Eq. 7; Feature-IL and Label-IL of its Table 6): how linearly the model
///     behaves between pairs of examples;
///   - parameter distance to the pretrained model (SMILE Table 7): how much the backbone forgot;
///   - feature spectrum (XMixup Fig. 2): the smallest singular values of the feature matrix, relative to
///     the largest (small tail values go with less negative transfer, Chen et al. 2019).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "xfer/models/model.h"
#include "xfer/report/table.h"

namespace xfer {

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
///     f(Mix_{lambda delta1 + (1 - lambda) delta2}(x, x'))   and   lambda f(Mix_delta1) + (1 - lambda) f(Mix_delta2),
/// with Mix_d(x, x') = (1 - d) x + d x'. Returns the mean and std over pairs, one per output. 0 for an
/// affine f. BadInput for fewer than 2 inputs, pairs < 1 or alpha <= 0.
std::vector<MeanStd> interpolation_loss(const BatchFunction& f, const torch::Tensor& inputs,
                                        const InterpolationOptions& opts);

struct ModelInterpolation {
  MeanStd feature;  // f = pooled features g(x)
  MeanStd label;    // f = softmax of the head's logits (over the classes it predicts)
};
/// Feature-IL and Label-IL of `model` (eval mode, no grad) on normalised inputs (N, C, H, W).
ModelInterpolation model_interpolation_loss(Model& model, const torch::Tensor& inputs, const std::string& head,
                                            const InterpolationOptions& opts);

/// Sum over the backbone's parameter tensors of ||w - w0||_2 between `model` and `reference` (SMILE
/// Table 7). Heads and BN running statistics are excluded. BadInput if the backbones differ.
double parameter_distance(const Model& model, const Model& reference);

/// Pooled features g(x) (N, D) of normalised inputs, in eval mode under no-grad, in batches.
torch::Tensor pooled_features(Model& model, const torch::Tensor& inputs, int64_t batch = 500);

/// The singular values of `features` (N, D) divided by the largest, the `k` smallest in ascending order
/// (XMixup Fig. 2); k is capped at min(N, D). BadInput for an empty matrix or k < 1.
std::vector<double> feature_spectrum(const torch::Tensor& features, int64_t k);

}  // namespace xfer
