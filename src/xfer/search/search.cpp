#include "xfer/search/search.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Run options a search never takes from the user for its trials, and that a resumed study may change.
const std::vector<std::string> kSearchRunFixed = {"out", "resume", "overwrite", "stop_after", "method"};
const std::vector<std::string> kSearchRunIgnored = {"out", "resume", "overwrite", "stop_after", "threads", "device",
                                                    "prefetch"};

double search_elapsed(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string search_trial_dir(const std::string& out, int64_t number) {
  char name[32];
  std::snprintf(name, sizeof name, "%04lld", static_cast<long long>(number));
  return (fs::path(out) / "trials" / name).string();
}

std::string search_percent(double fraction, int precision = 1) { return fixed(100 * fraction, precision) + "%"; }

/// Sends a running trial's heartbeat on its own connection, every `interval` seconds, until destroyed.
class SearchHeartbeat {
 public:
  SearchHeartbeat(Study& study, int64_t number, double interval) : study_(study), number_(number) {
    thread_ = std::thread([this, interval] {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!cv_.wait_for(lock, std::chrono::duration<double>(interval), [this] { return stop_; })) {
        try {
          study_.heartbeat(number_);
        } catch (const std::exception& e) {
          log_warn(cat("search: trial ", number_, ": heartbeat failed: ", e.what()));
        }
      }
    });
  }
  ~SearchHeartbeat() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  Study& study_;
  int64_t number_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

/// The method's options with `values` of the search space set on them.
std::unique_ptr<MethodConfig> search_method_config(const std::string& method, const nlohmann::json& options) {
  auto config = methods().get(method).make_config();
  Fields f;
  config->fields(f);
  f.read_json(options, "method options");
  return config;
}

}  // namespace

void SearchOptions::fields(Fields& f) {
  f.add("out", out, "the search's directory: study.sqlite, trials/NNNN run directories, trials.csv, plots");
  f.add("storage", storage, "the study database (default OUT/study.sqlite); workers on one file share the study");
  f.add("study", study, "the study's name, checked when a study is resumed");
  f.add("trials", trials, "trials in the study, counting those already run (not retries of crashed ones)")
      .at_least(1);
  f.add("sampler", sampler, "tpe (Tree-structured Parzen Estimator) or random").choices({"tpe", "random"});
  f.add("workers", workers, "worker processes running trials in parallel on the study").at_least(1);
  f.add("startup_trials", startup_trials, "TPE: random trials before the model is used").non_negative();
  f.add("ei_candidates", ei_candidates, "TPE: candidates drawn from l(x) and scored by l(x)/g(x)").at_least(1);
  f.add("prior_weight", prior_weight, "TPE: weight of the prior kernel in the Parzen estimators").positive();
  f.add("heartbeat", heartbeat, "seconds between heartbeats of a running trial").positive();
  f.add("stale_after", stale_after, "seconds without a heartbeat after which a running trial counts as crashed")
      .positive();
  f.add("retries", retries, "times a crashed trial is run again").non_negative();
  f.add("busy_timeout", busy_timeout, "seconds to wait for a database locked by another process").non_negative();
  f.add("plot_top", plot_top, "best trials drawn in schedules.png (smooth)").at_least(1);
  f.add("pruner", pruner, "stop losing trials early: none, or median (Optuna's MedianPruner on the trials' "
                          "validation top-1; PRUNED trials stay in the study)")
      .choices({"none", "median"});
  f.add("pruner_startup_trials", pruner_startup_trials, "median pruner: complete trials before any pruning")
      .non_negative();
  f.add("pruner_warmup_steps", pruner_warmup_steps, "median pruner: no pruning at training steps below this")
      .non_negative();
}

void SearchOptions::validate() {
  check_options(*this);
  XFER_CHECK(stale_after > heartbeat, "--stale-after (", stale_after, " s) must be longer than --heartbeat (",
             heartbeat, " s)");
}

std::string SearchOptions::storage_path() const {
  return storage.empty() ? (fs::path(out) / "study.sqlite").string() : storage;
}

