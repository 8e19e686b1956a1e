#pragma once
/// Loss functions shared by methods. Shapes: logits (N, K); labels int64 (N); probabilities (N, K).
#include <torch/types.h>

#include "xfer/core/fields.h"

namespace xfer {

/// Where the head's L2 term comes from in L2-SP and DELTA: beta (the optimizer's weight decay off,
/// beta/2 ||w_head||^2 in the loss, the papers) or optimizer (the run's --weight-decay, SMILE's code).
enum class HeadDecay { beta, optimizer };
XFER_ENUM_NAMES(HeadDecay, "beta", "optimizer")

/// Mean cross-entropy of logits against int64 labels.
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels);

/// Mean over the batch of -sum_k p_k log softmax(logits)_k, for soft targets p (rows sum to 1).
torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& target_probs);

/// The mixup loss lambda * CE(logits, y_a) + (1 - lambda) * CE(logits, y_b) (Zhang et al. 2018).
torch::Tensor mixed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& y_a,
                                  const torch::Tensor& y_b, double lambda);
/// The same with one lambda per example (N): mean_i [lambda_i CE_i(y_a) + (1 - lambda_i) CE_i(y_b)].
torch::Tensor mixed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& y_a,
                                  const torch::Tensor& y_b, const torch::Tensor& lambda);

/// lambda * a + (1 - lambda) * b, with lambda a scalar or one value per example (broadcast over the
/// trailing dimensions of a and b).
torch::Tensor mix(const torch::Tensor& a, const torch::Tensor& b, double lambda);
torch::Tensor mix(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& lambda);

}  // namespace xfer
