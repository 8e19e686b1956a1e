#include "xfer/methods/mixup.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/stages.h"

namespace xfer {

MixupDraw draw_mixup(at::Generator& gen, int64_t n, double alpha, bool fold) {
  XFER_CHECK(alpha > 0, "mixup alpha must be > 0, got ", alpha);
  MixupDraw d;
  d.lambda = sample_beta(gen, alpha, alpha);
  if (fold) d.lambda = std::max(d.lambda, 1.0 - d.lambda);
  d.perm = sample_permutation(gen, n);
  return d;
}

torch::Tensor mix_with_partners(const torch::Tensor& x, const MixupDraw& draw) {
  return mix(x, x.index_select(0, draw.perm.to(x.device())), draw.lambda);
}

torch::Tensor mixup_loss(const torch::Tensor& logits, const torch::Tensor& labels, const MixupDraw& draw) {
  return mixed_cross_entropy(logits, labels, labels.index_select(0, draw.perm.to(labels.device())),
                             draw.lambda);
}

MixupPartners mixup_partners(const BatchStream& stream, const Batch& b, const torch::Tensor& perm) {
  if (global_batch_size(b) == b.x.size(0))
    return {b.x.index_select(0, perm.to(b.x.device())), b.y.index_select(0, perm.to(b.y.device()))};
  const Batch p = stream.rows(b, perm.slice(0, b.offset, b.offset + b.x.size(0)));
  return {p.x, p.y};
}

torch::Tensor partner_rows(const torch::Tensor& x, const Batch& b, const torch::Tensor& perm) {
  const torch::Tensor mine = perm.slice(0, b.offset, b.offset + x.size(0)).to(x.device());
  return dist::all_gather_rows(x, global_batch_size(b), b.offset).index_select(0, mine);
}

torch::Tensor shard_rows(const torch::Tensor& global, const Batch& b) {
  return global.slice(0, b.offset, b.offset + b.x.size(0));
}

CutMixBox cutmix_box(int64_t height, int64_t width, double lambda, int64_t cy, int64_t cx) {
  XFER_CHECK(lambda >= 0 && lambda <= 1, "CutMix lambda must be in [0, 1], got ", lambda);
  const double ratio = std::sqrt(1.0 - lambda);
  const auto cut_h = static_cast<int64_t>(static_cast<double>(height) * ratio);
  const auto cut_w = static_cast<int64_t>(static_cast<double>(width) * ratio);
  CutMixBox b;
  b.y1 = std::clamp<int64_t>(cy - cut_h / 2, 0, height);
  b.y2 = std::clamp<int64_t>(cy + cut_h / 2, 0, height);
  b.x1 = std::clamp<int64_t>(cx - cut_w / 2, 0, width);
  b.x2 = std::clamp<int64_t>(cx + cut_w / 2, 0, width);
  return b;
}

double cutmix_lambda(const CutMixBox& box, int64_t height, int64_t width) {
  return 1.0 - static_cast<double>(box.area()) / static_cast<double>(height * width);
}

torch::Tensor cutmix_images(const torch::Tensor& x, const torch::Tensor& perm, const CutMixBox& box) {
  using torch::indexing::Slice;
  torch::Tensor out = x.clone();
  if (box.area() == 0) return out;
  const auto rows = Slice(box.y1, box.y2), cols = Slice(box.x1, box.x2);
  out.index_put_({Slice(), Slice(), rows, cols},
                 x.index_select(0, perm.to(x.device())).index({Slice(), Slice(), rows, cols}));
  return out;
}

void MixupMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "mixing weight lambda ~ Beta(alpha, alpha)").positive();
  f.add("fold", fold, "use max(lambda, 1 - lambda), as SMILE's code does");
}

LossTerms MixupMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  const MixupDraw d = draw_mixup(ctx.rng, global_batch_size(b), opts_.alpha, opts_.fold);
  const MixupPartners p = mixup_partners(ctx.batches.stream("target"), b, d.perm);
  const torch::Tensor logits = ctx.model->forward(mix(b.x, p.x, d.lambda), ctx.head);
  const torch::Tensor l = mixed_cross_entropy(logits, b.y, p.y, d.lambda);
  return {l, {{"mixup_ce", l.detach()}}};
}

void ManifoldMixupMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "mixing weight lambda ~ Beta(alpha, alpha)").positive();
  f.add("fold", fold, "use max(lambda, 1 - lambda)");
  f.add("layers", layers,
        "where to mix, one drawn uniformly per batch: input and/or backbone stage names, "
        "comma-separated");
}

