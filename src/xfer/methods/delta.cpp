#include "xfer/methods/delta.h"

#include <algorithm>
#include <numeric>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/methods/regularization.h"
#include "xfer/methods/stages.h"
#include "xfer/metrics/analysis.h"

namespace xfer {
namespace F = torch::nn::functional;

torch::Tensor delta_penalty(const std::vector<torch::Tensor>& maps, const std::vector<torch::Tensor>& maps0,
                            const std::vector<torch::Tensor>& attention) {
  XFER_CHECK(maps.size() == maps0.size() && maps.size() == attention.size(), "DELTA: ", maps.size(),
             " maps, ", maps0.size(), " source maps and ", attention.size(), " attention vectors");
  XFER_CHECK(!maps.empty(), "DELTA: no feature maps to compare");
  torch::Tensor total;
  for (size_t l = 0; l < maps.size(); ++l) {
    const torch::Tensor& m = maps[l];
    XFER_CHECK(m.dim() == 4 && m.sizes() == maps0[l].sizes(), "DELTA: feature maps of layer ", l,
               " have shapes ", m.sizes(), " and ", maps0[l].sizes());
    const int64_t c = m.size(1), hw = m.size(2) * m.size(3);
    XFER_CHECK(attention[l].numel() == c, "DELTA: layer ", l, " has ", c, " channels but ",
               attention[l].numel(), " attention weights");
    const torch::Tensor sq = (m - maps0[l].detach()).pow(2).sum({2, 3});  // (N, C)
    const torch::Tensor term = (sq * attention[l].to(m.dtype()).view({1, c})).sum() *
                               (0.5 * static_cast<double>(c) / static_cast<double>(hw));
    total = total.defined() ? total + term : term;
  }
  return total;
}

torch::Tensor delta_attention_weights(const torch::Tensor& rises, double temperature) {
  XFER_CHECK(temperature > 0, "DELTA attention temperature must be > 0, got ", temperature);
  const torch::Tensor r = rises.to(torch::kFloat64);
  const torch::Tensor centred = r - r.mean();
  const double std = centred.pow(2).mean().sqrt().item<double>();  // population std, as numpy's
  const torch::Tensor z = std > 0 ? centred / std : torch::zeros_like(r);
  return torch::softmax(z / temperature, 0).to(torch::kFloat32);
}

std::vector<torch::Tensor> delta_maps(const Features& f, const std::vector<std::string>& stages,
                                      bool last_conv) {
  std::vector<torch::Tensor> out;
  for (const auto& s : stages) out.push_back(last_conv ? f.conv(s) : f.map(s));
  return out;
}

std::vector<torch::Tensor> delta_channel_rises(BackboneImpl& backbone, torch::nn::Linear& classifier,
                                               const torch::Tensor& x, const torch::Tensor& y,
                                               const std::vector<std::string>& stages, bool last_conv) {
  torch::NoGradGuard no_grad;
  const int64_t n = x.size(0);
  const Features intact = backbone.forward_features(x);
  const double base = F::cross_entropy(classifier->forward(intact.pooled), y).item<double>();
  const auto none = F::CrossEntropyFuncOptions().reduction(torch::kNone);
  const std::vector<std::string>& names = backbone.stage_names();
  // Replicated maps are capped near 2^24 elements per forward pass (64 MB in float32).
  constexpr int64_t kBudget = int64_t{1} << 24;
  std::vector<torch::Tensor> rises;
  for (const auto& stage : stages) {
    const torch::Tensor& map = last_conv ? intact.conv(stage) : intact.map(stage);
    const int64_t c = map.size(1);
    const int64_t chunk = std::clamp<int64_t>(kBudget / std::max<int64_t>(1, map.numel()), 1, c);
    // A last-conv map sits inside the stage: the copies start at the stage's input (the previous stage's
    // output, or the image); a stage output is replicated where it is zeroed.
    const auto at = std::find(names.begin(), names.end(), stage) - names.begin();
    const std::string replicate_after = last_conv ? (at > 0 ? names[at - 1] : "") : stage;
    torch::Tensor r = torch::empty({c}, torch::kFloat64);
    for (int64_t g0 = 0; g0 < c; g0 += chunk) {
      const int64_t g = std::min(chunk, c - g0);
      // Copy i of the batch has channel g0 + i zeroed.
      const auto idx = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
      torch::Tensor mask = torch::ones({g, c}, map.options());
      mask.index_put_({torch::arange(g, idx), torch::arange(g0, g0 + g, idx)}, 0.0);
      auto replicate = [&](const torch::Tensor& t) {
        return t.unsqueeze(0).expand({g, -1, -1, -1, -1}).reshape({g * n, t.size(1), t.size(2), t.size(3)});
      };
      auto zero = [&](const torch::Tensor& t) {
        return (t.view({g, n, c, t.size(2), t.size(3)}) * mask.view({g, 1, c, 1, 1})).view_as(t);
      };
      const StageHook stage_hook = [&](const std::string& name, const torch::Tensor& out) {
        if (name != replicate_after) return out;
        return last_conv ? replicate(out) : zero(replicate(out));
      };
      const StageHook conv_hook = [&](const std::string& name, const torch::Tensor& out) {
        return last_conv && name == stage ? zero(out) : out;
      };
      const torch::Tensor input = replicate_after.empty() ? replicate(x) : x;
      const torch::Tensor pooled = backbone.forward_features(input, stage_hook, conv_hook).pooled;
      const torch::Tensor ce =
          F::cross_entropy(classifier->forward(pooled), y.repeat({g}), none).view({g, n});
      r.slice(0, g0, g0 + g).copy_(ce.mean(1).to(torch::kFloat64).cpu() - base);
    }
    rises.push_back(r);
  }
  return rises;
}

void DeltaMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "weight of the feature-map distance to the source network").non_negative();
  f.add("beta", beta, "weight of the head's L2 norm (beta/2 ||w||^2)").non_negative();
  f.add("stages", stages,
        "backbone stages whose feature maps are compared: all, or names like layer1,layer3");
  f.add("feature_maps", feature_maps,
        "the map of each stage: last-conv (its last convolution's output, before the "
        "batch norm and the residual add, as the authors' code) or stage (its output)");
  f.add("decay", decay,
        "beta: the optimizer's weight decay off, beta/2 ||w_head||^2 instead (the authors' code); "
        "optimizer: the run's --weight-decay on every parameter, no beta term (SMILE's code)");
  f.add("attention", attention, "channel attention from the source network (on), or a_c = 1/C (off)");
  f.add("attention_examples", attention_examples,
        "target training images the channel attention is measured on")
      .at_least(1);
  f.add("temperature", temperature, "softmax temperature of the channel attention").positive();
  f.add("probe_iterations", probe_iterations,
        "L-BFGS iterations of the linear classifier used for the attention")
      .at_least(1);
  f.add("probe_decay", probe_decay, "L2 weight of that classifier").non_negative();
}

