// Every baseline end to end: determinism per seed, bit-exact resume, and short runs on Fashion-MNIST that
// learn (the loss falls, accuracy beats chance).
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "method_harness.h"
#include "support.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/run.h"

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

TEST(Baselines, ResumeIsBitExactForStatefulMethods) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 16, 4) + ":val=2";
  RunOptions pre = baselines_tiny_run("", dir.file("source"));
  fs::create_directories(dir.path() + "/src");
  pre.source = test::write_tiny_idx(dir.path() + "/src", 4, 10, 2);
  pre.backbone = "cnn4:width=4";
  pre.trainer.iterations = 4;
  run_pretrain(pre);
  for (const char* method : {"l2", "delta", "cotuning", "rifle", "cutmix", "l2sp"}) {
    RunOptions straight = baselines_tiny_run(spec, dir.file(std::string(method) + "-straight"));
    straight.method = method;
    straight.init = dir.file("source");
    baselines_finetune(straight);
    RunOptions split = straight;
    split.out = dir.file(std::string(method) + "-split");
    split.trainer.stop_after = 5;  // rifle re-initialises after steps 4 and 8: one before, one after
    baselines_finetune(split);
    split.resume = true;
    split.trainer.stop_after = 0;  // run to the end this time
    baselines_finetune(split);
    const Model a = CheckpointReader(straight.out + "/checkpoints/last.pt").read_model();
    const Model b = CheckpointReader(split.out + "/checkpoints/last.pt").read_model();
    const auto pb = b->named_parameters();
    for (const auto& p : a->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << method << ": " << p.key() << " differs after resume";
  }
}

/// `methods`, fine-tuned from test::pretrain_fmnist_source on three other classes, must each learn.
void expect_baselines_learn_on_fmnist(const std::vector<std::string>& methods_to_run, int64_t iterations = 40) {
  test::TempDir dir;
  test::pretrain_fmnist_source(dir.file("source"));
  for (const auto& method : methods_to_run) {
    RunOptions ft = baselines_tiny_run("fmnist:classes=2,7,9:per_class=10:test_per_class=100", dir.file(method));
    ft.method = method;
    ft.init = dir.file("source");
    ft.trainer.iterations = iterations;
    ft.trainer.log_every = iterations / 8;
    ft.trainer.eval_every = 0;
    ft.loader.batch_size = 16;
    const nlohmann::json r = baselines_finetune(ft);
    std::vector<double> losses;
    std::ifstream in(dir.file(method + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
    }
    ASSERT_EQ(losses.size(), 8u) << method;
    if (method == "rifle") {
      // The loss jumps at each re-drawn head (steps 40 and 80 of 120): it must fall after the last one.
      EXPECT_LT(losses[7], losses[5]) << method << ": the loss does not fall after the last re-draw";
    } else {
      EXPECT_LT(losses[6] + losses[7], losses[0] + losses[1]) << method << ": the loss does not fall";
    }
    EXPECT_GT(r["test_top1"].get<double>(), 0.7) << method << ": chance is 1/3";
  }
}

TEST(Baselines, RegularizersLearnOnFashionMnist) {
  XFER_REQUIRE_FMNIST();
  expect_baselines_learn_on_fmnist({"l2sp", "delta", "bss", "cotuning"});
}

TEST(Baselines, RifleLearnsOnFashionMnist) {
  XFER_REQUIRE_FMNIST();
  // Its head is re-drawn at 1/3 and 2/3 of the run, so the last head needs enough steps of its own.
  expect_baselines_learn_on_fmnist({"rifle"}, 120);
}

TEST(Baselines, MixupFamilyLearnsOnFashionMnist) {
  XFER_REQUIRE_FMNIST();
  expect_baselines_learn_on_fmnist({"mixup", "manifold_mixup", "cutmix"});
}

}  // namespace
}  // namespace xfer
