// XMixup, its label spaces and ablations, and the multi-task baselines seqtrain and cotrain.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/data/spec.h"
#include "xfer/methods/mixup.h"
#include "xfer/methods/xmixup.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/suite.h"

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
  int64_t step = 0, phase = 0;
  StepContext ctx() { return StepContext{batches, model, step, 20, rng, head, phase, step}; }
  template <class M>
  M& as() {
    return dynamic_cast<M&>(*method);
  }
};

std::unique_ptr<XmixupRig> xmixup_rig(const std::string& name,
                                      const std::map<std::string, std::string>& options = {},
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
  SetupContext ctx{
      rig->target, &rig->source, rig->pretrained, rig->batches, rig->loader, seed, torch::kCPU, "target", 20};
  rig->method->setup(rig->model, ctx);
  return rig;
}

int64_t source_label(const XmixupRig& rig, int64_t index) {
  return rig.source.train.labels[index].item<int64_t>();
}

/// -sum_k p_k log softmax(z)_k averaged over rows, with p built entry by entry.
double xmixup_expected_soft_ce(const torch::Tensor& logits,
                               const std::vector<std::map<int64_t, double>>& probs) {
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
  const torch::Tensor y_t = torch::tensor({0, 1, 1}, torch::kInt64),
                      y_s = torch::tensor({3, 2, 1}, torch::kInt64);
  const torch::Tensor lam = torch::tensor({0.8, 0.25, 0.6}, torch::kFloat64);
  const torch::Tensor p = mixed_soft_labels(y_t, y_s, lam, 4);
  const torch::Tensor expected =
      torch::tensor({{0.8, 0.0, 0.0, 0.2}, {0.0, 0.25, 0.75, 0.0}, {0.0, 1.0, 0.0, 0.0}});
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
    EXPECT_TRUE(torch::allclose(m.x, l * t.x + (1 - l) * s.x, 1e-5, 1e-6))
        << "x = lambda x_t + (1 - lambda) x_s";
    for (int64_t i = 0; i < 6; ++i) {
      const auto& allowed = by_target[m.y_target[i].item<int64_t>()];
      const int64_t sc = source_label(*a, m.aux_index[i].item<int64_t>());
      EXPECT_EQ(m.y_aux[i].item<int64_t>(), sc);
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), sc), allowed.end())
          << "step " << step << " slot " << i;
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

  // The in-step loss recomputed from the replayed batches with independent code: the same target and
  // auxiliary batches (a second rig's streams), lambda ~ Beta(4, 1) per example from the same generator, the
  // mix by hand, and each auxiliary class's column found by its name in the joint head.
  StepContext ca = a->ctx();
  const LossTerms terms = a->method->loss(ca);
  const Batch t = b->batches.next("target"), s = b->batches.next("aux");
  at::Generator gen = make_generator(3);
  const torch::Tensor lam = sample_beta(gen, 4.0, 1.0, 6);
  const torch::Tensor l = lam.to(torch::kFloat32).view({6, 1, 1, 1});
  const torch::Tensor x = l * t.x + (1 - l) * s.x;
  const auto& names = head->class_names;
  std::vector<std::map<int64_t, double>> probs(6);
  for (int64_t i = 0; i < 6; ++i) {
    const std::string& aux_name = a->source.class_names()[s.y[i].item<int64_t>()];
    const int64_t column = std::find(names.begin() + 2, names.end(), aux_name) - names.begin();
    ASSERT_LT(column, 4) << aux_name << " is not a column of the joint head";
    probs[i][t.y[i].item<int64_t>()] += lam[i].item<double>();
    probs[i][column] += 1 - lam[i].item<double>();
  }
  EXPECT_NEAR(terms.total.item<double>(), xmixup_expected_soft_ce(b->model->forward(x, "target"), probs),
              1e-5);
  EXPECT_NEAR(terms.parts.at("lambda").item<double>(), lam.mean().item<double>(), 1e-6);
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
  EXPECT_NEAR(terms.total.item<double>(), xmixup_expected_soft_ce(b->model->forward(m.x, "target"), probs),
              1e-5);
}

