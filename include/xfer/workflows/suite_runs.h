#pragma once
/// Running a suite's plan: its source models first, in this process, then each run as its own `xfer
/// finetune` (or `xfer search`) process, `jobs` at a time, or each in this process (`xfer demo`).
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/report/summary.h"
#include "xfer/workflows/suite_plan.h"

namespace xfer {

/// Pre-trains the source models the plan needs (or finds them in `cache`), in this process, each
/// distinct recipe once, in plan order (one may need another); `threads` per model (0 = all cores).
void pretrain_sources(const std::vector<RunRequest>& plan, const std::string& cache, int64_t threads,
                      std::ostream& out);

/// Whether the run in q.dir finished with exactly this request.
bool already_done(const RunRequest& q);

/// A run's record from its result.json; not ok when it has none.
RunRecord record_of(const RunRequest& q);
/// A run's record from the content of its result.json (a queue's stored result).
RunRecord record_from_result(const RunRequest& q, const nlohmann::json& result);

/// How run_processes starts each run.
struct RunProcesses {
  std::string executable;  // the xfer binary
  int64_t jobs = 1;        // runs at a time
  int64_t threads = 1;     // --threads of each run
};

/// Runs plan[i] for each i in `todo`, in that order, each its own process with its log in DIR/run.log,
/// `jobs` at a time, and fills records[i]; `finished(i)` is called as each ends (a failed run's record
/// says why). SIGINT/SIGTERM stops the runs in flight (they checkpoint) and throws Interrupted naming
/// `what`, the count of finished runs and the plan's size; a re-run redoes them.
void run_processes(const std::vector<RunRequest>& plan, const std::vector<size_t>& todo,
                   const RunProcesses& how, std::vector<RunRecord>& records,
                   const std::function<void(size_t)>& finished, int64_t done_before);

/// Runs one planned fine-tuning run in this process, into q.dir (overwritten), with `threads` (0 = all
/// cores). Returns its result.json.
nlohmann::json run_in_process(const RunRequest& q, int64_t threads);

}  // namespace xfer