TpeOptions SearchOptions::tpe() const {
  TpeOptions t;
  t.startup_trials = startup_trials;
  t.ei_candidates = ei_candidates;
  t.prior_weight = prior_weight;
  return t;
}

RunObjective::RunObjective(RunOptions base, nlohmann::json method_options, SearchSpace space)
    : base_(std::move(base)), method_options_(std::move(method_options)), space_(std::move(space)) {}

void RunObjective::check() {
  XFER_CHECK(!base_.target.empty(), "xfer search needs --target SPEC (with a validation split, e.g. val=20)");
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  check_space(space_, {&rf, &mf}, kSearchRunFixed);
  std::vector<std::string> targets = {base_.target};
  if (const ParamSpec* p = space_.find("target")) targets = p->choices;
  for (const auto& t : targets) {
    const DatasetSpec spec = DatasetSpec::parse(t);
    XFER_CHECK(spec.val_count > 0 || spec.val_fraction > 0, "xfer search maximises the best validation top-1, but ",
               "the target spec ", t, " has no validation split: add val=N (examples per class) or val=F");
  }
}

RunOptions RunObjective::run_options(const ParamValues& params) const {
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  apply_params(space_, params, {&rf, &mf});
  return run;
}

nlohmann::json RunObjective::method_options(const ParamValues& params) const {
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  apply_params(space_, params, {&rf, &mf});
  return mf.to_json();
}

TrialOutcome RunObjective::operator()(const ParamValues& params, const TrialRecord& record,
                                      const ReportFn& report) const {
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  apply_params(space_, params, {&rf, &mf});
  run.out = record.run_dir;
  run.overwrite = true;
  run.resume = false;
  run.trainer.stop_after = 0;
  run.trainer.on_validation = [&report, &record](int64_t step, double value) {
    if (report && report(step, value)) throw TrialPruned(cat("trial ", record.number, " pruned at step ", step));
  };
  const nlohmann::json result = run_finetune(run, *config);
  const nlohmann::json best = result.value("best_val_top1", nlohmann::json());
  XFER_CHECK(best.is_number(), "trial ", record.number, " reported no validation accuracy");
  return {best.get<double>(), validation_curve(record.run_dir)};
}

nlohmann::json RunObjective::config() const {
  RunOptions run = base_;
  Fields rf;
  run.fields(rf);
  const nlohmann::json all = rf.to_json();
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, v] : all.items())
    if (std::find(kSearchRunIgnored.begin(), kSearchRunIgnored.end(), k) == kSearchRunIgnored.end() &&
        !space_.find(k))
      out[k] = v;
  for (const auto& [k, v] : method_options_.items())
    if (!space_.find(k)) out["method." + k] = v;
  return out;
}

bool median_should_prune(int64_t complete, const std::vector<double>& at_step, const std::vector<double>& own,
                         int64_t step, int64_t startup_trials, int64_t warmup_steps) {
  if (complete == 0 || complete < startup_trials || step < warmup_steps || own.empty()) return false;
  double best = std::numeric_limits<double>::quiet_NaN();
  for (double v : own)
    if (!std::isnan(v)) best = std::isnan(best) ? v : std::max(best, v);
  if (std::isnan(best)) return true;
  std::vector<double> values;
  for (double v : at_step)
    if (!std::isnan(v)) values.push_back(v);
  if (values.empty()) return false;
  // numpy.percentile(values, 50), linear: the middle value, or the mean of the two middle ones.
  std::sort(values.begin(), values.end());
  const double pos = 0.5 * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const double median = values[lo] + (pos - static_cast<double>(lo)) * (values[std::min(lo + 1, values.size() - 1)] - values[lo]);
  return best < median;
}

std::vector<std::pair<int64_t, double>> validation_curve(const std::string& run_dir) {
  std::vector<std::pair<int64_t, double>> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("val_top1") && j.contains("step"))
      out.emplace_back(j["step"].get<int64_t>(), j["val_top1"].get<double>());
  }
  return out;
}

