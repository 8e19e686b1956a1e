// Methods made of several phases (Method::phases): each phase runs its own number of steps with a fresh
// optimizer state and its own learning-rate schedule, and a run resumes exactly across the switch.
#include <array>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/trainer.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Loss = sum of the target head's bias, so every step's gradient is 1 on each bias entry and nothing
/// else moves: the bias shows the optimizer's momentum exactly. Phases "first" (3 steps, not validated)
/// and "second" (--iterations). Records each step's context.
class ConstantGradientPhases : public Method {
 public:
  std::vector<Phase> phases(int64_t iterations) const override {
    return {{"first", first_steps, 1.0, /*validate=*/false}, {"second", iterations}};
  }
  LossTerms loss(StepContext& ctx) override {
    seen.push_back({ctx.step, ctx.phase, ctx.phase_step});
    ctx.batches.next("target");  // the stream moves as a real method's would
    const torch::Tensor l = ctx.model->head(ctx.head)->bias.sum();
    return {l, {}};
  }
  int64_t first_steps = 3;
  std::vector<std::array<int64_t, 3>> seen;  // step, phase, phase_step
};

struct PhaseRig {
  explicit PhaseRig(const std::string& dir)
      : seeded((torch::manual_seed(1), true)),
        task(load_task(test::write_tiny_idx(dir, 2, 10, 2) + ":val=2", 0)),
        arch{"cnn4:width=4", 1, 8, 8, {{0.2}, {0.3}}, {{"target", task.class_names()}}},
        model(arch) {
    batches.add("target", std::make_unique<BatchStream>(task.train, arch.input, LoaderOptions(), 1));
    opts.iterations = 4;
    opts.optim.lr = 0.1;
    opts.optim.momentum = 0.9;
    opts.optim.weight_decay = 0;
    opts.schedule.schedule = ScheduleKind::constant;
    opts.checkpoint_every = 1;
    opts.log_every = 1;
  }
  nlohmann::json fit(const std::string& out, bool resume = false) {
    fs::create_directories(out);
    return Trainer(opts, out).fit(model, method, batches, task, "target", 0, resume);
  }
  bool seeded;
  Task task;
  Arch arch;
  Model model;
  Batches batches;
  TrainerOptions opts;
  ConstantGradientPhases method;
};

TEST(Phases, EachPhaseRunsItsStepsWithAFreshOptimizer) {
  test::TempDir dir;
  PhaseRig rig(dir.path());
  const torch::Tensor b0 = rig.model->head("target")->bias.detach().clone();
  const nlohmann::json result = rig.fit(dir.file("run"));

  // 3 steps of "first", then exactly --iterations (4) of "second", numbered on.
  ASSERT_EQ(rig.method.seen.size(), 7u);
  for (int64_t s = 0; s < 7; ++s) {
    EXPECT_EQ(rig.method.seen[s][0], s);
    EXPECT_EQ(rig.method.seen[s][1], s < 3 ? 0 : 1);
    EXPECT_EQ(rig.method.seen[s][2], s < 3 ? s : s - 3);
  }
  EXPECT_EQ(result["iterations"], 7);
  EXPECT_EQ(result["phases"],
            nlohmann::json::parse(R"([{"name":"first","steps":3},{"name":"second","steps":4}])"));

  // SGD with momentum 0.9 on a constant gradient 1: the buffer is 1, 1.9, 2.71 in the first phase, and starts
  // again at 1 in the second (carried over it would be 3.439): the bias moves by lr * sum of the buffers.
  const double first = 1 + 1.9 + 2.71, second = 1 + 1.9 + 2.71 + 3.439;
  const torch::Tensor expected = b0 - 0.1 * (first + second);
  EXPECT_TRUE(torch::allclose(rig.model->head("target")->bias, expected, 1e-5, 1e-6))
      << rig.model->head("target")->bias << " vs " << expected;

  // Validation only in the validated phase; each metrics line names its phase.
  std::ifstream in(dir.file("run/metrics.jsonl"));
  std::string line;
  int validations = 0, lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_top1")) {
      ++validations;
      EXPECT_GT(j["step"].get<int64_t>(), 3) << "no validation in the first phase";
    } else {
      ++lines;
      EXPECT_EQ(j["phase"], j["step"].get<int64_t>() <= 3 ? "first" : "second") << line;
    }
  }
  EXPECT_EQ(lines, 7);
  EXPECT_EQ(validations, 4) << "eval_every defaults to iterations / 10 -> every step of the second phase";
}

TEST(Phases, ResumeIsExactInsideAPhaseAndAtTheSwitch) {
  for (int64_t stop :
       {2, 3, 4}) {  // inside the first phase, at the switch, after the first step of the second
    test::TempDir dir;
    PhaseRig straight(dir.path());
    straight.fit(dir.file("straight"));

    PhaseRig split(dir.path());
    split.opts.stop_after = stop;
    EXPECT_TRUE(split.fit(dir.file("split")).contains("stopped_at"));
    const auto meta = CheckpointReader(dir.file("split/checkpoints/last.pt")).meta();
    EXPECT_EQ(meta["phase"], stop < 3 ? "first" : "second")
        << "the checkpoint knows the phase of its next step";
    PhaseRig resumed(dir.path());
    resumed.opts.stop_after = 0;
    resumed.fit(dir.file("split"), /*resume=*/true);
    EXPECT_TRUE(torch::equal(resumed.model->head("target")->bias, straight.model->head("target")->bias))
        << "stopped after " << stop;
  }
}

TEST(Phases, ResumeRefusesOtherPhases) {
  test::TempDir dir;
  PhaseRig a(dir.path());
  a.opts.stop_after = 2;
  a.fit(dir.file("run"));
  PhaseRig b(dir.path());
  b.method.first_steps = 5;
  test::expect_bad_input([&] { b.fit(dir.file("run"), true); },
                         {"cannot resume", "\"first\",\"steps\":3", "\"first\",\"steps\":5"});
}

TEST(Phases, GradMixsFineTuneBaselineIsSourcesThenV) {
  auto config = methods().get("finetune").make_config();
  Fields f;
  config->fields(f);
  f.set("switch_at", "0.25");
  f.set("finetune_lr_scale", "0.2");
  const auto phases = config->build()->phases(20);
  ASSERT_EQ(phases.size(), 2u);
  EXPECT_EQ(phases[0].name, "sources");
  EXPECT_EQ(phases[0].steps, 5);
  EXPECT_EQ(phases[1].name, "v");
  EXPECT_EQ(phases[1].steps, 15);
  EXPECT_DOUBLE_EQ(phases[1].lr_mult, 0.2);
  EXPECT_EQ(methods().get("gradmix").make_config()->build()->phases(20).size(), 1u);
}

TEST(Phases, APhaseOfNoStepsIsRefused) {
  test::expect_bad_input(
      [] {
        phase_total_steps({{"a", 2}, {"b", 0}});
      },
      {"phase 'b'", "at least 1 step, got 0"});
  test::expect_bad_input([] { phase_total_steps({}); }, {"at least one phase"});
  EXPECT_EQ(phase_total_steps({{"a", 2}, {"b", 5}}), 7);
}

}  // namespace
}  // namespace xfer
