#include "xfer/methods/gradmix.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/data/spec.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/semi.h"
#include "xfer/source/mixing_weights.h"
#include "xfer/source/pseudo_labels.h"

namespace xfer {
namespace {

using Mode = GradMixMethod::Mode;

bool gradmix_mixes(Mode m) {
  return m == Mode::gradmix || m == Mode::sgd;
}
bool gradmix_uses_sources(Mode m) {
  return m != Mode::target_only;
}

/// --shared-sources' indices ("0,2"); the caller handles "auto".
std::vector<size_t> shared_source_indices(const std::string& text) {
  std::vector<size_t> out;
  for (const auto& s : split_nonempty(text, ',')) {
    // Digits only and at most 9 of them: a longer index names no source.
    const std::optional<int64_t> i =
        s.find_first_not_of("0123456789") == std::string::npos ? parse_int64(s) : std::nullopt;
    XFER_CHECK(i && *i < 1000000000, "--shared-sources must be auto or source indices like 0,2, got '", text,
               "'");
    out.push_back(static_cast<size_t>(*i));
  }
  return out;
}

TensorDataset gradmix_concat(const TensorDataset& a, const TensorDataset& b) {
  if (b.size() == 0) return a;
  return {torch::cat({a.images, b.images}), torch::cat({a.labels, b.labels}), a.class_names, nullptr};
}

/// The module owning a parameter: "layer1.0.weight" -> "layer1.0".
std::string gradmix_module_of(const std::string& param) {
  const size_t dot = param.rfind('.');
  return dot == std::string::npos ? param : param.substr(0, dot);
}

/// The convolution a normalisation module `m` belongs to, by name: "P.bnK" -> "P.convK", "P.N" -> "P.(N-1)";
/// "" when the name says nothing.
std::string gradmix_norm_partner(const std::string& m) {
  const size_t dot = m.rfind('.');
  const std::string prefix = dot == std::string::npos ? "" : m.substr(0, dot + 1),
                    last = m.substr(prefix.size());
  if (last.rfind("bn", 0) == 0) return prefix + "conv" + last.substr(2);
  // (A TorchScript backbone names its own modules: at most 9 digits keep stoll in range.)
  if (!last.empty() && last.size() <= 9 && last.find_first_not_of("0123456789") == std::string::npos &&
      last != "0")
    return prefix + std::to_string(std::stoll(last) - 1);
  return "";
}

}  // namespace

std::vector<MixingLayer> gradmix_layers(const std::vector<std::string>& names,
                                        const std::vector<int64_t>& dims) {
  XFER_CHECK(names.size() == dims.size(), "gradmix_layers: ", names.size(), " names for ", dims.size(),
             " dims");
  // Modules in order of their first parameter; a module with a parameter of 2+ dimensions is a layer.
  std::vector<std::string> modules;
  std::map<std::string, std::vector<size_t>> params_of;
  std::map<std::string, bool> primary;
  for (size_t p = 0; p < names.size(); ++p) {
    const std::string m = gradmix_module_of(names[p]);
    if (!params_of.count(m)) modules.push_back(m);
    params_of[m].push_back(p);
    primary[m] = primary[m] || dims[p] >= 2;
  }
  std::vector<MixingLayer> layers;
  std::map<std::string, size_t> layer_of;
  for (const auto& m : modules)
    if (primary[m]) {
      layer_of[m] = layers.size();
      layers.push_back({m, {}});
    }
  XFER_CHECK(!layers.empty() || modules.empty(),
             "GradMix --layers layer: the backbone has no convolution or linear "
             "layer (no parameter of 2 or more dimensions); use --layers module");
  std::string previous;  // the last layer met, for a normalisation whose name says nothing
  for (const auto& m : modules) {
    std::string owner = m;
    if (!primary[m]) {
      const std::string partner = gradmix_norm_partner(m);
      owner = layer_of.count(partner) ? partner : !previous.empty() ? previous : layers.front().name;
    } else {
      previous = m;
    }
    auto& ps = layers[layer_of[owner]].params;
    ps.insert(ps.end(), params_of[m].begin(), params_of[m].end());
  }
  for (auto& l : layers) std::sort(l.params.begin(), l.params.end());
  return layers;
}

TensorDataset unlabelled_target_images(const std::string& option, const Task& target, uint64_t seed) {
  target.train.require_in_memory("GradMix's unlabelled target images");
  if (option != "rest") return load_task(option, seed).train;
  DatasetSpec spec = DatasetSpec::parse(target.spec);
  XFER_CHECK(spec.per_class.has_value(),
             "--unlabelled rest takes the target's training images that V does not use, "
             "but the target spec '",
             target.spec, "' uses all of them; add per_class=N, or pass --unlabelled SPEC");
  spec.test = "rest";
  spec.test_per_class.reset();
  return load_task(spec, seed).test;
}

const char* GradMixMethod::mode_name(Mode mode) {
  switch (mode) {
    case Mode::gradmix:
      return "gradmix";
    case Mode::sgd:
      return "gradmix-sgd";
    case Mode::source_only:
      return "source-only";
    case Mode::target_only:
      return "target-only";
    case Mode::finetune:
      return "finetune";
  }
  return "?";
}

void GradMixMethod::Options::fields(Fields& f) {
  if (gradmix_uses_sources(mode)) {
    f.add("sources", sources,
          "labelled source specs separated by ';' (default: --source); a source whose "
          "class names equal the target's shares the target head")
        .path(Fields::PathKind::specs);
    f.add("shared_sources", shared_sources,
          "which sources share the target head: auto (same class names as the "
          "target) or indices like 0,2");
  }
  f.add("v_batch", v_batch, "batch size on V, the labelled target set (0: min(|V|, --batch-size))")
      .non_negative();
  if (gradmix_mixes(mode)) {
    f.add("adalr", adalr,
          "adaptive learning rate: scale the mixed backbone gradient by eta = "
          "1/(1+exp(-(beta*rho-gamma))) (Eq. 9, 10)");
    f.add("adalr_beta", beta, "adaptive lr: saturation rate beta (Eq. 9)").in_range(1e-6, 1e4);
    f.add("adalr_gamma", gamma, "adaptive lr: shift gamma (eta = 0.5 where beta*rho = gamma)")
        .in_range(0, 1e4);
    if (mode == Mode::gradmix)
      f.add("layers", layers,
            "weight granularity: layer (each convolution or linear layer with its batch norm, "
            "the paper's), module (each module with parameters), tensor, or global (one weight "
            "per source)");
    if (mode == Mode::sgd)
      f.add("meta_gradient", meta_gradient,
            "gradmix-sgd's weights: lookahead (Ren et al.'s one-step look-ahead "
            "meta-gradient over the shared layers and the target head; the whole "
            "update weighted) or backbone (backbone gradients' dot products only)");
    f.add("unlabelled", unlabelled,
          "unlabelled target images U for --ssl: rest (the target spec's training "
          "images outside V and its val split) or a spec")
        .path(Fields::PathKind::spec);
    f.add("ssl", ssl, "semi-supervised term on U");
    f.add("vat_epsilon", vat_epsilon, "VAT: norm of the adversarial perturbation (normalised input units)")
        .positive();
    f.add("vat_xi", vat_xi, "VAT: finite-difference step of the power iteration").positive();
    f.add("vat_weight", vat_weight, "VAT: weight of the term").non_negative();
    f.add("mixmatch_weight", mixmatch_weight, "MixMatch: weight lambda_u of the unlabelled term")
        .non_negative();
    f.add("mixmatch_rampup", mixmatch_rampup,
          "MixMatch: lambda_u ramps up linearly over this fraction of the run")
        .in_range(0, 1);
    f.add("mixmatch_t", mixmatch_t, "MixMatch: sharpening temperature").in_open_range(0, 1e3);
    f.add("mixmatch_alpha", mixmatch_alpha, "MixMatch: mixup Beta(alpha, alpha)").positive();
    f.add("mixmatch_k", mixmatch_k, "MixMatch: augmentations per unlabelled image").at_least(1);
    f.add("pseudo", pseudo, "ensemble pseudo-label file of `xfer gradmix-pseudo` (adds the source S_u)")
        .path(Fields::PathKind::file);
    f.add("pseudo_mode", pseudo_mode,
          "pseudo-labels: hard (all models agree above the threshold; CE) or soft "
          "(mean probability; KL)");
    f.add("pseudo_threshold", pseudo_threshold,
          "hard pseudo-labels: every model's probability must exceed this")
        .in_open_range(0, 1);
    f.add("enlarge_v", enlarge_v, "with --pseudo: enlarge V to this many per class with hard labels (0: off)")
        .non_negative();
  }
  if (mode == Mode::finetune) {
    f.add("switch_at", switch_at, "fraction of the run trained on the sources before fine-tuning on V")
        .in_open_range(0, 1);
    f.add("finetune_lr_scale", finetune_lr_scale, "learning-rate multiplier while fine-tuning on V")
        .positive();
  }
}

void GradMixMethod::Options::check() const {
  Options copy = *this;
  check_options(copy);
  if (shared_sources != "auto") shared_source_indices(shared_sources);
  XFER_CHECK(ssl == SslTerm::none || !unlabelled.empty(), "--ssl ", ssl,
             " needs --unlabelled (rest or a spec)");
}

GradMixMethod::GradMixMethod(Options options) : opts_(std::move(options)) {
  opts_.check();
}

std::vector<std::string> GradMixMethod::source_names() const {
  std::vector<std::string> out;
  for (const auto& s : sources_) out.push_back(s.name);
  return out;
}

namespace {

std::string shape_of(const TensorDataset& d) {
  return cat(d.channels(), "x", d.height(), "x", d.width());
}

}  // namespace

void GradMixMethod::setup(Model& model, SetupContext& ctx) {
  const std::string name = mode_name(opts_.mode);
  const Task& task = ctx.task;
  task.train.require_in_memory(cat("method ", name));
  XFER_CHECK(task.train.size() > 0, "method ", name,
             " needs labelled target examples V (the --target spec's train split), but it is empty");
  classes_ = task.num_classes();
  if (gradmix_uses_sources(opts_.mode)) add_labelled_sources(model, ctx);
  const TensorDataset v = opts_.pseudo.empty() ? task.train : add_pseudo_source(model, ctx);
  const int64_t v_batch = opts_.v_batch > 0 ? opts_.v_batch : std::min(v.size(), ctx.loader.batch_size);
  ctx.add_stream("v", v, model, nullptr, v_batch);
  if (opts_.ssl != SslTerm::none) {
    unlabelled_ = unlabelled_target_images(opts_.unlabelled, task, ctx.seed);
    ctx.add_stream("u", unlabelled_, model);
    crop_pad_ = ctx.loader.crop_pad;
    flip_ = ctx.loader.flip;
    aug_seed_ = derive_seed(ctx.seed, "mixmatch");
  }
  group_shared_layers(model);
  XFER_CHECK(!shared_.empty() || !gradmix_uses_sources(opts_.mode), "method ", name,
             ": the backbone has no trainable parameters");
  reset_weights(ctx.head);
}

void GradMixMethod::add_labelled_sources(Model& model, SetupContext& ctx) {
  const std::string name = mode_name(opts_.mode);
  const Task& task = ctx.task;
  std::vector<Task> tasks;
  std::vector<std::string> specs = split_nonempty(opts_.sources, ';');
  if (specs.empty() && ctx.source != nullptr) {
    tasks.push_back(*ctx.source);
    specs.push_back(ctx.source->spec);
  } else {
    for (const auto& spec : specs) tasks.push_back(load_task(spec, ctx.seed));
  }
  XFER_CHECK(!tasks.empty(), "method ", name,
             " needs labelled sources: pass --sources \"SPEC1;SPEC2\" (or --source SPEC)");
  std::vector<bool> shared(tasks.size(), false);
  if (opts_.shared_sources == "auto") {
    for (size_t i = 0; i < tasks.size(); ++i) shared[i] = tasks[i].class_names() == task.class_names();
  } else {
    for (const size_t i : shared_source_indices(opts_.shared_sources)) {
      XFER_CHECK(i < tasks.size(), "--shared-sources ", opts_.shared_sources, ": there are only ",
                 tasks.size(), " sources (indices 0-", tasks.size() - 1, ")");
      XFER_CHECK(tasks[i].num_classes() == task.num_classes(), "--shared-sources: source ", i, " (", specs[i],
                 ") has ", tasks[i].num_classes(), " classes, the target has ", task.num_classes());
      shared[i] = true;
    }
  }
  if (std::find(shared.begin(), shared.end(), true) == shared.end()) {
    std::string listed;
    for (size_t i = 0; i < tasks.size(); ++i)
      listed += cat("; source ", i, " (", specs[i], "): ", join(tasks[i].class_names(), ","));
    throw BadInput(cat("method ", name, ": no source shares the target's label space (",
                       join(task.class_names(), ","), ")", listed,
                       ". A source shares the target head when its class names equal the target's, "
                       "in order; or name it with --shared-sources I"));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    const TensorDataset& d = tasks[i].train;
    XFER_CHECK(d.channels() == task.train.channels() && d.height() == task.train.height() &&
                   d.width() == task.train.width(),
               "source ", i, " (", specs[i], ") has ", shape_of(d), " images but the target's are ",
               shape_of(task.train));
    Source s;
    s.name = cat("s", i);
    s.stream = cat("source", i);
    s.head = shared[i] ? ctx.head : s.name;
    if (!shared[i]) {
      const HeadInfo* pre = ctx.pretrained ? ctx.pretrained->arch().head("source") : nullptr;
      if (pre != nullptr && pre->class_names == tasks[i].class_names())
        copy_head(ctx.pretrained, "source", model, s.head);
      else
        model->add_head({s.head, tasks[i].class_names()});
    }
    ctx.add_stream(s.stream, d, model);
    sources_.push_back(s);
  }
}

TensorDataset GradMixMethod::add_pseudo_source(Model& model, SetupContext& ctx) {
  const Task& task = ctx.task;
  TensorDataset v = task.train;
  const EnsembleLabels ens = load_ensemble_labels(opts_.pseudo);
  XFER_CHECK(ens.images.class_names == task.class_names(), opts_.pseudo, ": its classes (",
             join(ens.images.class_names, ","), ") are not the target's (", join(task.class_names(), ","),
             ")");
  XFER_CHECK(ens.images.channels() == task.train.channels() && ens.images.height() == task.train.height() &&
                 ens.images.width() == task.train.width(),
             opts_.pseudo, ": its images are ", shape_of(ens.images), ", the target's ",
             shape_of(task.train));
  const HardLabels hard = hard_pseudo_labels(ens.probs, opts_.pseudo_threshold);
  Source s;
  s.name = "pseudo";
  s.stream = "pseudo";
  s.head = ctx.head;
  if (opts_.pseudo_mode == PseudoLabels::hard) {
    XFER_CHECK(hard.index.numel() > 0, opts_.pseudo,
               ": no unlabelled image meets the hard rule at --pseudo-threshold ", opts_.pseudo_threshold,
               "; lower it or use --pseudo-mode soft");
    TensorDataset su = ens.images.subset(hard.index);
    su.labels = hard.labels.clone();  // the ensemble's labels, never the true ones
    ctx.add_stream(s.stream, su, model);
  } else {
    TensorDataset su = ens.images;
    su.labels = torch::zeros({su.size()}, torch::kInt64);  // unused: soft targets come from `soft`
    s.soft = soft_pseudo_labels(ens.probs).to(ctx.device);
    ctx.add_stream(s.stream, su, model);
  }
  sources_.push_back(s);
  if (opts_.enlarge_v > 0) {
    at::Generator gen = make_generator(derive_seed(ctx.seed, "enlarge_v"));
    const torch::Tensor pick = enlarge_per_class(task.train.labels, hard, classes_, opts_.enlarge_v, gen);
    TensorDataset extra = ens.images.subset(hard.index.index_select(0, pick));
    extra.labels = hard.labels.index_select(0, pick).clone();
    v = gradmix_concat(v, extra);
    log_info(cat(mode_name(opts_.mode), ": V enlarged from ", task.train.size(), " to ", v.size(),
                 " images with hard pseudo-labels"));
  }
  return v;
}

void GradMixMethod::group_shared_layers(Model& model) {
  shared_.clear();
  layers_.clear();
  layer_names_.clear();
  std::vector<std::string> names;
  std::vector<int64_t> dims;
  for (const auto& p : model->backbone->named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    names.push_back(p.key());
    dims.push_back(p.value().dim());
    shared_.push_back(p.value());
  }
  // sgd mixes with one weight per source; its layers only sum rho, as gradmix's do.
  const MixingGranularity granularity = opts_.mode == Mode::gradmix ? opts_.layers : MixingGranularity::layer;
  if (granularity == MixingGranularity::layer) {
    for (auto& l : gradmix_layers(names, dims)) {
      layer_names_.push_back(l.name);
      layers_.push_back(std::move(l.params));
    }
  } else {
    for (size_t p = 0; p < names.size(); ++p) {
      const std::string layer = granularity == MixingGranularity::global   ? "all"
                                : granularity == MixingGranularity::tensor ? names[p]
                                                                           : gradmix_module_of(names[p]);
      if (layer_names_.empty() || layer_names_.back() != layer) {
        layer_names_.push_back(layer);
        layers_.emplace_back();
      }
      layers_.back().push_back(p);
    }
  }
}

void GradMixMethod::reset_weights(const std::string& target_head) {
  const size_t k = sources_.size();
  weights_.assign(layers_.size(), std::vector<double>(k, k > 0 ? 1.0 / static_cast<double>(k) : 0.0));
  size_t on_target = 0;
  for (const auto& s : sources_) on_target += s.head == target_head;
  head_weights_.assign(k, 0.0);
  for (size_t i = 0; i < k; ++i)
    if (sources_[i].head == target_head) head_weights_[i] = 1.0 / static_cast<double>(on_target);
  failures_ = 0;
  solver_seconds_ = 0;
}

LossTerms GradMixMethod::loss(StepContext& ctx) {
  const Batch v = ctx.batches.next("v");
  const torch::Tensor ce = cross_entropy(ctx.model->forward(v.x, ctx.head), v.y);
  return {ce, {{"loss/v", ce.detach()}}};
}

std::vector<Phase> GradMixMethod::phases(int64_t iterations) const {
  if (opts_.mode != Mode::finetune) return Method::phases(iterations);
  const int64_t sources = std::clamp<int64_t>(std::llround(opts_.switch_at * static_cast<double>(iterations)),
                                              1, std::max<int64_t>(1, iterations - 1));
  return {{"sources", sources}, {"v", iterations - sources, opts_.finetune_lr_scale}};
}

LossTerms GradMixMethod::target_step(StepContext& ctx, double lr_scale) {
  synchronised_ = false;  // a plain backward: the Trainer averages the gradients over the processes
  LossTerms terms = loss(ctx);
  terms.total.backward();
  terms.total = terms.total.detach();
  terms.lr_scale = lr_scale;
  return terms;
}

LossTerms GradMixMethod::compute_gradients(StepContext& ctx) {
  switch (opts_.mode) {
    case Mode::target_only:
      return target_step(ctx, 1.0);
    case Mode::finetune:  // the "v" phase's lr multiplier is --finetune-lr-scale
      return ctx.phase == 1 ? target_step(ctx, 1.0) : mixed_step(ctx);
    default:
      return mixed_step(ctx);
  }
}

void GradMixMethod::source_gradients(StepContext& ctx, StepGradients& grads, Parts& parts,
                                     torch::Tensor& total) {
  const size_t k = sources_.size(), n_shared = shared_.size();
  grads.g.assign(k, {});
  grads.h.assign(k, {});
  for (size_t i = 0; i < k; ++i) {
    const Source& s = sources_[i];
    const Batch b = ctx.batches.next(s.stream);
    const torch::Tensor logits = ctx.model->forward(b.x, s.head);
    const torch::Tensor loss =
        s.soft.defined() ? kl_divergence(s.soft.index_select(0, b.index.to(s.soft.device())), logits)
                         : cross_entropy(logits, b.y);
    const std::vector<torch::Tensor> head_params = ctx.model->head(s.head)->parameters();
    std::vector<torch::Tensor> inputs = shared_;
    inputs.insert(inputs.end(), head_params.begin(), head_params.end());
    std::vector<torch::Tensor> all =
        torch::autograd::grad({loss}, inputs, {}, false, false, /*allow_unused=*/true);
    for (size_t j = 0; j < all.size(); ++j)
      if (!all[j].defined()) all[j] = torch::zeros_like(inputs[j]);
    dist::all_reduce_mean(all);
    grads.g[i].assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_shared));
    grads.h[i].assign(all.begin() + static_cast<std::ptrdiff_t>(n_shared), all.end());
    parts["loss/" + s.name] = loss.detach();
    total = total + loss.detach().to(torch::kCPU, torch::kFloat64);
  }
}

