// The Trainer's named pieces: the metrics window behind metrics.jsonl's step lines, the step times behind
// result.json's, and the typed results of a fit and of a run with the JSON they write.
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/spec.h"
#include "xfer/methods/finetune.h"
#include "xfer/train/metrics_window.h"
#include "xfer/train/trainer.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A step's loss terms: `total`, one part "ce", and logits predicting `predicted` for `labels` (3 classes).
LossTerms step_terms(double total, double ce, const std::vector<int64_t>& predicted,
                     const std::vector<int64_t>& labels) {
  LossTerms t{torch::tensor(total, torch::kFloat64), {{"ce", torch::tensor(ce, torch::kFloat64)}}};
  t.weights = {{"ce", 2.0}};
  const torch::Tensor logits = torch::one_hot(torch::tensor(predicted, torch::kInt64), 3).to(torch::kFloat32);
  return t.with_train_accuracy(logits, torch::tensor(labels, torch::kInt64));
}

std::set<std::string> keys(const nlohmann::json& j) {
  std::set<std::string> out;
  for (const auto& [key, value] : j.items()) out.insert(key);
  return out;
}

TEST(MetricsWindow, AveragesTheWindowsStepsAndResets) {
  MetricsWindow window;
  window.add(step_terms(1.0, 0.5, {0, 1}, {0, 0}));  // 1 of 2 right
  window.add_communication(0.001, 0.0005);
  window.add(step_terms(3.0, 1.5, {1, 1}, {1, 1}));  // 2 of 2 right
  window.add_communication(0.001, 0.0005);
  window.add_communication(0.001, 0.0005);  // a skipped step's: it took time, it has no loss
  EXPECT_EQ(window.steps(), 2);
  EXPECT_DOUBLE_EQ(window.loss(), 2.0);

  nlohmann::json line;
  window.write(line, /*communication=*/true);
  EXPECT_EQ(keys(line), (std::set<std::string>{"loss", "ce", "train_top1", "part_weights", "allreduce_ms",
                                               "allreduce_wait_ms"}));
  EXPECT_DOUBLE_EQ(line["loss"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(line["ce"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(line["train_top1"].get<double>(), 0.75);
  EXPECT_EQ(line["part_weights"], (nlohmann::json{{"ce", 2.0}}));
  EXPECT_NEAR(line["allreduce_ms"].get<double>(), 1.5, 1e-12);  // per updating step
  EXPECT_NEAR(line["allreduce_wait_ms"].get<double>(), 0.75, 1e-12);
  nlohmann::json alone;
  window.write(alone, /*communication=*/false);
  EXPECT_FALSE(alone.contains("allreduce_ms"));
  window.average_over_processes();  // one process: the means stay
  EXPECT_DOUBLE_EQ(window.loss(), 2.0);

  // The next window starts empty; the part weights stay those of the latest updating step.
  window.reset();
  EXPECT_EQ(window.steps(), 0);
  nlohmann::json skipped;
  window.write(skipped, /*communication=*/true);
  EXPECT_EQ(keys(skipped), (std::set<std::string>{"part_weights", "allreduce_ms", "allreduce_wait_ms"}));
  EXPECT_EQ(skipped["allreduce_ms"], 0.0);
  window.add(LossTerms{torch::tensor(5.0, torch::kFloat64), {}});  // mixed inputs: no train accuracy
  nlohmann::json next;
  window.write(next, /*communication=*/false);
  EXPECT_DOUBLE_EQ(next["loss"].get<double>(), 5.0);
  EXPECT_FALSE(next.contains("train_top1"));
  EXPECT_FALSE(next.contains("ce"));
}

TEST(StepTimes, TotalMeanMedianThroughputAndShares) {
  StepTimes times;
  EXPECT_EQ(times.mean_ms(), 0.0);
  EXPECT_EQ(times.median_ms(), 0.0);
  EXPECT_EQ(times.samples_per_s(8), 0.0);
  times.add(0.1, 0.05, 0.01);
  times.add(0.3, 0.05, 0.01);
  times.add(0.2, 0.05, 0.01);
  EXPECT_DOUBLE_EQ(times.median_ms(), 200.0);
  times.add(1.0, 0.05, 0.01);  // a slow step moves the mean, not the median much
  EXPECT_EQ(times.steps(), 4);
  EXPECT_DOUBLE_EQ(times.seconds(), 1.6);
  EXPECT_DOUBLE_EQ(times.mean_ms(), 400.0);
  EXPECT_DOUBLE_EQ(times.median_ms(), 250.0);
  EXPECT_DOUBLE_EQ(times.samples_per_s(8), 20.0);
  EXPECT_DOUBLE_EQ(times.allreduce_share(), 0.2 / 1.6);
  EXPECT_DOUBLE_EQ(times.wait_share(), 0.04 / 1.6);
}

TEST(FitResult, JsonOfAStoppedAndOfAFinishedFit) {
  test::TempDir dir;
  torch::manual_seed(1);
  const Task task = load_task(test::write_tiny_idx(dir.path(), 2, 10, 2) + ":val=2", 0);
  Arch arch{"cnn4:width=4", 1, 8, 8, {{0.2}, {0.3}}, {{"target", task.class_names()}}};
  Model model(arch);
  Batches batches;
  batches.add("target", std::make_unique<BatchStream>(task.train, arch.input, LoaderOptions(), 1));
  CrossEntropyMethod method;
  TrainerOptions opts;
  opts.iterations = 6;
  opts.eval_every = 2;
  opts.stop_after = 3;

  const FitResult stopped = Trainer(opts, dir.path()).fit(model, method, batches, task, "target", 0, false);
  EXPECT_TRUE(stopped.stopped());
  EXPECT_EQ(stopped.stopped_at, 3);
  EXPECT_EQ(stopped.to_json(), (nlohmann::json{{"stopped_at", 3}}));

  const FitResult done = Trainer(opts, dir.path()).fit(model, method, batches, task, "target", 0, true);
  EXPECT_FALSE(done.stopped());
  const nlohmann::json j = done.to_json();
  EXPECT_EQ(keys(j), (std::set<std::string>{"iterations", "selected", "selected_step", "best_val_top1",
                                            "best_val_step", "train_seconds", "step_ms", "step_ms_median",
                                            "skipped_steps", "samples_per_s", "world_size", "test_top1",
                                            "test_mean_class", "test"}));
  EXPECT_EQ(j["iterations"], 6);
  EXPECT_EQ(j["selected"], "best");
  EXPECT_EQ(j["selected_step"], *done.best_val_step);
  EXPECT_EQ(j["best_val_top1"], *done.best_val_top1);
  EXPECT_EQ(j["test_top1"], done.test->top1);
  EXPECT_EQ(j["test"], done.test->to_json());
  EXPECT_EQ(j["world_size"], 1);
  const nlohmann::json converted = done;  // nlohmann's conversion is to_json()
  EXPECT_EQ(converted, j);
}

TEST(FitResult, JsonOfPhasesAndOfARunWithoutValidationOrTest) {
  FitResult r;
  r.iterations = 7;
  r.selected_step = 7;
  r.phases = {{"first", 3}, {"second", 4}};
  r.allreduce_share = 0.25;
  r.allreduce_wait_share = 0.125;
  const nlohmann::json j = r.to_json();
  EXPECT_EQ(j["selected"], "last");
  EXPECT_TRUE(j["best_val_top1"].is_null());
  EXPECT_TRUE(j["best_val_step"].is_null());
  EXPECT_FALSE(j.contains("test_top1"));
  EXPECT_EQ(j["phases"],
            nlohmann::json::parse(R"([{"name":"first","steps":3},{"name":"second","steps":4}])"));
  EXPECT_EQ(j["allreduce_share"], 0.25);
  EXPECT_EQ(j["allreduce_wait_share"], 0.125);
}

TEST(RunResult, ToJsonIsTheResultJsonWritten) {
  test::TempDir dir;
  RunOptions o;
  o.method = "scratch";
  o.target = test::write_tiny_idx(dir.path(), 2, 10, 2) + ":val=2";
  o.backbone = "cnn4:width=4";
  o.threads = 1;
  o.out = dir.file("run");
  o.trainer.iterations = 4;
  o.loader.batch_size = 8;
  const RunResult r = run_finetune(o, *methods().get("scratch").make_config());
  EXPECT_FALSE(r.stopped());
  const nlohmann::json saved = read_json_file(dir.file("run/result.json"));
  EXPECT_EQ(r.to_json(), saved);
  EXPECT_EQ(keys(saved),
            (std::set<std::string>{"command",       "out",           "method",          "target",
                                   "source",        "init",          "backbone",        "seed",
                                   "threads",       "world_size",    "xfer_version",    "train_size",
                                   "val_size",      "test_size",     "classes",         "iterations",
                                   "selected",      "selected_step", "best_val_top1",   "best_val_step",
                                   "train_seconds", "step_ms",       "step_ms_median",  "skipped_steps",
                                   "samples_per_s", "test_top1",     "test_mean_class", "test"}));
  EXPECT_EQ(r.backbone, "cnn4:width=4");
  EXPECT_EQ(r.train_size, saved["train_size"]);

  o.out = dir.file("stopped");
  o.trainer.stop_after = 2;
  const RunResult stopped = run_finetune(o, *methods().get("scratch").make_config());
  EXPECT_TRUE(stopped.stopped());
  EXPECT_EQ(stopped.to_json(), (nlohmann::json{{"stopped_at", 2}}));
  EXPECT_FALSE(fs::exists(dir.file("stopped/result.json")));
}

}  // namespace
}  // namespace xfer
