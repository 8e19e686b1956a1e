#include "xfer/models/import.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/models/pickle.h"

namespace xfer {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

/// A TorchScript module as a backbone. Its parameters and buffers are registered (the same tensors, not
/// copies) on plain modules mirroring its submodule tree, so xfer's optimizers, checkpoints and copy_state
/// see torchvision's names and the scripted code trains them in place.
class ScriptBackboneImpl : public BackboneImpl {
 public:
  explicit ScriptBackboneImpl(const std::string& path) : path_(path) {
    check_script_archive(path);
    try {
      module_ = torch::jit::load(path);
    } catch (const c10::Error& e) {
      throw BadInput(cat("--init torchscript:", path,
                         ": not a TorchScript file (save a torch.jit.script'ed model ",
                         "with torch.jit.save): ", first_line(e.what_without_backtrace())));
    }
    spec_ = cat("script:path=", path);
    std::string& head_name = head_name_;
    for (const char* name : {"fc", "head", "classifier"}) {
      if (!module_.hasattr(name) || !module_.attr(name).isModule()) continue;
      const auto head = module_.attr(name).toModule();
      if (head.hasattr("weight") && head.attr("weight").isTensor() &&
          head.attr("weight").toTensor().dim() == 2) {
        head_weight_ = head.attr("weight").toTensor();
        if (head.hasattr("bias") && head.attr("bias").isTensor()) head_bias_ = head.attr("bias").toTensor();
        head_name = name;
        break;
      }
    }
    // The classifier is not part of the backbone: it becomes the "source" head (a copy).
    for (const auto& p : module_.named_parameters(/*recurse=*/false)) register_parameter(p.name, p.value);
    for (const auto& b : module_.named_buffers(/*recurse=*/false)) register_buffer(b.name, b.value);
    for (const auto& c : module_.named_children()) {
      if (c.name == head_name) continue;
      auto child = std::make_shared<torch::nn::Module>();
      register_module(c.name, child);
      mirror(c.value, *child);
    }
    resnet_ = true;
    for (const char* name : {"conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4"})
      resnet_ = resnet_ && module_.hasattr(name);
    if (resnet_) {
      stage_names_ = {"layer1", "layer2", "layer3", "layer4"};
    } else {
      XFER_CHECK(
          module_.find_method("forward_features").has_value(), "--init torchscript:", path,
          ": the model has neither a ResNet's conv1/bn1/maxpool/layer1..4 nor a forward_features method, ",
          "so xfer cannot take its head off");
      stage_names_ = {"features"};
    }
    check_batch_norm_trains(path);
    // The feature width, from one small forward in eval mode (no running-statistics update).
    torch::NoGradGuard no_grad;
    module_.eval();
    feature_dim_ = forward_features(torch::zeros({1, 3, 64, 64})).pooled.size(1);
    module_.train();
  }

  void train(bool on = true) override {
    torch::nn::Module::train(on);
    module_.train(on);
  }

  const torch::Tensor& head_weight() const { return head_weight_; }
  const torch::Tensor& head_bias() const { return head_bias_; }
  /// The classifier's attribute name (fc, head or classifier), "" if none was found.
  const std::string& head_name() const { return head_name_; }

  /// Saves the script, in eval mode, with `weight` and `bias` in its classifier's place; the module itself is
  /// left as it was. Its parameters and buffers are the backbone's, so they hold the trained values.
  void save_with_head(const std::string& path, const torch::Tensor& weight, const torch::Tensor& bias) {
    XFER_CHECK(!head_name_.empty(), "the TorchScript model ", path_,
               " has no Linear fc, head or classifier for ", "the trained head to take the place of");
    auto head = module_.attr(head_name_).toModule();
    XFER_CHECK(head.hasattr("bias") && head.attr("bias").isTensor(), "the TorchScript model's ", head_name_,
               " has no bias; xfer's heads have one");
    const torch::Tensor old_weight = head.attr("weight").toTensor(), old_bias = head.attr("bias").toTensor();
    const bool training = module_.is_training();
    module_.eval();
    // A Linear's forward reads its weight and bias, whatever their size; the attributes keep their types.
    head.setattr("weight", weight.detach().to(old_weight.device(), old_weight.scalar_type()).contiguous());
    head.setattr("bias", bias.detach().to(old_bias.device(), old_bias.scalar_type()).contiguous());
    try {
      module_.save(path);
    } catch (...) {
      head.setattr("weight", old_weight);
      head.setattr("bias", old_bias);
      module_.train(training);
      throw;
    }
    head.setattr("weight", old_weight);
    head.setattr("bias", old_bias);
    module_.train(training);
  }

