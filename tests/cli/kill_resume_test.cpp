// Fault injection: a real `xfer finetune` process of every registered method is SIGKILLed at random moments
// and resumed with --resume each time; its final checkpoint (the whole archive: model, optimizer, method
// state such as EMA teachers, RIFLE's head, GradMix's weights, RNG streams and batch-stream positions),
// best model and result must equal, bit for bit, those of the same run left alone.
//
// Each kill is a SIGKILL sent after a random delay, with XFER_DIST_KILL_AT=0:S as a backstop (the process
// kills itself after step S < iterations if the delay was longer), so every kill lands mid-run: the test
// asserts that the process died of SIGKILL, wrote no result.json and had checkpointed at most step S.
// One ctest entry per registered method (from the registry); tiny data keeps each within seconds.
// More kills: XFER_KILL_CYCLES=10 build/tests/xfer_tests --gtest_filter='KillResume*'
#include <signal.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

constexpr int64_t kKillIterations = 24;

/// The command line of one run of `method` into `out`.
std::vector<std::string> kill_run_args(const std::string& method, const std::string& out) {
  const test::TinyMethodRun run = test::tiny_method_run(method);
  std::vector<std::string> a = {XFER_BINARY,
                                "-q",
                                run.command,
                                "--iterations",
                                std::to_string(kKillIterations),
                                "--batch-size",
                                "8",
                                "--eval-every",
                                "6",
                                "--checkpoint-every",
                                "3",
                                "--threads",
                                "1",
                                "--seed",
                                "3",
                                "--out",
                                out};
  const std::vector<std::string> flags = run.flags();
  a.insert(a.end(), flags.begin(), flags.end());
  return a;
}

int64_t kill_checkpoint_step(const std::string& out) {
  const std::string last = out + "/checkpoints/last.pt";
  return fs::exists(last) ? CheckpointReader(last).meta().at("step").get<int64_t>() : 0;
}

/// Runs `method` into `out`, killing it `cycles` times and resuming each time. Returns the kills that
/// landed mid-run (all of them, unless the test fails).
int killed_run(const std::vector<std::string>& fresh, const std::string& out, int cycles, double run_seconds,
               std::mt19937& gen) {
  int landed = 0;
  std::string where;  // the step each kill left the last checkpoint at, for the log
  for (int cycle = 0;; ++cycle) {
    std::vector<std::string> args = fresh;
    args.push_back(fs::exists(out + "/config.json") ? "--resume" : "--overwrite");  // else not started yet
    if (cycle == cycles) {
      const ExitStatus s = wait_process(spawn_process(args, out + ".log", out + ".log"));
      EXPECT_TRUE(s.ok()) << "the last resume failed: " << read_file(out + ".log");
      std::printf("[kill-resume] %d kills landed mid-run; checkpoints then at steps%s of %ld\n", landed,
                  where.c_str(), static_cast<long>(kKillIterations));
      return landed;
    }
    // The backstop step: after this session's start, leaving room for the kills still to come.
    const int64_t start = kill_checkpoint_step(out), room = (kKillIterations - 1 - start) / (cycles - cycle);
    EXPECT_GE(room, 1) << "no room for another kill after step " << start;
    const int64_t backstop =
        start + 1 + std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(room - 1, 0))(gen);
    const pid_t pid =
        spawn_process(args, out + ".log", out + ".log", {{"XFER_DIST_KILL_AT", cat("0:", backstop)}});
    const double share = static_cast<double>(backstop - start) / static_cast<double>(kKillIterations);
    std::this_thread::sleep_for(std::chrono::duration<double>(
        std::uniform_real_distribution<double>(0.0, run_seconds * share + 0.05)(gen)));
    ::kill(pid, SIGKILL);
    const ExitStatus s = wait_process(pid);
    const int64_t saved = kill_checkpoint_step(out);
    const bool mid_run = s.signal == SIGKILL && !fs::exists(out + "/result.json") && saved <= backstop;
    EXPECT_TRUE(mid_run) << "cycle " << cycle << ": exit code " << s.code << ", checkpoint at step " << saved
                         << ", backstop " << backstop << "; log: " << read_file(out + ".log");
    landed += mid_run;
    where += cat(" ", saved, " (backstop ", backstop, ")");
    if (!mid_run) return landed;
  }
}

/// The outcome fields of result.json (timings differ between runs by nature).
nlohmann::json kill_outcome(const std::string& run_dir) {
  nlohmann::json r = read_json_file(run_dir + "/result.json");
  nlohmann::json o;
  for (const char* key : {"test_top1", "test_mean_class", "best_val_top1", "best_val_step", "selected_step",
                          "skipped_steps", "test"})
    if (r.contains(key)) o[key] = r[key];
  return o;
}

class KillResume : public ::testing::TestWithParam<std::string> {};

TEST_P(KillResume, RandomSigkillsThenResumeEndBitIdentical) {
  const std::string method = GetParam();
  const test::TempDir dir;
  const int cycles = std::getenv("XFER_KILL_CYCLES") ? std::atoi(std::getenv("XFER_KILL_CYCLES")) : 2;
  std::mt19937 gen(static_cast<unsigned>(std::hash<std::string>()(method) % 100000 + 20261125));
  const std::string ref = dir.file("ref"), killed = dir.file("killed");
  const auto t0 = std::chrono::steady_clock::now();  // only to spread the kill moments over the run
  const ExitStatus s = wait_process(spawn_process(kill_run_args(method, ref), ref + ".log", ref + ".log"));
  ASSERT_TRUE(s.ok()) << read_file(ref + ".log");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int landed = killed_run(kill_run_args(method, killed), killed, cycles, seconds, gen);
  EXPECT_EQ(landed, cycles) << "every kill landed mid-run";
  test::expect_same_checkpoint(ref + "/checkpoints/last.pt", killed + "/checkpoints/last.pt",
                               method + " last.pt");
  ASSERT_EQ(fs::exists(ref + "/checkpoints/best.pt"), fs::exists(killed + "/checkpoints/best.pt"));
  if (fs::exists(ref + "/checkpoints/best.pt"))
    test::expect_same_checkpoint(ref + "/checkpoints/best.pt", killed + "/checkpoints/best.pt",
                                 method + " best.pt");
  EXPECT_EQ(kill_outcome(ref), kill_outcome(killed)) << method;
}

std::vector<std::string> kill_registered_methods() {
  std::vector<std::string> names;
  for (const auto& m : methods().all()) names.push_back(m.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, KillResume, ::testing::ValuesIn(kill_registered_methods()),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string name = p.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace
}  // namespace xfer
