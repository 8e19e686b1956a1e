#pragma once
/// Benchmark suites: methods x tasks x seeds, each run an independent `xfer finetune` process, gathered
/// into paper-style tables (`xfer bench`).
///
/// A suite is a JSON file, `bench/suites/NAME.json` or any path:
///
///   {
///     "description": "what it reproduces",
///     "pretrain": {"source": SPEC, "backbone": "cnn4", "iterations": 2000},  // the source model (cached);
///                                   // any `xfer pretrain` option, "method" (scratch
///                                   // or datl) and its options; null: no source model
///     "run": {"iterations": 300},   // `xfer finetune` options for every run
///     "seeds": 3,                   // or a list: [0, 1, 2]
///     "tasks": [{"name": "10/class", "target": SPEC, "source": SPEC, "run": {...}, "pretrain": {...}}, ...],
///     "methods": ["l2", "core", "all",
///                 {"label": "xmixup, random aux", "method": "xmixup", "options": {"aux": "random"},
///                  "run": {...}, "pretrain": {...}, "tasks": ["10/class"], "optional": true},
///                 {"label": "smooth (TPE)", "method": "smooth",
///                  "search": {"params": {"alpha": "lin:-6:6"}, "trials": 30}},
///                 {"label": "multitask (best fixed weight)", "method": "smooth",
///                  "sweep": {"alpha": [-2.2, 0, 2.2]}}],
///     "tables": [{"title": "...", "kind": "accuracy" | "forgetting" | "interpolation", "task": "10/class",
///                 "methods": ["l2", "xmixup"], ...}],
///     "timing": {"task": "10/class", "steps": 60}   // or false
///   }
///
/// Options merge left to right: the suite's "run", the task's, the method entry's. A method that draws on
/// source data gets the task's "source" (default: the pre-training source). A method that fine-tunes gets
/// the source model: the suite's "pretrain", with the task's and then the method entry's merged over it (a
/// different source model). A method entry with "tasks" runs on those tasks only (its other cells are "-").
///
/// "tables" are more tables after the main one, each over one task and some method labels (rows in that
/// order), mean ± std over the seeds:
///   accuracy       test top-1 (XMixup Fig. 3's auxiliary-size sweep is a list of xmixup entries);
///   forgetting     XMixup Table 2: `xfer analyze --forgetting` on every run, columns Auxiliary / ABA / All;
///                  "source" (default: the task's source, else the pre-training source), "reference" (true:
///                  a first row "pretrained", the --init model probed alike), "probe_iterations" (100);
///   interpolation  SMILE Table 6: `xfer analyze` on each of "splits" (default ["train", "test"]), columns
///                  Label-IL (on logits, or "label_output": "softmax") and Feature-IL per split; "pairs"
///                  (1000).
/// The analyses run in the bench process after the runs, write each run's analysis.json, and are redone
/// on every invocation (they are deterministic).
/// "all" and "core" expand to the registered methods. An unknown method is refused before anything runs,
/// unless its entry says "optional": true (then it is skipped with a note: a method not built yet).
///
/// A method entry with "search" runs `xfer search` (its "params" are --param NAME=SPEC, the other keys
/// search options such as "trials") instead of one run; its result is the trial best on validation, as
/// the papers tune each method, so the task's target needs a validation split. The compute each searched
/// cell took (trials, pruned, training steps, run time) is printed and noted under the tables.
///
/// A method entry with "sweep" ({"OPTION": [values], ...}: method options, every combination) runs one
/// run per point and reports, per task and seed, the point best on validation (again the target needs a
/// validation split); the points it chose are noted under the tables.
///
/// Domain Adaptive Transfer Learning: in a method's "pretrain" with "method": "datl" (a pretrain object holds
/// `xfer pretrain`'s options and its method's side by side), "weights_from": "@pretrain" is the suite's
/// own source model and "weights_target": "@task" the task's target spec, so the method's source model is
/// pre-trained on the source resampled by the importance weights that model computes on the task's images.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/report/summary.h"

namespace xfer {

class Fields;

struct SuiteMethod {
  std::string label;  // shown in tables; unique in the suite
  std::string method;
  std::vector<std::string> tasks;                     // empty: every task
  nlohmann::json options = nlohmann::json::object();  // method options
  nlohmann::json run = nlohmann::json::object();      // finetune options
  nlohmann::json pretrain;                            // null: the suite's; an object: merged over it
  nlohmann::json search;                              // null: one run; else `xfer search` options + "params"
  nlohmann::json sweep;                               // null: one run; else {"OPTION": [values], ...}
};

/// Bounds on what a suite file may ask for: seeds per run, and runs in all (tasks x methods x seeds).
constexpr int64_t kMaxSuiteSeeds = 1000;
constexpr int64_t kMaxSuiteRuns = 100000;

struct SuiteTask {
  std::string name, target, source;
  nlohmann::json pretrain;  // null: the suite's; an object: merged over it
  nlohmann::json run = nlohmann::json::object();
  nlohmann::json options = nlohmann::json::object();  // method options, for the methods that have them
};

/// One more table of a suite (see "tables" above).
struct SuiteTable {
  std::string title, kind, task;
  std::vector<std::string> methods;                   // labels, in row order
  nlohmann::json options = nlohmann::json::object();  // the kind's own keys
};

struct Suite {
  std::string name, description;
  nlohmann::json pretrain;  // null: no source model
  nlohmann::json run = nlohmann::json::object();
  std::vector<int64_t> seeds;
  std::vector<SuiteTask> tasks;
  std::vector<SuiteMethod> methods;
  std::vector<SuiteTable> tables;
  std::vector<std::string> notes;  // methods skipped, and why
  bool timing = true;
  std::string timing_task;  // default: the first task
  int64_t timing_steps = 60;
};

/// Parses and validates a suite: every method, option, task spec and name is checked here, so a bad
/// entry is refused, by name, before any run starts.
Suite parse_suite(const nlohmann::json& json, const std::string& name);
/// Loads `name_or_path`: a JSON file, or the name of a built-in suite in bench/suites/.
Suite load_suite(const std::string& name_or_path);
/// The built-in suites: name and description.
std::vector<std::pair<std::string, std::string>> builtin_suites();

struct BenchOptions {
  std::string suite = "quick";
  std::string out;         // "" = runs/bench-NAME
  int64_t jobs = 1;        // runs at a time
  int64_t threads = 0;     // threads per run; 0 = cores / jobs
  std::string cache;       // source models; "" = the default cache
  bool timing = true;      // measure time per step relative to l2 in one process (timing.md)
  std::string executable;  // the xfer binary that runs each run; "" = this process's executable
  std::string storage;     // "": run here; else the database of the suite's run queue (suite_queue.h)
  bool collect = false;    // with storage: build the tables from the queue's results

  void fields(Fields& f);
};

/// Runs a suite: pre-trains (or reuses) the source models, runs every method x task x seed as its own
/// process, `jobs` at a time, skipping runs already finished with the same request, and writes
/// results.csv, table.md (the main table, then the suite's "tables"), timing.md and bench.json to the
/// output directory. A failed run does not stop the suite; its cell says why. Returns bench.json.
nlohmann::json run_bench(const BenchOptions& opts, std::ostream& out);

}  // namespace xfer
