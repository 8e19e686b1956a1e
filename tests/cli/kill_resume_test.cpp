// Fault injection: a real `xfer finetune` process is SIGKILLed at random moments and resumed with
// --resume each time; its final checkpoint, best model and result must equal, bit for bit, those of the
// same run left alone. This checks everything a resume restores (model, optimizer, method state such as
// EMA teachers, RIFLE's counters, GradMix's weights, batch-stream positions and RNG streams) and that
// every file is written atomically, whatever moment the kill lands on.
//
// CI covers a few methods with a few kills each; for the figures of the whole registry run
//   XFER_KILL_METHODS=all XFER_KILL_CYCLES=10 build/tests/xfer_tests --gtest_filter='KillResume.*'
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

constexpr const char* kKillSource = "fmnist:classes=0,1,3,5,8:part=0/2:per_class=40";  // the source model's classes
constexpr const char* kKillTarget = "fmnist:classes=5-9:part=1/2:per_class=6:val=4:test_per_class=20";

/// The command line of one run of `method` into `out`.
std::vector<std::string> kill_run_args(const std::string& method, const std::string& init, const std::string& out) {
  std::vector<std::string> a = {XFER_BINARY, "-q", "finetune", "--method", method, "--target", kKillTarget,
                                "--iterations", "40", "--batch-size", "16", "--eval-every", "10",
                                "--checkpoint-every", "3", "--threads", "1", "--seed", "3", "--out", out};
  const MethodInfo& info = methods().get(method);
  if (info.needs_init || method == "l2" || method == "smile") {  // smile also runs from scratch; test it fine-tuning
    a.insert(a.end(), {"--init", init});
  } else {
    a.insert(a.end(), {"--backbone", "cnn4:width=8"});
  }
  if (info.needs_source) a.insert(a.end(), {"--source", kKillSource});
  if (method.rfind("gradmix", 0) == 0 || method == "source-only" || method == "finetune")
    a.insert(a.end(), {"--sources", "fmnist:classes=5-9:part=0/2:per_class=40:shift=rot30;fmnist:classes=0-4:per_class=40"});
  return a;
}

ExitStatus run_to_end(const std::vector<std::string>& args, const std::string& log) {
  return wait_process(spawn_process(args, log, log));
}

/// Every tensor and text of a checkpoint (model, optimizer, method state, RNG) but its metadata, with the step.
struct Snapshot {
  int64_t step = -1;
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> texts;
};

Snapshot snapshot(const std::string& path) {
  CheckpointReader ck(path);
  Snapshot s{ck.meta().at("step").get<int64_t>(), ck.archive().tensors(), ck.archive().texts()};
  s.texts.erase("meta");  // holds timings
  return s;
}

void expect_same_checkpoint(const std::string& a, const std::string& b, const std::string& what) {
  const Snapshot sa = snapshot(a), sb = snapshot(b);
  EXPECT_EQ(sa.step, sb.step) << what;
  EXPECT_EQ(sa.texts, sb.texts) << what;
  ASSERT_EQ(sa.tensors.size(), sb.tensors.size()) << what;
  for (auto ia = sa.tensors.begin(), ib = sb.tensors.begin(); ia != sa.tensors.end(); ++ia, ++ib) {
    EXPECT_EQ(ia->first, ib->first) << what;
    EXPECT_TRUE(torch::equal(ia->second, ib->second)) << what << ": " << ia->first << " differs after the kills";
  }
}

/// The outcome fields of result.json (timings differ between runs by nature).
nlohmann::json outcome(const std::string& run_dir) {
  nlohmann::json r = read_json_file(run_dir + "/result.json");
  nlohmann::json o;
  for (const char* key : {"test_top1", "test_mean_class", "best_val_top1", "best_val_step", "selected_step",
                          "skipped_steps", "test"})
    if (r.contains(key)) o[key] = r[key];
  return o;
}

/// Runs `method` into `out`, SIGKILLing it after random delays `cycles` times and resuming each time.
/// Returns how many kills landed while the run was still going.
int killed_run(const std::vector<std::string>& args_fresh, const std::string& out, int cycles, double run_seconds,
               std::mt19937& gen) {
  int landed = 0;
  for (int cycle = 0;; ++cycle) {
    std::vector<std::string> args = args_fresh;
    if (fs::exists(out + "/config.json")) args.push_back("--resume");  // else not started: begin afresh
    else args.push_back("--overwrite");
    const pid_t pid = spawn_process(args, out + ".log", out + ".log");
    if (cycle >= cycles) {
      const ExitStatus s = wait_process(pid);
      EXPECT_TRUE(s.ok()) << "the last resume failed; see " << out << ".log: " << read_file(out + ".log");
      return landed;
    }
    std::uniform_real_distribution<double> delay(0.05, run_seconds);
    std::this_thread::sleep_for(std::chrono::duration<double>(delay(gen)));
    ::kill(pid, SIGKILL);
    const ExitStatus s = wait_process(pid);
    if (s.signal == SIGKILL) ++landed;
    else if (!s.ok()) {
      ADD_FAILURE() << "run failed before the kill; see " << out << ".log: " << read_file(out + ".log");
      return landed;
    }
  }
}

std::vector<std::string> kill_methods() {
  const char* env = std::getenv("XFER_KILL_METHODS");
  std::vector<std::string> names;
  if (env && std::string(env) == "all") {
    for (const auto& m : methods().all()) names.push_back(m.name);
  } else if (env && *env) {
    std::stringstream in(env);
    for (std::string n; std::getline(in, n, ',');) names.push_back(n);
  } else {
    names = {"l2", "smile", "rifle", "xmixup", "gradmix"};
  }
  return names;
}

TEST(KillResume, RandomSigkillsThenResumeEndBitIdentical) {
  XFER_REQUIRE_FMNIST();
  test::TempDir dir;
  const std::string init = test::pretrain_fmnist_source(dir.file("source"));
  const int cycles = std::getenv("XFER_KILL_CYCLES") ? std::atoi(std::getenv("XFER_KILL_CYCLES")) : 3;
  std::mt19937 gen(20261125);
  for (const auto& method : kill_methods()) {
    SCOPED_TRACE(method);
    const std::string ref = dir.file(method + "-ref"), killed = dir.file(method + "-killed");
    const auto t0 = std::chrono::steady_clock::now();
    const ExitStatus s = run_to_end(kill_run_args(method, init, ref), ref + ".log");
    ASSERT_TRUE(s.ok()) << read_file(ref + ".log");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int landed = killed_run(kill_run_args(method, init, killed), killed, cycles, seconds, gen);
    std::printf("[kill-resume] %s: %d kills, %d landed mid-run\n", method.c_str(), cycles, landed);
    expect_same_checkpoint(ref + "/checkpoints/last.pt", killed + "/checkpoints/last.pt", method + " last.pt");
    if (fs::exists(ref + "/checkpoints/best.pt"))
      expect_same_checkpoint(ref + "/checkpoints/best.pt", killed + "/checkpoints/best.pt", method + " best.pt");
    EXPECT_EQ(outcome(ref), outcome(killed)) << method;
  }
}

}  // namespace
}  // namespace xfer