 protected:
  torch::Tensor stem(const torch::Tensor& x) override {
    if (!resnet_) return x;
    torch::Tensor h = call("conv1", x);
    h = torch::relu(call("bn1", h));
    return call("maxpool", h);
  }
  torch::Tensor stage(size_t index, const torch::Tensor& x) override {
    if (!resnet_) {
      torch::Tensor f = module_.get_method("forward_features")({x}).toTensor();
      XFER_CHECK(f.dim() == 4, "--init torchscript:", path_, ": forward_features returns ", f.dim(),
                 "-d features; xfer needs (N, C, H, W) maps");
      return f;
    }
    return call(stage_names_[index], x);
  }

 private:
  /// The archive's structure and every pickle in it (data.pkl, constants.pkl) are checked before LibTorch,
  /// whose readers trust them, sees the file. The code in it is TorchScript's to compile and run.
  static void check_script_archive(const std::string& path) {
    const std::string what = "--init torchscript:" + path;
    const std::string bytes = read_file(path);
    XFER_CHECK(TorchZip::looks_like_zip(bytes), what,
               ": not a TorchScript file (torch.jit.save writes a zip archive)");
    const TorchZip zip(bytes, what);
    for (const auto& name : zip.names())
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".pkl") == 0)
        check_pickle(zip.read(name, size_t(64) << 20), what + ": " + name);
  }

  torch::Tensor call(const std::string& name, const torch::Tensor& x) {
    return module_.attr(name).toModule().forward({x}).toTensor();
  }

  static void mirror(const torch::jit::Module& src, torch::nn::Module& dst) {
    for (const auto& p : src.named_parameters(/*recurse=*/false)) dst.register_parameter(p.name, p.value);
    for (const auto& b : src.named_buffers(/*recurse=*/false)) dst.register_buffer(b.name, b.value);
    for (const auto& c : src.named_children()) {
      auto child = std::make_shared<torch::nn::Module>();
      dst.register_module(c.name, child);
      mirror(c.value, *child);
    }
  }

  /// A traced model bakes BN's mode into its graph: fine-tuning would never update the running statistics.
  void check_batch_norm_trains(const std::string& path) {
    for (const auto& m : module_.named_modules()) {
      const auto type = m.value.type()->name();
      if (!type || type->qualifiedName().find("BatchNorm") == std::string::npos) continue;
      const auto forward = m.value.find_method("forward");
      if (!forward) continue;
      if (forward->graph()->toString().find("\"training\"") == std::string::npos)
        log_warn(cat("--init torchscript:", path, ": ", m.name, " looks traced, not scripted: its BatchNorm ",
                     "ignores train/eval mode, so fine-tuning cannot update its statistics; export it with ",
                     "torch.jit.script (scripts/export_torchvision.py)"));
      return;
    }
  }

  std::string path_, head_name_;
  torch::jit::Module module_;
  bool resnet_ = false;
  torch::Tensor head_weight_, head_bias_;
};

/// Runs `fn`, a loader of files from outside xfer; whatever LibTorch throws on a malformed file (c10::Error,
/// std::bad_alloc, std::out_of_range, ...) becomes a one-line BadInput naming `what`.
template <class Fn>
auto guarded(const std::string& what, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const BadInput&) {
    throw;
  } catch (const c10::Error& e) {
    throw BadInput(cat(what, ": cannot be loaded (", first_line(e.what_without_backtrace()), ")"));
  } catch (const std::exception& e) {
    throw BadInput(cat(what, ": cannot be loaded (", first_line(e.what()), ")"));
  }
}

std::vector<std::string> class_indices(int64_t n) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(std::to_string(i));
  return out;
}

}  // namespace

