#pragma once
/// A suite's tables: the main one (test top-1 and mean per-class accuracy, task x method), the suite's
/// "tables" (accuracy, forgetting, interpolation), timing.md and bench.json.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/report/summary.h"
#include "xfer/workflows/suite_plan.h"

namespace xfer {

/// One record per cell: the runs of a sweep on one task and seed become the one best on validation (the
/// first of equals; a failed cell when none finished). Adds to `notes` the point each sweep chose.
std::vector<RunRecord> best_of_sweeps(const std::vector<RunRequest>& plan,
                                      const std::vector<RunRecord>& records, std::vector<std::string>& notes);

/// The compute each searched method took, from its cells' best.json ("compute"): one line per method.
std::vector<std::string> search_compute(const std::vector<RunRequest>& plan);

/// table.md's main part: test top-1 and mean per-class accuracy of each cell, then the notes.
std::string suite_main_tables(const Suite& s, const std::vector<RunRecord>& cells,
                              const std::vector<std::string>& notes);

/// The suite's extra tables, each with its title; their analyses run in this process with `threads`.
std::string suite_tables(const Suite& s, const std::vector<RunRequest>& plan,
                         const std::vector<RunRecord>& records, int64_t threads, std::ostream& out);

/// timing.md: each method's time per step on one task, relative to l2, measured in this process.
std::string measure_timing(const Suite& s, const std::vector<RunRequest>& plan, const std::string& cache,
                           std::ostream& out);

/// bench.json: the suite, every run (a sweep's points named by them) and the notes.
nlohmann::json bench_json(const Suite& s, const std::vector<RunRecord>& runs,
                          const std::vector<std::string>& notes, double seconds);

}  // namespace xfer