void DeltaMethod::setup(Model& model, SetupContext& ctx) {
  source_ = Teacher(ctx.require_pretrained("delta"), /*keep_conv_taps=*/last_conv());
  stages_ = parse_stages(opts_.stages, *model->backbone, "--stages");
  if (opts_.attention == DeltaAttention::on) {
    attention_ = measure_attention(ctx);
    return;
  }
  attention_.clear();
  const Features f =
      source_.features(torch::zeros({1, model->arch().in_channels, model->arch().height, model->arch().width},
                                    torch::TensorOptions().device(ctx.device)));
  for (const auto& m : delta_maps(f, stages_, last_conv())) {
    const int64_t c = m.size(1);
    attention_.push_back(torch::full({c}, 1.0 / static_cast<double>(c)));
  }
}

std::vector<torch::Tensor> DeltaMethod::measure_attention(SetupContext& ctx) {
  const TensorDataset& train = ctx.task.train;
  Model& source = source_.model();
  const InputTransform transform(source->arch().input);
  auto input = [&](const torch::Tensor& indices) {
    return transform.normalise(train.eval_images(indices)).to(ctx.device);
  };

  // The linear classifier on the frozen source features, as the authors train the new fc first.
  std::vector<torch::Tensor> pooled;
  for (int64_t start = 0; start < train.size(); start += 500) {
    const torch::Tensor idx = torch::arange(start, std::min(start + 500, train.size()), torch::kInt64);
    pooled.push_back(source_.features(input(idx)).pooled);
  }
  torch::nn::Linear probe = fit_linear_probe(torch::cat(pooled), train.labels.to(ctx.device),
                                             train.num_classes(), opts_.probe_iterations, opts_.probe_decay);

  // The rises of the cross-entropy on a seeded draw of training images, in batches.
  std::vector<int64_t> order(static_cast<size_t>(train.size()));
  std::iota(order.begin(), order.end(), int64_t{0});
  shuffle_in_place(order, derive_seed(ctx.seed, "delta_attention"));
  order.resize(static_cast<size_t>(std::min(train.size(), opts_.attention_examples)));
  const int64_t m = static_cast<int64_t>(order.size());
  const int64_t batch = std::max<int64_t>(1, ctx.loader.batch_size);
  const torch::Tensor chosen = torch::tensor(order, torch::kInt64);
  std::vector<torch::Tensor> sums;
  for (int64_t start = 0; start < m; start += batch) {
    const torch::Tensor idx = chosen.slice(0, start, std::min(start + batch, m));
    const auto r =
        delta_channel_rises(*source->backbone, probe, input(idx),
                            train.labels.index_select(0, idx).to(ctx.device), stages_, last_conv());
    for (size_t s = 0; s < r.size(); ++s) {
      const torch::Tensor weighted = r[s] * static_cast<double>(idx.size(0));
      if (sums.size() <= s)
        sums.push_back(weighted);
      else
        sums[s] += weighted;
    }
  }
  std::vector<torch::Tensor> out;
  for (const auto& s : sums)
    out.push_back(delta_attention_weights(s / static_cast<double>(m), opts_.temperature));
  return out;
}

