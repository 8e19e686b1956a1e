// --init: every registered method that fine-tunes starts its first step from the checkpoint's backbone,
// every parameter and batch-norm statistic equal, with a fresh target head drawn from the run's seed.
// A spy wraps each registered method and copies the model when the Trainer first asks for gradients.
#include <filesystem>
#include <map>

#include "support.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

TensorMap init_state_of(const Model& m) {
  TensorMap out;
  for (const auto& p : m->named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m->named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

/// Forwards every hook to the registered method; copies the model at the first step it trains.
class InitSpy : public Method {
 public:
  InitSpy(std::unique_ptr<Method> inner, TensorMap& seen, int64_t& step)
      : inner_(std::move(inner)), seen_(seen), step_(step) {}
  void setup(Model& model, SetupContext& ctx) override { inner_->setup(model, ctx); }
  std::vector<ParamGroup> param_groups(Model& model, double head_lr_mult) override {
    return inner_->param_groups(model, head_lr_mult);
  }
  LossTerms loss(StepContext& ctx) override { return inner_->loss(ctx); }
  LossTerms compute_gradients(StepContext& ctx) override {
    if (seen_.empty()) {
      seen_ = init_state_of(ctx.model);
      step_ = ctx.step;
    }
    return inner_->compute_gradients(ctx);
  }
  void after_backward(StepContext& ctx) override { inner_->after_backward(ctx); }
  bool synchronises_gradients() const override { return inner_->synchronises_gradients(); }
  void after_step(StepContext& ctx) override { inner_->after_step(ctx); }
  void save(Archive& out) const override { inner_->save(out); }
  void load(const Archive& in) override { inner_->load(in); }

 private:
  std::unique_ptr<Method> inner_;
  TensorMap& seen_;
  int64_t& step_;
};

class InitSpyConfig : public MethodConfig {
 public:
  InitSpyConfig(std::unique_ptr<MethodConfig> inner, TensorMap& seen, int64_t& step)
      : inner_(std::move(inner)), seen_(seen), step_(step) {}
  void fields(Fields& f) override { inner_->fields(f); }
  std::unique_ptr<Method> build() override {
    return std::make_unique<InitSpy>(inner_->build(), seen_, step_);
  }

 private:
  std::unique_ptr<MethodConfig> inner_;
  TensorMap& seen_;
  int64_t& step_;
};

struct InitRun {
  TensorMap first_step;  // the model when the first step began
  int64_t step = -1;
};

/// Tiny data: seven classes; the target is three of them, the source (the source model's classes) the other
/// four (XMixup pairs one-to-one), and GradMix's labelled sources a shifted copy of the target's classes and
/// the source.
struct InitData {
  std::string target, source, sources, init;
};

/// Runs `method` for three steps from the source model d.init, spying on its first step.

InitRun init_spied_run(const test::TempDir& dir, const InitData& d, const std::string& method,
                       uint64_t seed) {
  RunOptions o;
  o.method = method;
  o.target = d.target;
  o.init = d.init;
  o.threads = 1;
  o.seed = static_cast<int64_t>(seed);
  o.out = dir.file(method + "-" + std::to_string(seed));
  o.trainer.iterations = 3;  // RIFLE's default k = 3 needs three
  o.trainer.eval_every = 3;
  o.loader.batch_size = 8;
  const MethodInfo& info = methods().get(method);
  if (info.needs_source) o.source = d.source;
  InitRun r;
  InitSpyConfig config(info.make_config(), r.first_step, r.step);
  Fields f;
  config.fields(f);
  if (f.has("sources")) f.set("sources", d.sources);  // GradMix's labelled sources
  run_finetune(o, config);
  return r;
}

TEST(Init, EveryFineTuningMethodStartsFromTheCheckpointsBackboneWithAFreshHead) {
  test::TempDir dir;
  fs::create_directories(dir.file("data"));
  const std::string data = test::write_tiny_idx(dir.file("data"), 7, 20, 4);
  InitData d{data + ":classes=0-2:per_class=8:val=3", data + ":classes=3-6", "", ""};
  d.sources = data + ":classes=0-2:shift=noise0.1;" + d.source;
  // A source model trained for a few steps, so its weights and batch-norm statistics are its own.
  d.init = test::pretrain_tiny_source(d.source, dir.file("source"));
  const Model pretrained = CheckpointReader(resolve_checkpoint(d.init)).read_model();
  const TensorMap want = init_state_of(pretrained);

  const InitRun l2 = init_spied_run(dir, d, "l2", 5);
  const InitRun other_seed = init_spied_run(dir, d, "l2", 6);
  const std::string head_w = "heads.target.weight";
  ASSERT_TRUE(l2.first_step.count(head_w));
  // The target head is fresh: PyTorch's default initialisation, drawn from the run's seed.
  const double bound = 1.0 / std::sqrt(static_cast<double>(l2.first_step.at(head_w).size(1)));
  EXPECT_LE(l2.first_step.at(head_w).abs().max().item<double>(), bound);
  EXPECT_FALSE(torch::equal(l2.first_step.at(head_w), other_seed.first_step.at(head_w)));

  int checked = 0;
  for (const auto& info : methods().all()) {
    if (!info.allows_init) continue;
    SCOPED_TRACE(info.name);
    const InitRun r = info.name == "l2" ? l2 : init_spied_run(dir, d, info.name, 5);
    EXPECT_EQ(r.step, 0);
    int64_t backbone = 0;
    for (const auto& [name, t] : want) {
      if (name.rfind("backbone.", 0) != 0) continue;
      ++backbone;
      ASSERT_TRUE(r.first_step.count(name)) << name;
      EXPECT_TRUE(torch::equal(r.first_step.at(name), t)) << name << " is not the checkpoint's at step 0";
    }
    EXPECT_GT(backbone, 10);
    // The same fresh head as l2's, wherever the method's target head has the target's classes.
    if (r.first_step.count(head_w) && r.first_step.at(head_w).sizes() == l2.first_step.at(head_w).sizes()) {
      EXPECT_TRUE(torch::equal(r.first_step.at(head_w), l2.first_step.at(head_w)))
          << "the target head is not fresh";
    }
    ++checked;
  }
  EXPECT_GE(checked, 10) << "every method that takes --init";
}

}  // namespace
}  // namespace xfer