namespace {

/// The gradients `which` (offset by `offset`) flattened into one vector.
torch::Tensor gradmix_flat(const std::vector<torch::Tensor>& grads, const std::vector<size_t>& which,
                           size_t offset) {
  std::vector<torch::Tensor> pieces;
  for (size_t p : which) pieces.push_back(grads[offset + p].reshape(-1));
  return pieces.size() == 1 ? pieces[0] : torch::cat(pieces);
}

/// sum_j a[j] . b[offset + j] in double precision.
double gradmix_dot(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, size_t offset) {
  double s = 0;
  for (size_t j = 0; j < a.size(); ++j)
    s += (a[j].to(torch::kFloat64) * b[offset + j].to(torch::kFloat64)).sum().item<double>();
  return s;
}

/// Whether mixing weights sit at a vertex of the simplex: one source alone.
bool gradmix_at_vertex(const std::vector<double>& w) {
  return std::any_of(w.begin(), w.end(), [](double v) { return v >= 1 - 1e-9; });
}

}  // namespace

double GradMixMethod::solve_weights(StepContext& ctx, StepGradients& grads, Parts& parts, int64_t& failed) {
  const size_t k = sources_.size(), n_shared = shared_.size();
  const Batch& v = grads.v;
  const torch::Tensor loss_v = cross_entropy(ctx.model->forward(v.x, ctx.head), v.y);
  std::vector<torch::Tensor> inputs = shared_;
  const std::vector<torch::Tensor> target_head = ctx.model->head(ctx.head)->parameters();
  inputs.insert(inputs.end(), target_head.begin(), target_head.end());
  grads.gv = torch::autograd::grad({loss_v}, inputs, {}, false, false, /*allow_unused=*/true);
  for (size_t p = 0; p < grads.gv.size(); ++p)
    if (!grads.gv[p].defined()) grads.gv[p] = torch::zeros_like(inputs[p]);
  dist::all_reduce_mean(grads.gv);
  parts["loss/v"] = loss_v.detach();

  std::vector<LayerGeometry> geometry(layers_.size());
  for (size_t l = 0; l < layers_.size(); ++l) {
    std::vector<torch::Tensor> rows;
    for (size_t i = 0; i < k; ++i) rows.push_back(gradmix_flat(grads.g[i], layers_[l], 0));
    rows.push_back(gradmix_flat(grads.gv, layers_[l], 0));
    geometry[l] = LayerGeometry::from_rows(torch::stack(rows));
  }
  double rho = 0;
  std::vector<size_t> on_target;  // the sources sharing the target head
  for (size_t i = 0; i < k; ++i)
    if (sources_[i].head == ctx.head) on_target.push_back(i);
  if (opts_.mode == Mode::gradmix) {
    for (size_t l = 0; l < layers_.size(); ++l) {
      const MixingSolution sol = solve_mixing_weights(geometry[l], weights_[l]);
      if (sol.ok)
        weights_[l] = sol.weights;
      else
        ++failed;
      rho += sol.cossim;
    }
  } else {
    // Learning to reweight: d L_V(theta') / d eps_i at eps = 0 is -alpha g_V . g_i, summed over the
    // parameters both losses reach (lookahead: the target head too).
    std::vector<double> dots(k, 0.0);
    for (const auto& geo : geometry)
      for (size_t i = 0; i < k; ++i) dots[i] += geo.dots[i];
    if (lookahead())
      for (size_t i : on_target) dots[i] += gradmix_dot(grads.h[i], grads.gv, n_shared);
    std::vector<double> w = reweight_by_meta_gradient(dots);
    if (w.empty()) {
      parts["meta_all_zero"] = torch::tensor(1.0, torch::kFloat64);
      if (lookahead())
        w.assign(k, 0.0);  // Ren et al.: no source update from this batch
      else
        ++failed;
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (!w.empty()) weights_[l] = w;
      rho += geometry[l].cossim(weights_[l]);
    }
    if (lookahead()) head_weights_ = w;  // the weighted loss reaches every head
  }
  // The target head is shared only by the sources with the target's classes: when there are several
  // (a pseudo-labelled S_u, or more labelled sources), it is mixed among them the same way (it is
  // not part of rho, which sums the shared layers 1..L-1 of Eq. 8). Lookahead weighs it by w already.
  if (on_target.size() > 1 && !lookahead()) {
    std::vector<size_t> all_params(target_head.size());
    for (size_t j = 0; j < all_params.size(); ++j) all_params[j] = j;
    std::vector<torch::Tensor> rows;
    for (size_t i : on_target) rows.push_back(gradmix_flat(grads.h[i], all_params, 0));
    rows.push_back(gradmix_flat(grads.gv, all_params, n_shared));
    const LayerGeometry geo = LayerGeometry::from_rows(torch::stack(rows));
    std::vector<double> previous;
    for (size_t i : on_target) previous.push_back(head_weights_[i]);
    std::vector<double> w;
    if (opts_.mode == Mode::gradmix) {
      const MixingSolution sol = solve_mixing_weights(geo, previous);
      if (!sol.ok) ++failed;
      w = sol.weights;
    } else {
      w = reweight_by_meta_gradient(geo.dots);
      if (w.empty()) ++failed, w = previous;
    }
    for (size_t j = 0; j < on_target.size(); ++j) head_weights_[on_target[j]] = w[j];
  }
  return rho;
}

