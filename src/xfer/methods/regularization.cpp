#include "xfer/methods/regularization.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/delta.h"
#include "xfer/models/predict.h"

namespace xfer {

torch::Tensor l2sp_penalty(const std::vector<torch::Tensor>& params,
                           const std::vector<torch::Tensor>& params0, double alpha) {
  XFER_CHECK(params.size() == params0.size(), "L2-SP: ", params.size(), " parameters but ", params0.size(),
             " starting points");
  XFER_CHECK(!params.empty(), "L2-SP: no parameters");
  torch::Tensor sum;
  for (size_t i = 0; i < params.size(); ++i) {
    XFER_CHECK(params[i].sizes() == params0[i].sizes(), "L2-SP: parameter ", i, " has shape ",
               params[i].sizes(), " but its starting point ", params0[i].sizes());
    const torch::Tensor d = (params[i] - params0[i].detach()).pow(2).sum();
    sum = sum.defined() ? sum + d : d;
  }
  return sum * (0.5 * alpha);
}

torch::Tensor l2_penalty(const std::vector<torch::Tensor>& params, double beta) {
  XFER_CHECK(!params.empty(), "L2 penalty of no parameters");
  torch::Tensor sum;
  for (const auto& p : params) sum = sum.defined() ? sum + p.pow(2).sum() : p.pow(2).sum();
  return sum * (0.5 * beta);
}

torch::Tensor bss_penalty(const torch::Tensor& features, int64_t k) {
  XFER_CHECK(features.dim() == 2, "BSS takes features (N, D), got shape ", features.sizes());
  const int64_t r = std::min(features.size(0), features.size(1));
  XFER_CHECK(k >= 1 && k <= r, "BSS --k must be in [1, min(batch, feature dim)] = [1, ", r,
             "] for features of shape ", features.sizes(), ", got ", k);
  // Singular values come in descending order; the last k are the smallest.
  const torch::Tensor s = torch::linalg_svdvals(features);
  return s.slice(0, r - k, r).pow(2).sum();
}

torch::Tensor cotuning_relationship(const torch::Tensor& source_probs, const torch::Tensor& labels,
                                    int64_t num_classes) {
  XFER_CHECK(source_probs.dim() == 2 && labels.dim() == 1 && labels.size(0) == source_probs.size(0),
             "Co-Tuning relationship: probabilities of shape ", source_probs.sizes(), " and labels of shape ",
             labels.sizes());
  const torch::Tensor probs = source_probs.to(torch::kFloat64);
  torch::Tensor sums = torch::zeros({num_classes, probs.size(1)}, probs.options());
  sums.index_add_(0, labels, probs);
  const torch::Tensor counts = torch::bincount(labels, {}, num_classes).to(torch::kFloat64);
  for (int64_t c = 0; c < num_classes; ++c)
    XFER_CHECK(counts[c].item<double>() > 0, "Co-Tuning: target class ", c, " has no training example");
  return (sums / counts.unsqueeze(1)).to(source_probs.dtype());
}

torch::Tensor cotuning_penalty(const torch::Tensor& source_logits, const torch::Tensor& labels,
                               const torch::Tensor& relationship) {
  return soft_cross_entropy(source_logits, relationship.index_select(0, labels));
}

std::vector<int64_t> rifle_reinit_steps(int64_t total_steps, int64_t k) {
  XFER_CHECK(k >= 1 && k <= total_steps, "RIFLE --k must be in [1, iterations] = [1, ", total_steps,
             "], got ", k);
  std::vector<int64_t> out;
  for (int64_t j = 1; j < k; ++j) out.push_back(j * total_steps / k);
  return out;
}

// ---- L2-SP

void L2SPMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "weight of the distance to the pretrained backbone (alpha/2 ||w - w0||^2)")
      .non_negative();
  f.add("beta", beta, "weight of the head's L2 norm (beta/2 ||w||^2)").non_negative();
  f.add("decay", decay,
        "beta: the optimizer's weight decay off, beta/2 ||w_head||^2 instead (the paper); "
        "optimizer: the run's --weight-decay on every parameter, no beta term (SMILE's code)");
}

void L2SPMethod::setup(Model& model, SetupContext& ctx) {
  const Model& source = ctx.require_pretrained("l2sp");
  const auto mine = model->backbone->named_parameters();
  const auto theirs = source->backbone->named_parameters();
  w0_.clear();
  for (const auto& p : mine) {
    const torch::Tensor* s = theirs.find(p.key());
    XFER_CHECK(s != nullptr && s->sizes() == p.value().sizes(), "l2sp: the --init backbone has no parameter ",
               p.key(), " of shape ", p.value().sizes());
    w0_.push_back(s->detach().clone().to(p.value().device()));
  }
}

