#include "xfer/methods/xmixup.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/methods/mixup.h"

namespace xfer {
namespace F = torch::nn::functional;

void AuxData::setup(const AuxOptions& opts, const std::string& method, SetupContext& ctx) {
  const Model& pretrained = ctx.require_pretrained(method);
  const TensorDataset& source = ctx.require_source(method).train;
  const TensorDataset& target = ctx.task.train;
  mode_ = opts.aux;
  pairing_ = resolve_pairing(opts, pretrained, target, source);
  pools_ = std::make_shared<const AuxPools>(
      make_aux_pools(opts.aux, opts.aux == AuxMode::all ? nullptr : &pairing_, source, target.num_classes(),
                     derive_seed(ctx.seed, "aux-random")));

  // Source labels index --source's classes; the copied head indexes the pretrained model's. Match by name.
  const HeadInfo* head = pretrained->arch().head("source");
  XFER_CHECK(head != nullptr, "method ", method,
             " needs the 'source' head of the --init model (a run of `xfer ",
             "pretrain` on the --source data); this model has none");
  head_row_list_.assign(static_cast<size_t>(source.num_classes()), -1);
  for (int64_t c = 0; c < source.num_classes(); ++c) {
    const auto it = std::find(head->class_names.begin(), head->class_names.end(), source.class_names[c]);
    if (it != head->class_names.end()) head_row_list_[c] = it - head->class_names.begin();
  }
  for (int64_t c : pools_->source_classes) {
    std::string known;
    for (const auto& n : head->class_names) known += (known.empty() ? "" : ", ") + n;
    XFER_CHECK(head_row_list_[c] >= 0, "the --init model's 'source' head has the classes [", known,
               "], but the auxiliary class '", source.class_names[c], "' of --source is not among them");
  }
  head_rows_ = torch::tensor(head_row_list_, torch::kInt64).to(ctx.device);
}

void AuxData::save(Archive& out) const {
  std::vector<int64_t> flat;
  for (const auto& p : pairing_.pairs) flat.insert(flat.end(), {p.target, p.source});
  out.write("aux_pairs", torch::tensor(flat, torch::kInt64));
  out.write("aux_size", torch::tensor(pools_ ? pools_->size() : 0, torch::kInt64));
}

void AuxData::load(const Archive& in) {
  torch::Tensor pairs, size;
  XFER_CHECK(in.try_read("aux_pairs", pairs) && in.try_read("aux_size", size),
             "the checkpoint holds no auxiliary pairing");
  std::vector<int64_t> flat;
  for (const auto& p : pairing_.pairs) flat.insert(flat.end(), {p.target, p.source});
  // Features can differ in the last bits with another thread count; a near tie could then pair differently.
  XFER_CHECK(
      pairs.scalar_type() == torch::kInt64 && size.numel() == 1 &&
          torch::equal(pairs.cpu(), torch::tensor(flat, torch::kInt64)) &&
          size.to(torch::kInt64).item<int64_t>() == (pools_ ? pools_->size() : 0),
      "--resume: the auxiliary set selected now differs from the one the run was trained with; run `xfer "
      "select` with the original --init and pass its pairing.json with --pairing");
}

torch::Tensor xmixup_lambda(at::Generator& gen, double alpha, double beta, int64_t n) {
  return sample_beta(gen, alpha, beta, n);
}

torch::Tensor mixed_soft_labels(const torch::Tensor& y_a, const torch::Tensor& y_b,
                                const torch::Tensor& lambda, int64_t num_classes) {
  const torch::Tensor lam = lambda.to(torch::kFloat32).to(y_a.device()).unsqueeze(1);
  return lam * F::one_hot(y_a, num_classes).to(torch::kFloat32) +
         (1 - lam) * F::one_hot(y_b, num_classes).to(torch::kFloat32);
}

torch::Tensor two_heads_mixed_cross_entropy(const torch::Tensor& target_logits,
                                            const torch::Tensor& source_logits, const torch::Tensor& y_target,
                                            const torch::Tensor& y_source, const torch::Tensor& lambda) {
  const auto none = F::CrossEntropyFuncOptions().reduction(torch::kNone);
  const torch::Tensor lam = lambda.to(target_logits.dtype()).to(target_logits.device());
  return (lam * F::cross_entropy(target_logits, y_target, none) +
          (1 - lam) * F::cross_entropy(source_logits, y_source, none))
      .mean();
}

void XMixupOptions::fields(Fields& f) {
  f.add("alpha", alpha,
        "lambda ~ Beta(alpha, beta): the target example's weight; the paper suggests 1-64, or "
        "0.125-0.5 when the source is very close to the target")
      .positive();
  f.add("beta", beta, "second shape of the Beta distribution (the paper fixes it at 1)").positive();
  f.add("label_space", label_space,
        "joint: one head over the target then the auxiliary classes, soft label "
        "lambda / 1-lambda; two-heads: lambda CE(target head) + (1-lambda) CE(source head)")
      .choices({"joint", "two-heads"});
  f.add("aux_label", aux_label,
        "train on the auxiliary examples' labels (--no-aux-label: mixed input, target "
        "label only; ablation)");
  aux.fields(f);
}

void XMixup::setup(Model& model, SetupContext& ctx) {
  const TensorDataset& target = ctx.task.train;
  target_classes_ = target.num_classes();
  aux_.setup(opts_.aux, "xmixup", ctx);
  const TensorDataset& source = ctx.source->train;
  const AuxPools& pools = aux_.pools();
  const bool paired = pools.mode == AuxMode::paired;

  // The auxiliary stream: batch b pairs slot for slot with batch b of the trainer's target stream.
  BatchStream& target_stream = ctx.batches.stream("target");
  const int64_t batch = target_stream.options().batch_size;
  auto sampler = std::make_unique<AuxSampler>(
      aux_.shared_pools(), paired ? default_sampler(target.size(), derive_seed(ctx.seed, "target")) : nullptr,
      target.labels, derive_seed(derive_seed(ctx.seed, "aux"), "draws"));
  ctx.add_stream("aux", source, model, std::move(sampler), batch);
  if (paired) {
    allowed_.assign(static_cast<size_t>(target_classes_), std::vector<char>(source.num_classes(), 0));
    const auto by_target = aux_.pairing().sources_by_target();
    for (int64_t t = 0; t < target_classes_; ++t)
      for (int64_t s : by_target[t]) allowed_[t][s] = 1;
    target_labels_ = target.labels.contiguous();
    source_labels_ = source.labels.contiguous();
  }

  // Joint columns: target classes first, then the auxiliary set's source classes in label order.
  std::vector<int64_t> columns(static_cast<size_t>(source.num_classes()), -1);
  for (size_t k = 0; k < pools.source_classes.size(); ++k)
    columns[pools.source_classes[k]] = target_classes_ + static_cast<int64_t>(k);
  joint_columns_ = torch::tensor(columns, torch::kInt64).to(ctx.device);

  if (!opts_.aux_label) return;  // mixed input, target labels: the target head as it is
  const Model& pretrained = ctx.pretrained;
  if (opts_.label_space == LabelSpace::two_heads) {
    copy_head(pretrained, "source", model);
    return;
  }
  // The joint head: the run's fresh target rows (as l2 starts), then the pretrained source head's rows
  // of the auxiliary classes; predictions use only the target rows.
  HeadInfo joint = *model->arch().head(ctx.head);
  for (int64_t c : pools.source_classes) joint.class_names.push_back(source.class_names[c]);
  joint.predict_classes = target_classes_;
  const torch::nn::Linear old_head = model->head(ctx.head);
  const torch::Tensor w = old_head->weight.detach().clone(), b = old_head->bias.detach().clone();
  model->remove_head(ctx.head);
  model->add_head(joint);
  torch::NoGradGuard no_grad;
  const torch::nn::Linear src = pretrained->head("source"), dst = model->head(ctx.head);
  std::vector<int64_t> rows;
  for (int64_t c : pools.source_classes) rows.push_back(aux_.head_row_list()[c]);
  const torch::Tensor r = torch::tensor(rows, torch::kInt64).to(src->weight.device());
  dst->weight.slice(0, 0, target_classes_).copy_(w);
  dst->bias.slice(0, 0, target_classes_).copy_(b);
  dst->weight.slice(0, target_classes_).copy_(src->weight.index_select(0, r));
  dst->bias.slice(0, target_classes_).copy_(src->bias.index_select(0, r));
}

void XMixup::check_paired(const Batch& target, const Batch& aux) const {
  const int64_t* ti = target.index.data_ptr<int64_t>();
  const int64_t* ai = aux.index.data_ptr<int64_t>();
  const int64_t* ty = target_labels_.data_ptr<int64_t>();
  const int64_t* sy = source_labels_.data_ptr<int64_t>();
  for (int64_t i = 0; i < target.index.size(0); ++i)
    if (!allowed_[ty[ti[i]]][sy[ai[i]]])
      throw std::logic_error(cat("xmixup: auxiliary example ", ai[i], " (source class ", sy[ai[i]],
                                 ") is not paired with target class ", ty[ti[i]],
                                 ": the aux stream is out of step ", "with the target stream"));
}

MixedBatch XMixup::mixed_batch(StepContext& ctx) {
  const Batch t = ctx.batches.next("target");
  MixedBatch m;
  m.y_target = t.y;
  m.target_index = t.index;
  // Drawn over the global batch (this process's rows of it taken), so that data-parallel ranks draw what
  // one process would.
  const int64_t global = global_batch_size(t);
  m.lambda = shard_rows(xmixup_lambda(ctx.rng, opts_.alpha, opts_.beta, global), t);
  const Batch a = ctx.batches.next("aux");
  if (!allowed_.empty()) check_paired(t, a);
  m.y_aux = a.y;
  m.aux_index = a.index;
  m.x = mix(t.x, a.x, m.lambda);
  return m;
}

LossTerms XMixup::loss(StepContext& ctx) {
  const MixedBatch m = mixed_batch(ctx);
  torch::Tensor ce;
  if (!opts_.aux_label) {
    ce = cross_entropy(ctx.model->forward(m.x, ctx.head), m.y_target);
  } else if (opts_.label_space == LabelSpace::joint) {
    const torch::Tensor logits = ctx.model->forward(m.x, ctx.head);
    ce = soft_cross_entropy(logits, mixed_soft_labels(m.y_target, joint_columns_.index_select(0, m.y_aux),
                                                      m.lambda, logits.size(1)));
  } else {
    const torch::Tensor f = ctx.model->backbone->forward(m.x);
    ce = two_heads_mixed_cross_entropy(ctx.model->head(ctx.head)->forward(f),
                                       ctx.model->head("source")->forward(f), m.y_target,
                                       aux_.head_rows().index_select(0, m.y_aux), m.lambda);
  }
  return {ce, {{"ce", ce.detach()}, {"lambda", m.lambda.mean()}}};
}

void XMixup::save(Archive& out) const {
  aux_.save(out);
}

void XMixup::load(const Archive& in) {
  aux_.load(in);
}

void SeqTrainOptions::fields(Fields& f) {
  f.add("aux_iterations", aux_iterations,
        "steps of the first training, on the auxiliary set with source labels "
        "(0: as many as --iterations); the target training then runs --iterations "
        "steps with a fresh optimizer and schedule")
      .non_negative();
  aux.fields(f);
}

std::vector<Phase> SeqTrain::phases(int64_t iterations) const {
  return {{"aux", opts_.aux_iterations > 0 ? opts_.aux_iterations : iterations, 1.0, /*validate=*/false},
          {"target", iterations}};
}

namespace {
/// The stream "aux" over the whole auxiliary set, in seeded epoch shuffles, with the target's batch size.
void xmixup_add_aux_stream(const AuxData& aux, Model& model, SetupContext& ctx) {
  ctx.add_stream("aux", ctx.source->train, model,
                 std::make_unique<SubsetSampler>(aux.pools().all(), derive_seed(ctx.seed, "aux")),
                 ctx.batches.stream("target").options().batch_size);
}
}  // namespace

void SeqTrain::setup(Model& model, SetupContext& ctx) {
  aux_.setup(opts_.aux, "seqtrain", ctx);
  copy_head(ctx.pretrained, "source", model);
  xmixup_add_aux_stream(aux_, model, ctx);
}

LossTerms SeqTrain::loss(StepContext& ctx) {
  torch::Tensor ce;
  if (ctx.phase == 0) {
    const Batch a = ctx.batches.next("aux");
    ce = cross_entropy(ctx.model->forward(a.x, "source"), aux_.head_rows().index_select(0, a.y));
  } else {
    const Batch t = ctx.batches.next("target");
    ce = cross_entropy(ctx.model->forward(t.x, ctx.head), t.y);
  }
  return {ce, {{"ce", ce.detach()}}};
}

void CoTrainOptions::fields(Fields& f) {
  f.add("aux_weight", aux_weight, "weight of the auxiliary batch's cross-entropy").non_negative();
  aux.fields(f);
}

void CoTrain::setup(Model& model, SetupContext& ctx) {
  aux_.setup(opts_.aux, "cotrain", ctx);
  copy_head(ctx.pretrained, "source", model);
  xmixup_add_aux_stream(aux_, model, ctx);
}

LossTerms CoTrain::loss(StepContext& ctx) {
  const Batch t = ctx.batches.next("target");
  const Batch a = ctx.batches.next("aux");
  // One pass over both batches: the shared backbone sees them together, as in joint fine-tuning.
  const int64_t n = t.x.size(0);
  const torch::Tensor f = ctx.model->backbone->forward(torch::cat({t.x, a.x}));
  const torch::Tensor ce_target = cross_entropy(ctx.model->head(ctx.head)->forward(f.slice(0, 0, n)), t.y);
  const torch::Tensor ce_aux =
      cross_entropy(ctx.model->head("source")->forward(f.slice(0, n)), aux_.head_rows().index_select(0, a.y));
  const torch::Tensor total = ce_target + opts_.aux_weight * ce_aux;
  return {total,
          {{"ce_target", ce_target.detach()}, {"ce_aux", ce_aux.detach()}},
          1.0,
          {{"ce_aux", opts_.aux_weight}}};
}

void register_xmixup_methods(MethodRegistry& r) {
  MethodInfo x;
  x.name = "xmixup";
  x.summary =
      "mix each target example with an auxiliary example of its paired source classes (cross-domain mixup)";
  x.paper =
      "XMixup: Efficient Transfer Learning with Auxiliary Samples by Cross-domain Mixup (ICLR 2021 "
      "submission)";
  x.needs_init = true;
  x.needs_source = true;
  x.core = true;
  x.relative_cost = 1.1;
  x.make_config = [] { return std::make_unique<OptionsConfig<XMixup>>(); };
  r.add(x);

  MethodInfo s;
  s.name = "seqtrain";
  s.summary = "fine-tune on the auxiliary set with source labels, then on the target (Seq-Train)";
  s.paper =
      "Cui et al., Large Scale Fine-Grained Categorization and Domain-Specific Transfer Learning (CVPR 2018)";
  s.needs_init = true;
  s.needs_source = true;
  s.relative_cost = 2.1;  // the demo budgets runs with it: by default the auxiliary phase doubles the steps
  s.make_config = [] { return std::make_unique<OptionsConfig<SeqTrain>>(); };
  r.add(s);

  MethodInfo c;
  c.name = "cotrain";
  c.summary =
      "each step a target and an auxiliary batch through the shared backbone into two heads (Co-Train)";
  c.paper =
      "Ge & Yu, Borrowing Treasures from the Wealthy: Deep Transfer Learning through Selective Joint "
      "Fine-Tuning (CVPR 2017)";
  c.needs_init = true;
  c.needs_source = true;
  c.relative_cost = 2.0;
  c.make_config = [] { return std::make_unique<OptionsConfig<CoTrain>>(); };
  r.add(c);
}

}  // namespace xfer
