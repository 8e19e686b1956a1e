#pragma once
/// Ensemble pseudo-labels for unlabelled target images (GradMix, Li et al. 2020, section 3.5).
///
/// `probs` holds the softmax outputs of R models on N unlabelled images: (R, N, K).
///   hard: image n gets class c if every model's argmax is c and every model gives c a probability
///         above `threshold` (0.8 in the paper); these form S_u, trained with cross-entropy.
///   soft: every image gets the mean probability (1/R) sum_r p_r, trained with KL(label || p_theta).
/// V is then enlarged to `per_class` examples per class with hard-labelled images, drawn at random among
/// the hard labels of each class (an unbiased sample of what the ensemble is sure of).
///
/// The pipeline stores what it computed in one file (`save_ensemble_labels`): the unlabelled images and
/// the R models' probabilities; methods apply the rules above with their own options.
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/types.h>

#include "xfer/data/dataset.h"
#include "xfer/models/model.h"

namespace xfer {

struct HardLabels {
  torch::Tensor index;       // int64 (M): positions in the unlabelled set
  torch::Tensor labels;      // int64 (M)
  torch::Tensor confidence;  // float (M): the smallest of the R models' probabilities for the label
};

/// BadInput unless 0 < threshold < 1.
void check_pseudo_threshold(double threshold);

/// The hard rule. `probs` (R, N, K), R >= 1.
HardLabels hard_pseudo_labels(const torch::Tensor& probs, double threshold);
/// The soft rule: the mean over models, (N, K).
torch::Tensor soft_pseudo_labels(const torch::Tensor& probs);

/// Which hard labels to add to V so that each class has `per_class` examples: positions in `hard`
/// (int64), class c taking max(0, per_class - count_c(v_labels)) of its hard labels, drawn by `gen`
/// (all of them when there are fewer).
torch::Tensor enlarge_per_class(const torch::Tensor& v_labels, const HardLabels& hard, int64_t classes,
                                int64_t per_class, at::Generator& gen);

/// Softmax outputs of `head` of each model on `data` (eval mode, no grad): (R, N, K).
torch::Tensor ensemble_probabilities(std::vector<Model>& models, const TensorDataset& data,
                                     const std::string& head, int64_t batch_size = 500);

/// The unlabelled images (uint8; their labels are kept only to report pseudo-label accuracy) and the
/// ensemble's probabilities (R, N, K), with the class names they index.
struct EnsembleLabels {
  TensorDataset images;
  torch::Tensor probs;
};
void save_ensemble_labels(const std::string& path, const EnsembleLabels& labels);
/// BadInput naming the file if it cannot be read or is inconsistent.
EnsembleLabels load_ensemble_labels(const std::string& path);

}  // namespace xfer
