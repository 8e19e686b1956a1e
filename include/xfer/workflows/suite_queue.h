#pragma once
/// A suite as a queue of runs that workers on several machines drain:
///
///   xfer bench --suite S --storage URL            puts the suite's runs in the queue (once: re-running adds
///                                                 only new or changed runs)
///   xfer worker --queue S --storage URL --out DIR claims runs one at a time and runs each as xfer bench
///                                                 does (its own process, outputs under DIR), storing its
///                                                 result.json in the database
///   xfer bench --suite S --storage URL --collect  results.csv and table.md from the database
///
/// The storage is a PostgreSQL URL (machines) or an SQLite file (one machine), as for `xfer search`
/// (search/sql.h); each suite's queue is its own namespace, named after the suite. Table `runs` holds one
/// row per planned run, keyed by its directory relative to the output (runs/TASK/LABEL/seedN): its request,
/// state (WAITING, RUNNING, DONE, FAILED), worker, attempts, heartbeat and, once done, its result.json.
/// A worker claims the first waiting run in one statement (PostgreSQL: FOR UPDATE SKIP LOCKED), so two
/// workers never take the same run; it sends a heartbeat every --heartbeat seconds while the run goes
/// on. A run silent for --stale-after seconds (or whose worker on this host is gone) is put back in the
/// queue, up to --retries times, then FAILED; a run that fails by itself is a result (its cell says why).
/// A result is accepted only from the worker that holds the run, so nothing is counted twice.
#include <cstdint>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/workflows/suite.h"

namespace xfer {

class Fields;

/// `xfer worker`.
struct QueueWorkerOptions {
  std::string storage;       // the queue's database
  std::string queue;         // the suite, as given to `xfer bench --suite`
  std::string out;           // this worker's outputs; "" = runs/bench-SUITE
  std::string cache;         // source models; "" = the default cache
  int64_t threads = 0;       // threads per run; 0 = all cores
  double heartbeat = 10;     // seconds between a running run's heartbeats
  double stale_after = 60;   // seconds without a heartbeat before a run is given to another worker
  int64_t retries = 1;       // times a run whose worker stopped is run again
  double busy_timeout = 60;  // seconds to wait for a locked or unreachable database
  std::string executable;    // the xfer binary that runs each run; "" = this one

  void fields(Fields& f);
  /// Checks every option, and that --stale-after is longer than --heartbeat.
  void validate();
};

/// Puts suite `opts.suite`'s planned runs in its queue in `opts.storage`; a run already there with the
/// same request is left as it is (done or not), one with another request is queued afresh. Returns the
/// number of runs queued now.
int64_t enqueue_suite(const BenchOptions& opts, std::ostream& out);

/// Claims and runs queued runs until none waits and none runs elsewhere. Returns the number it ran.
int64_t run_queue_worker(const QueueWorkerOptions& opts, std::ostream& out);

/// Writes results.csv and table.md (the main table) to the output directory from the queue's results;
/// an error while runs are still waiting or running. Returns bench.json's content.
nlohmann::json collect_suite(const BenchOptions& opts, std::ostream& out);

}  // namespace xfer
