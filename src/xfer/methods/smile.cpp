#include "xfer/methods/smile.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/losses.h"
#include "xfer/methods/mixup.h"

namespace xfer {
namespace {

/// The model `arch` gets from random initialisation under `seed` (module constructors draw from the global
/// generator), leaving the global generator's stream where it was rather than restarting it from `seed`.
Model smile_random_model(const Arch& arch, uint64_t seed) {
  at::Generator global = at::detail::getDefaultCPUGenerator();
  const torch::Tensor state = global.get_state();
  seed_global(seed);
  Model m(arch);
  global.set_state(state);
  return m;
}

std::string smile_head_names(const Model& m) {
  std::string names;
  for (const auto& h : m->arch().heads) names += (names.empty() ? "" : ", ") + h.name;
  return names.empty() ? "(none)" : names;
}

}  // namespace

torch::Tensor smile_feature_loss(const torch::Tensor& student_map, const torch::Tensor& teacher_map,
                                 const torch::Tensor& teacher_partners, double lambda, FeatureLossForm form) {
  XFER_CHECK(student_map.dim() == 4 && student_map.sizes() == teacher_map.sizes(),
             "smile: the student's and the teacher's feature maps differ in shape: ", student_map.sizes(),
             " vs ", teacher_map.sizes());
  const torch::Tensor target = mix(teacher_map, teacher_partners, lambda).detach();
  if (form == FeatureLossForm::paper)
    return (student_map.mean({2, 3}) - target.mean({2, 3})).pow(2).sum(1).mean();
  const double hw = static_cast<double>(student_map.size(2) * student_map.size(3));
  const torch::Tensor diff = student_map - target;
  if (!dist::is_distributed()) return diff.norm() / hw;
  return torch::sqrt(dist::all_reduce_sum_differentiable(diff.pow(2).sum())) / hw;
}

torch::Tensor smile_label_loss(const torch::Tensor& aux_logits, const torch::Tensor& teacher_probs,
                               const torch::Tensor& teacher_partners, double lambda) {
  XFER_CHECK(aux_logits.sizes() == teacher_probs.sizes(), "smile: the aux head's logits ", aux_logits.sizes(),
             " and the teacher's source probabilities ", teacher_probs.sizes(), " differ in shape");
  return soft_cross_entropy(aux_logits, mix(teacher_probs, teacher_partners, lambda).detach());
}

void SmileMethod::Options::fields(Fields& f) {
  f.add("alpha", alpha, "Beta(alpha, alpha) shape of the mixing weight lambda").positive();
  f.add("fold", fold, "fold lambda to max(lambda, 1 - lambda), as the authors' code");
  f.add("gamma_fe", gamma_fe, "weight of L_FE, the sample-to-feature mixup loss on the last stage's map")
      .non_negative();
  f.add("gamma_fc", gamma_fc,
        "weight of L_FC, the aux head's mixup loss against the teacher's source-class "
        "probabilities")
      .non_negative();
  f.add("fe", fe, "use L_FE (off: the paper's 'w/o L_FE' ablation)");
  f.add("fc", fc, "use L_FC and the aux head (off: the paper's 'w/o L_FC' ablation)");
  f.add("fe_form", fe_form,
        "L_FE as the authors' code (Frobenius norm of the batch's maps over h*w) or as the "
        "paper's Eq. 5 (squared distance of pooled features, batch mean)");
  f.add("teacher", teacher,
        "ema: mean teacher from the --init model; frozen: the --init model, never updated "
        "('w/o Target'); student-init: starts from the random init of the student's "
        "architecture and tracks the student by EMA, BN statistics included, without L_FC "
        "('w/o Source'). Without --init, ema is student-init (SMILE from scratch)");
  f.add("ema_decay", ema_decay, "mean-teacher decay: teacher <- decay teacher + (1 - decay) student")
      .in_range(0, 1);
  f.add("ema_period", ema_period, "steps between mean-teacher updates").at_least(1);
  f.add("source_head", source_head,
        "the --init model's head over the source classes (the teacher's head and "
        "the aux head's initialisation)");
}

SmileMethod::SmileMethod(const Options& opts)
    : opts_(opts), from_student_(opts.teacher == SmileTeacher::student_init) {
  check_options(opts_);
}

void SmileMethod::setup(Model& model, SetupContext& ctx) {
  const Model& pretrained = ctx.pretrained;
  if (!pretrained) {  // SMILE from scratch (Table 9): the teacher can only follow the student
    XFER_CHECK(opts_.teacher != SmileTeacher::frozen,
               "smile --teacher frozen needs --init: a frozen teacher without a source ",
               "model is a random network; use --teacher ema (from scratch: the student's own mean teacher)");
    from_student_ = true;
  } else {
    const std::string why = model->arch().mismatch(pretrained->arch(), /*with_heads=*/false);
    XFER_CHECK(why.empty(), "smile: the teacher (the --init model) and the student differ: ", why);
    XFER_CHECK(pretrained->backbone->stage_names() == model->backbone->stage_names() &&
                   pretrained->backbone->feature_dim() == model->backbone->feature_dim(),
               "smile: the teacher (", pretrained->arch().backbone, ") and the student (",
               model->arch().backbone, ") have different stages or feature sizes");
  }
  if (!uses_fe() && !uses_fc()) return;  // vanilla mixup: no teacher
  if (uses_fc()) {
    XFER_CHECK(pretrained->has_head(opts_.source_head), "smile: the --init model has no '", opts_.source_head,
               "' head (its classifier over the source classes; --source-head); its heads: ",
               smile_head_names(pretrained));
    copy_head(pretrained, opts_.source_head, model, "aux");
  }
  if (!from_student_) {
    teacher_ = Teacher(pretrained);
  } else if (!pretrained) {
    teacher_ = Teacher(model);  // the student's random initialisation itself
  } else {
    // The student starts from --init; "w/o Source" needs the start it would have had without it: the run's
    // random initialisation (same seed stream as the Trainer's model). No source head: L_FC is off.
    Model random = smile_random_model(model->arch(), derive_seed(ctx.seed, "init"));
    random->to(ctx.device);
    teacher_ = Teacher(random);
  }
}

LossTerms SmileMethod::loss(StepContext& ctx) {
  const Batch b = ctx.batches.next("target");
  // Over the global batch: data-parallel ranks mix the pairs one process would (partners' images rebuilt
  // from the data, the teacher's outputs for them gathered from the ranks that computed them).
  const MixupDraw d = draw_mixup(ctx.rng, global_batch_size(b), opts_.alpha, opts_.fold);
  const double lambda = d.lambda;
  const MixupPartners partners = mixup_partners(ctx.batches.stream("target"), b, d.perm);

  const Features student = ctx.model->backbone->forward_features(mix(b.x, partners.x, lambda));
  const torch::Tensor logits = ctx.model->head(ctx.head)->forward(student.pooled);
  const torch::Tensor mxp = mixed_cross_entropy(logits, b.y, partners.y, lambda);
  LossTerms terms{mxp, {{"mxp", mxp.detach()}}};
  if (!uses_fe() && !uses_fc()) return terms;

  // Once, on the unmixed batch.
  const Features teacher = teacher_.features(b.x);
  if (uses_fe()) {
    const torch::Tensor& map = teacher.maps.back().second;
    const torch::Tensor fe = smile_feature_loss(student.maps.back().second, map, partner_rows(map, b, d.perm),
                                                lambda, opts_.fe_form);
    terms.total = terms.total + opts_.gamma_fe * fe;
    terms.parts["fe"] = fe.detach();
    terms.weights["fe"] = opts_.gamma_fe;
  }
  if (uses_fc()) {
    const torch::Tensor probs = torch::softmax(teacher_.logits(teacher.pooled, opts_.source_head), 1);
    const torch::Tensor fc = smile_label_loss(ctx.model->head("aux")->forward(student.pooled), probs,
                                              partner_rows(probs, b, d.perm), lambda);
    terms.total = terms.total + opts_.gamma_fc * fc;
    terms.parts["fc"] = fc.detach();
    terms.weights["fc"] = opts_.gamma_fc;
  }
  return terms;
}

void SmileMethod::after_step(StepContext& ctx) {
  if (teacher_.defined() && teacher_moves() && (ctx.step + 1) % opts_.ema_period == 0)
    teacher_.ema_update(ctx.model, opts_.ema_decay, /*with_statistics=*/from_student_);
}

void SmileMethod::save(Archive& out) const {
  if (teacher_.defined() && teacher_moves()) teacher_.save(out, "teacher");
}

void SmileMethod::load(const Archive& in) {
  if (!teacher_.defined() || !teacher_moves()) return;
  teacher_.load(in, "teacher");
}

void register_smile_methods(MethodRegistry& r) {
  MethodInfo smile;
  smile.name = "smile";
  smile.summary =
      "sample-to-feature mixup: mixup, plus mixed features and source-class outputs of a mean teacher";
  smile.paper =
      "Li, Xiong, Dou, Xu. SMILE: Sample-to-feature Mixup for Efficient Transfer LEarning. TMLR 2023";
  smile.needs_init = false;  // from scratch (Table 9): L_FE against the student's own mean teacher
  smile.core = true;
  smile.relative_cost = 1.35;
  smile.make_config = [] { return std::make_unique<OptionsConfig<SmileMethod>>(); };
  r.add(smile);
}

}  // namespace xfer