void GradMixMethod::set_gradients(StepContext& ctx, const StepGradients& grads, bool mixing, double eta) {
  const size_t k = sources_.size();
  torch::NoGradGuard no_grad;
  // The backbone: this batch's mixed gradient (the sum for source-only), scaled by eta (Eq. 10).
  for (size_t l = 0; l < layers_.size(); ++l)
    for (size_t p : layers_[l]) {
      torch::Tensor sum = mixing ? grads.g[0][p] * weights_[l][0] : grads.g[0][p].clone();
      for (size_t i = 1; i < k; ++i) sum.add_(grads.g[i][p], mixing ? weights_[l][i] : 1.0);
      if (eta != 1.0) sum.mul_(eta);
      shared_[p].mutable_grad() = sum;
    }
  // Each head: the gradient of its sources, unscaled by eta; weighted where the method mixes it.
  size_t on_target = 0;
  for (const auto& s : sources_) on_target += s.head == ctx.head;
  std::map<std::string, std::vector<torch::Tensor>> head_sum;
  for (size_t i = 0; i < k; ++i) {
    const bool weighted = mixing && (lookahead() || (sources_[i].head == ctx.head && on_target > 1));
    const double w = weighted ? head_weights_[i] : 1.0;
    auto& acc = head_sum[sources_[i].head];
    for (size_t j = 0; j < grads.h[i].size(); ++j) {
      if (acc.size() <= j)
        acc.push_back(grads.h[i][j] * w);
      else
        acc[j].add_(grads.h[i][j], w);
    }
  }
  for (auto& [head, sums] : head_sum) {
    std::vector<torch::Tensor> params = ctx.model->head(head)->parameters();
    for (size_t j = 0; j < params.size(); ++j) params[j].mutable_grad() = sums[j];
  }
}

