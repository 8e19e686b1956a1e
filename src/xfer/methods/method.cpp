#include "xfer/methods/method.h"

#include <cmath>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/methods/registry.h"

namespace xfer {

std::vector<ParamGroup> Method::param_groups(Model& model, double head_lr_mult) {
  return {{"backbone", model->backbone_parameters(), 1.0, std::nullopt},
          {"heads", model->head_parameters(), head_lr_mult, std::nullopt}};
}

LossTerms Method::compute_gradients(StepContext& ctx) {
  LossTerms terms = loss(ctx);
  terms.total.backward();
  after_backward(ctx);
  return terms;
}

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  return torch::nn::functional::cross_entropy(logits, labels);
}

void check_finite(const LossTerms& terms, int64_t step) {
  const double total = terms.total.item<double>();
  if (std::isfinite(total)) return;
  std::string parts;
  for (const auto& [name, t] : terms.parts) parts += cat(parts.empty() ? "" : ", ", name, "=", t.item<double>());
  throw NumericalError(cat("the loss is ", total, " at step ", step, parts.empty() ? "" : " (" + parts + ")"));
}

void MethodRegistry::add(MethodInfo info) {
  XFER_CHECK(!has(info.name), "method '", info.name, "' is registered twice");
  methods_.push_back(std::move(info));
}

bool MethodRegistry::has(const std::string& name) const {
  for (const auto& m : methods_)
    if (m.name == name) return true;
  return false;
}

const MethodInfo& MethodRegistry::get(const std::string& name) const {
  for (const auto& m : methods_)
    if (m.name == name) return m;
  throw BadInput(cat("unknown method '", name, "'; valid methods: ", names()));
}

std::string MethodRegistry::names() const {
  std::string out;
  for (const auto& m : methods_) out += (out.empty() ? "" : ", ") + m.name;
  return out;
}

MethodRegistry& methods() {
  static MethodRegistry registry = [] {
    MethodRegistry r;
    register_builtin_methods(r);
    return r;
  }();
  return registry;
}

}  // namespace xfer
