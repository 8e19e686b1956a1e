#include "xfer/search/search.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

double search_elapsed(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string search_trial_dir(const std::string& out, int64_t number) {
  char name[32];
  std::snprintf(name, sizeof name, "%04lld", static_cast<long long>(number));
  return (fs::path(out) / "trials" / name).string();
}

}  // namespace

void SearchOptions::fields(Fields& f) {
  f.add("out", out, "the search's directory: study.sqlite, trials/NNNN run directories, trials.csv, plots");
  f.add(
      "storage", storage,
      "the study database: FILE or sqlite:FILE (default OUT/study.sqlite), shared by workers on one machine, "
      "or postgresql://USER@HOST:PORT/DB, shared by machines (password: PGPASSWORD or ~/.pgpass)");
  f.add("study", study, "the study's name, checked when a study is resumed");
  f.add("trials", trials, "trials in the study, counting those already run (not retries of crashed ones)")
      .at_least(1);
  f.add("sampler", sampler, "tpe (Tree-structured Parzen Estimator) or random");
  f.add("workers", workers, "worker processes running trials in parallel on the study").at_least(1);
  f.add("startup_trials", startup_trials, "TPE: random trials before the model is used").non_negative();
  f.add("ei_candidates", ei_candidates, "TPE: candidates drawn from l(x) and scored by l(x)/g(x)")
      .at_least(1);
  f.add("prior_weight", prior_weight, "TPE: weight of the prior kernel in the Parzen estimators").positive();
  f.add("heartbeat", heartbeat, "seconds between heartbeats of a running trial").positive();
  f.add("stale_after", stale_after,
        "seconds without a heartbeat after which a running trial counts as crashed")
      .positive();
  f.add("retries", retries, "times a crashed trial is run again").non_negative();
  f.add("busy_timeout", busy_timeout,
        "seconds to wait for a database locked by another process, or for a PostgreSQL server that went away")
      .non_negative();
  f.add("plot_top", plot_top, "best trials drawn in schedules.png (smooth)").at_least(1);
  f.add("pruner", pruner,
        "stop losing trials early: none, or median (Optuna's MedianPruner on the trials' "
        "validation top-1; PRUNED trials stay in the study)");
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
  const double median = values[lo] + (pos - static_cast<double>(lo)) *
                                         (values[std::min(lo + 1, values.size() - 1)] - values[lo]);
  return best < median;
}

std::vector<std::pair<int64_t, double>> validation_curve(const std::string& run_dir) {
  std::vector<std::pair<int64_t, double>> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("val_top1") && j["val_top1"].is_number() && j.contains("step") &&
        j["step"].is_number_integer())
      out.emplace_back(j["step"].get<int64_t>(), j["val_top1"].get<double>());
  }
  return out;
}

int64_t run_worker(Study& study, const SearchOptions& opts, ParamSampler& sampler, const Objective& objective,
                   std::ostream& out) {
  SearchOptions checked = opts;
  checked.validate();
  const std::string worker = Study::worker_id();
  const std::unique_ptr<Study> beats = study.connect_again();  // the heartbeat thread's own connection
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
      const int64_t others = study.running();
      if (others == 0) break;
      // Others' trials are running: wait, in case their workers die and the trials need a retry. Leave the
      // wait as soon as one of them ends: a plain sleep of `poll` kept this worker, and the search, waiting
      // for up to `poll` after the last trial.
      wait_until(poll, [&] { return study.running() < others; });
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
      const bool stop = opts.pruner == PrunerKind::median &&
                        median_should_prune(study.complete_count(), study.complete_values_at(step), own, step,
                                            opts.pruner_startup_trials, opts.pruner_warmup_steps);
      stats.storage_seconds += search_elapsed(r0);
      return stop;
    };
    try {
      // The trial's heartbeat, on its own connection.
      const Periodic beat(opts.heartbeat, [&beats, number = r.number] {
        try {
          beats->heartbeat(number);
        } catch (const std::exception& e) {
          log_warn(cat("search: trial ", number, ": heartbeat failed: ", e.what()));
        }
      });
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
    if (pruned)
      study.prune(r.number);
    else if (failure.empty())
      study.complete(r.number, outcome.value, outcome.intermediate);
    else
      study.fail(r.number, failure, validation_curve(r.run_dir));
    stats.storage_seconds += search_elapsed(s0);

    std::ostringstream line;
    line << "trial " << r.number << (r.retry_of ? cat(" (retry of ", *r.retry_of, ")") : std::string()) << who
         << ": " << space.values_text(r.params) << " -> "
         << (pruned            ? cat("PRUNED at step ", last_step, " (best val so far ",
                                     percent(own.empty() ? 0 : *std::max_element(own.begin(), own.end()), 2), ")")
             : failure.empty() ? "val " + percent(outcome.value, 2)
                               : "FAILED: " + failure)
         << " (" << fixed(seconds, 1) << " s)\n";
    out << line.str() << std::flush;
  }
  study.record_worker(stats);
  return stats.trials;
}

int run_workers(const std::string& exe, const std::vector<std::string>& args, int64_t count) {
  std::vector<std::string> argv = {exe};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessGroup workers;
  try {
    for (int64_t i = 0; i < count; ++i) workers.start(argv);  // workers print to the parent's terminal
  } catch (const std::exception&) {
    workers.stop();
    throw;
  }
  // SIGINT/SIGTERM: the workers mark their trials and stop; re-running resumes the study.
  return workers.wait_all(/*interruptible=*/true, "the search (run the same command to continue)");
}

}  // namespace xfer
