#pragma once
/// A search study in a relational database, shared by the worker processes that run its trials (as Optuna's
/// RDB storage): an SQLite file for workers on one machine, or a PostgreSQL database for workers on many
/// (search/sql.h; one database holds many studies, joined by name). It holds the study's name, search space,
/// sampler and base configuration; every trial with its parameters, state, value, run directory, timestamps
/// and heartbeat; the trials' intermediate (validation) values; and each worker's time accounting.
///
/// Trial states: WAITING (a retry not yet started), RUNNING, COMPLETE, PRUNED (stopped by the pruner: its
/// intermediate values are kept, it has no value), FAILED. A running trial's intermediate values are
/// written as they are reported, so a pruner in another worker sees them. A worker claims a trial
/// inside one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the study's advisory lock), so two
/// workers never run the same trial: first it
/// fails the RUNNING trials whose heartbeat is older than the stale timeout (or whose worker process on
/// this host is gone) and queues a retry of each, then it takes a WAITING trial or samples a new one.
/// SQLite runs in WAL mode with synchronous=FULL: a committed trial survives a crash of any process. A
/// locked database is waited for (busy timeout); a corrupt or foreign file is a clear error. A PostgreSQL
/// server that goes away is reconnected to with a bounded back-off, each operation redone whole, for up to
/// the busy timeout; then a one-line error. On PostgreSQL, heartbeats and times are stamped on the
/// server's clock (each connection measures its offset), so machines whose clocks disagree share a study.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/search/space.h"
#include "xfer/search/tpe.h"

namespace xfer {

class SqlDb;

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
  /// Opens the study in `path` (a storage: FILE, sqlite:FILE or postgresql://...), creating the file and
  /// the study if needed. An existing study must have
  /// the same name, space, sampler, seed and configuration: BadInput names the first difference.
  /// `busy_timeout` (seconds) is how long a locked database is waited for.
  Study(const std::string& path, const StudyInfo& info, double busy_timeout = 60);
  /// Opens an existing study without checking it against a StudyInfo (reports, other threads); `name`
  /// picks the study in a PostgreSQL database (a file holds one).
  explicit Study(const std::string& path, double busy_timeout = 60, const std::string& name = "search");
  ~Study();
  Study(const Study&) = delete;
  Study& operator=(const Study&) = delete;

  const StudyInfo& info() const { return info_; }
  /// Where the study is, for reports: the file, or the URL without its password.
  const std::string& path() const { return path_; }
  /// The same study on a connection of its own (a heartbeat thread's).
  std::unique_ptr<Study> connect_again() const;

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

  /// Seconds since the epoch on this machine's clock.
  static double now();
  /// "HOST:PID" of this process.
  static std::string worker_id();
  /// Whether worker "HOST:PID" is certainly gone: on this host, and no such process.
  static bool worker_gone(const std::string& worker);

 private:
  void open(const std::string& storage, const std::string& name, double busy_timeout);
  /// now() on the database's clock: what heartbeats and timestamps are written and compared on.
  double clock() const;
  int64_t fail_stale_locked(double stale_after, int64_t retries);

  std::string storage_, path_;  // path_: storage_ without a password
  double busy_timeout_ = 60;
  StudyInfo info_;
  std::unique_ptr<SqlDb> db_;
};

}  // namespace xfer
