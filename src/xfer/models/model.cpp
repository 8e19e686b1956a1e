#include "xfer/models/model.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {

nlohmann::json Arch::to_json() const {
  nlohmann::json heads_json = nlohmann::json::array();
  for (const auto& h : heads) {
    heads_json.push_back({{"name", h.name}, {"classes", h.class_names}});
    if (h.predict_classes > 0) heads_json.back()["predict_classes"] = h.predict_classes;
  }
  return {{"backbone", backbone},
          {"in_channels", in_channels},
          {"height", height},
          {"width", width},
          {"input_mean", input.mean},
          {"input_std", input.std},
          {"heads", heads_json}};
}

Arch Arch::from_json(const nlohmann::json& j) {
  try {
    Arch a;
    a.backbone = j.at("backbone").get<std::string>();
    a.in_channels = j.at("in_channels").get<int64_t>();
    a.height = j.at("height").get<int64_t>();
    a.width = j.at("width").get<int64_t>();
    a.input.mean = j.at("input_mean").get<std::vector<double>>();
    a.input.std = j.at("input_std").get<std::vector<double>>();
    for (const auto& h : j.at("heads"))
      a.heads.push_back({h.at("name").get<std::string>(), h.at("classes").get<std::vector<std::string>>(),
                         h.value("predict_classes", int64_t{0})});
    return a;
  } catch (const nlohmann::json::exception& e) {
    throw BadInput(cat("malformed model architecture record: ", e.what()));
  }
}

const HeadInfo* Arch::head(const std::string& name) const {
  for (const auto& h : heads)
    if (h.name == name) return &h;
  return nullptr;
}

std::string Arch::mismatch(const Arch& saved, bool with_heads) const {
  if (saved.backbone != backbone)
    return cat("the checkpoint's backbone is ", saved.backbone, ", this run uses ", backbone);
  if (saved.in_channels != in_channels)
    return cat("the checkpoint takes ", saved.in_channels, "-channel images, this data has ", in_channels);
  if (!with_heads) return "";
  for (const auto& h : heads) {
    const HeadInfo* s = saved.head(h.name);
    if (!s) return cat("the checkpoint has no '", h.name, "' head");
    if (s->class_names.size() != h.class_names.size())
      return cat("the checkpoint's '", h.name, "' head has ", s->class_names.size(), " classes, this run needs ",
                 h.class_names.size());
  }
  return "";
}

ModelImpl::ModelImpl(const Arch& arch) : arch_(arch) {
  backbone = register_module("backbone", make_backbone(arch.backbone, arch.in_channels));
  arch_.backbone = backbone->spec();
  heads_ = register_module("heads", std::make_shared<torch::nn::Module>());
  const auto heads = arch_.heads;
  arch_.heads.clear();
  for (const auto& h : heads) add_head(h);
}

torch::Tensor ModelImpl::forward(const torch::Tensor& x, const std::string& name) {
  return head(name)->forward(backbone->forward(x));
}

bool ModelImpl::has_head(const std::string& name) const { return heads_->named_children().contains(name); }

torch::nn::Linear ModelImpl::head(const std::string& name) const {
  if (!has_head(name)) {
    std::string valid;
    for (const auto& h : arch_.heads) valid += (valid.empty() ? "" : ", ") + h.name;
    throw BadInput(cat("the model has no '", name, "' head; heads: ", valid.empty() ? "(none)" : valid));
  }
  return torch::nn::Linear(std::dynamic_pointer_cast<torch::nn::LinearImpl>(heads_->named_children()[name]));
}

void ModelImpl::add_head(const HeadInfo& info) {
  XFER_CHECK(!info.class_names.empty(), "head '", info.name, "' needs at least one class");
  XFER_CHECK(info.predict_classes >= 0 && info.predict_classes <= static_cast<int64_t>(info.class_names.size()),
             "head '", info.name, "' predicts ", info.predict_classes, " of its ", info.class_names.size(), " classes");
  XFER_CHECK(!has_head(info.name), "the model already has a '", info.name, "' head");
  torch::nn::Linear head(backbone->feature_dim(), static_cast<int64_t>(info.class_names.size()));
  head->to(backbone->parameters().front().device());
  heads_->register_module(info.name, head);
  arch_.heads.push_back(info);
}

void ModelImpl::remove_head(const std::string& name) {
  head(name);  // validates
  heads_->unregister_module(name);
  arch_.heads.erase(std::remove_if(arch_.heads.begin(), arch_.heads.end(),
                                   [&](const HeadInfo& h) { return h.name == name; }),
                    arch_.heads.end());
}

std::vector<torch::Tensor> ModelImpl::backbone_parameters() const { return backbone->parameters(); }

std::vector<torch::Tensor> ModelImpl::head_parameters() const { return heads_->parameters(); }

void copy_state(const torch::nn::Module& src, torch::nn::Module& dst, const std::string& prefix) {
  torch::NoGradGuard no_grad;
  auto collect = [&](const torch::nn::Module& m) {
    std::map<std::string, torch::Tensor> out;
    for (const auto& p : m.named_parameters(true))
      if (p.key().rfind(prefix, 0) == 0) out[p.key()] = p.value();
    for (const auto& b : m.named_buffers(true))
      if (b.key().rfind(prefix, 0) == 0) out[b.key()] = b.value();
    return out;
  };
  const auto from = collect(src);
  const auto to = collect(dst);
  std::vector<std::string> problems;
  for (const auto& [name, t] : to) {
    auto it = from.find(name);
    if (it == from.end())
      problems.push_back(cat(name, " is missing"));
    else if (it->second.sizes() != t.sizes())
      problems.push_back(cat(name, " has shape ", it->second.sizes(), " there, ", t.sizes(), " here"));
  }
  for (const auto& [name, t] : from)
    if (!to.count(name)) problems.push_back(cat(name, " is unexpected"));
  if (!problems.empty()) {
    std::string msg;
    for (size_t i = 0; i < std::min<size_t>(problems.size(), 3); ++i) msg += (i ? "; " : "") + problems[i];
    if (problems.size() > 3) msg += cat("; and ", problems.size() - 3, " more");
    throw BadInput(cat("weights do not match the model: ", msg));
  }
  for (auto& [name, t] : to) t.copy_(from.at(name));
}

Model clone_model(const Model& model) {
  Model copy(model->arch());
  copy->to(model->backbone->parameters().front().device());
  copy_state(*model, *copy);
  copy->train(model->is_training());
  return copy;
}

void copy_head(const Model& from, const std::string& name, Model& to, const std::string& as) {
  const HeadInfo* info = from->arch().head(name);
  XFER_CHECK(info != nullptr, "the source model has no '", name, "' head");
  XFER_CHECK(from->backbone->feature_dim() == to->backbone->feature_dim(), "cannot copy head '", name,
             "': feature dimensions differ (", from->backbone->feature_dim(), " vs ", to->backbone->feature_dim(), ")");
  HeadInfo copy = *info;
  copy.name = as.empty() ? name : as;
  to->add_head(copy);
  torch::NoGradGuard no_grad;
  const torch::nn::Linear src = from->head(name), dst = to->head(copy.name);
  dst->weight.copy_(src->weight);
  dst->bias.copy_(src->bias);
}

void freeze(torch::nn::Module& module) {
  for (auto& p : module.parameters()) p.set_requires_grad(false);
}

}  // namespace xfer