std::vector<ParamGroup> L2SPMethod::param_groups(Model& model, double head_lr_mult) {
  if (opts_.decay == HeadDecay::optimizer) return Method::param_groups(model, head_lr_mult);
  return {{"backbone", model->backbone_parameters(), 1.0, 0.0},
          {"heads", model->head_parameters(), head_lr_mult, 0.0}};
}

LossTerms L2SPMethod::loss(StepContext& ctx) {
  XFER_CHECK(!w0_.empty(), "l2sp was not set up");
  const Batch b = ctx.batches.next("target");
  const torch::Tensor logits = ctx.model->forward(b.x, ctx.head);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  const torch::Tensor sp = l2sp_penalty(ctx.model->backbone_parameters(), w0_, opts_.alpha);
  if (opts_.decay == HeadDecay::optimizer)
    return LossTerms{ce + sp, {{"ce", ce.detach()}, {"l2sp", sp.detach()}}}.with_train_accuracy(logits, b.y);
  const torch::Tensor decay = l2_penalty(ctx.model->head(ctx.head)->parameters(), opts_.beta);
  return LossTerms{ce + sp + decay, {{"ce", ce.detach()}, {"l2sp", sp.detach()}, {"head_l2", decay.detach()}}}
      .with_train_accuracy(logits, b.y);
}

// ---- BSS

void BssMethod::Options::fields(Fields& f) {
  f.add("k", k, "how many of the smallest singular values of the batch's features are shrunk").at_least(1);
  f.add("eta", eta, "weight of their squares").non_negative();
}

void BssMethod::setup(Model& model, SetupContext& ctx) {
  const int64_t dim = model->backbone->feature_dim(), batch = ctx.loader.batch_size;
  XFER_CHECK(opts_.k <= dim, "bss --k ", opts_.k, " is larger than the feature dimension ", dim);
  XFER_CHECK(opts_.k <= batch, "bss --k ", opts_.k, " is larger than the batch size ", batch);
}

LossTerms BssMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  const torch::Tensor features = ctx.model->backbone->forward(b.x);
  const torch::Tensor logits = ctx.model->head(ctx.head)->forward(features);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  // The spectrum of the whole batch's features: a data-parallel rank gathers every rank's rows.
  const torch::Tensor all = dist::all_gather_rows(features, global_batch_size(b), b.offset);
  const torch::Tensor bss = bss_penalty(all, opts_.k) * opts_.eta;
  return LossTerms{ce + bss, {{"ce", ce.detach()}, {"bss", bss.detach()}}}.with_train_accuracy(logits, b.y);
}

// ---- Co-Tuning

void CoTuningMethod::Options::fields(Fields& f) {
  f.add("lambda", lambda, "weight of the source head's soft cross-entropy against p(y_s | y_t)")
      .non_negative();
  f.add("source_lr_mult", source_lr_mult,
        "learning-rate multiplier of the source head (1: the backbone's rate, as "
        "Transfer-Learning-Library)")
      .non_negative();
  f.add("source_head", source_head, "the --init model's head that is kept and trained");
}

void CoTuningMethod::setup(Model& model, SetupContext& ctx) {
  Model source = ctx.require_pretrained("cotuning");
  head_ = ctx.head;
  XFER_CHECK(opts_.source_head != head_, "cotuning --source-head must differ from the trained head '", head_,
             "'");
  copy_head(source, opts_.source_head, model, opts_.source_head);

  // p(y_s | y_t) from the frozen source model on the target training images, evaluation transform.
  const TensorDataset& train = ctx.task.train;
  const torch::Tensor logits =
      predict(source, train, {false, {opts_.source_head}}).logits.at(opts_.source_head);
  relationship_ =
      cotuning_relationship(torch::softmax(logits, 1), train.labels, train.num_classes()).to(ctx.device);
}

std::vector<ParamGroup> CoTuningMethod::param_groups(Model& model, double head_lr_mult) {
  return {{"backbone", model->backbone_parameters(), 1.0, std::nullopt},
          {"target_head", model->head(head_)->parameters(), head_lr_mult, std::nullopt},
          {"source_head", model->head(opts_.source_head)->parameters(), opts_.source_lr_mult, std::nullopt}};
}

LossTerms CoTuningMethod::loss(StepContext& ctx) {
  XFER_CHECK(relationship_.defined(), "cotuning was not set up");
  const Batch b = ctx.batches.next("target");
  const torch::Tensor features = ctx.model->backbone->forward(b.x);
  const torch::Tensor logits = ctx.model->head(ctx.head)->forward(features);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  const torch::Tensor co =
      cotuning_penalty(ctx.model->head(opts_.source_head)->forward(features), b.y, relationship_) *
      opts_.lambda;
  return LossTerms{ce + co, {{"ce", ce.detach()}, {"cotuning", co.detach()}}}.with_train_accuracy(logits,
                                                                                                  b.y);
}

