// XMixup, its label spaces and ablations, and the multi-task baselines seqtrain and cotrain.
#include <cmath>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/data/spec.h"
#include "xfer/methods/xmixup.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Tiny IDX data shared by the tests of this file: 4 classes of 8x8 images, 12 training examples each.
const std::string& xmixup_data() {
  static test::TempDir dir;
  static const std::string spec = test::write_tiny_idx(dir.path(), 4, 12, 3);
  return spec;
}

/// A method set up as run_finetune would: a target stream seeded like the trainer's, a frozen source model
/// with a "source" head, and the method's generator. Two rigs built alike draw the same numbers.
struct XmixupRig {
  Task target, source;
  Model pretrained{nullptr}, model{nullptr};
  Batches batches;
  LoaderOptions loader;
  std::unique_ptr<Method> method;
  at::Generator rng = make_generator(3);
  std::string head = "target";
  torch::Tensor initial_target_weight;
  int64_t step = 0;
  StepContext ctx() { return StepContext{batches, model, step, 20, rng, head}; }
  template <class M>
  M& as() {
    return dynamic_cast<M&>(*method);
  }
};

std::unique_ptr<XmixupRig> xmixup_rig(const std::string& name, const std::map<std::string, std::string>& options = {},
                                      const std::string& target_classes = "2,1",
                                      const std::string& source_classes = "") {
  auto rig = std::make_unique<XmixupRig>();
  rig->target = load_task(xmixup_data() + ":classes=" + target_classes, 0);
  rig->source = load_task(xmixup_data() + (source_classes.empty() ? "" : ":classes=" + source_classes), 0);
  rig->loader.batch_size = 6;
  torch::manual_seed(1);
  const Normalization norm{{0.2}, {0.3}};
  rig->pretrained = Model(Arch{"cnn4:width=4", 1, 8, 8, norm, {{"source", rig->source.class_names()}}});
  freeze(*rig->pretrained);
  rig->pretrained->eval();
  rig->model = Model(Arch{"cnn4:width=4", 1, 8, 8, norm, {{"target", rig->target.class_names()}}});
  copy_state(*rig->pretrained, *rig->model, "backbone.");
  rig->initial_target_weight = rig->model->head("target")->weight.detach().clone();
  const uint64_t seed = 7;
  rig->batches.add("target", std::make_unique<BatchStream>(rig->target.train, norm, rig->loader,
                                                           derive_seed(seed, "target")));
  auto config = methods().get(name).make_config();
  Fields f;
  config->fields(f);
  for (const auto& [key, value] : options) f.set(key, value);
  rig->method = config->build();
  SetupContext ctx{rig->target, &rig->source, rig->pretrained, rig->batches, rig->loader, seed, torch::kCPU, "target",
                   20,          ScheduleOptions{}};
  rig->method->setup(rig->model, ctx);
  return rig;
}

int64_t source_label(const XmixupRig& rig, int64_t index) { return rig.source.train.labels[index].item<int64_t>(); }

/// -sum_k p_k log softmax(z)_k averaged over rows, with p built entry by entry.
double xmixup_expected_soft_ce(const torch::Tensor& logits, const std::vector<std::map<int64_t, double>>& probs) {
  const torch::Tensor logp = torch::log_softmax(logits.detach(), 1);
  double sum = 0;
  for (size_t i = 0; i < probs.size(); ++i)
    for (const auto& [k, p] : probs[i]) sum -= p * logp[i][k].item<double>();
  return sum / static_cast<double>(probs.size());
}

TEST(XMixup, LambdaMeanIsAlphaOverAlphaPlusOne) {
  for (double alpha : {4.0, 0.5}) {
    at::Generator gen = make_generator(42);
    const torch::Tensor lam = xmixup_lambda(gen, alpha, 1.0, 20000);
    EXPECT_NEAR(lam.mean().item<double>(), alpha / (alpha + 1), 0.005) << "alpha " << alpha;
    EXPECT_GE(lam.min().item<double>(), 0.0);
    EXPECT_LE(lam.max().item<double>(), 1.0);
  }
}

TEST(XMixup, JointLabelIsLambdaAndOneMinusLambda) {
  const torch::Tensor y_t = torch::tensor({0, 1, 1}, torch::kInt64), y_s = torch::tensor({3, 2, 1}, torch::kInt64);
  const torch::Tensor lam = torch::tensor({0.8, 0.25, 0.6}, torch::kFloat64);
  const torch::Tensor p = mixed_soft_labels(y_t, y_s, lam, 4);
  const torch::Tensor expected = torch::tensor({{0.8, 0.0, 0.0, 0.2}, {0.0, 0.25, 0.75, 0.0}, {0.0, 1.0, 0.0, 0.0}});
  EXPECT_TRUE(torch::allclose(p, expected)) << p;
}