std::vector<ParamGroup> DeltaMethod::param_groups(Model& model, double head_lr_mult) {
  if (opts_.decay == HeadDecay::optimizer) return Method::param_groups(model, head_lr_mult);
  return {{"backbone", model->backbone_parameters(), 1.0, 0.0},
          {"heads", model->head_parameters(), head_lr_mult, 0.0}};
}

LossTerms DeltaMethod::loss(StepContext& ctx) {
  XFER_CHECK(source_.defined(), "delta was not set up");
  const Batch b = ctx.batches.next("target");
  const Features f = ctx.model->backbone->forward_features(b.x);
  torch::nn::Linear head = ctx.model->head(ctx.head);
  const torch::Tensor logits = head->forward(f.pooled);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  const Features f0 = source_.features(b.x);
  std::vector<torch::Tensor> attention;
  for (const auto& a : attention_) attention.push_back(a.to(b.x.device()));
  const torch::Tensor fm =
      delta_penalty(delta_maps(f, stages_, last_conv()), delta_maps(f0, stages_, last_conv()), attention) *
      opts_.alpha;
  if (opts_.decay == HeadDecay::optimizer)
    return LossTerms{ce + fm, {{"ce", ce.detach()}, {"feature_maps", fm.detach()}}}.with_train_accuracy(
        logits, b.y);
  const torch::Tensor decay = l2_penalty(head->parameters(), opts_.beta);
  return LossTerms{ce + fm + decay,
                   {{"ce", ce.detach()}, {"feature_maps", fm.detach()}, {"head_l2", decay.detach()}}}
      .with_train_accuracy(logits, b.y);
}

void DeltaMethod::save(Archive& out) const {
  for (size_t i = 0; i < attention_.size(); ++i)
    out.write(cat("delta_attention_", stages_[i]), attention_[i]);
}

void DeltaMethod::load(const Archive& in) {
  for (size_t i = 0; i < attention_.size(); ++i) {
    torch::Tensor t;
    XFER_CHECK(in.try_read(cat("delta_attention_", stages_[i]), t),
               "the checkpoint holds no DELTA attention for ", stages_[i]);
    XFER_CHECK(t.sizes() == attention_[i].sizes(), "the checkpoint's DELTA attention for ", stages_[i],
               " has shape ", t.sizes(), ", this run needs ", attention_[i].sizes());
    attention_[i] = t.to(attention_[i].options());
  }
}

}  // namespace xfer