void GradMixMethod::log_weights(StepContext& ctx, Parts& parts) const {
  const bool per_layer = opts_.mode == Mode::gradmix;
  const size_t logged = per_layer ? layers_.size() : std::min<size_t>(1, layers_.size());
  double vertices = 0;
  for (size_t l = 0; l < layers_.size(); ++l) vertices += gradmix_at_vertex(weights_[l]) ? 1 : 0;
  for (size_t l = 0; l < logged; ++l) {
    const std::string layer = per_layer ? layer_names_[l] : std::string("all");
    for (size_t i = 0; i < sources_.size(); ++i)
      parts[cat("w/", layer, "/", sources_[i].name)] = torch::tensor(weights_[l][i], torch::kFloat64);
    parts["vertex/" + layer] = torch::tensor(gradmix_at_vertex(weights_[l]) ? 1.0 : 0.0, torch::kFloat64);
  }
  parts["vertex"] =
      torch::tensor(layers_.empty() ? 0.0 : vertices / static_cast<double>(layers_.size()), torch::kFloat64);
  size_t on_target = 0;
  for (const auto& s : sources_) on_target += s.head == ctx.head;
  if (on_target > 1 || lookahead())
    for (size_t i = 0; i < sources_.size(); ++i)
      if (sources_[i].head == ctx.head)
        parts[cat("w/head/", sources_[i].name)] = torch::tensor(head_weights_[i], torch::kFloat64);
}