TEST(XMixup, TheInDomainAblationIsVanillaMixupOneDrawPerBatch) {
  // Table 4's "Mixup" column ("traditional Mixup ... using only samples in the target dataset") is the
  // `mixup` method: xmixup has no in-domain option, and the suite's column runs `mixup`.
  auto config = methods().get("xmixup").make_config();
  Fields f;
  config->fields(f);
  EXPECT_FALSE(f.to_json().contains("in_domain"));
  const Suite suite = load_suite("xmixup");
  const auto column = std::find_if(suite.methods.begin(), suite.methods.end(),
                                   [](const SuiteMethod& m) { return m.label == "mixup (in-domain)"; });
  ASSERT_NE(column, suite.methods.end());
  EXPECT_EQ(column->method, "mixup");
  EXPECT_TRUE(column->options.empty()) << "vanilla mixup's own defaults";

  // One lambda per batch, Beta(a, a): mean 1/2 over batches, and the batch's partners a permutation of it.
  at::Generator gen = make_generator(5);
  double sum = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    const MixupDraw d = draw_mixup(gen, 6, 0.2, /*fold=*/false);
    sum += d.lambda;
    if (i == 0) {
      const auto* p = d.perm.data_ptr<int64_t>();
      EXPECT_EQ(std::multiset<int64_t>(p, p + 6), (std::multiset<int64_t>{0, 1, 2, 3, 4, 5}));
    }
  }
  EXPECT_NEAR(sum / draws, 0.5, 0.01);
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
  EXPECT_EQ(seen.size(), 4u)
      << "random auxiliary examples come from every source class, not the two paired ones";
  EXPECT_EQ(random->model->arch().head("target")->class_names.size(), 2 + rp.source_classes.size());

  auto all = xmixup_rig("xmixup", {{"aux", "all"}});
  EXPECT_EQ(all->as<XMixup>().aux().pools().size(), all->source.train.size());
  EXPECT_EQ(all->model->arch().head("target")->class_names.size(), 6u);
}

TEST(XMixup, AnAuxiliarySetBelowOneRoundIsASeededRandomPartOfThePairedClasses) {
  // One round pairs 2 of the 4 source classes: 24 examples. --aux-size below that subsamples them.
  auto full = xmixup_rig("xmixup");
  ASSERT_EQ(full->as<XMixup>().aux().pools().size(), 24);
  std::set<int64_t> paired;
  for (const auto& p : full->as<XMixup>().aux().pairing().pairs) paired.insert(p.source);
  ASSERT_EQ(paired.size(), 2u);
  for (const auto& [size, counts] : std::vector<std::pair<int64_t, std::multiset<int64_t>>>{
           {2, {1, 1}},     // ~10% of a round: one example of each paired class
           {5, {2, 3}}}) {  // 1 each, then 3 more in proportion (1.5 each, the remainder to the first class)
    auto rig = xmixup_rig("xmixup", {{"aux_size", std::to_string(size)}});
    const XMixup& xm = rig->as<XMixup>();
    const AuxPools& pools = xm.aux().pools();
    EXPECT_EQ(pools.size(), size);
    EXPECT_EQ(xm.aux().pairing().aux_examples(), size);
    std::map<int64_t, int64_t> per_class;
    const auto by_target = xm.aux().pairing().sources_by_target();
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t i : pools.pool_of(t)) {
        const int64_t c = source_label(*rig, i);
        EXPECT_TRUE(paired.count(c)) << "example " << i << " of unpaired class " << c;
        EXPECT_EQ(c, by_target[t][0]) << "each target class draws from its own paired class";
        ++per_class[c];
      }
    std::multiset<int64_t> got;
    for (const auto& [c, n] : per_class) got.insert(n);
    EXPECT_EQ(got, counts) << "aux size " << size;
    // Seeded: the same run draws the same subset, and only from it.
    auto again = xmixup_rig("xmixup", {{"aux_size", std::to_string(size)}});
    EXPECT_EQ(again->as<XMixup>().aux().pools().all(), pools.all());
    const auto members = pools.all();
    for (int64_t step = 0; step < 5; ++step) {
      StepContext ctx = rig->ctx();
      const MixedBatch m = rig->as<XMixup>().mixed_batch(ctx);
      for (int64_t i = 0; i < 6; ++i)
        EXPECT_TRUE(std::binary_search(members.begin(), members.end(), m.aux_index[i].item<int64_t>()));
    }
  }
  test::expect_bad_input(
      [&] {
        xmixup_rig("xmixup", {{"aux_size", "1"}});
      },
      {"--aux-size 1 is smaller than the 2 paired source classes"});
  // --aux random keeps its meaning: as many examples, from the whole source.
  auto random = xmixup_rig("xmixup", {{"aux", "random"}, {"aux_size", "5"}});
  EXPECT_EQ(random->as<XMixup>().aux().pools().mode, AuxMode::random);
  EXPECT_EQ(random->as<XMixup>().aux().pools().size(), 5);
  // Above one round, rounds add whole classes.
  EXPECT_EQ(xmixup_rig("xmixup", {{"aux_size", "25"}})->as<XMixup>().aux().pools().size(), 48);
}

