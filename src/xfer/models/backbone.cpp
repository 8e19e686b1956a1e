#include "xfer/models/backbone.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/text.h"
#include "xfer/dist/dist.h"

namespace xfer {
namespace F = torch::nn::functional;
namespace {

struct BackboneSpec {
  std::string name;
  std::map<std::string, std::string> options;
};

BackboneSpec parse_spec(const std::string& text) {
  BackboneSpec s;
  size_t start = 0;
  bool first = true;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(':', start), text.size());
    const std::string part = text.substr(start, end - start);
    if (first) {
      s.name = part;
      first = false;
    } else {
      const size_t eq = part.find('=');
      XFER_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < part.size(), "backbone '", text,
                 "': expected key=value, got '", part, "'");
      s.options[part.substr(0, eq)] = part.substr(eq + 1);
    }
    start = end + 1;
  }
  return s;
}

int64_t int_option(const BackboneSpec& s, const std::string& text, const std::string& key, int64_t def) {
  auto it = s.options.find(key);
  if (it == s.options.end()) return def;
  const std::optional<int64_t> v = parse_int64(it->second);
  XFER_CHECK(v && *v >= 1 && *v <= 4096, "backbone '", text, "': ", key,
             " must be an integer in [1, 4096], got '", it->second, "'");
  return *v;
}

void check_keys(const BackboneSpec& s, const std::string& text, const std::vector<std::string>& valid) {
  for (const auto& [k, v] : s.options) {
    bool ok = false;
    std::string list;
    for (const auto& name : valid) {
      ok = ok || name == k;
      list += (list.empty() ? "" : ", ") + name;
    }
    XFER_CHECK(ok, "backbone '", text, "': unknown option '", k, "'; ", s.name, " takes: ", list);
  }
}

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(false));
}

/// torchvision's ResNet init: He-normal (fan_out) convolutions, BN weight 1 and bias 0.
void init_weights(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      torch::nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* b = m->as<torch::nn::BatchNorm2d>()) {
      b->weight.fill_(1.0);
      b->bias.zero_();
    }
  }
}

/// A batch norm; with `sync`, in training mode and a data-parallel run, over the global batch. (A
/// function at the call sites rather than a BatchNorm2d subclass: LibTorch does not export the symbols a
/// subclass's vtables need.)
torch::Tensor norm(torch::nn::BatchNorm2dImpl& bn, const torch::Tensor& x, bool sync) {
  if (!bn.running_mean.defined()) return x;  // folded into the convolution before it (fold_batch_norms)
  if (!sync || !bn.is_training() || !dist::is_distributed()) return bn.forward(x);
  // The running-average factor exactly as BatchNorm2d's forward computes it.
  double factor = bn.options.momentum().value_or(0.0);
  if (bn.options.track_running_stats() && bn.num_batches_tracked.defined()) {
    bn.num_batches_tracked += 1;
    if (!bn.options.momentum()) factor = 1.0 / bn.num_batches_tracked.item<double>();
  }
  return dist::sync_batch_norm(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, factor,
                               bn.options.eps());
}

/// `seq`'s forward from its module `from` on, its batch norms through norm().
torch::Tensor run(torch::nn::Sequential& seq, torch::Tensor x, bool sync, size_t from = 0) {
  for (auto it = seq->begin() + static_cast<std::ptrdiff_t>(from); it != seq->end(); ++it) {
    auto& m = *it;
    if (auto* bn = m.ptr()->as<torch::nn::BatchNorm2d>())
      x = norm(*bn, x, sync);
    else
      x = m.forward(x);
  }
  return x;
}

/// The (conv, norm) pair of a Sequential that starts with a convolution and its batch norm.
ConvNorm sequential_conv_norm(torch::nn::Sequential& seq, bool tapped) {
  return {seq[0]->as<torch::nn::Conv2d>(), seq[1]->as<torch::nn::BatchNorm2d>(), tapped};
}

}  // namespace