Backbone make_script_backbone(const std::string& path) {
  return guarded("--init torchscript:" + path,
                 [&]() -> Backbone { return std::make_shared<ScriptBackboneImpl>(path); });
}

bool is_external_init(const std::string& init) {
  return starts_with(init, "state_dict:") || starts_with(init, "torchscript:");
}

std::map<std::string, torch::Tensor> read_state_dict(const std::string& path) {
  std::error_code ec;
  XFER_CHECK(std::filesystem::is_regular_file(path, ec), "--init state_dict:", path,
             ": cannot open the file");
  const std::string bytes = read_file(path);
  return guarded("--init state_dict:" + path,
                 [&] { return read_torch_state_dict(bytes, "--init state_dict:" + path); });
}

std::string pytorch_name(const std::string& xfer_name, const std::string& head,
                         const std::string& classifier) {
  if (starts_with(xfer_name, "backbone.")) return xfer_name.substr(9);
  const std::string mine = "heads." + head + ".";
  if (starts_with(xfer_name, mine)) return classifier + "." + xfer_name.substr(mine.size());
  return "";
}

std::string xfer_name(const std::string& pytorch_name, const std::string& head,
                      const std::string& classifier) {
  if (starts_with(pytorch_name, classifier + "."))
    return "heads." + head + pytorch_name.substr(classifier.size());
  return "backbone." + pytorch_name;
}

std::string pytorch_classifier(const Model& model) {
  auto script = std::dynamic_pointer_cast<ScriptBackboneImpl>(model->backbone);
  return script && !script->head_name().empty() ? script->head_name() : "fc";
}

std::vector<std::pair<std::string, torch::Tensor>> pytorch_state_dict(const Model& model,
                                                                      const std::string& head) {
  XFER_CHECK(model->has_head(head), "the model has no '", head, "' head to export");
  const std::string classifier = pytorch_classifier(model);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  // Parameters and buffers module by module, as PyTorch's state_dict orders them.
  for (const auto& m : model->named_modules("", /*include_self=*/true)) {
    const std::string prefix = m.key().empty() ? "" : m.key() + ".";
    for (const auto& p : m.value()->named_parameters(/*recurse=*/false))
      if (auto n = pytorch_name(prefix + p.key(), head, classifier); !n.empty())
        out.emplace_back(n, p.value().detach().to(torch::kCPU).contiguous().clone());
    for (const auto& b : m.value()->named_buffers(/*recurse=*/false))
      if (auto n = pytorch_name(prefix + b.key(), head, classifier); !n.empty())
        out.emplace_back(n, b.value().detach().to(torch::kCPU).contiguous().clone());
  }
  return out;
}

namespace {

/// Python's pickle opcodes for an integer, as its pickler picks them (protocol 2).
void pickle_int(std::string& out, int64_t v) {
  if (v >= 0 && v < 256) {
    out += 'K';
    out += static_cast<char>(v);
  } else if (v >= 0 && v < 65536) {
    out += 'M';
    for (int i = 0; i < 2; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    out += 'J';
    for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  } else {
    out += "\x8a\x08";
    for (int i = 0; i < 8; ++i) out += static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
  }
}

void pickle_str(std::string& out, const std::string& s) {
  out += 'X';
  for (int i = 0; i < 4; ++i) out += static_cast<char>((s.size() >> (8 * i)) & 0xff);
  out += s;
}

const char* storage_type(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "FloatStorage";
    case torch::kFloat64:
      return "DoubleStorage";
    case torch::kFloat16:
      return "HalfStorage";
    case torch::kBFloat16:
      return "BFloat16Storage";
    case torch::kInt64:
      return "LongStorage";
    case torch::kInt32:
      return "IntStorage";
    case torch::kInt16:
      return "ShortStorage";
    case torch::kInt8:
      return "CharStorage";
    case torch::kUInt8:
      return "ByteStorage";
    case torch::kBool:
      return "BoolStorage";
    default:
      throw BadInput(cat("cannot export a tensor of type ", t));
  }
}

}  // namespace

