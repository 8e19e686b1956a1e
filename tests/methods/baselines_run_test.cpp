// Every baseline end to end: registration, determinism per seed, bit-exact resume. What each step computes
// is checked against the test's own code in step_test.cpp (which replaced "it learns" thresholds that a
// model which learned nothing could pass).
#include <filesystem>

#include <nlohmann/json.hpp>

#include "method_harness.h"
#include "support.h"
#include "xfer/core/io.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const std::vector<std::string>& baseline_names() {
  static const std::vector<std::string> names = {"l2sp", "delta", "bss", "cotuning", "rifle", "mixup",
                                                 "manifold_mixup", "cutmix"};
  return names;
}

TEST(Baselines, AreRegisteredWithTheirNeeds) {
  for (const auto& name : baseline_names()) {
    const MethodInfo& info = methods().get(name);
    EXPECT_FALSE(info.paper.empty()) << name;
    EXPECT_TRUE(info.allows_init) << name;
    const bool source_model = name == "l2sp" || name == "delta" || name == "cotuning";
    EXPECT_EQ(info.needs_init, source_model) << name;
  }
}

TEST(Baselines, SameSeedSameLossesOtherSeedOtherLosses) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
  const Model source = test::harness_source_model(task, 4, 2);
  for (const auto& name : baseline_names()) {
    const std::vector<double> a = test::MethodHarness(name, task, source, 5, 6).losses(6);
    const std::vector<double> b = test::MethodHarness(name, task, source, 5, 6).losses(6);
    EXPECT_EQ(a, b) << name;
    const std::vector<double> c = test::MethodHarness(name, task, source, 6, 6).losses(6);
    EXPECT_NE(a, c) << name;
  }
}

RunOptions baselines_tiny_run(const std::string& spec, const std::string& out) {
  RunOptions o;
  o.target = spec;
  o.threads = 1;
  o.out = out;
  o.trainer.iterations = 12;
  o.trainer.eval_every = 4;
  o.trainer.log_every = 2;
  o.loader.batch_size = 8;
  return o;
}

nlohmann::json baselines_finetune(const RunOptions& o) {
  auto config = methods().get(o.method).make_config();
  return run_finetune(o, *config);
}

TEST(Baselines, ResumeIsBitExact) {
  // Stopped after 5 of 12 steps and resumed: the whole last checkpoint (weights, batch-norm statistics,
  // optimizer momentum, method state such as teachers and RIFLE's head, the method's generator, stream
  // positions) and best.pt equal the run left alone. RIFLE re-initialises after steps 4 and 8: one before
  // the stop, one after.
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 16, 4) + ":val=2";
  RunOptions pre = baselines_tiny_run("", dir.file("source"));
  fs::create_directories(dir.path() + "/src");
  pre.source = test::write_tiny_idx(dir.path() + "/src", 4, 10, 2);
  pre.backbone = "cnn4:width=4";
  pre.trainer.iterations = 4;
  run_pretrain(pre);
  for (const char* method : {"l2", "delta", "cotuning", "rifle", "cutmix", "l2sp", "bss", "mixup", "manifold_mixup"}) {
    RunOptions straight = baselines_tiny_run(spec, dir.file(std::string(method) + "-straight"));
    straight.method = method;
    straight.init = dir.file("source");
    straight.trainer.checkpoint_every = 5;
    baselines_finetune(straight);
    RunOptions split = straight;
    split.out = dir.file(std::string(method) + "-split");
    split.trainer.stop_after = 5;
    EXPECT_EQ(baselines_finetune(split)["stopped_at"], 5) << method;
    split.resume = true;
    split.trainer.stop_after = 0;  // run to the end this time
    const nlohmann::json r = baselines_finetune(split);
    test::expect_same_checkpoint(straight.out + "/checkpoints/last.pt", split.out + "/checkpoints/last.pt", method);
    test::expect_same_checkpoint(straight.out + "/checkpoints/best.pt", split.out + "/checkpoints/best.pt",
                                 std::string(method) + " best.pt");
    EXPECT_EQ(read_json_file(straight.out + "/result.json")["test_top1"], r["test_top1"]) << method;
  }
}

}  // namespace
}  // namespace xfer