void fold_batch_norms(BackboneImpl& folded, BackboneImpl& source, bool keep_taps) {
  // The source's mode does not matter: folding reads its statistics, which eval mode would use.
  XFER_CHECK(!folded.is_training(), "fold_batch_norms: batch norms fold only in eval mode");
  const std::vector<ConvNorm> to = folded.conv_norms(), from = source.conv_norms();
  XFER_CHECK(to.size() == from.size() && folded.spec() == source.spec(), "fold_batch_norms: ", folded.spec(),
             " is not a copy of ", source.spec());
  torch::NoGradGuard no_grad;
  // set_data keeps the modules' registered tensors the ones their forward uses.
  for (size_t i = 0; i < to.size(); ++i) {
    const ConvNorm& t = to[i];
    const ConvNorm& f = from[i];
    const auto format = t.conv->weight.suggest_memory_format();  // the folded copy keeps its own layout
    if (keep_taps && f.tapped) {
      t.conv->weight.set_data(f.conv->weight.clone(format));
      t.norm->weight.set_data(f.norm->weight.clone());
      t.norm->bias.set_data(f.norm->bias.clone());
      t.norm->running_mean.set_data(f.norm->running_mean.clone());
      t.norm->running_var.set_data(f.norm->running_var.clone());
      continue;
    }
    const torch::Tensor scale = f.norm->weight / torch::sqrt(f.norm->running_var + f.norm->options.eps());
    t.conv->weight.set_data((f.conv->weight * scale.view({-1, 1, 1, 1})).contiguous(format));
    const torch::Tensor bias = f.norm->bias - f.norm->running_mean * scale;
    // A bias-free convolution's registered "bias" stays undefined (the folded copy is never saved); its
    // forward reads the member.
    if (t.conv->bias.defined())
      t.conv->bias.set_data(bias);
    else
      t.conv->bias = bias;
    t.norm->running_mean = torch::Tensor();  // the marker norm() skips on
  }
}

void BackboneImpl::set_sync_batch_norm(bool on) {
  sync_bn_ = on;
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* b = m->as<BasicBlockImpl>()) b->sync_bn = on;
    if (auto* b = m->as<BottleneckImpl>()) b->sync_bn = on;
  }
}

const torch::Tensor& Features::map(const std::string& stage) const {
  std::string valid;
  for (const auto& [name, t] : maps) {
    if (name == stage) return t;
    valid += (valid.empty() ? "" : ", ") + name;
  }
  throw BadInput(cat("the backbone has no stage '", stage, "'; stages: ", valid));
}

const torch::Tensor& Features::conv(const std::string& stage) const {
  for (const auto& [name, t] : convs)
    if (name == stage) return t;
  XFER_CHECK(!convs.empty(), "this backbone does not expose its stages' last convolutions (a TorchScript ",
             "backbone); use the stage outputs instead");
  throw BadInput(cat("the backbone has no stage '", stage, "'"));
}

Features BackboneImpl::forward_features(const torch::Tensor& x, const StageHook& hook,
                                        const StageHook& conv_hook) {
  Features f;
  // The stages report their last convolution through tap_last_conv while this call runs.
  struct Tap {
    BackboneImpl& b;
    Tap(BackboneImpl& b, Features* f, const StageHook* h) : b(b) {
      b.building_ = f;
      b.conv_hook_ = h;
    }
    ~Tap() {
      b.building_ = nullptr;
      b.conv_hook_ = nullptr;
    }
  } tap(*this, &f, conv_hook ? &conv_hook : nullptr);
  torch::Tensor h = stem(x);
  for (size_t i = 0; i < stage_names_.size(); ++i) {
    h = stage(i, h);
    if (hook) h = hook(stage_names_[i], h);
    f.maps.emplace_back(stage_names_[i], h);
  }
  f.pooled = h.mean({2, 3});
  return f;
}

torch::Tensor BackboneImpl::tap_last_conv(size_t index, const torch::Tensor& out) {
  torch::Tensor t = conv_hook_ ? (*conv_hook_)(stage_names_[index], out) : out;
  if (building_) building_->convs.emplace_back(stage_names_[index], t);
  return t;
}

Cnn4Impl::Cnn4Impl(int64_t in_channels, int64_t width) {
  spec_ = cat("cnn4:width=", width);
  const int64_t ch[] = {width, 2 * width, 4 * width, 4 * width};
  int64_t in = in_channels;
  for (int i = 0; i < 4; ++i) {
    torch::nn::Sequential block(conv(in, ch[i], 3, 1, 1), torch::nn::BatchNorm2d(ch[i]),
                                torch::nn::ReLU(torch::nn::ReLUOptions().inplace(true)));
    if (i < 2) block->push_back(torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2)));
    const std::string name = cat("layer", i + 1);
    blocks_.push_back(register_module(name, block));
    stage_names_.push_back(name);
    in = ch[i];
  }
  feature_dim_ = ch[3];
  init_weights(*this);
}

