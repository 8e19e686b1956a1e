#include "xfer/models/domain_bn.h"

#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {
namespace {

/// The running-statistics members of a BatchNorm layer of any dimension, or nullptr.
template <class Impl>
bool domain_bn_members(const std::shared_ptr<torch::nn::Module>& m, torch::Tensor*& mean, torch::Tensor*& var,
                       torch::Tensor*& count) {
  auto bn = std::dynamic_pointer_cast<Impl>(m);
  if (!bn) return false;
  mean = &bn->running_mean;
  var = &bn->running_var;
  count = &bn->num_batches_tracked;
  return true;
}

}  // namespace

DomainBatchNorm::DomainBatchNorm(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (const auto& m : module.modules(/*include_self=*/true)) {
    Layer l;
    const bool is_bn = domain_bn_members<torch::nn::BatchNorm1dImpl>(m, l.running_mean, l.running_var,
                                                                     l.num_batches_tracked) ||
                       domain_bn_members<torch::nn::BatchNorm2dImpl>(m, l.running_mean, l.running_var,
                                                                     l.num_batches_tracked) ||
                       domain_bn_members<torch::nn::BatchNorm3dImpl>(m, l.running_mean, l.running_var,
                                                                     l.num_batches_tracked);
    if (!is_bn || !l.running_mean->defined()) continue;  // no running statistics to keep apart
    l.module = m;
    l.mean = l.running_mean->clone();
    l.var = l.running_var->clone();
    l.count = l.num_batches_tracked->clone();
    layers_.push_back(std::move(l));
  }
}

void DomainBatchNorm::swap_all() {
  for (auto& l : layers_) {
    std::swap(*l.running_mean, l.mean);
    std::swap(*l.running_var, l.var);
    std::swap(*l.num_batches_tracked, l.count);
  }
  swapped_ = !swapped_;
}

DomainBatchNorm::Scope::Scope(DomainBatchNorm* owner) : owner_(owner) {
  XFER_CHECK(!owner_->swapped_, "the second BatchNorm statistics are already in use");
  owner_->swap_all();
}

DomainBatchNorm::Scope::~Scope() {
  owner_->swap_all();
}

void DomainBatchNorm::save(Archive& out, const std::string& key) const {
  Archive nested;
  for (size_t i = 0; i < layers_.size(); ++i) {
    nested.write(std::to_string(i) + ".running_mean", layers_[i].mean);
    nested.write(std::to_string(i) + ".running_var", layers_[i].var);
    nested.write(std::to_string(i) + ".num_batches_tracked", layers_[i].count);
  }
  out.write(key, nested);
}

void DomainBatchNorm::load(const Archive& in, const std::string& key) {
  Archive nested;
  XFER_CHECK(in.try_read(key, nested), "the checkpoint holds no '", key, "' BatchNorm statistics");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) {
    torch::Tensor mean, var, count;
    const std::string p = std::to_string(i);
    XFER_CHECK(nested.try_read(p + ".running_mean", mean) && nested.try_read(p + ".running_var", var) &&
                   nested.try_read(p + ".num_batches_tracked", count),
               "the checkpoint's '", key, "' BatchNorm statistics have no layer ", i);
    XFER_CHECK(mean.sizes() == layers_[i].mean.sizes() && var.sizes() == layers_[i].var.sizes() &&
                   count.sizes() == layers_[i].count.sizes(),
               "the checkpoint's '", key, "' BatchNorm layer ", i, " does not have the model's ",
               layers_[i].mean.size(0), " channels");
    layers_[i].mean.copy_(mean);
    layers_[i].var.copy_(var);
    layers_[i].count.copy_(count);
  }
}

}  // namespace xfer
