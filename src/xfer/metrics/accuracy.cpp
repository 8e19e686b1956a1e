#include "xfer/metrics/accuracy.h"

#include <cmath>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/error.h"

namespace xfer {

nlohmann::json Evaluation::to_json() const {
  nlohmann::json pc = nlohmann::json::array();
  for (double a : per_class) pc.push_back(std::isnan(a) ? nlohmann::json(nullptr) : nlohmann::json(a));
  nlohmann::json j = {{"count", count},
                      {"top1", top1},
                      {"mean_class", mean_class},
                      {"per_class", pc},
                      {"confusion", confusion}};
  if (!std::isnan(loss)) j["loss"] = loss;
  if (!std::isnan(top5)) j["top5"] = top5;
  return j;
}

ConfusionMatrix::ConfusionMatrix(int64_t classes)
    : classes_(classes),
      counts_(torch::zeros({classes * classes}, torch::kInt64)),
      logit_sums_(torch::zeros({2}, torch::kFloat64)) {
  XFER_CHECK(classes > 0, "a confusion matrix needs at least one class");
}

void ConfusionMatrix::add(const torch::Tensor& predicted, const torch::Tensor& target) {
  const torch::Tensor cell =
      (target.to(torch::kCPU) * classes_ + predicted.to(torch::kCPU)).to(torch::kInt64);
  counts_ += torch::bincount(cell, {}, classes_ * classes_);
}

void ConfusionMatrix::add_logits(const torch::Tensor& logits, const torch::Tensor& target) {
  XFER_CHECK(logits.dim() == 2 && logits.size(1) == classes_, "logits of shape ", logits.sizes(), " for ",
             classes_, " classes");
  const torch::Tensor t = target.to(logits.device());
  add(logits.argmax(1), t);
  const torch::Tensor ce = torch::nn::functional::cross_entropy(
      logits.to(torch::kFloat64), t, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  torch::Tensor hits = torch::zeros({}, torch::kFloat64);
  if (classes_ > 5)
    hits = (std::get<1>(logits.topk(5, 1)) == t.unsqueeze(1)).any(1).sum().to(torch::kFloat64);
  logit_sums_ += torch::stack({ce, hits}).to(torch::kCPU);
  saw_logits_ = true;
}

Evaluation ConfusionMatrix::evaluation() const {
  Evaluation e;
  const torch::Tensor m = counts_.view({classes_, classes_});
  const auto acc = m.accessor<int64_t, 2>();
  int64_t correct = 0, present = 0;
  double class_sum = 0;
  e.confusion.assign(classes_, std::vector<int64_t>(classes_, 0));
  for (int64_t t = 0; t < classes_; ++t) {
    int64_t row = 0;
    for (int64_t p = 0; p < classes_; ++p) {
      e.confusion[t][p] = acc[t][p];
      row += acc[t][p];
    }
    correct += acc[t][t];
    e.count += row;
    if (row > 0) {
      const double a = static_cast<double>(acc[t][t]) / static_cast<double>(row);
      e.per_class.push_back(a);
      class_sum += a;
      ++present;
    } else {
      e.per_class.push_back(NAN);
    }
  }
  e.top1 = e.count > 0 ? static_cast<double>(correct) / static_cast<double>(e.count) : 0.0;
  e.mean_class = present > 0 ? class_sum / static_cast<double>(present) : 0.0;
  if (saw_logits_ && e.count > 0) {
    e.loss = logit_sums_[0].item<double>() / static_cast<double>(e.count);
    if (classes_ > 5) e.top5 = logit_sums_[1].item<double>() / static_cast<double>(e.count);
  }
  return e;
}

}  // namespace xfer