LossTerms GradMixMethod::mixed_step(StepContext& ctx) {
  const bool mixing = gradmix_mixes(opts_.mode);
  // Data-parallel: every per-source gradient and V's gradient is averaged over the processes before the
  // solve, so every process solves the same problem and applies the same update.
  synchronised_ = true;
  Parts parts;
  torch::Tensor total = torch::zeros({}, torch::kFloat64);
  StepGradients grads;
  source_gradients(ctx, grads, parts, total);

  double eta = 1.0;
  if (mixing) {
    grads.v = ctx.batches.next("v");
    const double t0 = now_seconds();
    int64_t failed = 0;
    const double rho = solve_weights(ctx, grads, parts, failed);
    solver_seconds_ += now_seconds() - t0;
    failures_ += failed;
    if (opts_.adalr) eta = adaptive_lr_scale(rho, opts_.beta, opts_.gamma);
    parts["solver_ms"] = torch::tensor(1000 * (now_seconds() - t0), torch::kFloat64);
    parts["rho"] = torch::tensor(rho, torch::kFloat64);
    parts["eta"] = torch::tensor(eta, torch::kFloat64);
    parts["slsqp_failures"] = torch::tensor(static_cast<double>(failed), torch::kFloat64);
    log_weights(ctx, parts);
  }
  set_gradients(ctx, grads, mixing, eta);
  if (opts_.ssl != SslTerm::none) total = total + ssl_gradients(ctx, grads.v, parts);
  LossTerms terms;
  terms.total = total;
  terms.parts = std::move(parts);
  return terms;
}