int64_t run_worker(Study& study, const SearchOptions& opts, ParamSampler& sampler, const Objective& objective,
                   std::ostream& out) {
  SearchOptions checked = opts;
  checked.validate();
  const std::string worker = Study::worker_id();
  Study beats(study.path(), opts.busy_timeout);  // the heartbeat thread's own connection
  WorkerStats stats;
  stats.worker = worker;
  const Study::ClaimOptions claim_opts{opts.trials, opts.stale_after, opts.retries};
  const SearchSpace& space = study.info().space;
  // The run seed and the fixed options (the task among them): searches of two tasks run with the same seed
  // start from different random points.
  const uint64_t seed = derive_seed(study.info().seed, study.info().config.dump());
  auto sample = [&](const std::vector<Observation>& complete, int64_t number) {
    return sampler.sample(space, complete, derive_seed(seed, static_cast<uint64_t>(number)));
  };
  auto run_dir = [&](int64_t number) { return search_trial_dir(opts.out, number); };
  const double poll = std::min(opts.heartbeat, 2.0);
  const std::string who = opts.workers > 1 ? cat(" [", worker, "]") : std::string();

  while (true) {
    const auto c0 = std::chrono::steady_clock::now();
    std::optional<TrialRecord> claimed = study.claim(worker, claim_opts, sample, run_dir);
    if (!claimed) {
      if (study.running() == 0) break;
      // Others' trials are running: wait, in case their workers die and the trials need a retry.
      std::this_thread::sleep_for(std::chrono::duration<double>(poll));
      continue;
    }
    const TrialRecord& r = *claimed;
    stats.sample_seconds += r.sample_seconds;
    stats.storage_seconds += search_elapsed(c0) - r.sample_seconds;

    const auto t0 = std::chrono::steady_clock::now();
    const int saved_verbosity = verbosity();
    if (saved_verbosity < 2) set_verbosity(0);
    TrialOutcome outcome;
    std::string failure;
    bool pruned = false;
    std::vector<double> own;  // this trial's intermediate values so far
    int64_t last_step = 0;
    const ReportFn report = [&](int64_t step, double value) {
      const auto r0 = std::chrono::steady_clock::now();
      study.report(r.number, step, value);
      own.push_back(value);
      last_step = step;
      const bool stop = opts.pruner == "median" &&
                        median_should_prune(study.complete_count(), study.complete_values_at(step), own, step,
                                            opts.pruner_startup_trials, opts.pruner_warmup_steps);
      stats.storage_seconds += search_elapsed(r0);
      return stop;
    };
    try {
      SearchHeartbeat beat(beats, r.number, opts.heartbeat);
      outcome = objective(r.params, r, report);
    } catch (const TrialPruned& e) {
      pruned = true;
      failure = e.what();
    } catch (const NumericalError& e) {
      failure = e.what();
    } catch (const std::exception& e) {
      set_verbosity(saved_verbosity);
      study.fail(r.number, e.what(), validation_curve(r.run_dir));
      throw;
    }
    set_verbosity(saved_verbosity);
    const double seconds = search_elapsed(t0);
    stats.run_seconds += seconds;
    ++stats.trials;

    const auto s0 = std::chrono::steady_clock::now();
    if (pruned) study.prune(r.number);
    else if (failure.empty()) study.complete(r.number, outcome.value, outcome.intermediate);
    else study.fail(r.number, failure, validation_curve(r.run_dir));
    stats.storage_seconds += search_elapsed(s0);

    std::ostringstream line;
    line << "trial " << r.number << (r.retry_of ? cat(" (retry of ", *r.retry_of, ")") : std::string()) << who << ": "
         << space.values_text(r.params) << " -> "
         << (pruned ? cat("PRUNED at step ", last_step, " (best val so far ",
                          search_percent(own.empty() ? 0 : *std::max_element(own.begin(), own.end()), 2), ")")
                    : failure.empty() ? "val " + search_percent(outcome.value, 2) : "FAILED: " + failure)
         << " (" << fixed(seconds, 1) << " s)\n";
    out << line.str() << std::flush;
  }
  study.record_worker(stats);
  return stats.trials;
}

