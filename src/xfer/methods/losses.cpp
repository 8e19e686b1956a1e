#include "xfer/methods/losses.h"

#include <torch/torch.h>

namespace xfer {
namespace F = torch::nn::functional;

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return F::cross_entropy(logits, labels);
}

torch::Tensor soft_cross_entropy(const torch::Tensor& logits, const torch::Tensor& target_probs) {
  return -(target_probs * torch::log_softmax(logits, 1)).sum(1).mean();
}

torch::Tensor mixed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& y_a,
                                  const torch::Tensor& y_b, double lambda) {
  return lambda * F::cross_entropy(logits, y_a) + (1.0 - lambda) * F::cross_entropy(logits, y_b);
}

torch::Tensor mixed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& y_a,
                                  const torch::Tensor& y_b, const torch::Tensor& lambda) {
  const auto none = F::CrossEntropyFuncOptions().reduction(torch::kNone);
  const torch::Tensor lam = lambda.to(logits.dtype()).to(logits.device());
  return (lam * F::cross_entropy(logits, y_a, none) + (1 - lam) * F::cross_entropy(logits, y_b, none)).mean();
}

torch::Tensor mix(const torch::Tensor& a, const torch::Tensor& b, double lambda) {
  return a * lambda + b * (1.0 - lambda);
}

torch::Tensor mix(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& lambda) {
  std::vector<int64_t> shape(a.dim(), 1);
  shape[0] = a.size(0);
  const torch::Tensor lam = lambda.to(a.dtype()).to(a.device()).view(shape);
  return a * lam + b * (1 - lam);
}

}  // namespace xfer