void save_pytorch_state_dict(const Model& model, const std::string& head, const std::string& path) {
  // What Python's torch.save writes for a dict of tensors, nothing else: a protocol-2 pickle naming only
  // _rebuild_tensor_v2, the storage types and OrderedDict (the hooks argument), so torch.load reads it,
  // with weights_only=True too. (LibTorch's pickle_save tags the dict with torch.jit._pickle globals.)
  const auto entries = pytorch_state_dict(model, head);
  std::string pickle = "\x80\x02}(";
  for (size_t i = 0; i < entries.size(); ++i) {
    const torch::Tensor& t = entries[i].second;
    pickle_str(pickle, entries[i].first);
    pickle += "ctorch._utils\n_rebuild_tensor_v2\n((";
    pickle_str(pickle, "storage");
    pickle += cat("ctorch\n", storage_type(t.scalar_type()), "\n");
    pickle_str(pickle, std::to_string(i));
    pickle_str(pickle, "cpu");
    pickle_int(pickle, t.numel());
    pickle += "tQ";
    pickle_int(pickle, 0);
    pickle += '(';
    for (int64_t s : t.sizes()) pickle_int(pickle, s);
    pickle += "t(";
    for (int64_t s : t.strides()) pickle_int(pickle, s);
    pickle +=
        "t\x89"
        "ccollections\nOrderedDict\n)RtR";  // False, OrderedDict()
  }
  pickle += "u.";
  std::string bytes;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const torch::Tensor& t = entries[i].second;  // contiguous, on the CPU
    writer.writeRecord(cat("data/", i), t.data_ptr(), t.numel() * t.element_size());
  }
  writer.writeEndOfFile();
  write_file_atomic(path, bytes);
}

void save_torchscript(const Model& model, const std::string& head, const std::string& path) {
  auto script = std::dynamic_pointer_cast<ScriptBackboneImpl>(model->backbone);
  XFER_CHECK(script,
             "--format torchscript exports models whose backbone came from a TorchScript file (--init ",
             "torchscript:FILE); this one is ", model->arch().backbone, ": export --format state_dict");
  XFER_CHECK(model->has_head(head), "the model has no '", head, "' head to export");
  const auto linear = model->head(head);
  // Written beside the target and renamed, so a failure leaves no half-written file.
  const std::string tmp = path + ".tmp";
  script->save_with_head(tmp, linear->weight, linear->bias);
  std::filesystem::rename(tmp, path);
}

std::string pytorch_constructor(const Model& model, const std::string& head) {
  const Arch& a = model->arch();
  const HeadInfo* h = a.head(head);
  XFER_CHECK(h, "the model has no '", head, "' head to export");
  const size_t classes = h->class_names.size();
  if (a.in_channels == 3)
    for (const char* name : {"resnet18", "resnet50"})
      if (a.backbone == cat(name, ":width=64:stem=imagenet"))
        return cat("torchvision.models.", name, "(num_classes=", classes, ")");
  if (starts_with(a.backbone, "script:")) return "torch.jit.load(...) of the TorchScript model it came from";
  return cat("xfer_models.build('", a.backbone, "', in_channels=", a.in_channels, ", num_classes=", classes,
             ")");
}

void load_torchvision_weights(Model& model, const std::map<std::string, torch::Tensor>& weights,
                              const std::string& what) {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> mine;
  for (const auto& p : model->named_parameters(true))
    if (auto n = pytorch_name(p.key(), "source"); !n.empty()) mine[n] = p.value();
  for (const auto& b : model->named_buffers(true))
    if (auto n = pytorch_name(b.key(), "source"); !n.empty()) mine[n] = b.value();
  std::vector<std::string> problems;
  for (const auto& [name, t] : mine) {
    auto it = weights.find(name);
    if (it == weights.end())
      problems.push_back(cat(name, " is missing from the file"));
    else if (it->second.sizes() != t.sizes())
      problems.push_back(cat(name, " has shape ", it->second.sizes(), " in the file, ", t.sizes(), " in ",
                             model->arch().backbone));
  }
  for (const auto& [name, t] : weights)
    if (!mine.count(name))
      problems.push_back(cat(name, " is in the file but not in ", model->arch().backbone));
  if (!problems.empty()) {
    std::string msg;
    for (size_t i = 0; i < std::min<size_t>(problems.size(), 5); ++i) msg += (i ? "; " : "") + problems[i];
    if (problems.size() > 5) msg += cat("; and ", problems.size() - 5, " more");
    throw BadInput(
        cat(what, ": the weights do not match ", model->arch().backbone, " with torchvision's names: ", msg));
  }
  for (auto& [name, t] : mine) t.copy_(weights.at(name));
}