TEST(XMixup, MixesEachTargetExampleWithAnExampleOfItsPairedSourceClasses) {
  auto a = xmixup_rig("xmixup");
  auto b = xmixup_rig("xmixup");
  const auto& xm = a->as<XMixup>();
  const auto by_target = xm.aux().pairing().sources_by_target();
  at::Generator gen = make_generator(3);
  for (int64_t step = 0; step < 5; ++step) {
    StepContext ctx = a->ctx();
    const MixedBatch m = a->as<XMixup>().mixed_batch(ctx);
    const Batch t = b->batches.next("target"), s = b->batches.next("aux");
    const torch::Tensor lam = xmixup_lambda(gen, 4.0, 1.0, 6);
    EXPECT_TRUE(torch::equal(m.lambda, lam));
    EXPECT_TRUE(torch::equal(m.y_target, t.y));
    EXPECT_TRUE(torch::equal(m.aux_index, s.index));
    const torch::Tensor l = lam.to(torch::kFloat32).view({6, 1, 1, 1});
    EXPECT_TRUE(torch::allclose(m.x, l * t.x + (1 - l) * s.x, 1e-5, 1e-6)) << "x = lambda x_t + (1 - lambda) x_s";
    for (int64_t i = 0; i < 6; ++i) {
      const auto& allowed = by_target[m.y_target[i].item<int64_t>()];
      const int64_t sc = source_label(*a, m.aux_index[i].item<int64_t>());
      EXPECT_EQ(m.y_aux[i].item<int64_t>(), sc);
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), sc), allowed.end()) << "step " << step << " slot " << i;
    }
  }
}

TEST(XMixup, JointHeadCoversTargetThenPairedSourceClassesAndTheLossUsesSoftLabels) {
  auto a = xmixup_rig("xmixup");
  auto b = xmixup_rig("xmixup");
  const auto& xm = a->as<XMixup>();
  const auto& pools = xm.aux().pools();
  ASSERT_EQ(pools.source_classes.size(), 2u) << "one round pairs two source classes with two target classes";
  const HeadInfo* head = a->model->arch().head("target");
  ASSERT_EQ(head->class_names.size(), 4u);
  EXPECT_EQ(head->predicted(), 2);
  EXPECT_EQ(head->class_names[2], a->source.class_names()[pools.source_classes[0]]);
  EXPECT_FALSE(a->model->has_head("source"));
  // Target rows as l2 starts them; source rows from the pretrained source head.
  const torch::Tensor w = a->model->head("target")->weight;
  EXPECT_TRUE(torch::equal(w.slice(0, 0, 2), a->initial_target_weight));
  for (size_t k = 0; k < 2; ++k)
    EXPECT_TRUE(torch::equal(w[2 + k], a->pretrained->head("source")->weight[pools.source_classes[k]]));

  StepContext ca = a->ctx(), cb = b->ctx();
  const LossTerms terms = a->method->loss(ca);
  const MixedBatch m = b->as<XMixup>().mixed_batch(cb);
  std::vector<std::map<int64_t, double>> probs(6);
  for (int64_t i = 0; i < 6; ++i) {
    const double lam = m.lambda[i].item<double>();
    const int64_t sc = m.y_aux[i].item<int64_t>();
    const int64_t column = 2 + (std::find(pools.source_classes.begin(), pools.source_classes.end(), sc) -
                                pools.source_classes.begin());
    probs[i][m.y_target[i].item<int64_t>()] += lam;
    probs[i][column] += 1 - lam;
  }
  EXPECT_NEAR(terms.total.item<double>(), xmixup_expected_soft_ce(b->model->forward(m.x, "target"), probs), 1e-5);
  EXPECT_NEAR(terms.parts.at("lambda").item<double>(), m.lambda.mean().item<double>(), 1e-12);
}