std::vector<ConvNorm> Cnn4Impl::conv_norms() {
  std::vector<ConvNorm> out;
  for (auto& block : blocks_) out.push_back(sequential_conv_norm(block, /*tapped=*/true));
  return out;
}

torch::Tensor Cnn4Impl::stage(size_t index, const torch::Tensor& x) {
  // The stage's one convolution comes first; its output (before the batch norm) is the tapped map.
  return run(blocks_[index], tap_last_conv(index, blocks_[index]->begin()->forward(x)), sync_bn_, 1);
}

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t out, int64_t stride)
    : conv1(register_module("conv1", conv(in, out, 3, stride, 1))),
      conv2(register_module("conv2", conv(out, out, 3, 1, 1))),
      bn1(register_module("bn1", torch::nn::BatchNorm2d(out))),
      bn2(register_module("bn2", torch::nn::BatchNorm2d(out))) {
  if (stride != 1 || in != out)
    downsample = register_module(
        "downsample", torch::nn::Sequential(conv(in, out, 1, stride, 0), torch::nn::BatchNorm2d(out)));
}

std::vector<ConvNorm> BasicBlockImpl::conv_norms(bool last) {
  std::vector<ConvNorm> out = {{conv1.get(), bn1.get(), false}, {conv2.get(), bn2.get(), last}};
  if (downsample) out.push_back(sequential_conv_norm(downsample, false));
  return out;
}

torch::Tensor BasicBlockImpl::forward_tapped(const torch::Tensor& x, const ConvTap& tap) {
  torch::Tensor h = torch::relu(norm(*bn1, conv1(x), sync_bn));
  h = conv2(h);
  if (tap) h = tap(h);
  h = norm(*bn2, h, sync_bn);
  h += downsample ? run(downsample, x, sync_bn) : x;
  return torch::relu_(h);
}

BottleneckImpl::BottleneckImpl(int64_t in, int64_t width, int64_t stride)
    : conv1(register_module("conv1", conv(in, width, 1, 1, 0))),
      conv2(register_module("conv2", conv(width, width, 3, stride, 1))),
      conv3(register_module("conv3", conv(width, width * 4, 1, 1, 0))),
      bn1(register_module("bn1", torch::nn::BatchNorm2d(width))),
      bn2(register_module("bn2", torch::nn::BatchNorm2d(width))),
      bn3(register_module("bn3", torch::nn::BatchNorm2d(width * 4))) {
  if (stride != 1 || in != width * 4)
    downsample = register_module("downsample", torch::nn::Sequential(conv(in, width * 4, 1, stride, 0),
                                                                     torch::nn::BatchNorm2d(width * 4)));
}

std::vector<ConvNorm> BottleneckImpl::conv_norms(bool last) {
  std::vector<ConvNorm> out = {
      {conv1.get(), bn1.get(), false}, {conv2.get(), bn2.get(), false}, {conv3.get(), bn3.get(), last}};
  if (downsample) out.push_back(sequential_conv_norm(downsample, false));
  return out;
}

torch::Tensor BottleneckImpl::forward_tapped(const torch::Tensor& x, const ConvTap& tap) {
  torch::Tensor h = torch::relu(norm(*bn1, conv1(x), sync_bn));
  h = torch::relu(norm(*bn2, conv2(h), sync_bn));
  h = conv3(h);
  if (tap) h = tap(h);
  h = norm(*bn3, h, sync_bn);
  h += downsample ? run(downsample, x, sync_bn) : x;
  return torch::relu_(h);
}

