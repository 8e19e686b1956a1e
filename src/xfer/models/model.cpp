#include "xfer/models/model.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace xfer {

nlohmann::json Arch::to_json() const {
  nlohmann::json heads_json = nlohmann::json::array();
  for (const auto& h : heads) {
    heads_json.push_back({{"name", h.name}, {"classes", h.class_names}});
    if (h.predict_classes > 0) heads_json.back()["predict_classes"] = h.predict_classes;
  }
  return {{"backbone", backbone},     {"in_channels", in_channels}, {"height", height},   {"width", width},
          {"input_mean", input.mean}, {"input_std", input.std},     {"heads", heads_json}};
}

Arch Arch::from_json(const nlohmann::json& j) {
  Arch a;
  try {
    a.backbone = j.at("backbone").get<std::string>();
    a.in_channels = json_int(j.at("in_channels"), "model architecture: in_channels");
    a.height = json_int(j.at("height"), "model architecture: height");
    a.width = json_int(j.at("width"), "model architecture: width");
    a.input.mean = j.at("input_mean").get<std::vector<double>>();
    a.input.std = j.at("input_std").get<std::vector<double>>();
    for (const auto& h : j.at("heads"))
      a.heads.push_back({h.at("name").get<std::string>(), h.at("classes").get<std::vector<std::string>>(),
                         json_int_or(h, "predict_classes", 0, "model architecture: predict_classes")});
  } catch (const nlohmann::json::exception& e) {
    throw BadInput(cat("malformed model architecture record: ", e.what()));
  }
  // Bounds of what xfer itself writes: a record is data from a file, so nothing in it may size an
  // allocation unchecked.
  XFER_CHECK(a.in_channels >= 1 && a.in_channels <= kMaxInChannels, "the model's in_channels must be in [1, ",
             kMaxInChannels, "], got ", a.in_channels);
  XFER_CHECK(a.height >= 0 && a.height <= kMaxImageSide && a.width >= 0 && a.width <= kMaxImageSide,
             "the model's input size must be at most ", kMaxImageSide, " pixels a side, got ", a.height, "x",
             a.width);
  XFER_CHECK(a.input.mean.size() == a.input.std.size() &&
                 (a.input.mean.empty() || a.input.mean.size() == static_cast<size_t>(a.in_channels)),
             "the model's input normalisation has ", a.input.mean.size(), " means and ", a.input.std.size(),
             " standard deviations for ", a.in_channels, " channels");
  for (const double v : a.input.std)
    XFER_CHECK(v > 0 && std::isfinite(v), "the model's input std must be > 0, got ", v);
  for (const double v : a.input.mean)
    XFER_CHECK(std::isfinite(v), "the model's input mean must be finite, got ", v);
  return a;
}

int64_t Arch::numel() const {
  const BackboneSize b = backbone_size(backbone, in_channels);
  if (b.numel < 0) return -1;
  int64_t n = b.numel;
  for (const auto& h : heads) n += static_cast<int64_t>(h.class_names.size()) * (b.feature_dim + 1);
  return n;
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
      return cat("the checkpoint's '", h.name, "' head has ", s->class_names.size(),
                 " classes, this run needs ", h.class_names.size());
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

bool ModelImpl::has_head(const std::string& name) const {
  return heads_->named_children().contains(name);
}

torch::nn::Linear ModelImpl::head(const std::string& name) const {
  if (!has_head(name)) {
    std::string valid;
    for (const auto& h : arch_.heads) valid += (valid.empty() ? "" : ", ") + h.name;
    throw BadInput(cat("the model has no '", name, "' head; heads: ", valid.empty() ? "(none)" : valid));
  }
  return torch::nn::Linear(std::dynamic_pointer_cast<torch::nn::LinearImpl>(heads_->named_children()[name]));
}

void check_head_name(const std::string& name) {
  // LibTorch's module names may not be empty or hold '.', the separator of parameter names.
  XFER_CHECK(!name.empty() && name.size() <= 64 && name.find('.') == std::string::npos &&
                 std::all_of(name.begin(), name.end(),
                             [](char c) {
                               return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
                             }),
             "a head name must be 1-64 letters, digits, '_' or '-', got '", printable(name), "'");
}

void ModelImpl::add_head(const HeadInfo& info) {
  check_head_name(info.name);
  XFER_CHECK(!info.class_names.empty(), "head '", info.name, "' needs at least one class");
  XFER_CHECK(
      info.predict_classes >= 0 && info.predict_classes <= static_cast<int64_t>(info.class_names.size()),
      "head '", info.name, "' predicts ", info.predict_classes, " of its ", info.class_names.size(),
      " classes");
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

std::vector<torch::Tensor> ModelImpl::backbone_parameters() const {
  return backbone->parameters();
}

std::vector<torch::Tensor> ModelImpl::head_parameters() const {
  return heads_->parameters();
}

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

void check_input_fits(ModelImpl& model, int64_t height, int64_t width) {
  const bool training = model.is_training();
  const auto device = model.backbone->parameters().empty() ? torch::Device(torch::kCPU)
                                                           : model.backbone->parameters().front().device();
  torch::NoGradGuard no_grad;
  model.eval();
  try {
    model.backbone->forward(
        torch::zeros({1, model.arch().in_channels, height, width}, torch::TensorOptions().device(device)));
  } catch (const c10::Error& e) {
    model.train(training);
    const std::string what = e.what_without_backtrace();
    throw BadInput(cat(height, "x", width, " images are too small for backbone ", model.arch().backbone, " (",
                       what.substr(0, what.find('\n')), ")"));
  }
  model.train(training);
}

Model clone_model(const Model& model) {
  Model copy(model->arch());
  copy->to(model->backbone->parameters().front().device());
  copy_state(*model, *copy);
  copy->train(model->is_training());
  return copy;
}

void convolutions_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
}

Backbone folded_backbone(const Model& model, bool keep_taps) {
  if (model->backbone->conv_norms().empty()) return model->backbone;
  Backbone folded = clone_model(model)->backbone;
  folded->eval();
  if (model->backbone->parameters().front().is_cpu()) convolutions_channels_last(*folded);
  fold_batch_norms(*folded, *model->backbone, keep_taps);
  return folded;
}

void copy_head(const Model& from, const std::string& name, Model& to, const std::string& as) {
  const HeadInfo* info = from->arch().head(name);
  XFER_CHECK(info != nullptr, "the source model has no '", name, "' head");
  XFER_CHECK(from->backbone->feature_dim() == to->backbone->feature_dim(), "cannot copy head '", name,
             "': feature dimensions differ (", from->backbone->feature_dim(), " vs ",
             to->backbone->feature_dim(), ")");
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