void CoTuningMethod::save(Archive& out) const {
  out.write("cotuning_relationship", relationship_);
}

void CoTuningMethod::load(const Archive& in) {
  torch::Tensor t;
  XFER_CHECK(in.try_read("cotuning_relationship", t), "the checkpoint holds no Co-Tuning relationship");
  XFER_CHECK(t.sizes() == relationship_.sizes(), "the checkpoint's Co-Tuning relationship has shape ",
             t.sizes(), ", this run needs ", relationship_.sizes());
  relationship_ = t.to(relationship_.options());
}

// ---- RIFLE

void RifleMethod::Options::fields(Fields& f) {
  f.add("k", k, "training periods: the target head is re-initialised every iterations/k steps (k - 1 times)")
      .at_least(1);
}

void RifleMethod::setup(Model&, SetupContext& ctx) {
  seed_ = ctx.seed;
  reinit_steps_ = rifle_reinit_steps(ctx.total_steps, opts_.k);
}

LossTerms RifleMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  const torch::Tensor logits = ctx.model->forward(b.x, ctx.head);
  const torch::Tensor ce = cross_entropy(logits, b.y);
  return LossTerms{ce, {{"ce", ce.detach()}}}.with_train_accuracy(logits, b.y);
}

void RifleMethod::after_step(StepContext& ctx) {
  const auto it = std::find(reinit_steps_.begin(), reinit_steps_.end(), ctx.step + 1);
  if (it == reinit_steps_.end()) return;
  const auto index = static_cast<uint64_t>(it - reinit_steps_.begin());
  at::Generator gen = make_generator(derive_seed(derive_seed(seed_, "rifle"), index));
  torch::nn::Linear head = ctx.model->head(ctx.head);
  const double bound = 1.0 / std::sqrt(static_cast<double>(head->weight.size(1)));
  torch::NoGradGuard no_grad;
  // In place, so the optimizer keeps the same tensors (and, as the authors' code, their momentum).
  for (torch::Tensor* p : {&head->weight, &head->bias}) {
    const torch::Tensor u = torch::rand(p->sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
    p->copy_((u * (2 * bound) - bound).to(p->options()));
  }
}

// ---- Registration

void register_regularization_methods(MethodRegistry& r) {
  MethodInfo l2sp;
  l2sp.name = "l2sp";
  l2sp.summary = "fine-tune with an L2 penalty towards the pretrained weights instead of towards 0";
  l2sp.paper =
      "Li et al., Explicit Inductive Bias for Transfer Learning with Convolutional Networks, ICML 2018";
  l2sp.needs_init = true;
  l2sp.make_config = [] { return std::make_unique<OptionsConfig<L2SPMethod>>(); };
  r.add(l2sp);

  MethodInfo delta;
  delta.name = "delta";
  delta.summary = "keep feature maps close to the source network's, weighted by channel attention";
  delta.paper =
      "Li et al., DELTA: DEep Learning Transfer using Feature Map with Attention for Convolutional "
      "Networks, ICLR 2019";
  delta.needs_init = true;
  delta.make_config = [] { return std::make_unique<OptionsConfig<DeltaMethod>>(); };
  r.add(delta);

  MethodInfo bss;
  bss.name = "bss";
  bss.summary = "batch spectral shrinkage: penalise the smallest singular values of the batch's features";
  bss.paper =
      "Chen et al., Catastrophic Forgetting Meets Negative Transfer: Batch Spectral Shrinkage for Safe "
      "Transfer Learning, NeurIPS 2019";
  bss.make_config = [] { return std::make_unique<OptionsConfig<BssMethod>>(); };
  r.add(bss);

  MethodInfo cotuning;
  cotuning.name = "cotuning";
  cotuning.summary = "keep the source head and train it on p(source class | target class)";
  cotuning.paper = "You et al., Co-Tuning for Transfer Learning, NeurIPS 2020";
  cotuning.needs_init = true;
  cotuning.make_config = [] { return std::make_unique<OptionsConfig<CoTuningMethod>>(); };
  r.add(cotuning);

  MethodInfo rifle;
  rifle.name = "rifle";
  rifle.summary = "re-initialise the target head periodically, so gradients reach deeper layers";
  rifle.paper =
      "Li et al., RIFLE: Backpropagation in Depth for Deep Transfer Learning through Re-Initializing "
      "the Fully-connected LayEr, ICML 2020";
  rifle.make_config = [] { return std::make_unique<OptionsConfig<RifleMethod>>(); };
  r.add(rifle);
}

}  // namespace xfer
