// `xfer search` end to end on tiny data: outputs, resumption, bad input, worker processes, and a killed
// worker's trial retried without losing completed trials.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "study_fixture.h"
#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/search/search.h"
#include "xfer/search/study.h"
#include "xfer/workflows/search_runs.h"

extern char** environ;

namespace fs = std::filesystem;

namespace xfer {
namespace {

class SearchCli : public ::testing::Test {
 protected:
  void SetUp() override { spec_ = test::write_tiny_idx(dir_.path(), 3, 20, 3); }
  std::vector<std::string> args(const std::string& method, int64_t trials,
                                std::vector<std::string> extra) const {
    std::vector<std::string> a = {"-q",
                                  "search",
                                  "--method",
                                  method,
                                  "--target",
                                  spec_ + ":per_class=10:val=4",
                                  "--backbone",
                                  "cnn4:width=4",
                                  "--iterations",
                                  "12",
                                  "--batch-size",
                                  "8",
                                  "--threads",
                                  "1",
                                  "--trials",
                                  std::to_string(trials),
                                  "--startup-trials",
                                  "2",
                                  "--out",
                                  dir_.file("search")};
    if (method == "smooth") {
      a.push_back("--source");
      a.push_back(spec_ + ":shift=invert");
    }
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  std::string study_path() const { return dir_.file("search/study.sqlite"); }
  test::TempDir dir_;
  std::string spec_;
};

TEST_F(SearchCli, RunsTrialsReportsTheBestAndResumes) {
  const std::vector<std::string> space = {"--param",        "tau=log:1:100", "--param",
                                          "alpha=lin:-2:2", "--param",       "bn=cat:shared,per-domain"};
  std::vector<std::string> a = args("smooth", 3, space);
  test::CliOutcome o = test::run_cli(a);
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.out.find("Best: trial"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("| trial"), std::string::npos) << o.out;
  for (const char* f :
       {"study.sqlite", "trials.csv", "best.json", "trials/0000/result.json", "trials/0002/result.json"})
    EXPECT_TRUE(fs::exists(dir_.file(std::string("search/") + f))) << f;
  const auto best = read_json_file(dir_.file("search/best.json"));
  EXPECT_GE(best["params"]["tau"].get<double>(), 1);
  EXPECT_LE(best["params"]["tau"].get<double>(), 100);
  EXPECT_TRUE(best["params"]["bn"] == "shared" || best["params"]["bn"] == "per-domain");
  const auto result = read_json_file(best["run_dir"].get<std::string>() + "/result.json");
  EXPECT_EQ(best["val_top1"], result["best_val_top1"]);
  const std::string csv = read_file(dir_.file("search/trials.csv"));
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4) << csv;