torch::Tensor GradMixMethod::ssl_gradients(StepContext& ctx, const Batch& v, Parts& parts) {
  // The semi-supervised term on U, added on top of the mixed gradient (not scaled by eta).
  const torch::Tensor u = ssl_loss(ctx, v, parts);
  if (!dist::is_distributed()) {
    u.backward();
  } else {  // U's gradient alone, averaged, then added to the (already averaged) mixed gradient
    std::vector<torch::Tensor> params, mixed;
    for (const auto& p : ctx.model->parameters())
      if (p.requires_grad()) {
        params.push_back(p);
        mixed.push_back(p.grad());
        p.mutable_grad() = torch::Tensor();
      }
    u.backward();
    std::vector<torch::Tensor> grads;
    for (const auto& p : params)
      if (p.grad().defined()) grads.push_back(p.grad());
    dist::all_reduce_mean(grads);
    torch::NoGradGuard no_grad;
    for (size_t j = 0; j < params.size(); ++j) {
      if (!mixed[j].defined()) continue;
      if (params[j].grad().defined())
        params[j].mutable_grad().add_(mixed[j]);
      else
        params[j].mutable_grad() = mixed[j];
    }
  }
  return u.detach().to(torch::kCPU, torch::kFloat64);
}

torch::Tensor GradMixMethod::ssl_loss(StepContext& ctx, const Batch& v, Parts& parts) {
  const Batch u = ctx.batches.next("u");
  Model& model = ctx.model;
  const std::string& head = ctx.head;
  const LogitsFn f = [&model, &head](const torch::Tensor& x) { return model->forward(x, head); };
  if (opts_.ssl == SslTerm::vat) {
    const torch::Tensor l = vat_loss(f, u.x, opts_.vat_epsilon, opts_.vat_xi, ctx.rng);
    parts["vat"] = l.detach();
    return opts_.vat_weight * l;
  }
  // MixMatch: V is the labelled batch; U's first augmentation is the stream's, the others are drawn here
  // from seeds that are a pure function of the step, over the global batch (a data-parallel rank augments
  // its rows as one process would).
  std::vector<torch::Tensor> augs = {u.x};
  const int64_t nu = u.x.size(0);
  std::vector<int64_t> own(static_cast<size_t>(nu));
  for (int64_t i = 0; i < nu; ++i) own[static_cast<size_t>(i)] = u.offset + i;
  const std::vector<int64_t>* select = global_batch_size(u) > nu ? &own : nullptr;
  const InputTransform transform(model->arch().input, crop_pad_, flip_);
  for (int64_t j = 1; j < opts_.mixmatch_k; ++j)
    augs.push_back(transform(unlabelled_.images, u.global_index,
                             derive_seed(aug_seed_, static_cast<uint64_t>(ctx.step * opts_.mixmatch_k + j)),
                             select)
                       .to(u.x.device()));
  const MixMatchShard shard{global_batch_size(v), v.offset, global_batch_size(u), u.offset};
  const MixMatchLoss mm =
      mixmatch_loss(f, v.x, v.y, classes_, augs, opts_.mixmatch_t, opts_.mixmatch_alpha, ctx.rng, shard);
  const double lambda_u = mixmatch_unlabelled_weight(opts_, ctx.step, ctx.total_steps);
  parts["mixmatch_x"] = mm.labelled.detach();
  parts["mixmatch_u"] = mm.unlabelled.detach();
  parts["lambda_u"] = torch::tensor(lambda_u, torch::kFloat64);
  return mm.labelled + lambda_u * mm.unlabelled;
}

