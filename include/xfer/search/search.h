#pragma once
/// `xfer search`: tunes any numeric or categorical option of a run or its method against the run's best
/// validation top-1, with TPE or random search, in a study that survives crashes and is shared by
/// parallel worker processes.
///
///   OUT/study.sqlite     the study (or --storage FILE / postgresql://...): space, trials, intermediate
///                        values, heartbeats
///   OUT/trials/NNNN/     each trial's run directory (config.json, metrics.jsonl, result.json, checkpoints)
///   OUT/trials.csv       one row per trial: number, state, value, parameters, run directory, seconds
///   OUT/best.json        the best trial: parameters, validation and test top-1, run directory
///   OUT/history.png      validation top-1 per trial and the best so far
///   OUT/schedules.png    smooth only: lambda(t) of the best trials (the paper's Fig. 2)
///
/// Trials run in-process through the library (run_finetune). A trial whose loss diverges is FAILED and
/// the search goes on; bad input stops it. Each validation of a running trial is reported to the study;
/// with `--pruner median` (Optuna's MedianPruner: after 5 complete trials and past the warm-up steps, a
/// trial whose best validation so far is below the median of the complete trials' values at the same
/// step) the trial stops there and is recorded PRUNED, and the sampler still learns from it.
///
/// The default is `--pruner none`: a median pruner compares trials step by step, which biases a search
/// whose parameters move when the target is learnt (smooth's t0 and tau: a schedule that trains the
/// target head late is at chance until then, and would be pruned however good it ends).
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/search/study.h"
#include "xfer/search/tpe.h"

namespace xfer {

class Fields;

enum class PrunerKind { none, median };
XFER_ENUM_NAMES(PrunerKind, "none", "median")

struct SearchOptions {
  std::string out;               // the search's directory
  std::string storage;           // the study database; "" = OUT/study.sqlite
  std::string study = "search";  // the study's name
  int64_t trials = 20;           // trials in the study, not counting retries of crashed ones
  SamplerKind sampler = SamplerKind::tpe;
  int64_t workers = 1;          // worker processes
  int64_t startup_trials = 10;  // TPE: random trials first
  int64_t ei_candidates = 24;   // TPE: candidates scored per parameter
  double prior_weight = 1.0;    // TPE
  double heartbeat = 10;        // seconds between a running trial's heartbeats
  double stale_after = 60;      // seconds without a heartbeat before a running trial is failed
  int64_t retries = 1;          // runs of a trial whose worker died, after the first
  double busy_timeout = 60;     // seconds to wait for a locked database
  int64_t plot_top = 5;         // trials in schedules.png
  PrunerKind pruner = PrunerKind::none;
  int64_t pruner_startup_trials = 5;  // median: complete trials before any pruning
  int64_t pruner_warmup_steps = 0;    // median: no pruning at steps below this

  void fields(Fields& f);
  /// Checks every option, and that --stale-after is longer than --heartbeat.
  void validate();
  std::string storage_path() const;
  TpeOptions tpe() const;
};

/// What a trial produced: the objective (higher is better) and the validation curve.
struct TrialOutcome {
  double value = 0;
  std::vector<std::pair<int64_t, double>> intermediate;
};
/// A running trial reports each intermediate (validation) value and its step; true means "prune it now",
/// which the objective does by throwing TrialPruned.
using ReportFn = std::function<bool(int64_t step, double value)>;
/// Thrown by an objective whose trial the pruner stopped.
class TrialPruned : public std::runtime_error {
 public:
  explicit TrialPruned(const std::string& what) : std::runtime_error(what) {}
};
/// Runs one trial with parameters `params` in `record.run_dir`, calling `report` at each validation.
/// Throws NumericalError for a trial that diverged (FAILED, the search goes on), TrialPruned for one the
/// pruner stopped (PRUNED); any other exception stops the worker.
using Objective =
    std::function<TrialOutcome(const ParamValues& params, const TrialRecord& record, const ReportFn& report)>;

/// Optuna's MedianPruner (PercentilePruner at 50, n_min_trials 1, interval 1) for a maximised objective:
/// prune when at least `startup_trials` trials are complete, `step` >= `warmup_steps`, and the trial's best
/// value so far (`own`, NaN-skipping max) is below the median (numpy's linear nanpercentile) of the
/// complete trials' values at `step`, `at_step`; never when no complete trial has a value at this step.
/// `complete` is how many trials are complete.
bool median_should_prune(int64_t complete, const std::vector<double>& at_step, const std::vector<double>& own,
                         int64_t step, int64_t startup_trials, int64_t warmup_steps);

/// Runs trials until the study has `budget` trials and none is running. Prints one line per trial.
/// Returns the number of trials this worker ran.
int64_t run_worker(Study& study, const SearchOptions& opts, ParamSampler& sampler, const Objective& objective,
                   std::ostream& out);

/// Reads a run's validation curve from its metrics.jsonl: (step, val_top1) pairs.
std::vector<std::pair<int64_t, double>> validation_curve(const std::string& run_dir);

/// Starts `count` processes of `exe` with `args` (spawned, not forked: the parent has threads) and waits
/// for them all; returns the first non-zero exit code in start order (128 + signal for a killed one), or 0.
/// SIGINT/SIGTERM stops the workers and throws Interrupted.
int run_workers(const std::string& exe, const std::vector<std::string>& args, int64_t count);

}  // namespace xfer
