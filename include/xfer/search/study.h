#pragma once
/// A search study in an SQLite file, shared by the worker processes that run its trials (as Optuna's RDB
/// storage): the study's name, search space, sampler and base configuration; every trial with its
/// parameters, state, value, run directory, timestamps and heartbeat; the trials' intermediate
/// (validation) values; and each worker's time accounting.
///
/// Trial states: WAITING (a retry not yet started), RUNNING, COMPLETE, PRUNED (stopped by the pruner: its
/// intermediate values are kept, it has no value), FAILED. A running trial's intermediate values are
/// written as they are reported, so a pruner in another worker sees them. A worker claims a trial
/// inside one write transaction (BEGIN IMMEDIATE), so two workers never run the same trial: first it
/// fails the RUNNING trials whose heartbeat is older than the stale timeout (or whose worker process on
/// this host is gone) and queues a retry of each, then it takes a WAITING trial or samples a new one.
/// The database runs in WAL mode with synchronous=FULL: a committed trial survives a crash of any
/// process. A locked database is waited for (busy timeout); a corrupt or foreign file is a clear error.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/search/space.h"
#include "xfer/search/tpe.h"

struct sqlite3;

namespace xfer {

struct TrialRecord {
  int64_t number = 0;
  std::string state;  // WAITING, RUNNING, COMPLETE, PRUNED, FAILED
  ParamValues params;
  std::optional<double> value;
  std::optional<int64_t> retry_of;  // the trial this one repeats
  std::string worker, run_dir, error;
  double created = 0, started = 0, finished = 0, heartbeat = 0;  // seconds since the epoch; 0: not yet
  double sample_seconds = 0;                                     // time the sampler took for it
  std::vector<std::pair<int64_t, double>> intermediate;          // (step, validation value)
};

/// What a study is: a second process or a resumed run must agree on all of it.
struct StudyInfo {
  std::string name = "search";
  SearchSpace space;
  std::string sampler = "tpe";
  uint64_t seed = 0;
  nlohmann::json config;  // the fixed options every trial starts from
};

/// A worker's time accounting, for the overhead report.
struct WorkerStats {
  std::string worker;
  int64_t trials = 0;
  double sample_seconds = 0, storage_seconds = 0, run_seconds = 0;
};

class Study {
 public:
  /// Opens the study in `path`, creating the file and the study if needed. An existing study must have
  /// the same name, space, sampler, seed and configuration: BadInput names the first difference.
  /// `busy_timeout` (seconds) is how long a locked database is waited for.
  Study(const std::string& path, const StudyInfo& info, double busy_timeout = 60);
  /// Opens an existing study without checking it against a StudyInfo (reports, other threads).
  explicit Study(const std::string& path, double busy_timeout = 60);
  ~Study();
  Study(const Study&) = delete;
  Study& operator=(const Study&) = delete;

  const StudyInfo& info() const { return info_; }
  const std::string& path() const { return path_; }

  /// Samples parameters for trial `number` from the finished trials, complete and pruned (in creation
  /// order; a pruned trial with its last intermediate value).
  using SampleFn = std::function<ParamValues(const std::vector<Observation>& complete, int64_t number)>;
  /// The run directory of trial `number`.
  using RunDirFn = std::function<std::string(int64_t number)>;
  struct ClaimOptions {
    int64_t budget = 0;       // trials in the study, not counting retries
    double stale_after = 60;  // seconds without a heartbeat before a RUNNING trial fails
    int64_t retries = 1;      // how often a trial that went stale is run again
  };
  /// In one write transaction: fails stale trials (queueing retries), then claims a WAITING trial or, while
  /// the study has fewer than `budget` trials, creates one with `sample`. nullopt when there is nothing to
  /// start now (check `running()` to know whether to wait).
  std::optional<TrialRecord> claim(const std::string& worker, const ClaimOptions& opts,
                                   const SampleFn& sample, const RunDirFn& run_dir);
  /// Marks RUNNING trials stale now (as claim does); returns how many failed.
  int64_t fail_stale(double stale_after, int64_t retries);
  void heartbeat(int64_t number);
  /// Records a trial's result; a WAITING retry of it (queued because it was thought dead) is dropped.
  void complete(int64_t number, double value, const std::vector<std::pair<int64_t, double>>& intermediate);
  void fail(int64_t number, const std::string& error,
            const std::vector<std::pair<int64_t, double>>& intermediate);
  /// Records one intermediate (validation) value of a running trial.
  void report(int64_t number, int64_t step, double value);
  /// Marks a trial PRUNED at its last reported step, keeping its intermediate values.
  void prune(int64_t number);
  /// The number of COMPLETE trials, and their intermediate values at `step` (for a pruner).
  int64_t complete_count();
  std::vector<double> complete_values_at(int64_t step);
  void record_worker(const WorkerStats& stats);

  std::vector<TrialRecord> trials();
  std::vector<WorkerStats> workers();
  int64_t running();

  /// Seconds since the epoch (the clock heartbeats are compared on).
  static double now();
  /// "HOST:PID" of this process.
  static std::string worker_id();

 private:
  void open(double busy_timeout);
  int64_t fail_stale_locked(double stale_after, int64_t retries);

  std::string path_;
  StudyInfo info_;
  sqlite3* db_ = nullptr;
};

}  // namespace xfer