void ManifoldMixupMethod::setup(Model& model, SetupContext&) {
  layers_ = parse_stages(opts_.layers, *model->backbone, "--layers", /*allow_input=*/true);
}

LossTerms ManifoldMixupMethod::loss(StepContext& ctx) {
  XFER_CHECK(!layers_.empty(), "manifold_mixup was not set up");
  const Batch b = ctx.batches.next("target");
  const std::string& layer =
      layers_[static_cast<size_t>(sample_index(ctx.rng, static_cast<int64_t>(layers_.size())))];
  // Drawn over the global batch, so that data-parallel ranks mix the pairs one process would.
  const MixupDraw d = draw_mixup(ctx.rng, global_batch_size(b), opts_.alpha, opts_.fold);
  Features f;
  if (layer == "input") {
    f = ctx.model->backbone->forward_features(
        mix(b.x, mixup_partners(ctx.batches.stream("target"), b, d.perm).x, d.lambda));
  } else {
    f = ctx.model->backbone->forward_features(b.x, [&](const std::string& stage, const torch::Tensor& out) {
      return stage == layer ? mix(out, partner_rows(out, b, d.perm), d.lambda) : out;
    });
  }
  const torch::Tensor l = mixed_cross_entropy(ctx.model->head(ctx.head)->forward(f.pooled), b.y,
                                              partner_rows(b.y, b, d.perm), d.lambda);
  return {l, {{"mixup_ce", l.detach()}}};
}

void CutMixMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "lambda ~ Beta(alpha, alpha) before the box correction (1 = uniform)").positive();
  f.add("prob", prob, "probability that a batch is cut and mixed (otherwise plain cross-entropy)")
      .in_range(0, 1);
}

LossTerms CutMixMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  if (sample_uniform(ctx.rng) >= opts_.prob) {
    const torch::Tensor ce = cross_entropy(ctx.model->forward(b.x, ctx.head), b.y);
    return {ce, {{"ce", ce.detach()}, {"mixed", torch::zeros({})}}};
  }
  const int64_t h = b.x.size(2), w = b.x.size(3);
  MixupDraw d = draw_mixup(ctx.rng, global_batch_size(b), opts_.alpha, /*fold=*/false);
  const int64_t cy = sample_index(ctx.rng, h), cx = sample_index(ctx.rng, w);
  const CutMixBox box = cutmix_box(h, w, d.lambda, cy, cx);
  d.lambda = cutmix_lambda(box, h, w);
  const MixupPartners p = mixup_partners(ctx.batches.stream("target"), b, d.perm);
  torch::Tensor x = b.x.clone();
  if (box.area() > 0) {
    using torch::indexing::Slice;
    const auto rows = Slice(box.y1, box.y2), cols = Slice(box.x1, box.x2);
    x.index_put_({Slice(), Slice(), rows, cols}, p.x.index({Slice(), Slice(), rows, cols}));
  }
  const torch::Tensor l = mixed_cross_entropy(ctx.model->forward(x, ctx.head), b.y, p.y, d.lambda);
  // Both branches log the same parts, so their averages over a logging window mean something: the
  // step's loss, and the fraction of batches that were cut and mixed.
  return {l, {{"ce", l.detach()}, {"mixed", torch::ones({})}}};
}

void register_mixup_methods(MethodRegistry& r) {
  MethodInfo mixup;
  mixup.name = "mixup";
  mixup.summary = "mixup: train on convex combinations of example pairs and of their labels";
  mixup.paper = "Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018";
  mixup.make_config = [] { return std::make_unique<OptionsConfig<MixupMethod>>(); };
  r.add(mixup);

  MethodInfo manifold;
  manifold.name = "manifold_mixup";
  manifold.summary = "mixup of hidden feature maps at a layer drawn per batch";
  manifold.paper =
      "Verma et al., Manifold Mixup: Better Representations by Interpolating Hidden States, ICML 2019";
  manifold.make_config = [] { return std::make_unique<OptionsConfig<ManifoldMixupMethod>>(); };
  r.add(manifold);

  MethodInfo cutmix;
  cutmix.name = "cutmix";
  cutmix.summary = "paste a box from a partner image; labels mixed by the box's area";
  cutmix.paper =
      "Yun et al., CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features, "
      "ICCV 2019";
  cutmix.make_config = [] { return std::make_unique<OptionsConfig<CutMixMethod>>(); };
  r.add(cutmix);
}

}  // namespace xfer