double mixmatch_unlabelled_weight(const GradMixMethod::Options& o, int64_t step, int64_t total_steps) {
  if (o.mixmatch_rampup <= 0) return o.mixmatch_weight;
  const double ramp_steps = o.mixmatch_rampup * static_cast<double>(total_steps);
  return o.mixmatch_weight * std::min(1.0, static_cast<double>(step) / ramp_steps);
}

void GradMixMethod::save(Archive& out) const {
  const int64_t rows = static_cast<int64_t>(weights_.size()), cols = static_cast<int64_t>(sources_.size());
  torch::Tensor w = torch::zeros({rows, cols}, torch::kFloat64);
  for (int64_t l = 0; l < rows; ++l)
    for (int64_t i = 0; i < cols; ++i) w[l][i] = weights_[l][i];
  out.write("weights", w);
  out.write("head_weights", torch::tensor(head_weights_, torch::kFloat64));
  out.write("failures", torch::tensor(failures_, torch::kInt64));
}

void GradMixMethod::load(const Archive& in) {
  torch::Tensor w = in.read("weights"), head = in.read("head_weights"), failures = in.read("failures");
  XFER_CHECK(w.dim() == 2 && w.size(0) == static_cast<int64_t>(weights_.size()) &&
                 w.size(1) == static_cast<int64_t>(sources_.size()),
             "cannot resume: the checkpoint holds mixing weights for ", w.sizes(),
             " (layers x sources), this run has ", weights_.size(), " x ", sources_.size());
  w = w.to(torch::kCPU, torch::kFloat64).contiguous();
  for (size_t l = 0; l < weights_.size(); ++l)
    for (size_t i = 0; i < sources_.size(); ++i) weights_[l][i] = w[l][i].item<double>();
  XFER_CHECK(head.numel() == static_cast<int64_t>(head_weights_.size()),
             "cannot resume: the checkpoint holds ", head.numel(), " target-head weights, this run has ",
             head_weights_.size(), " sources");
  head = head.to(torch::kCPU, torch::kFloat64).contiguous();
  head_weights_.assign(head.data_ptr<double>(), head.data_ptr<double>() + head.numel());
  XFER_CHECK(failures.numel() == 1, "cannot resume: the checkpoint's GradMix failure count has ",
             failures.numel(), " values");
  failures_ = failures.to(torch::kInt64).item<int64_t>();
}