  std::vector<double> before;
  {
    Study s(study_path());
    for (const auto& t : s.trials()) before.push_back(*t.value);
  }
  // Re-running resumes: a larger budget runs only the new trial, the old ones are kept as they were.
  a = args("smooth", 4, space);
  o = test::run_cli(a);
  ASSERT_EQ(o.code, 0) << o.err;
  Study s(study_path());
  const auto trials = s.trials();
  ASSERT_EQ(trials.size(), 4u);
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(*trials[i].value, before[i]);
  EXPECT_EQ(trials[3].state, "COMPLETE");
  EXPECT_EQ(trials[3].intermediate.size(), 12u)
      << "validation at every step of 12 (iterations / 10 rounds down to 1)";
  // Another space on the same study is refused, naming the difference.
  a = args("smooth", 5,
           {"--param", "tau=log:1:1000", "--param", "alpha=lin:-2:2", "--param", "bn=cat:shared,per-domain"});
  o = test::run_cli(a);
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.err.find("tau is log:1:1000 now but log:1:100 in the study"), std::string::npos) << o.err;
}

TEST_F(SearchCli, ADivergingTrialIsMarkedFailedAndTheStudyGoesOn) {
  // lr 1e9 turns the loss NaN within a few steps; lr 0.05 trains. The sampler's seed comes from the task,
  // whose spec holds this test's temporary path, so which values six trials draw varies from run to run
  // (all six alike one time in 32): a larger budget resumes the study until both were drawn.
  int64_t budget = 6, failed = 0, complete = 0;
  std::string out;
  for (; budget <= 30; budget += 4) {
    const test::CliOutcome o =
        test::run_cli(args("scratch", budget, {"--param", "lr=cat:0.05,1e9", "--sampler", "random"}));
    ASSERT_EQ(o.code, 0) << o.err;
    out += o.out;
    Study s(study_path());
    failed = complete = 0;
    for (const auto& t : s.trials()) {
      const std::string lr = s.info().space.values_json(t.params)["lr"];
      EXPECT_EQ(t.state, lr == "1e9" ? "FAILED" : "COMPLETE") << "trial " << t.number << " at lr " << lr;
      failed += t.state == "FAILED";
      complete += t.state == "COMPLETE";
    }
    EXPECT_EQ(failed + complete, budget);
    if (failed && complete) break;
  }
  EXPECT_GE(failed, 1) << out;
  EXPECT_GE(complete, 1) << out;
  EXPECT_NE(out.find("FAILED: the"), std::string::npos) << out;
  EXPECT_EQ(read_json_file(dir_.file("search/best.json"))["params"]["lr"], "0.05");
}

TEST_F(SearchCli, BadInputIsOneClearLine) {
  auto expect_bad = [](const std::vector<std::string>& a, const std::string& piece) {
    const test::CliOutcome o = test::run_cli(a);
    EXPECT_EQ(o.code, 2) << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
    EXPECT_NE(o.err.find(piece), std::string::npos) << o.err;
  };
  expect_bad(args("scratch", 2, {"--param", "lr=log:0:1"}), "log range needs LO > 0");
  expect_bad(args("scratch", 2, {"--param", "lr=lin:0.1:0.1"}), "range is empty");
  expect_bad(args("scratch", 2, {"--param", "lr"}), "expected NAME=lin:LO:HI");
  expect_bad(args("scratch", 2, {"--param", "gamma9=lin:0:1"}), "no option named 'gamma9'");
  expect_bad(args("scratch", 2, {}), "at least one --param");
  expect_bad(args("scratch", 2, {"--param", "lr=log:0.001:0.1", "--stale-after", "5", "--heartbeat", "10"}),
             "--stale-after");
  std::vector<std::string> no_val = args("scratch", 2, {"--param", "lr=log:0.001:0.1"});
  no_val[5] = spec_ + ":per_class=10";
  expect_bad(no_val, "no validation split");
  EXPECT_FALSE(fs::exists(study_path())) << "nothing is created for bad input";
}

TEST_F(SearchCli, TwoWorkerProcessesShareOneStudy) {
  const test::CliOutcome o = test::run_cli(
      args("scratch", 4,
           {"--param", "lr=log:0.001:0.1", "--workers", "2", "--worker-exe", std::string(XFER_BINARY)}));
  ASSERT_EQ(o.code, 0) << o.err;
  Study s(study_path());
  const auto trials = s.trials();
  ASSERT_EQ(trials.size(), 4u);
  std::set<std::string> dirs;
  for (const auto& t : trials) {
    EXPECT_EQ(t.state, "COMPLETE") << t.number;
    EXPECT_TRUE(fs::exists(t.run_dir + "/result.json")) << t.run_dir;
    dirs.insert(t.run_dir);
  }
  EXPECT_EQ(dirs.size(), 4u);
  const auto workers = s.workers();
  ASSERT_EQ(workers.size(), 2u) << "two worker processes, each with its own id";
  EXPECT_EQ(workers[0].trials + workers[1].trials, 4);
  EXPECT_NE(workers[0].worker, workers[1].worker);
}

TEST_F(SearchCli, AKilledWorkersTrialIsRetriedAndCompletedTrialsAreKept) {
  const std::string binary = std::string(XFER_BINARY);
  // A worker process runs the study alone; it is killed (SIGKILL) in the middle of a trial.
  std::vector<std::string> a = args("scratch", 4, {"--param", "lr=log:0.001:0.1", "--worker"});
  a[9] = "150";  // --iterations: long enough to be caught running
  std::vector<std::string> argv_text = {binary};
  argv_text.insert(argv_text.end(), a.begin(), a.end());
  fs::create_directories(dir_.file("search"));
  std::map<int64_t, double> completed;
  const int64_t killed = test::kill_worker_mid_trial(
      argv_text, [&] { return fs::exists(study_path()) ? std::make_unique<Study>(study_path()) : nullptr; },
      completed);
  ASSERT_GE(killed, 1) << "the worker never had a running trial after a completed one";

  // Re-running the command resumes: the dead worker's trial fails and runs again; nothing is lost.
  a.pop_back();
  const test::CliOutcome o = test::run_cli(a);
  ASSERT_EQ(o.code, 0) << o.err;
  Study s(study_path());
  const auto trials = s.trials();
  for (const auto& [n, v] : completed) {
    EXPECT_EQ(trials[static_cast<size_t>(n)].state, "COMPLETE");
    EXPECT_EQ(*trials[static_cast<size_t>(n)].value, v);
  }
  EXPECT_EQ(trials[static_cast<size_t>(killed)].state, "FAILED");
  EXPECT_NE(trials[static_cast<size_t>(killed)].error.find("stopped"), std::string::npos);
  int64_t originals = 0, retries = 0;
  for (const auto& t : trials) {
    if (t.retry_of) {
      ++retries;
      EXPECT_EQ(*t.retry_of, killed);
      EXPECT_EQ(t.params, trials[static_cast<size_t>(killed)].params);
      EXPECT_EQ(t.state, "COMPLETE");
    } else {
      ++originals;
    }
  }
  EXPECT_EQ(originals, 4);
  EXPECT_EQ(retries, 1);
}

TEST(SearchPruner, MedianPrunerFollowsOptuna) {
  // Optuna's MedianPruner for a maximised value: the trial's best so far against numpy's median of the
  // complete trials' values at this step.
  EXPECT_FALSE(median_should_prune(4, {0.5, 0.6, 0.7, 0.8}, {0.1}, 10, 5, 0)) << "fewer than 5 complete";
  EXPECT_TRUE(median_should_prune(5, {0.5, 0.6, 0.7, 0.8, 0.9}, {0.1}, 10, 5, 0));
  EXPECT_FALSE(median_should_prune(5, {0.5, 0.6, 0.7, 0.8, 0.9}, {0.1}, 10, 5, 20)) << "inside the warm-up";
  EXPECT_FALSE(median_should_prune(5, {0.5, 0.6, 0.7, 0.8, 0.9}, {0.7, 0.2}, 10, 5, 0))
      << "its best, 0.7, is the median";
  EXPECT_TRUE(median_should_prune(6, {0.5, 0.6, 0.7, 0.8}, {0.64}, 10, 5, 0)) << "median of four: 0.65";
  EXPECT_FALSE(median_should_prune(6, {0.5, 0.6, 0.7, 0.8}, {0.65}, 10, 5, 0));
  EXPECT_FALSE(median_should_prune(6, {}, {0.1}, 10, 5, 0)) << "no complete trial reported at this step";
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(median_should_prune(6, {0.5}, {nan}, 10, 5, 0)) << "only NaN so far";
  EXPECT_FALSE(median_should_prune(6, {0.5, nan, 0.3}, {0.45}, 10, 5, 0))
      << "NaN values are skipped: median 0.4";
}

TEST(SearchPruner, APrunedTrialIsRecordedAndSkipped) {
  // A fake objective reporting validation values at steps 10, 20, 30: trials 0-4 at 0.8, 0.85, 0.9 (then
  // complete at 0.9), trial 5 at 0.1 (pruned at step 10: its later steps never run), trial 6 at 0.95.
  test::TempDir dir;
  StudyInfo info;
  info.space = SearchSpace::parse({"x=lin:0:1"});
  Study study(dir.file("study.sqlite"), info);
  SearchOptions opts;
  opts.out = dir.path();
  opts.trials = 7;
  opts.pruner = PrunerKind::median;
  RandomParamSampler sampler;
  std::map<int64_t, int> reports;  // per trial: values it got to report
  const Objective objective = [&](const ParamValues&, const TrialRecord& r, const ReportFn& report) {
    TrialOutcome outcome;
    for (int64_t step : {10, 20, 30}) {
      const double v = r.number == 5   ? 0.1
                       : r.number == 6 ? 0.95
                                       : 0.75 + 0.05 * static_cast<double>(step / 10);
      ++reports[r.number];
      if (report(step, v)) throw TrialPruned("pruned");
      outcome.intermediate.emplace_back(step, v);
      outcome.value = v;
    }
    return outcome;
  };
  std::ostringstream log;
  EXPECT_EQ(run_worker(study, opts, sampler, objective, log), 7);
  const auto trials = study.trials();
  ASSERT_EQ(trials.size(), 7u);
  EXPECT_EQ(trials[5].state, "PRUNED") << log.str();
  EXPECT_FALSE(trials[5].value.has_value());
  ASSERT_EQ(trials[5].intermediate.size(), 1u);
  EXPECT_EQ(trials[5].intermediate[0], (std::pair<int64_t, double>{10, 0.1}));
  EXPECT_EQ(reports[5], 1) << "the pruned trial stopped at its first validation";
  EXPECT_EQ(trials[6].state, "COMPLETE");
  EXPECT_EQ(reports[6], 3);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(trials[static_cast<size_t>(i)].state, "COMPLETE") << i;
  EXPECT_NE(log.str().find("PRUNED at step 10"), std::string::npos) << log.str();
  // The report counts it, and the best trial is a complete one.
  const nlohmann::json best = report_search(study, opts, log);
  EXPECT_EQ(best["trial"], 6);
  EXPECT_EQ(best["compute"]["pruned"], 1);
  EXPECT_EQ(best["compute"]["steps"], 6 * 30 + 10);
  // A sampler sees the pruned trial too (as Optuna's TPE does), with its last value and step.
  std::vector<Observation> seen;
  Study::ClaimOptions more{8, 60, 1};
  study.claim(
      "w", more,
      [&](const std::vector<Observation>& done, int64_t) {
        seen = done;
        return ParamValues{{"x", 0.5}};
      },
      [&](int64_t n) { return dir.file(std::to_string(n)); });
  ASSERT_EQ(seen.size(), 7u);
  EXPECT_TRUE(seen[5].pruned);
  EXPECT_EQ(seen[5].pruned_step, 10);
  EXPECT_DOUBLE_EQ(seen[5].value, 0.1);
  EXPECT_FALSE(seen[6].pruned);
}

TEST(SearchReadme, DocumentsEverySearchFlag) {
  const std::string docs = read_file(std::string(XFER_SOURCE_DIR) + "/docs/search.md");
  SearchOptions opts;
  Fields f;
  opts.fields(f);
  for (const auto& field : f.all())
    EXPECT_NE(docs.find("`" + field.flag()), std::string::npos)
        << field.flag() << " is not in docs/search.md";
  EXPECT_NE(docs.find("`--param`"), std::string::npos);
}

}  // namespace
}  // namespace xfer