TEST(XMixup, TwoHeadsWeighsTheTargetAndTheCopiedSourceHead) {
  auto a = xmixup_rig("xmixup", {{"label_space", "two-heads"}});
  auto b = xmixup_rig("xmixup", {{"label_space", "two-heads"}});
  ASSERT_TRUE(a->model->has_head("source"));
  EXPECT_TRUE(torch::equal(a->model->head("source")->weight, a->pretrained->head("source")->weight));
  EXPECT_EQ(a->model->arch().head("target")->class_names.size(), 2u);
  StepContext ca = a->ctx(), cb = b->ctx();
  const LossTerms terms = a->method->loss(ca);
  const MixedBatch m = b->as<XMixup>().mixed_batch(cb);
  const torch::Tensor f = b->model->backbone->forward(m.x);
  const torch::Tensor lt = torch::log_softmax(b->model->head("target")->forward(f), 1);
  const torch::Tensor ls = torch::log_softmax(b->model->head("source")->forward(f), 1);
  double expected = 0;
  for (int64_t i = 0; i < 6; ++i) {
    const double lam = m.lambda[i].item<double>();
    expected -= lam * lt[i][m.y_target[i].item<int64_t>()].item<double>() +
                (1 - lam) * ls[i][m.y_aux[i].item<int64_t>()].item<double>();
  }
  EXPECT_NEAR(terms.total.item<double>(), expected / 6, 1e-5);
}

TEST(XMixup, NoAuxLabelKeepsTheMixedInputButTrainsOnTheTargetLabelOnly) {
  auto a = xmixup_rig("xmixup", {{"aux_label", "false"}});
  auto b = xmixup_rig("xmixup", {{"aux_label", "false"}});
  EXPECT_EQ(a->model->arch().head("target")->class_names.size(), 2u) << "no joint head";
  EXPECT_FALSE(a->model->has_head("source"));
  EXPECT_TRUE(a->batches.has("aux")) << "the input is still mixed with source examples";
  StepContext ca = a->ctx(), cb = b->ctx();
  const LossTerms terms = a->method->loss(ca);
  const MixedBatch m = b->as<XMixup>().mixed_batch(cb);
  EXPECT_LT(m.lambda.max().item<double>(), 1.0);
  std::vector<std::map<int64_t, double>> probs(6);
  for (int64_t i = 0; i < 6; ++i) probs[i][m.y_target[i].item<int64_t>()] = 1.0;
  EXPECT_NEAR(terms.total.item<double>(), xmixup_expected_soft_ce(b->model->forward(m.x, "target"), probs), 1e-5);
}

TEST(XMixup, InDomainIsMixupInsideTheTargetBatch) {
  auto a = xmixup_rig("xmixup", {{"in_domain", "true"}});
  auto b = xmixup_rig("xmixup", {{"in_domain", "true"}});
  EXPECT_FALSE(a->batches.has("aux"));
  EXPECT_EQ(a->model->arch().head("target")->class_names.size(), 2u);
  StepContext ca = a->ctx(), cb = b->ctx();
  const LossTerms terms = a->method->loss(ca);
  const MixedBatch m = b->as<XMixup>().mixed_batch(cb);
  // The partners are the batch's own examples, permuted; their labels are target labels.
  const auto* idx = m.aux_index.data_ptr<int64_t>();
  const auto* own = m.target_index.data_ptr<int64_t>();
  EXPECT_EQ(std::multiset<int64_t>(idx, idx + 6), std::multiset<int64_t>(own, own + 6));
  std::vector<std::map<int64_t, double>> probs(6);
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(m.y_aux[i].item<int64_t>(), b->target.train.labels[idx[i]].item<int64_t>());
    const double lam = m.lambda[i].item<double>();
    probs[i][m.y_target[i].item<int64_t>()] += lam;
    probs[i][m.y_aux[i].item<int64_t>()] += 1 - lam;
  }
  EXPECT_NEAR(terms.total.item<double>(), xmixup_expected_soft_ce(b->model->forward(m.x, "target"), probs), 1e-5);
  // Same lambda distribution as xmixup: Beta(alpha, beta).
  at::Generator gen = make_generator(3);
  EXPECT_TRUE(torch::equal(m.lambda, xmixup_lambda(gen, 4.0, 1.0, 6)));
}

TEST(XMixup, RandomAndAllAuxiliarySetsIgnoreThePairing) {
  auto paired = xmixup_rig("xmixup");
  const int64_t paired_size = paired->as<XMixup>().aux().pools().size();
  auto random = xmixup_rig("xmixup", {{"aux", "random"}});
  const AuxPools& rp = random->as<XMixup>().aux().pools();
  EXPECT_EQ(rp.size(), paired_size) << "as many examples as the paired set";
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 20; ++step) {
    StepContext ctx = random->ctx();
    const MixedBatch m = random->as<XMixup>().mixed_batch(ctx);
    for (int64_t i = 0; i < 6; ++i) seen.insert(source_label(*random, m.aux_index[i].item<int64_t>()));
  }
  EXPECT_EQ(seen.size(), 4u) << "random auxiliary examples come from every source class, not the two paired ones";
  EXPECT_EQ(random->model->arch().head("target")->class_names.size(), 2 + rp.source_classes.size());

  auto all = xmixup_rig("xmixup", {{"aux", "all"}});
  EXPECT_EQ(all->as<XMixup>().aux().pools().size(), all->source.train.size());
  EXPECT_EQ(all->model->arch().head("target")->class_names.size(), 6u);
}