TEST(XMixup, BadOptionsAreOneLineErrors) {
  auto config = methods().get("xmixup").make_config();
  Fields f;
  config->fields(f);
  test::expect_bad_input([&] { f.set("alpha", "0"); }, {"--alpha must be > 0, got 0"});
  test::expect_bad_input([&] { f.set("beta", "-1"); }, {"--beta must be > 0, got -1"});
  test::expect_bad_input([&] { f.set("label_space", "both"); },
                         {"--label-space must be one of joint, two-heads"});
  test::expect_bad_input([&] { f.set("aux", "near"); }, {"--aux must be one of paired, random, all"});
  test::expect_bad_input(
      [&] {
        xmixup_rig("xmixup", {{"aux_size", "49"}});
      },
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
  test::expect_bad_input(
      [&] {
        xmixup_rig("xmixup", {{"pairing", dir.file("pairing.json")}}, "0,3");
      },
      {"--pairing", "pairs the target classes [2, 1] but the task's are [0, 3]"});
  test::expect_bad_input(
      [&] {
        xmixup_rig("xmixup", {{"pairing", dir.file("pairing.json")}, {"aux_size", "30"}});
      },
      {"--aux-size 30 differs"});
}

TEST(SeqTrain, MidTunesOnAuxiliaryBatchesThenTrainsTheTargetAsASecondTraining) {
  auto rig = xmixup_rig("seqtrain", {{"aux_iterations", "4"}});
  ASSERT_TRUE(rig->model->has_head("source"));
  const auto phases = rig->method->phases(20);
  ASSERT_EQ(phases.size(), 2u);
  EXPECT_EQ(phases[0].name, "aux");
  EXPECT_EQ(phases[0].steps, 4);
  EXPECT_FALSE(phases[0].validate) << "the target head is untrained while mid-tuning";
  EXPECT_EQ(phases[1].name, "target");
  EXPECT_EQ(phases[1].steps, 20) << "the target phase is a whole --iterations";
  EXPECT_EQ(xmixup_rig("seqtrain")->method->phases(20)[0].steps, 20)
      << "--aux-iterations 0: as many as --iterations";
  // Phase 0 draws auxiliary batches only, phase 1 target batches only.
  for (rig->step = 0; rig->step < 7; ++rig->step) {
    rig->phase = rig->step < 4 ? 0 : 1;
    StepContext ctx = rig->ctx();
    rig->method->loss(ctx);
    const auto pos = rig->batches.positions();
    EXPECT_EQ(pos.at("aux"), std::min<int64_t>(rig->step + 1, 4)) << "step " << rig->step;
    EXPECT_EQ(pos.at("target"), std::max<int64_t>(rig->step - 3, 0)) << "step " << rig->step;
  }
}

TEST(SeqTrain, InStepLossesRecomputedFromTheReplayedBatches) {
  auto a = xmixup_rig("seqtrain", {{"aux_iterations", "1"}});
  auto b = xmixup_rig("seqtrain", {{"aux_iterations", "1"}});
  // The source head's row of each source class, by name, as the copied head orders them.
  const auto& head_names = b->pretrained->arch().head("source")->class_names;
  auto row_of = [&](int64_t source_label) {
    const std::string& name = b->source.class_names()[source_label];
    return std::find(head_names.begin(), head_names.end(), name) - head_names.begin();
  };
  auto ce = [](const torch::Tensor& logits, const std::vector<int64_t>& labels) {
    const torch::Tensor logp = torch::log_softmax(logits.detach(), 1);
    double sum = 0;
    for (size_t i = 0; i < labels.size(); ++i) sum -= logp[static_cast<int64_t>(i)][labels[i]].item<double>();
    return sum / static_cast<double>(labels.size());
  };
  // Phase "aux": CE of the copied source head on an auxiliary batch, source labels mapped to its rows.
  StepContext ca = a->ctx();
  const double aux_loss = a->method->loss(ca).total.item<double>();
  const Batch s = b->batches.next("aux");
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < s.y.size(0); ++i) rows.push_back(row_of(s.y[i].item<int64_t>()));
  EXPECT_NEAR(aux_loss, ce(b->model->forward(s.x, "source"), rows), 1e-5);
  // Phase "target": CE of the target head on the target batch.
  a->step = 1;
  a->phase = 1;
  StepContext ct = a->ctx();
  const double target_loss = a->method->loss(ct).total.item<double>();
  const Batch t = b->batches.next("target");
  std::vector<int64_t> labels(t.y.data_ptr<int64_t>(), t.y.data_ptr<int64_t>() + t.y.size(0));
  EXPECT_NEAR(target_loss, ce(b->model->forward(t.x, "target"), labels), 1e-5);
}