nlohmann::json report_search(Study& study, const SearchOptions& opts, std::ostream& out) {
  const auto trials = study.trials();
  const SearchSpace& space = study.info().space;
  std::vector<std::string> header = {"trial", "state", "val_top1"};
  for (const auto& p : space.params) header.push_back(p.name);
  for (const char* h : {"test_top1", "best_val_step", "seconds", "run_dir"}) header.push_back(h);
  Table csv(header), md(header);
  for (size_t i = 2; i < header.size() - 1; ++i) md.align_right(i);

  const TrialRecord* best = nullptr;
  nlohmann::json best_result;
  std::vector<const TrialRecord*> by_value;
  for (const auto& t : trials) {
    by_value.push_back(&t);
    if (t.state == "COMPLETE" && t.value && (!best || *t.value > *best->value)) best = &t;
  }
  std::stable_sort(by_value.begin(), by_value.end(), [](const TrialRecord* a, const TrialRecord* b) {
    return a->value.value_or(-1) > b->value.value_or(-1);
  });
  auto result_of = [](const TrialRecord& t) {
    const fs::path p = fs::path(t.run_dir) / "result.json";
    return !t.run_dir.empty() && fs::exists(p) ? read_json_file(p.string()) : nlohmann::json::object();
  };
  // One row per trial: exact values for trials.csv (`exact`), readable ones for the printed table.
  auto trial_row = [&](const TrialRecord& t, bool exact) {
    const nlohmann::json r = t.state == "COMPLETE" ? result_of(t) : nlohmann::json::object();
    const std::string none = exact ? "" : "-";
    auto accuracy = [&](double v) { return exact ? fixed(v, 6) : search_percent(v, 2); };
    std::vector<std::string> row = {std::to_string(t.number), t.state, t.value ? accuracy(*t.value) : none};
    for (const auto& p : space.params)
      row.push_back(exact ? p.value_text(t.params.at(p.name)) : p.display_text(t.params.at(p.name)));
    row.push_back(r.contains("test_top1") ? accuracy(r["test_top1"].get<double>()) : none);
    row.push_back(r.contains("best_val_step") && r["best_val_step"].is_number() ? r["best_val_step"].dump() : none);
    row.push_back(t.finished > 0 && t.started > 0 ? fixed(t.finished - t.started, exact ? 2 : 1) : none);
    row.push_back(t.run_dir);
    return row;
  };
  for (const auto& t : trials) csv.add_row(trial_row(t, true));
  write_file_atomic((fs::path(opts.out) / "trials.csv").string(), csv.csv());

  const size_t shown = std::min<size_t>(by_value.size(), 20);
  for (size_t i = 0; i < shown; ++i) md.add_row(trial_row(*by_value[i], false));
  int64_t complete = 0, failed = 0, pruned = 0, steps = 0;
  double run_seconds = 0;
  for (const auto& t : trials) {
    complete += t.state == "COMPLETE";
    failed += t.state == "FAILED";
    pruned += t.state == "PRUNED";
    // Every run validates at its last step, so a trial's last intermediate step is the steps it trained.
    if (!t.intermediate.empty()) steps += t.intermediate.back().first;
    if (t.finished > 0 && t.started > 0) run_seconds += t.finished - t.started;
  }
  const nlohmann::json compute = {{"trials", trials.size()}, {"complete", complete}, {"pruned", pruned},
                                  {"failed", failed}, {"steps", steps}, {"run_seconds", run_seconds}};
  out << "Study '" << study.info().name << "' in " << study.path() << ": " << trials.size() << " trials (" << complete
      << " complete, " << pruned << " pruned, " << failed << " failed), sampler " << study.info().sampler << "\n\n";
  out << md.markdown();
  if (shown < by_value.size()) out << "(the best " << shown << " of " << by_value.size() << " trials; all in trials.csv)\n";

  // Overhead: sampler and storage time against the trials' run time.
  double sample_s = 0, storage_s = 0, run_s = 0;
  int64_t counted = 0;
  for (const auto& w : study.workers()) {
    sample_s += w.sample_seconds;
    storage_s += w.storage_seconds;
    run_s += w.run_seconds;
    counted += w.trials;
  }
  out << "\nCompute: " << trials.size() << " trials (" << pruned << " pruned), " << steps << " training steps, "
      << fixed(run_seconds, 1) << " s of trial run time\n";
  if (counted > 0 && run_s > 0)
    out << "Search overhead per trial: sampler " << fixed(1000 * sample_s / counted, 2) << " ms + storage "
        << fixed(1000 * storage_s / counted, 2) << " ms = " << search_percent((sample_s + storage_s) / run_s, 3)
        << " of a trial's run time (" << fixed(run_s / counted, 1) << " s)\n";

  // The history plot: every trial's value and the best so far.
  Plot history;
  history.title = cat("xfer search: ", study.info().name);
  history.xlabel = "trial";
  history.ylabel = "validation top-1 (%)";
  history.style = "linespoints";
  Series values, best_so_far;
  values.name = "trial";
  best_so_far.name = "best so far";
  double running_best = -1;
  for (const auto& t : trials) {
    if (t.state != "COMPLETE" || !t.value) continue;
    values.x.push_back(static_cast<double>(t.number));
    values.y.push_back(100 * *t.value);
    running_best = std::max(running_best, *t.value);
    best_so_far.x.push_back(static_cast<double>(t.number));
    best_so_far.y.push_back(100 * running_best);
  }
  if (!values.x.empty()) {
    history.series = {values, best_so_far};
    if (!write_plot((fs::path(opts.out) / "history.png").string(), history))
      out << "history.png skipped: install gnuplot-nox\n";
  }

  if (!best) {
    out << "\nNo trial has completed yet.\n";
    return nlohmann::json();
  }
  best_result = result_of(*best);
  nlohmann::json summary = {{"trial", best->number},
                            {"val_top1", *best->value},
                            {"params", space.values_json(best->params)},
                            {"run_dir", best->run_dir},
                            {"study", study.path()},
                            {"trials", trials.size()},
                            {"complete", complete},
                            {"failed", failed},
                            {"compute", compute}};
  for (const char* k : {"test_top1", "test_mean_class", "best_val_step", "iterations"})
    if (best_result.contains(k)) summary[k] = best_result[k];
  write_json_file((fs::path(opts.out) / "best.json").string(), summary);
  out << "\nBest: trial " << best->number << ", validation top-1 " << search_percent(*best->value, 2);
  if (best_result.contains("test_top1"))
    out << " (test top-1 " << search_percent(best_result["test_top1"].get<double>(), 2) << " at step "
        << best_result.value("selected_step", nlohmann::json()).dump() << ")";
  out << "\n  " << space.values_text(best->params) << "\n  run directory: " << best->run_dir << "\n";
  return summary;
}

std::vector<int> spawn_workers(const std::string& exe, const std::vector<std::string>& args, int64_t count) {
  std::vector<int> pids;
  std::vector<std::string> argv = {exe};
  argv.insert(argv.end(), args.begin(), args.end());
  for (int64_t i = 0; i < count; ++i) {
    try {
      pids.push_back(spawn_process(argv, "", ""));  // workers print to the parent's terminal
    } catch (const std::exception&) {
      for (int p : pids) kill(p, SIGTERM);
      wait_workers(pids);
      throw;
    }
  }
  return pids;
}

int wait_workers(const std::vector<int>& pids) {
  int first = 0;
  for (int pid : pids) {
    const ExitStatus st = wait_process(pid, /*interruptible=*/true);
    if (st.pid < 0) {  // SIGINT/SIGTERM: the workers mark their trials and stop; re-running resumes the study
      stop_processes(std::vector<pid_t>(pids.begin(), pids.end()));
      throw_if_stop_requested("the search (run the same command to continue)");
    }
    if (st.code != 0 && first == 0) first = st.code;
  }
  return first;
}

}  // namespace xfer