TEST(XMixup, BadOptionsAreOneLineErrors) {
  auto config = methods().get("xmixup").make_config();
  Fields f;
  config->fields(f);
  test::expect_bad_input([&] { f.set("alpha", "0"); }, {"--alpha must be > 0, got 0"});
  test::expect_bad_input([&] { f.set("beta", "-1"); }, {"--beta must be > 0, got -1"});
  test::expect_bad_input([&] { f.set("label_space", "both"); }, {"--label-space must be one of joint, two-heads"});
  test::expect_bad_input([&] { f.set("aux", "near"); }, {"--aux must be one of paired, random, all"});
  test::expect_bad_input([&] { xmixup_rig("xmixup", {{"in_domain", "true"}, {"aux", "random"}}); },
                         {"--in-domain", "drop --aux random"});
  test::expect_bad_input([&] { xmixup_rig("xmixup", {{"aux_size", "49"}}); },
                         {"--aux-size 49 is larger than the source (48 training examples); --aux all would use all 48"});
  // Three target classes cannot each pair with one of two source classes...
  test::expect_bad_input([&] { xmixup_rig("xmixup", {}, "0,1,2", "0,3"); }, {"one-to-one", "--aux all"});
  // ...but more target than source classes is fine with --aux all.
  EXPECT_NO_THROW(xmixup_rig("xmixup", {{"aux", "all"}}, "0,1,2", "0,3"));
}

TEST(XMixup, APairingFileIsUsedAndCheckedAgainstTheTask) {
  test::TempDir dir;
  auto computed = xmixup_rig("xmixup");
  Pairing p = computed->as<XMixup>().aux().pairing();
  // Swap the pairs: the file, not the features, decides.
  std::swap(p.pairs[0].source, p.pairs[1].source);
  write_json_file(dir.file("pairing.json"), p.to_json());
  auto from_file = xmixup_rig("xmixup", {{"pairing", dir.file("pairing.json")}});
  const auto& used = from_file->as<XMixup>().aux().pairing().pairs;
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].source, p.pairs[0].source);
  EXPECT_EQ(used[1].source, p.pairs[1].source);
  test::expect_bad_input([&] { xmixup_rig("xmixup", {{"pairing", dir.file("pairing.json")}}, "0,3"); },
                         {"--pairing", "pairs the target classes [2, 1] but the task's are [0, 3]"});
  test::expect_bad_input([&] { xmixup_rig("xmixup", {{"pairing", dir.file("pairing.json")}, {"aux_size", "30"}}); },
                         {"--aux-size 30 differs"});
}

TEST(SeqTrain, TrainsTheSourceHeadOnAuxiliaryBatchesThenTheTarget) {
  auto rig = xmixup_rig("seqtrain", {{"aux_fraction", "0.25"}});
  ASSERT_TRUE(rig->model->has_head("source"));
  EXPECT_EQ(rig->as<SeqTrain>().split_step(20), 5);
  for (rig->step = 0; rig->step < 7; ++rig->step) {
    StepContext ctx = rig->ctx();
    const LossTerms terms = rig->method->loss(ctx);
    const auto pos = rig->batches.positions();
    EXPECT_EQ(pos.at("aux"), std::min<int64_t>(rig->step + 1, 5)) << "step " << rig->step;
    EXPECT_EQ(pos.at("target"), std::max<int64_t>(rig->step - 4, 0)) << "step " << rig->step;
    EXPECT_DOUBLE_EQ(terms.lr_scale, seqtrain_lr_scale(ScheduleOptions{}, rig->step, 20, 5));
  }
}

TEST(SeqTrain, TheScheduleRestartsAtTheSplit) {
  ScheduleOptions step;  // x0.1 at 2/3
  // Run of 30 steps split at 15: each phase drops at its own 2/3 (step 10, step 15 + 10).
  EXPECT_DOUBLE_EQ(seqtrain_lr_scale(step, 0, 30, 15), 1.0);
  EXPECT_NEAR(seqtrain_lr_scale(step, 10, 30, 15), 0.1, 1e-12);
  EXPECT_DOUBLE_EQ(seqtrain_lr_scale(step, 15, 30, 15), 1.0);
  EXPECT_DOUBLE_EQ(seqtrain_lr_scale(step, 22, 30, 15), 10.0) << "the run is at 0.1, the phase at 1 until 25";
  EXPECT_DOUBLE_EQ(seqtrain_lr_scale(step, 25, 30, 15), 1.0);
  ScheduleOptions cosine;
  cosine.schedule = "cosine";
  for (int64_t s : {3, 17, 29}) {
    const double phase = s < 15 ? lr_factor(cosine, s, 15) : lr_factor(cosine, s - 15, 15);
    EXPECT_NEAR(seqtrain_lr_scale(cosine, s, 30, 15) * lr_factor(cosine, s, 30), phase, 1e-12);
  }
}

