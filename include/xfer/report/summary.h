#pragma once
/// Paper-style result tables from many runs: one row per method, one column per task, mean ± std over
/// seeds, the best mean of each column in bold, failed runs marked with their error.
#include <cstdint>
#include <string>
#include <vector>

namespace xfer {

/// One finished (or failed) run of a method on a task.
struct RunRecord {
  std::string task, method;  // method: the label shown in tables
  int64_t seed = 0;
  bool ok = false;
  std::string error;  // first line of the error, for failed runs
  double test_top1 = 0, test_mean_class = 0;
  double best_val_top1 = -1;  // -1: no validation split
  double step_ms = 0;         // median time per step of the run (its own process)
  std::string dir;            // the run's output directory
};

/// The table of `metric` ("test_top1" or "test_mean_class") in percent: rows in `methods` order,
/// columns in `tasks` order. A cell is "mean ± std" over the method's successful runs on the task (with
/// "(n/m)" when only n of m seeds succeeded), "failed: ERROR" when none did, "-" when none ran. The best
/// mean of each column is bold (every cell equal to it at the shown precision).
std::string summary_table(const std::vector<RunRecord>& records, const std::vector<std::string>& tasks,
                          const std::vector<std::string>& methods, const std::string& metric,
                          int precision = 1);

/// results.csv: one row per run.
std::string records_csv(const std::vector<RunRecord>& records);

}  // namespace xfer