namespace {

class GradMixConfig : public MethodConfig {
 public:
  explicit GradMixConfig(Mode mode) { options.mode = mode; }
  void fields(Fields& f) override { options.fields(f); }
  std::unique_ptr<Method> build() override { return std::make_unique<GradMixMethod>(options); }
  GradMixMethod::Options options;
};

MethodInfo gradmix_info(Mode mode, std::string summary, bool core, double cost) {
  MethodInfo info;
  info.name = GradMixMethod::mode_name(mode);
  info.summary = std::move(summary);
  info.paper = mode == Mode::gradmix
                   ? "Li et al., GradMix: Multi-source Transfer across Domains and Tasks, WACV 2020"
               : mode == Mode::sgd ? "Li et al. 2020 (GradMix); Ren et al., Learning to Reweight Examples "
                                     "for Robust Deep Learning, ICML 2018"
                                   : "";
  info.core = core;
  info.relative_cost = cost;
  info.make_config = [mode] { return std::make_unique<GradMixConfig>(mode); };
  // The demo's task has one source, with other classes than the target's: nothing to mix.
  info.task_shape = TaskShape::multi_source;
  info.demo_command =
      cat("xfer finetune --method ", info.name, " --lr 0.05 --iterations 600 ",
          "--target fmnist:classes=5-9:part=1/2:per_class=3:val=200",
          gradmix_uses_sources(mode) ? " --sources \"fmnist:classes=5-9:part=0/2:shift=rot30+noise0.2;"
                                       "fmnist:classes=0-4\""
                                     : "");
  return info;
}

}  // namespace

void register_gradmix_methods(MethodRegistry& r) {
  // Costs relative to l2 at the default batch size with two sources: one forward-backward per source,
  // one on the (small) V batch, and the per-layer solves.
  r.add(gradmix_info(Mode::gradmix,
                     "GradMix: layer-wise mixing of source gradients towards V's (SLSQP), adaptive lr", true,
                     2.3));
  r.add(gradmix_info(Mode::sgd, "GradMix-SGD: per-source weights by learning to reweight on V", false, 2.3));
  r.add(gradmix_info(Mode::source_only,
                     "train on the sum of the sources' gradients (GradMix's source-only baseline)", false,
                     2.0));
  r.add(gradmix_info(Mode::target_only, "train on V only (GradMix's target-only baseline)", false, 1.0));
  r.add(gradmix_info(Mode::finetune, "source-only, then fine-tune on V (GradMix's fine-tune baseline)", false,
                     1.6));
}

}  // namespace xfer