TEST(SeqTrain, TheTargetPhaseRunsExactlyIterationsStepsFromZeroMomentum) {
  test::TempDir dir;
  test::pretrain_tiny_source(xmixup_data(), dir.file("source"));
  RunOptions o;
  o.method = "seqtrain";
  o.target = xmixup_data() + ":classes=2,1";
  o.source = xmixup_data();
  o.init = dir.file("source");
  o.threads = 1;
  o.out = dir.file("run");
  o.trainer.iterations = 5;
  o.trainer.log_every = 1;
  o.loader.batch_size = 6;
  auto config = methods().get("seqtrain").make_config();
  Fields f;
  config->fields(f);
  f.set("aux_iterations", "3");
  // Momentum buffers of the heads' group (group 1) after `steps` steps.
  auto head_buffers = [&](int64_t steps) {
    RunOptions part = o;
    part.out = dir.file(cat("part", steps));
    part.trainer.stop_after = steps;
    run_finetune(part, *config);
    const Archive opt = CheckpointReader(part.out + "/checkpoints/last.pt").read("optimizer");
    std::set<std::string> keys;
    for (const auto& k : opt.keys())
      if (k.rfind("1.", 0) == 0) keys.insert(k);
    return keys;
  };
  const auto after_aux = head_buffers(3), after_first_target = head_buffers(4);
  EXPECT_EQ(after_aux.size(), 2u) << "the source head's weight and bias";
  EXPECT_EQ(after_first_target.size(), 2u)
      << "the target head's only: the optimizer is fresh, the source head's "
         "momentum is gone";
  for (const auto& k : after_first_target) EXPECT_EQ(after_aux.count(k), 0u) << k;

  const nlohmann::json r = run_finetune(o, *config);
  EXPECT_EQ(r["phases"], nlohmann::json::parse(R"([{"name":"aux","steps":3},{"name":"target","steps":5}])"));
  std::ifstream in(o.out + "/metrics.jsonl");
  std::string line;
  int target_lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.value("phase", "") == "target") ++target_lines;
  }
  EXPECT_EQ(target_lines, 5) << "exactly --iterations steps on the target";
}

TEST(CoTrain, LossIsTargetPlusWeightedAuxiliaryCrossEntropy) {
  auto rig = xmixup_rig("cotrain", {{"aux_weight", "0.5"}});
  ASSERT_TRUE(rig->model->has_head("source"));
  StepContext ctx = rig->ctx();
  const LossTerms terms = rig->method->loss(ctx);
  EXPECT_NEAR(terms.total.item<double>(),
              terms.parts.at("ce_target").item<double>() + 0.5 * terms.parts.at("ce_aux").item<double>(),
              1e-6);
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
      for (const auto& [name, t] : w)
        EXPECT_TRUE(torch::equal(t, v.at(name))) << method << " " << other << " " << name;
    }
  }
}