TEST(CoTrain, LossIsTargetPlusWeightedAuxiliaryCrossEntropy) {
  auto rig = xmixup_rig("cotrain", {{"aux_weight", "0.5"}});
  ASSERT_TRUE(rig->model->has_head("source"));
  StepContext ctx = rig->ctx();
  const LossTerms terms = rig->method->loss(ctx);
  EXPECT_NEAR(terms.total.item<double>(),
              terms.parts.at("ce_target").item<double>() + 0.5 * terms.parts.at("ce_aux").item<double>(), 1e-6);
  EXPECT_EQ(rig->batches.positions().at("aux"), 1);
  EXPECT_EQ(rig->batches.positions().at("target"), 1);
}

RunOptions xmixup_tiny_run(const std::string& dir, const std::string& method) {
  RunOptions o;
  o.method = method;
  o.target = xmixup_data() + ":classes=2,1";
  o.source = xmixup_data();
  o.init = dir + "/source";
  o.threads = 1;
  o.out = dir + "/" + method;
  o.trainer.iterations = 12;
  o.trainer.eval_every = 4;
  o.loader.batch_size = 6;
  return o;
}

std::map<std::string, torch::Tensor> xmixup_weights(const std::string& checkpoint) {
  std::map<std::string, torch::Tensor> out;
  const Model m = CheckpointReader(checkpoint).read_model();
  for (const auto& p : m->named_parameters()) out[p.key()] = p.value();
  return out;
}

TEST(XMixup, RunsAreDeterministicAndResumeBitExactly) {
  test::TempDir dir;
  test::pretrain_tiny_source(xmixup_data(), dir.file("source"));
  for (const std::string method : {"xmixup", "seqtrain", "cotrain"}) {
    auto finetune = [&](const RunOptions& o) {
      auto config = methods().get(method).make_config();
      return run_finetune(o, *config);
    };
    RunOptions straight = xmixup_tiny_run(dir.path(), method);
    finetune(straight);
    RunOptions again = straight;
    again.out += "-again";
    finetune(again);
    RunOptions split = straight;
    split.out += "-split";
    split.trainer.stop_after = 5;  // in seqtrain's auxiliary phase (steps 0-5); the resume crosses the split
    finetune(split);
    split.resume = true;
    split.trainer.stop_after = 0;  // run to the end this time
    finetune(split);
    const auto w = xmixup_weights(straight.out + "/checkpoints/last.pt");
    for (const auto& other : {again.out, split.out}) {
      const auto v = xmixup_weights(other + "/checkpoints/last.pt");
      ASSERT_EQ(w.size(), v.size());
      for (const auto& [name, t] : w) EXPECT_TRUE(torch::equal(t, v.at(name))) << method << " " << other << " " << name;
    }
  }
}

TEST(XMixup, EachMethodLearnsTheEmbeddedTask) {
  XFER_REQUIRE_FMNIST();
  test::TempDir dir;
  RunOptions pre;
  pre.source = "fmnist:classes=0,1,3,5,8:per_class=200:test=none";
  pre.backbone = "cnn4:width=8";
  pre.threads = 2;
  pre.out = dir.file("source");
  pre.trainer.iterations = 80;
  pre.trainer.optim.lr = 0.05;
  run_pretrain(pre);
  for (const std::string method : {"xmixup", "seqtrain", "cotrain"}) {
    RunOptions ft;
    ft.method = method;
    ft.target = "fmnist:classes=2,7:per_class=10:test_per_class=200";
    ft.source = pre.source;
    ft.init = pre.out;
    ft.threads = 2;
    ft.out = dir.file(method);
    ft.trainer.iterations = 40;
    ft.loader.batch_size = 16;
    auto config = methods().get(method).make_config();
    const nlohmann::json r = run_finetune(ft, *config);
    EXPECT_GT(r["test_top1"].get<double>(), 0.85) << method << ": chance is 0.5";
  }
}

}  // namespace
}  // namespace xfer