namespace {

/// A LightningModule's state dict names its network's entries "NET.conv1.weight" (NET its attribute name):
/// when every name has the prefix before a conv1.weight, it is taken off.
void strip_model_prefix(std::map<std::string, torch::Tensor>& weights, const std::string& init) {
  if (weights.count("conv1.weight")) return;
  std::string prefix;
  for (const auto& [name, t] : weights)
    if (name.size() > 13 && name.compare(name.size() - 13, 13, ".conv1.weight") == 0 &&
        (prefix.empty() || name.size() < prefix.size() + 12))
      prefix = name.substr(0, name.size() - 12);
  if (prefix.empty()) return;
  for (const auto& [name, t] : weights)
    if (!starts_with(name, prefix)) return;
  std::map<std::string, torch::Tensor> stripped;
  for (auto& [name, t] : weights) stripped[name.substr(prefix.size())] = t;
  weights.swap(stripped);
  log_info(cat(init, ": the weights' names start with '", prefix, "'; reading them without it"));
}

Model load_external(const std::string& init, const std::string& backbone, int64_t in_channels, int64_t height,
                    int64_t width, const Normalization& input) {
  Arch arch;
  arch.in_channels = in_channels;
  arch.height = height;
  arch.width = width;
  arch.input = input;
  if (starts_with(init, "state_dict:")) {
    const std::string path = init.substr(11);
    auto weights = read_state_dict(path);
    strip_model_prefix(weights, init);
    if (backbone.empty()) {
      auto conv1 = weights.find("conv1.weight");
      XFER_CHECK(conv1 != weights.end() && conv1->second.dim() == 4, init,
                 ": no conv1.weight; pass --backbone (torchvision ResNet names are expected)");
      const bool bottleneck = weights.count("layer1.0.conv3.weight") > 0;
      const int64_t w = bottleneck ? weights.at("layer1.0.conv1.weight").size(0) : conv1->second.size(0);
      arch.backbone = cat(bottleneck ? "resnet50" : "resnet18", ":width=", w,
                          ":stem=", conv1->second.size(2) == 7 ? "imagenet" : "cifar");
    } else {
      arch.backbone = backbone;
    }
    if (auto fc = weights.find("fc.weight"); fc != weights.end() && fc->second.dim() == 2)
      arch.heads = {{"source", class_indices(fc->second.size(0))}};
    Model model(arch);
    load_torchvision_weights(model, weights, init);
    return model;
  }
  XFER_CHECK(starts_with(init, "torchscript:"), "--init ", init,
             ": expected state_dict:FILE or torchscript:FILE");
  const std::string path = init.substr(12);
  XFER_CHECK(backbone.empty() || starts_with(backbone, "script:"), "--init ", init, ": --backbone ", backbone,
             " cannot be combined with a TorchScript model (its architecture is the script's)");
  // Stored absolute, so that the run's checkpoints name the file from any directory.
  const std::string absolute = std::filesystem::absolute(path).lexically_normal().string();
  trust_script(absolute);  // named by the user: loading it runs its code, as torch.jit.load does
  arch.backbone = cat("script:path=", absolute);
  Model model(arch);
  auto script = std::dynamic_pointer_cast<ScriptBackboneImpl>(model->backbone);
  if (script && script->head_weight().defined() &&
      script->head_weight().size(1) == model->backbone->feature_dim()) {
    model->add_head({"source", class_indices(script->head_weight().size(0))});
    torch::NoGradGuard no_grad;
    auto head = model->head("source");
    head->weight.copy_(script->head_weight());
    if (script->head_bias().defined())
      head->bias.copy_(script->head_bias());
    else
      head->bias.zero_();
  }
  return model;
}

}  // namespace

Model load_external_model(const std::string& init, const std::string& backbone, int64_t in_channels,
                          int64_t height, int64_t width, const Normalization& input) {
  return guarded("--init " + init,
                 [&] { return load_external(init, backbone, in_channels, height, width, input); });
}

}  // namespace xfer
