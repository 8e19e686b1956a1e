#include "xfer/workflows/suite.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/workflows/suite_plan.h"
#include "xfer/workflows/suite_runs.h"
#include "xfer/workflows/suite_tables.h"

#ifndef XFER_SUITE_DIR
#define XFER_SUITE_DIR "bench/suites"
#endif

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Runs every run of the plan not already finished with the same request, as processes, with a progress
/// line per run. Returns a record per run.
std::vector<RunRecord> run_plan(const std::vector<RunRequest>& plan, const RunProcesses& how,
                                std::ostream& out) {
  std::vector<RunRecord> records(plan.size());
  std::vector<size_t> todo;
  int64_t skipped = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (already_done(plan[i])) {
      records[i] = record_of(plan[i]);
      ++skipped;
    } else {
      todo.push_back(i);
    }
  }
  if (skipped) out << skipped << " runs already finished with the same options: skipped\n";
  Progress progress("bench", static_cast<int64_t>(plan.size()));
  int64_t finished = skipped;
  run_processes(
      plan, todo, how, records,
      [&](size_t i) {
        const RunRecord& r = records[i];
        progress.message(
            cat(r.method, " on ", r.task, ", seed ", r.seed, ": ",
                r.ok ? cat("test top-1 ", fixed(100 * r.test_top1, 1), "%") : "FAILED: " + r.error));
        progress.update(++finished, "");
      },
      skipped);
  progress.finish();
  return records;
}

}  // namespace

void BenchOptions::fields(Fields& f) {
  f.add("suite", suite, "a built-in suite (see --list) or a suite JSON file");
  f.add("out", out, "output directory (default runs/bench-SUITE)");
  f.add("jobs", jobs, "runs at a time, each its own process").at_least(1);
  f.add("threads", threads, "CPU threads per run (0 = cores / jobs)").non_negative();
  f.add("cache", cache, "cache of pre-trained source models (default $XDG_CACHE_HOME/xfer or ~/.cache/xfer)");
  f.add("timing", timing, "measure each method's time per step relative to l2 in one process (timing.md)");
  f.add("executable", executable, "the xfer binary that runs each run (default: this one)");
  f.add(
      "storage", storage,
      "queue the runs in this database instead of running them (postgresql://USER@HOST:PORT/DB or an SQLite "
      "FILE); `xfer worker` runs them");
  f.add("collect", collect, "with --storage: build the tables from the queue's results");
}
Suite load_suite(const std::string& name_or_path) {
  fs::path path(name_or_path);
  if (!fs::exists(path)) {
    for (const fs::path& dir : {fs::path("bench/suites"), fs::path(XFER_SUITE_DIR)})
      if (fs::exists(dir / (name_or_path + ".json"))) {
        path = dir / (name_or_path + ".json");
        break;
      }
  }
  if (!fs::exists(path)) {
    std::string names;
    for (const auto& [n, d] : builtin_suites()) names += (names.empty() ? "" : ", ") + n;
    throw BadInput(cat("no suite '", name_or_path, "': not a file, nor a built-in suite (", names, ")"));
  }
  return parse_suite(read_json_file(path.string()), path.stem().string());
}
std::vector<std::pair<std::string, std::string>> builtin_suites() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const fs::path& dir : {fs::path(XFER_SUITE_DIR), fs::path("bench/suites")}) {
    if (!fs::is_directory(dir)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".json") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::string description;
      try {
        const nlohmann::json j = read_json_file(f.string());
        description = j.is_object() && j.contains("description") && j["description"].is_string()
                          ? j["description"].get<std::string>()
                          : "(no description)";
      } catch (const BadInput& e) {
        description = cat("(unreadable: ", e.what(), ")");
      }
      out.emplace_back(f.stem().string(), description);
    }
    if (!out.empty()) break;
  }
  return out;
}
nlohmann::json run_bench(const BenchOptions& opts, std::ostream& out) {
  check_options(const_cast<BenchOptions&>(opts));
  XFER_CHECK(opts.storage.empty(), "run_bench runs a suite here; a --storage queue is enqueue_suite's");
  XFER_CHECK(!opts.collect, "--collect needs --storage (the database the suite was queued in)");
  const Suite suite = load_suite(opts.suite);
  const std::string dir = opts.out.empty() ? (fs::path("runs") / ("bench-" + suite.name)).string() : opts.out;
  const std::vector<RunRequest> plan = plan_runs(suite, dir, opts.cache);
  RunProcesses how;
  how.executable = opts.executable.empty() ? self_executable() : opts.executable;
  how.jobs = opts.jobs;
  how.threads = opts.threads > 0 ? opts.threads
                                 : std::max<int64_t>(1, available_cores() / std::max<int64_t>(1, opts.jobs));
  make_dirs(dir);
  const double start = now_seconds();
  out << "Suite " << suite.name << ": " << suite.description << "\n"
      << plan.size() << " runs (" << suite.methods.size() << " methods x " << suite.tasks.size()
      << " tasks x " << suite.seeds.size() << " seeds), " << opts.jobs << " at a time with " << how.threads
      << " threads each; output in " << dir << "\n";
  for (const auto& n : suite.notes) out << "note: " << n << "\n";
  pretrain_sources(plan, opts.cache, 0, out);
  const std::vector<RunRecord> records = run_plan(plan, how, out);

  std::vector<std::string> notes = suite.notes;
  const std::vector<RunRecord> cells = best_of_sweeps(plan, records, notes);
  for (const auto& line : search_compute(plan)) notes.push_back("compute: " + line);
  std::string md = suite_main_tables(suite, cells, notes);
  std::vector<RunRecord> all_runs = records;  // results.csv keeps every sweep point, named by it
  for (size_t i = 0; i < plan.size(); ++i)
    if (!plan[i].point.empty()) all_runs[i].method += " [" + plan[i].point + "]";
  const std::string table_path = (fs::path(dir) / "table.md").string();
  write_file_atomic((fs::path(dir) / "results.csv").string(), records_csv(all_runs));
  write_file_atomic(table_path, md);
  out << "\n" << md;
  if (!suite.tables.empty()) {
    const std::string tables = suite_tables(suite, plan, records, how.threads, out);
    md += tables;
    write_file_atomic(table_path, md);
    out << tables;
  }
  if (opts.timing && suite.timing) {
    const std::string timing = measure_timing(suite, plan, opts.cache, out);
    write_file_atomic((fs::path(dir) / "timing.md").string(), timing);
    out << "\n" << timing;
  }
  const nlohmann::json bench = bench_json(suite, all_runs, notes, now_seconds() - start);
  write_json_file((fs::path(dir) / "bench.json").string(), bench);
  const int64_t failed = bench["failed"].get<int64_t>();
  out << "\nDone in " << fixed((now_seconds() - start) / 60, 1) << " min"
      << (failed ? cat(", ", failed, " runs failed") : "") << ". Tables in " << table_path << "\n";
  return bench;
}

}  // namespace xfer