ResNetImpl::ResNetImpl(std::string spec, int64_t in_channels, std::vector<int64_t> blocks,
                       std::vector<int64_t> widths, bool imagenet_stem, bool bottleneck)
    : imagenet_stem_(imagenet_stem) {
  spec_ = std::move(spec);
  conv1 = register_module(
      "conv1", imagenet_stem ? conv(in_channels, widths[0], 7, 2, 3) : conv(in_channels, widths[0], 3, 1, 1));
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(widths[0]));
  int64_t in = widths[0];
  for (size_t s = 0; s < blocks.size(); ++s) {
    torch::nn::Sequential layer;
    for (int64_t b = 0; b < blocks[s]; ++b) {
      const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
      if (bottleneck) {
        layer->push_back(Bottleneck(in, widths[s], stride));
        in = widths[s] * 4;
      } else {
        layer->push_back(BasicBlock(in, widths[s], stride));
        in = widths[s];
      }
    }
    const std::string name = cat("layer", s + 1);
    layers_.push_back(register_module(name, layer));
    stage_names_.push_back(name);
  }
  feature_dim_ = in;
  init_weights(*this);
}

std::vector<ConvNorm> ResNetImpl::conv_norms() {
  std::vector<ConvNorm> out = {{conv1.get(), bn1.get(), false}};
  for (auto& layer : layers_)
    for (size_t b = 0; b < layer->size(); ++b) {
      const bool last = b + 1 == layer->size();
      const auto more = layer[b]->as<BasicBlockImpl>() ? layer[b]->as<BasicBlockImpl>()->conv_norms(last)
                                                       : layer[b]->as<BottleneckImpl>()->conv_norms(last);
      out.insert(out.end(), more.begin(), more.end());
    }
  return out;
}