TEST(XMixup, EachMethodReportsItsFinalModelsTargetPredictionsAndLogsItsTerms) {
  // What a run of each method must get right beyond its step (checked exactly above): the result is the
  // final model's accuracy on the target's classes, recomputed here from the checkpoint (XMixup's joint
  // head keeps the paired source classes' rows after the target's, and only the target rows predict), and
  // each step logs the method's terms. (This replaces a test that only asked for > 0.85 top-1 on two
  // Fashion-MNIST classes, which a raw-pixel nearest-centroid classifier reaches. A paired comparison with
  // the same-seed scratch run, as l2's and SMILE's tests make, was not stable in runs short enough for the
  // suite: on three of the source model's classes, two images each, 10 to 20 steps, xmixup and cotrain
  // ended anywhere from 0.15 to 0.83 over six seeds and below scratch in some, their models collapsing onto
  // one class in eval mode while their training loss fell as l2's does.)
  test::TempDir dir;
  const std::string data = test::write_tiny_idx(dir.path(), 4, 12, 20);  // 20 test images per class
  test::pretrain_tiny_source(data, dir.file("source"));
  for (const std::string method : {"xmixup", "seqtrain", "cotrain"}) {
    RunOptions o = xmixup_tiny_run(dir.path(), method);
    o.target = data + ":classes=2,1";
    o.source = data;
    o.trainer.log_every = 1;
    auto config = methods().get(method).make_config();
    Fields f;
    config->fields(f);
    if (method == "seqtrain") f.set("aux_iterations", "4");
    if (method == "cotrain") f.set("aux_weight", "0.5");
    const nlohmann::json r = run_finetune(o, *config);

    Model m = CheckpointReader(o.out + "/checkpoints/last.pt").read_model();
    const HeadInfo* head = m->arch().head("target");
    ASSERT_NE(head, nullptr);
    if (method == "xmixup") {  // target classes 2, 1, then the paired source classes in label order
      EXPECT_EQ(head->class_names, (std::vector<std::string>{"2", "1", "1", "2"}));
      EXPECT_EQ(head->predict_classes, 2);
    } else {
      EXPECT_EQ(head->class_names, (std::vector<std::string>{"2", "1"}));
    }
    const Task task = load_task(o.target, 0);
    ASSERT_EQ(task.test.size(), 40);
    m->eval();
    torch::NoGradGuard no_grad;
    const Normalization& norm = m->arch().input;
    const torch::Tensor x = (task.test.images.to(torch::kFloat64) / 255 - norm.mean[0]) / norm.std[0];
    const torch::Tensor logits = m->forward(x.to(torch::kFloat32), "target");
    std::vector<std::vector<int64_t>> confusion(2, std::vector<int64_t>(2, 0));  // [true][predicted]
    int64_t outside = 0;  // images whose largest logit is a source row
    for (int64_t i = 0; i < task.test.size(); ++i) {
      const int64_t predicted = logits[i][1].item<float>() > logits[i][0].item<float>() ? 1 : 0;
      ++confusion[task.test.labels[i].item<int64_t>()][predicted];
      outside += logits[i].argmax().item<int64_t>() >= 2;
    }
    EXPECT_EQ(r["test"]["confusion"], nlohmann::json(confusion)) << method;
    EXPECT_DOUBLE_EQ(r["test_top1"].get<double>(), (confusion[0][0] + confusion[1][1]) / 40.0) << method;
    if (method == "xmixup") {
      EXPECT_GT(outside, 0) << "the source rows never win: the check above cannot tell";
    }

    std::ifstream in(o.out + "/metrics.jsonl");
    std::string line;
    int lines = 0;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (!j.contains("loss")) continue;
      const int64_t step = j["step"].get<int64_t>();
      ++lines;
      if (method == "xmixup") {
        EXPECT_DOUBLE_EQ(j["loss"].get<double>(), j["ce"].get<double>()) << line;
        EXPECT_TRUE(j["lambda"].get<double>() > 0 && j["lambda"].get<double>() < 1) << line;
      } else if (method == "seqtrain") {
        EXPECT_EQ(j["phase"], step <= 4 ? "aux" : "target") << line;
        EXPECT_DOUBLE_EQ(j["loss"].get<double>(), j["ce"].get<double>()) << line;
      } else {
        EXPECT_NEAR(j["loss"].get<double>(), j["ce_target"].get<double>() + 0.5 * j["ce_aux"].get<double>(),
                    1e-6)
            << line;
      }
    }
    EXPECT_EQ(lines, method == "seqtrain" ? 16 : 12) << method;
  }
}

}  // namespace
}  // namespace xfer