torch::Tensor ResNetImpl::stem(const torch::Tensor& x) {
  torch::Tensor h = torch::relu(norm(*bn1, conv1(x), sync_bn_));
  if (imagenet_stem_) h = F::max_pool2d(h, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
  return h;
}

torch::Tensor ResNetImpl::stage(size_t index, const torch::Tensor& x) {
  torch::nn::Sequential& layer = layers_[index];
  torch::Tensor h = x;
  const auto last = layer->end() - 1;
  for (auto it = layer->begin(); it != last; ++it) h = it->forward(h);
  // The last block's last convolution is the stage's.
  const ConvTap tap = [&](const torch::Tensor& t) { return tap_last_conv(index, t); };
  if (auto* basic = last->ptr()->as<BasicBlockImpl>()) return basic->forward_tapped(h, tap);
  return last->ptr()->as<BottleneckImpl>()->forward_tapped(h, tap);
}

const char* backbone_help() {
  return "cnn4[:width=16] | resnet20[:width=16] | resnet18[:width=64][:stem=imagenet|cifar] | "
         "resnet50[:width=64][:stem=imagenet|cifar] | script:path=FILE (a TorchScript file, as --init "
         "torchscript:FILE: "
         "loading it runs its code, so give only files you trust)";
}

namespace {
/// A parsed and defaulted backbone spec.
struct Resolved {
  std::string name, stem, spec;
  int64_t width = 0;
};

Resolved resolve(const std::string& text) {
  const BackboneSpec s = parse_spec(text);
  Resolved r;
  r.name = s.name;
  if (s.name == "cnn4" || s.name == "resnet20") {
    check_keys(s, text, {"width"});
    r.width = int_option(s, text, "width", 16);
    r.spec = cat(s.name, ":width=", r.width);
  } else if (s.name == "resnet18" || s.name == "resnet50") {
    check_keys(s, text, {"width", "stem"});
    r.width = int_option(s, text, "width", 64);
    r.stem = s.options.count("stem") ? s.options.at("stem") : "imagenet";
    XFER_CHECK(r.stem == "imagenet" || r.stem == "cifar", "backbone '", text,
               "': stem must be imagenet or cifar, got '", r.stem, "'");
    r.spec = cat(s.name, ":width=", r.width, ":stem=", r.stem);
  } else if (s.name == "script") {
    check_keys(s, text, {"path"});
    XFER_CHECK(s.options.count("path"), "backbone '", text, "': script needs path=FILE");
    r.stem = s.options.at("path");
    r.spec = cat("script:path=", r.stem);
  } else {
    throw BadInput(cat("unknown backbone '", s.name, "'; valid: ", backbone_help()));
  }
  return r;
}

/// The stages of a built-in ResNet: blocks and width per stage, the stem, the block type.
struct ResNetLayout {
  std::vector<int64_t> blocks, widths;
  bool imagenet_stem = false, bottleneck = false;
};

ResNetLayout resnet_layout(const Resolved& r) {
  const int64_t w = r.width;
  if (r.name == "resnet20") return {{3, 3, 3}, {w, 2 * w, 4 * w}, false, false};
  return {r.name == "resnet50" ? std::vector<int64_t>{3, 4, 6, 3} : std::vector<int64_t>{2, 2, 2, 2},
          {w, 2 * w, 4 * w, 8 * w},
          r.stem == "imagenet",
          r.name == "resnet50"};
}

/// Scripts loaded on the user's word (see trust_script).
std::set<std::string>& trusted_scripts() {
  static std::set<std::string> paths;
  return paths;
}
std::mutex& trusted_mutex() {
  static std::mutex m;
  return m;
}
}  // namespace

namespace {
/// A file named relatively on the command line and absolutely in a run's checkpoint is the same file.
std::string script_key(const std::string& path) {
  std::error_code ec;
  const auto absolute = std::filesystem::absolute(path, ec);
  return ec ? path : absolute.lexically_normal().string();
}
}  // namespace

void trust_script(const std::string& path) {
  std::lock_guard<std::mutex> lock(trusted_mutex());
  trusted_scripts().insert(script_key(path));
}

bool is_trusted_script(const std::string& path) {
  std::lock_guard<std::mutex> lock(trusted_mutex());
  return trusted_scripts().count(script_key(path)) > 0;
}

std::string normalise_backbone_spec(const std::string& text) {
  return resolve(text).spec;
}

BackboneSize backbone_size(const std::string& spec, int64_t in_channels) {
  const Resolved r = resolve(spec);
  if (r.name == "script") return {};
  // Elements of each module as the constructors above build them (convolutions without bias; a batch norm
  // holds weight, bias, running mean and variance, and the batch counter).
  const auto conv = [](int64_t in, int64_t out, int64_t k) { return in * out * k * k; };
  const auto bn = [](int64_t c) { return 4 * c + 1; };
  BackboneSize size;
  if (r.name == "cnn4") {
    int64_t in = in_channels;
    size.numel = 0;
    for (const int64_t ch : {r.width, 2 * r.width, 4 * r.width, 4 * r.width}) {
      size.numel += conv(in, ch, 3) + bn(ch);
      in = ch;
    }
    size.feature_dim = in;
    return size;
  }
  const ResNetLayout l = resnet_layout(r);
  size.numel = conv(in_channels, l.widths[0], l.imagenet_stem ? 7 : 3) + bn(l.widths[0]);
  int64_t in = l.widths[0];
  for (size_t s = 0; s < l.blocks.size(); ++s)
    for (int64_t b = 0; b < l.blocks[s]; ++b) {
      const int64_t stride = (b == 0 && s > 0) ? 2 : 1, w = l.widths[s], out = l.bottleneck ? 4 * w : w;
      size.numel += l.bottleneck ? conv(in, w, 1) + conv(w, w, 3) + conv(w, out, 1) + 2 * bn(w) + bn(out)
                                 : conv(in, w, 3) + conv(w, w, 3) + 2 * bn(w);
      if (stride != 1 || in != out) size.numel += conv(in, out, 1) + bn(out);
      in = out;
    }
  size.feature_dim = in;
  return size;
}

Backbone make_backbone(const std::string& text, int64_t in_channels) {
  XFER_CHECK(in_channels >= 1, "backbone input channels must be >= 1, got ", in_channels);
  const Resolved r = resolve(text);
  if (r.name == "cnn4") return std::make_shared<Cnn4Impl>(in_channels, r.width);
  if (r.name == "script") {
    XFER_CHECK(
        is_trusted_script(r.stem), "backbone ", r.spec, ": a TorchScript file runs its own code, so xfer ",
        "loads one only when you name it (--init torchscript:", r.stem, " or --backbone script:path=", r.stem,
        "), never because a checkpoint or another file names it");
    return make_script_backbone(r.stem);
  }
  const ResNetLayout l = resnet_layout(r);
  return std::make_shared<ResNetImpl>(r.spec, in_channels, l.blocks, l.widths, l.imagenet_stem, l.bottleneck);
}

}  // namespace xfer
