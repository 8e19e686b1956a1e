#include "xfer/workflows/suite.h"

#include <algorithm>
#include <cctype>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/runtime.h"
#include "xfer/core/version.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/report/table.h"
#include "xfer/search/search.h"
#include "xfer/search/space.h"
#include "xfer/workflows/analyze.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/timing.h"

#ifndef XFER_SUITE_DIR
#define XFER_SUITE_DIR "bench/suites"
#endif

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Object keys must be among `valid`; names the first stray one.
void suite_check_keys(const nlohmann::json& obj, const std::vector<std::string>& valid, const std::string& where) {
  XFER_CHECK(obj.is_object(), where, " must be a JSON object, got ", obj.dump());
  for (const auto& [key, value] : obj.items()) {
    std::string list;
    bool ok = false;
    for (const auto& v : valid) {
      ok = ok || v == key;
      list += (list.empty() ? "" : ", ") + v;
    }
    XFER_CHECK(ok, where, ": unknown key '", key, "'; valid keys: ", list);
  }
}

std::string suite_string(const nlohmann::json& obj, const std::string& key, const std::string& where, bool required) {
  if (!obj.contains(key)) {
    XFER_CHECK(!required, where, " needs \"", key, "\"");
    return "";
  }
  XFER_CHECK(obj[key].is_string() && !obj[key].get<std::string>().empty(), where, ".", key,
             " must be a non-empty string, got ", obj[key].dump());
  return obj[key].get<std::string>();
}

nlohmann::json suite_object(const nlohmann::json& obj, const std::string& key, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return nlohmann::json::object();
  XFER_CHECK(obj[key].is_object(), where, ".", key, " must be a JSON object, got ", obj[key].dump());
  return obj[key];
}

/// `a` with `b`'s keys laid over it.
nlohmann::json merged(nlohmann::json a, const nlohmann::json& b) {
  if (a.is_null()) a = nlohmann::json::object();
  if (!b.is_null()) a.update(b);
  return a;
}

/// The pre-training options of a source model: the demo's recipe, then `json`'s options.
RunOptions suite_pretrain_options(const nlohmann::json& json, const std::string& where) {
  RunOptions p = source_pretrain_options("", "cnn4", 2000);
  Fields f;
  p.fields(f);
  f.read_json(json, where);
  XFER_CHECK(!p.source.empty(), where, " needs \"source\": the dataset spec the source model is trained on");
  try {
    p.sampling.check();
  } catch (const BadInput& e) {
    throw BadInput(cat(where, ": ", e.what()));
  }
  return p;
}

/// A file-system-friendly name: letters, digits, '-', '_' and '.'; the rest becomes '_'.
std::string slug(const std::string& s) {
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return out;
}

/// Task names and method labels become folders (OUT/runs/TASK/LABEL/seedN): each must give a folder of its
/// own, inside OUT. Names that slug() maps to nothing but dots ("..") or to one folder ("a b", "a_b") are
/// refused.
void check_folder_names(const std::vector<std::string>& names, const std::string& what, const std::string& where) {
  std::map<std::string, std::string> by_folder;
  for (const auto& n : names) {
    const std::string folder = slug(n);
    XFER_CHECK(folder.find_first_not_of('.') != std::string::npos, where, ": the ", what, " '", printable(n),
               "' cannot name a folder");
    const auto [it, fresh] = by_folder.emplace(folder, n);
    XFER_CHECK(fresh, where, ": the ", what, "s '", printable(it->second), "' and '", printable(n),
               "' would share the folder ", folder, "; rename one");
  }
}

/// One run of a suite, fully resolved before anything starts.
struct RunRequest {
  std::string task, label, dir;
  int64_t seed = 0;
  nlohmann::json config;                 // what `xfer finetune --config` reads
  std::vector<nlohmann::json> pretrains; // source models to train first, in order (one may need another)
  nlohmann::json search;                 // null, or the method entry's "search"
  std::string point;                     // a sweep's point, "alpha=0,tau=3" ("" for a plain run)
};

/// Every combination of a "sweep"'s values, in key order: [{"alpha": -2}, {"alpha": 0}, ...]; or one empty
/// object when there is no sweep.
std::vector<nlohmann::json> sweep_points(const nlohmann::json& sweep) {
  std::vector<nlohmann::json> points = {nlohmann::json::object()};
  if (sweep.is_null()) return points;
  for (const auto& [key, values] : sweep.items()) {
    std::vector<nlohmann::json> next;
    for (const auto& p : points)
      for (const auto& v : values) {
        nlohmann::json q = p;
        q[key] = v;
        next.push_back(std::move(q));
      }
    points = std::move(next);
  }
  return points;
}

/// "alpha=-2,tau=3".
std::string sweep_point_text(const nlohmann::json& point) {
  std::string out;
  for (const auto& [key, value] : point.items())
    out += (out.empty() ? "" : ",") + key + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
  return out;
}

/// Checks a method entry's "sweep": an object of non-empty value lists, at most 100 points in all.
void check_sweep(const nlohmann::json& sweep, const std::string& where) {
  XFER_CHECK(sweep.is_object() && !sweep.empty(), where, ".sweep must be {\"OPTION\": [values], ...}, got ",
             sweep.dump());
  size_t points = 1;
  for (const auto& [key, values] : sweep.items()) {
    XFER_CHECK(values.is_array() && !values.empty() && values.size() <= 100, where, ".sweep.", key,
               " must be a list of 1 to 100 values, got ", values.dump());
    points *= values.size();
    XFER_CHECK(points <= 100, where, ".sweep has more than 100 points");
  }
}

/// Resolves "weights_from": "@pretrain" and "weights_target": "@task" in a method's pre-training options
/// and appends the source models it needs to `order`, the suite's own first.
nlohmann::json resolve_pretrain_refs(nlohmann::json p, const Suite& s, const SuiteTask& t, const std::string& cache,
                                     const std::string& where, std::vector<nlohmann::json>& order) {
  if (p.contains("weights_from") && p["weights_from"] == "@pretrain") {
    XFER_CHECK(s.pretrain.is_object() && !(s.pretrain.contains("weights_from")), where,
               ": \"weights_from\": \"@pretrain\" needs the suite's own \"pretrain\" block, without weights");
    order.push_back(s.pretrain);
    p["weights_from"] = cached_pretrain_dir(suite_pretrain_options(s.pretrain, where + " (pretrain)"), cache);
  }
  if (p.contains("weights_target") && p["weights_target"] == "@task") p["weights_target"] = t.target;
  order.push_back(p);
  return p;
}

/// `xfer search` arguments of a method entry's "search": --param NAME=SPEC for each of "params", then
/// --KEY VALUE for the search options.
std::vector<std::string> search_arguments(const nlohmann::json& search) {
  std::vector<std::string> args;
  for (const auto& [name, spec] : search.at("params").items()) args.insert(args.end(), {"--param", name + "=" + spec.get<std::string>()});
  for (const auto& [key, value] : search.items()) {
    if (key == "params") continue;
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    args.insert(args.end(), {flag, value.is_string() ? value.get<std::string>() : value.dump()});
  }
  return args;
}

/// Checks a method entry's "search" before anything runs: the parameter specs and the search options.
void check_search(const nlohmann::json& search, const std::string& where) {
  XFER_CHECK(search.contains("params") && search["params"].is_object() && !search["params"].empty(), where,
             ".search needs \"params\": {\"NAME\": \"lin:LO:HI\", ...}");
  std::vector<std::string> texts;
  for (const auto& [name, spec] : search["params"].items()) {
    XFER_CHECK(spec.is_string(), where, ".search.params.", name, " must be a string like \"lin:0:1\", got ", spec.dump());
    texts.push_back(name + "=" + spec.get<std::string>());
  }
  nlohmann::json options = search;
  options.erase("params");
  for (const char* own : {"out", "storage", "workers", "study"})
    XFER_CHECK(!options.contains(own), where, ".search: \"", own, "\" is set by the suite");
  try {
    SearchSpace::parse(texts);
    SearchOptions o;
    Fields f;
    o.fields(f);
    f.read_json(options, where + ".search");
  } catch (const BadInput& e) {
    const std::string what = e.what();
    throw BadInput(what.find(where) == std::string::npos ? cat(where, ".search: ", what) : what);
  }
}

/// The option names (as in JSON) of method `name`.
std::set<std::string> method_option_names(const std::string& name) {
  auto config = methods().get(name).make_config();
  Fields f;
  config->fields(f);
  std::set<std::string> out;
  const nlohmann::json options = f.to_json();  // named: items() of a temporary would dangle
  for (const auto& [key, value] : options.items()) out.insert(key);
  return out;
}

/// Whether method entry `m` runs on task `task` (its "tasks", or every task).
bool suite_runs_on(const SuiteMethod& m, const std::string& task) {
  return m.tasks.empty() || std::find(m.tasks.begin(), m.tasks.end(), task) != m.tasks.end();
}

std::vector<RunRequest> plan_runs(const Suite& s, const std::string& out, const std::string& cache) {
  std::vector<RunRequest> plan;
  for (const auto& t : s.tasks)
    for (const auto& m : s.methods)
      for (int64_t seed : s.seeds) {
        if (!suite_runs_on(m, t.name)) continue;
        const std::string where = cat("suite ", s.name, ", method '", m.label, "' on task '", t.name, "'");
        const MethodInfo& info = methods().get(m.method);
        RunOptions r;
        Fields f;
        r.fields(f);
        f.read_json(merged(merged(s.run, t.run), m.run), where + " (run options)");
        r.method = m.method;
        r.target = t.target;
        r.seed = seed;
        const nlohmann::json base = t.pretrain.is_object() ? merged(s.pretrain, t.pretrain) : s.pretrain;
        const nlohmann::json pretrain =
            m.pretrain.is_object() ? merged(base, m.pretrain) : m.pretrain.is_null() ? base : nlohmann::json();
        if (info.needs_source && r.source.empty()) {
          r.source = !t.source.empty() ? t.source
                     : pretrain.is_object() ? suite_pretrain_options(pretrain, where + " (pretrain)").source
                                            : "";
          XFER_CHECK(!r.source.empty(), where, ": method ", m.method, " draws on source data; give the task a ",
                     "\"source\" or the suite a \"pretrain\"");
        }
        RunRequest q;
        if (info.allows_init && r.init.empty() && pretrain.is_object()) {
          const nlohmann::json resolved = resolve_pretrain_refs(pretrain, s, t, cache, where, q.pretrains);
          r.init = cached_pretrain_dir(suite_pretrain_options(resolved, where + " (pretrain)"), cache);
        }
        if (!info.allows_init && r.backbone.empty() && pretrain.is_object())
          r.backbone = suite_pretrain_options(pretrain, where + " (pretrain)").backbone;
        XFER_CHECK(!(info.needs_init && r.init.empty()), where, ": method ", m.method,
                   " fine-tunes a source model; give the suite a \"pretrain\" block or the run an \"init\"");
        for (const nlohmann::json& point : sweep_points(m.sweep)) {
          auto config = info.make_config();
          Fields mf;
          config->fields(mf);
          nlohmann::json options = nlohmann::json::object();  // the task's options this method has, then its own
          const std::set<std::string> known = method_option_names(m.method);
          for (const auto& [key, value] : t.options.items())
            if (known.count(key)) options[key] = value;
          if (m.options.is_object()) options.update(m.options);
          options.update(point);
          try {
            mf.read_json(options, where + " (method options)");
          } catch (const BadInput& e) {  // a value out of range names only the flag: say which run
            const std::string what = e.what();
            if (what.find(where) != std::string::npos) throw;
            throw BadInput(cat(where, ": ", what));
          }
          RunRequest p = q;
          p.task = t.name;
          p.label = m.label;
          p.search = m.search;
          p.seed = seed;
          p.point = m.sweep.is_null() ? "" : sweep_point_text(point);
          fs::path dir = fs::path(out) / "runs" / slug(t.name) / slug(m.label) / cat("seed", seed);
          if (!p.point.empty()) dir /= slug(p.point);
          p.dir = dir.string();
          r.out = p.dir;
          p.config = config_json("finetune", r, config.get());
          p.config.erase("out");
          p.config.erase("threads");
          p.config.erase("overwrite");
          p.config.erase("resume");
          plan.push_back(std::move(p));
        }
      }
  return plan;
}

/// The first line starting with "error: " in a run's log, or its last line.
std::string run_error(const std::string& log_path, const ExitStatus& status) {
  if (status.signal) return cat("killed by signal ", status.signal);
  std::string last;
  if (fs::exists(log_path)) {
    std::istringstream in(read_file(log_path));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("error: ", 0) == 0) return line.substr(7);
      if (!line.empty()) last = line;
    }
  }
  return last.empty() ? cat("exit code ", status.code) : last;
}

RunRecord record_of(const RunRequest& q) {
  RunRecord rec;
  rec.task = q.task;
  rec.method = q.label;
  rec.seed = q.seed;
  rec.dir = q.dir;
  const fs::path result = fs::path(q.dir) / "result.json";
  if (!fs::exists(result)) return rec;
  const nlohmann::json r = read_json_file(result.string());
  rec.ok = true;
  rec.test_top1 = r.value("test_top1", 0.0);
  rec.test_mean_class = r.value("test_mean_class", 0.0);
  rec.best_val_top1 = r.value("best_val_top1", nlohmann::json()).is_number() ? r["best_val_top1"].get<double>() : -1;
  rec.step_ms = r.value("step_ms_median", 0.0);
  return rec;
}

/// A finished search's result: its best trial's result.json with "search" (best.json) added, written
/// as the suite run's own result.json.
void adopt_best_trial(const std::string& dir) {
  const fs::path best_path = fs::path(dir) / "best.json";
  if (!fs::exists(best_path)) return;  // no trial completed: the run is marked failed
  const nlohmann::json best = read_json_file(best_path.string());
  const fs::path trial = fs::path(best.value("run_dir", "")) / "result.json";
  if (!fs::exists(trial)) return;
  nlohmann::json result = read_json_file(trial.string());
  result["search"] = best;
  write_json_file((fs::path(dir) / "result.json").string(), result);
}

/// Whether the run in q.dir finished with exactly this request.
bool already_done(const RunRequest& q) {
  const fs::path dir(q.dir);
  if (!fs::exists(dir / "result.json") || !fs::exists(dir / "request.json")) return false;
  try {
    return read_json_file((dir / "request.json").string()) == q.config;
  } catch (const BadInput&) {
    return false;
  }
}

/// One record per cell: the runs of a sweep on one task and seed become the one best on validation (the
/// first of equals; a failed cell when none finished). Adds to `notes` the point each sweep chose.
std::vector<RunRecord> best_of_sweeps(const std::vector<RunRequest>& plan, const std::vector<RunRecord>& records,
                                      std::vector<std::string>& notes) {
  std::vector<RunRecord> out;
  std::map<std::tuple<std::string, std::string, int64_t>, size_t> cell;  // (task, label, seed) -> index in out
  std::map<std::string, std::string> chosen;                            // label -> "task seed: point; ..."
  std::map<size_t, std::string> point_of;                                // index in out -> its point
  for (size_t i = 0; i < plan.size(); ++i) {
    if (plan[i].point.empty()) {
      out.push_back(records[i]);
      continue;
    }
    const auto key = std::make_tuple(plan[i].task, plan[i].label, plan[i].seed);
    const auto it = cell.find(key);
    if (it == cell.end()) {
      cell[key] = out.size();
      point_of[out.size()] = plan[i].point;
      out.push_back(records[i]);
      continue;
    }
    RunRecord& best = out[it->second];
    if (records[i].ok && (!best.ok || records[i].best_val_top1 > best.best_val_top1)) {
      best = records[i];
      point_of[it->second] = plan[i].point;
    }
  }
  for (const auto& [key, index] : cell) {
    std::string& text = chosen[std::get<1>(key)];
    text += cat(text.empty() ? "" : "; ", std::get<0>(key), " seed ", std::get<2>(key), ": ", point_of[index]);
  }
  for (const auto& [label, text] : chosen)
    notes.push_back(cat("'", label, "' reports per cell the sweep point best on validation: ", text));
  return out;
}

/// The compute each searched method took, from its cells' best.json ("compute"): one line per method.
std::vector<std::string> search_compute(const std::vector<RunRequest>& plan) {
  struct Sum {
    int64_t cells = 0, trials = 0, pruned = 0, steps = 0;
    double seconds = 0;
  };
  std::map<std::string, Sum> by_label;
  std::vector<std::string> order;
  for (const auto& q : plan) {
    if (q.search.is_null()) continue;
    const fs::path best = fs::path(q.dir) / "best.json";
    if (!fs::exists(best)) continue;
    const nlohmann::json c = read_json_file(best.string()).value("compute", nlohmann::json::object());
    if (!by_label.count(q.label)) order.push_back(q.label);
    Sum& s = by_label[q.label];
    ++s.cells;
    s.trials += c.value("trials", int64_t{0});
    s.pruned += c.value("pruned", int64_t{0});
    s.steps += c.value("steps", int64_t{0});
    s.seconds += c.value("run_seconds", 0.0);
  }
  std::vector<std::string> lines;
  for (const auto& label : order) {
    const Sum& s = by_label[label];
    lines.push_back(cat("'", label, "' searched ", s.cells, " cells: ", s.trials, " trials (", s.pruned, " pruned), ",
                        s.steps, " training steps, ", fixed(s.seconds / 3600, 2), " h of trial run time in all; per cell ",
                        fixed(static_cast<double>(s.trials) / s.cells, 1), " trials, ", s.steps / s.cells, " steps, ",
                        fixed(s.seconds / 60 / s.cells, 1), " min"));
  }
  return lines;
}

/// timing.md: each method's time per step on one task, relative to l2, measured in this process.
std::string measure_timing(const Suite& s, const std::vector<RunRequest>& plan, const std::string& cache,
                           std::ostream& out) {
  const std::string task = s.timing_task.empty() ? s.tasks.front().name : s.timing_task;
  std::vector<const RunRequest*> chosen;
  std::set<std::string> timed;  // a sweep's first point stands for it
  for (const auto& q : plan)
    if (q.task == task && q.seed == s.seeds.front() && timed.insert(q.label).second) chosen.push_back(&q);
  // l2 is the reference; time it even when the suite does not list it, if it can run here.
  RunRequest reference;
  const bool has_l2 = std::any_of(chosen.begin(), chosen.end(), [](const RunRequest* q) { return q->config["method"] == "l2"; });
  if (!has_l2 && !chosen.empty() && s.pretrain.is_object()) {
    const RunRequest& any = *chosen.front();
    reference = any;
    reference.label = "l2 (reference)";
    reference.config["method"] = "l2";
    reference.config["method_options"] = nlohmann::json::object();
    reference.config["init"] = cached_pretrain_dir(suite_pretrain_options(s.pretrain, "timing"), cache);
    chosen.insert(chosen.begin(), &reference);
  }
  std::vector<std::unique_ptr<PreparedRun>> prepared;
  std::vector<std::unique_ptr<MethodConfig>> configs;
  std::vector<PreparedRun*> runs;
  std::vector<std::string> labels;
  for (const RunRequest* q : chosen) {
    try {
      const MethodInfo& info = methods().get(q->config["method"].get<std::string>());
      RunOptions r;
      auto config = info.make_config();
      read_config(q->config, r, config.get(), "timing request");
      r.threads = 0;
      r.out.clear();
      prepared.push_back(prepare_run("finetune", r, info, *config));
      configs.push_back(std::move(config));
      runs.push_back(prepared.back().get());
      labels.push_back(q->label);
    } catch (const std::exception& e) {
      out << "timing: skipped " << q->label << ": " << e.what() << "\n";
    }
  }
  if (runs.empty()) return "No method could be timed.\n";
  out << "Timing " << runs.size() << " methods on task '" << task << "' in this process ..." << std::endl;
  StepTimingOptions t;
  t.steps = s.timing_steps;
  const std::vector<double> ms = interleaved_step_ms(runs, t);
  size_t ref = 0;
  for (size_t i = 0; i < labels.size(); ++i)
    if (runs[i]->info->name == "l2") {
      ref = i;
      break;
    }
  Table table({"method", "ms/step", cat("vs ", labels[ref])});
  table.align_right(1);
  table.align_right(2);
  for (size_t i = 0; i < runs.size(); ++i)
    table.add_row({labels[i], fixed(ms[i], 2), fixed(ms[i] / ms[ref], 2) + "x"});
  return cat("Time per training step on task '", task, "' (", s.timing_steps, " steps each, interleaved in blocks ",
             "of ", t.block, " in one process, median; ", runs.front()->threads, " threads)\n\n", table.markdown());
}

/// The values an analysis gave for one table row, over the seeds, and the errors met.
struct SuiteRow {
  std::map<std::string, std::vector<double>> values;  // column -> one value per seed
  std::vector<std::string> errors;
};

/// "mean ± std" of a column over the seeds that gave it, "(n/m)" when some did not, "-" when none did.
std::string suite_cell(const SuiteRow& row, const std::string& column, size_t seeds, double scale, int precision) {
  const auto it = row.values.find(column);
  if (it == row.values.end() || it->second.empty()) return "-";
  std::string cell = format_mean_std(mean_std(it->second), scale, precision);
  if (it->second.size() < seeds) cell += cat(" (", it->second.size(), "/", seeds, ")");
  return cell;
}

/// The source task of a forgetting table: its "source", the task's, or the task's pre-training source.
std::string suite_forgetting_source(const Suite& s, const SuiteTable& t) {
  if (t.options.contains("source")) return t.options["source"].get<std::string>();
  const SuiteTask& task = *std::find_if(s.tasks.begin(), s.tasks.end(), [&](const SuiteTask& x) { return x.name == t.task; });
  if (!task.source.empty()) return task.source;
  const nlohmann::json pretrain = task.pretrain.is_object() ? merged(s.pretrain, task.pretrain) : s.pretrain;
  XFER_CHECK(pretrain.is_object(), "suite ", s.name, ": the forgetting table of task '", t.task, "' needs a source: ",
             "give it \"source\", or the task a source");
  return suite_pretrain_options(pretrain, "suite " + s.name + " (pretrain)").source;
}

/// Runs `analyze` on every finished run of each of the table's methods, in this process; `collect` turns an
/// analysis.json into the row's values.
std::map<std::string, SuiteRow> suite_analyse(const SuiteTable& t, const std::vector<RunRequest>& plan,
                                              const std::vector<RunRecord>& records,
                                              const std::function<AnalyzeOptions(const std::string& label)>& options,
                                              const std::function<void(const nlohmann::json&, const std::string& label,
                                                                       std::map<std::string, SuiteRow>&)>& collect,
                                              std::ostream& out) {
  std::map<std::string, SuiteRow> rows;
  for (const auto& label : t.methods)
    for (size_t i = 0; i < plan.size(); ++i) {
      if (plan[i].task != t.task || plan[i].label != label) continue;
      if (!records[i].ok) {
        rows[label].errors.push_back(cat("seed ", plan[i].seed, ": the run failed"));
        continue;
      }
      AnalyzeOptions a = options(label);
      a.run = plan[i].dir;
      try {
        collect(analyze_run(a), label, rows);
      } catch (const std::exception& e) {
        rows[label].errors.push_back(cat("seed ", plan[i].seed, ": ", e.what()));
        out << "analysis of " << plan[i].dir << " failed: " << e.what() << "\n";
      }
    }
  return rows;
}

/// XMixup Table 2: the forgetting probe of every run, and of the pretrained model.
std::string suite_forgetting_table(const Suite& s, const SuiteTable& t, const std::vector<RunRequest>& plan,
                                   const std::vector<RunRecord>& records, int64_t threads, std::ostream& out) {
  const std::string source = suite_forgetting_source(s, t);
  const bool reference = t.options.value("reference", true);
  const int64_t iterations = t.options.value("probe_iterations", int64_t{100});
  const std::vector<std::string> columns = {"auxiliary", "aba", "all"};
  const auto rows = suite_analyse(
      t, plan, records,
      [&](const std::string& label) {
        AnalyzeOptions a;
        a.forgetting = true;
        a.forgetting_source = source;
        a.forgetting_reference = reference && label == t.methods.front();
        a.probe_iterations = iterations;
        a.threads = threads;
        return a;
      },
      [&](const nlohmann::json& analysis, const std::string& label, std::map<std::string, SuiteRow>& rows) {
        const nlohmann::json& f = analysis.at("forgetting");
        for (const char* who : {"model", "pretrained"}) {
          if (!f.contains(who)) continue;
          SuiteRow& row = rows[who == std::string("model") ? label : std::string(" pretrained")];
          for (const auto& c : columns)
            if (f[who][c].is_number()) row.values[c].push_back(f[who][c].get<double>());
        }
      },
      out);
  Table table({"model", "Auxiliary", "ABA", "All"});
  for (size_t c = 1; c < 4; ++c) table.align_right(c);
  std::vector<std::string> order = t.methods;
  if (reference) order.insert(order.begin(), " pretrained");
  std::string notes;
  for (const auto& label : order) {
    const auto it = rows.find(label);
    const SuiteRow row = it == rows.end() ? SuiteRow{} : it->second;
    std::vector<std::string> r = {label == " pretrained" ? "pretrained (--init)" : label};
    for (const auto& c : columns) r.push_back(suite_cell(row, c, s.seeds.size(), 100, 2));
    table.add_row(r);
    for (const auto& e : row.errors) notes += cat("\nNote: ", label, ", ", e, "\n");
  }
  return cat("Test top-1 (%) of a fresh linear head on the frozen backbone, trained on the source task ", source,
             " (XMixup Table 2): its classes in the auxiliary set (Auxiliary), the others (ABA) and all; mean ± std ",
             "over ", s.seeds.size(), " seeds, task '", t.task, "'.\n\n", table.markdown(), notes);
}

/// SMILE Table 6: Label-IL and Feature-IL of every run on each split.
std::string suite_interpolation_table(const Suite& s, const SuiteTable& t, const std::vector<RunRequest>& plan,
                                      const std::vector<RunRecord>& records, int64_t threads, std::ostream& out) {
  std::vector<std::string> splits = {"train", "test"};
  if (t.options.contains("splits")) splits = t.options["splits"].get<std::vector<std::string>>();
  const std::string label_output = t.options.value("label_output", "logits");
  std::map<std::string, SuiteRow> rows;
  for (const auto& split : splits) {
    const auto part = suite_analyse(
        t, plan, records,
        [&](const std::string&) {
          AnalyzeOptions a;
          Fields f;
          a.fields(f);
          f.set("on", split);
          f.set("label_output", label_output);
          a.pairs = t.options.value("pairs", int64_t{1000});
          a.threads = threads;
          return a;
        },
        [&](const nlohmann::json& analysis, const std::string& label, std::map<std::string, SuiteRow>& r) {
          const nlohmann::json& sp = analysis.at("splits").at(split);
          r[label].values["label " + split].push_back(sp.at("label_il").at("mean").get<double>());
          r[label].values["feature " + split].push_back(sp.at("feature_il").at("mean").get<double>());
        },
        out);
    for (const auto& [label, row] : part) {
      for (const auto& [column, v] : row.values) rows[label].values[column] = v;
      for (const auto& e : row.errors) rows[label].errors.push_back(e);
    }
  }
  std::vector<std::string> header = {"method"};
  for (const char* kind : {"Label-IL", "Feature-IL"})
    for (const auto& split : splits) header.push_back(cat(kind, " ", split));
  Table table(header);
  for (size_t c = 1; c < header.size(); ++c) table.align_right(c);
  std::string notes;
  for (const auto& label : t.methods) {
    const SuiteRow row = rows.count(label) ? rows.at(label) : SuiteRow{};
    std::vector<std::string> r = {label};
    for (const char* kind : {"label ", "feature "})
      for (const auto& split : splits) r.push_back(suite_cell(row, kind + split, s.seeds.size(), 1, 3));
    table.add_row(r);
    for (const auto& e : row.errors) notes += cat("\nNote: ", label, ", ", e, "\n");
  }
  return cat("Interpolation losses (SMILE Eq. 7, Table 6; lower is more linear): Label-IL on the target head's ",
             label_output, ", Feature-IL on the pooled features, each the mean over random pairs of a split's images; ",
             "mean ± std over ", s.seeds.size(), " seeds, task '", t.task, "'.\n\n", table.markdown(), notes);
}

/// The suite's extra tables, each with its title.
std::string suite_tables(const Suite& s, const std::vector<RunRequest>& plan, const std::vector<RunRecord>& records,
                         int64_t threads, std::ostream& out) {
  std::string md;
  for (const auto& t : s.tables) {
    out << "Table '" << (t.title.empty() ? t.kind : t.title) << "' (" << t.kind << ", task " << t.task << ") ..."
        << std::endl;
    std::string body;
    if (t.kind == "forgetting") body = suite_forgetting_table(s, t, plan, records, threads, out);
    else if (t.kind == "interpolation") body = suite_interpolation_table(s, t, plan, records, threads, out);
    else body = cat("Test top-1 (%), mean ± std over ", s.seeds.size(), " seeds.\n\n",
                    summary_table(records, {t.task}, t.methods, "test_top1"));
    md += cat("\n## ", t.title.empty() ? t.kind : t.title, "\n\n", body);
  }
  return md;
}

/// Checks one entry of "tables" against the suite's tasks and method labels.
SuiteTable parse_table(const Suite& s, const nlohmann::json& j, const std::string& where) {
  XFER_CHECK(j.is_object(), where, " must be a JSON object, got ", j.dump());
  SuiteTable t;
  t.kind = suite_string(j, "kind", where, true);
  std::vector<std::string> keys = {"title", "kind", "task", "methods"};
  if (t.kind == "forgetting") keys.insert(keys.end(), {"source", "reference", "probe_iterations"});
  else if (t.kind == "interpolation") keys.insert(keys.end(), {"splits", "pairs", "label_output"});
  else XFER_CHECK(t.kind == "accuracy", where, ".kind must be accuracy, forgetting or interpolation, got '", t.kind, "'");
  suite_check_keys(j, keys, where);
  t.title = suite_string(j, "title", where, false);
  t.task = suite_string(j, "task", where, true);
  const auto task = std::find_if(s.tasks.begin(), s.tasks.end(), [&](const SuiteTask& x) { return x.name == t.task; });
  XFER_CHECK(task != s.tasks.end(), where, ".task: no task named '", t.task, "'");
  XFER_CHECK(j.contains("methods") && j["methods"].is_array() && !j["methods"].empty(), where,
             ".methods must be a non-empty list of method labels");
  for (const auto& label : j["methods"]) {
    XFER_CHECK(label.is_string(), where, ".methods: expected labels, got ", label.dump());
    const auto m = std::find_if(s.methods.begin(), s.methods.end(),
                                [&](const SuiteMethod& x) { return x.label == label.get<std::string>(); });
    XFER_CHECK(m != s.methods.end(), where, ".methods: no method labelled ", label.dump());
    XFER_CHECK(suite_runs_on(*m, t.task), where, ".methods: ", label.dump(), " does not run on task '", t.task, "'");
    t.methods.push_back(label.get<std::string>());
  }
  for (const auto& [key, value] : j.items())
    if (key != "title" && key != "kind" && key != "task" && key != "methods") t.options[key] = value;
  if (t.kind == "forgetting") {
    XFER_CHECK(!j.contains("source") || (j["source"].is_string() && !j["source"].get<std::string>().empty()), where,
               ".source must be a dataset spec");
    if (j.contains("source")) {
      try {
        DatasetSpec::parse(j["source"].get<std::string>());
      } catch (const BadInput& e) {
        throw BadInput(cat(where, ".source: ", e.what()));
      }
    }
    XFER_CHECK(!j.contains("reference") || j["reference"].is_boolean(), where, ".reference must be true or false");
    XFER_CHECK(!j.contains("probe_iterations") ||
                   (j["probe_iterations"].is_number_integer() && j["probe_iterations"].get<int64_t>() >= 1),
               where, ".probe_iterations must be an integer >= 1");
  } else if (t.kind == "interpolation") {
    if (j.contains("splits")) {
      XFER_CHECK(j["splits"].is_array() && !j["splits"].empty(), where, ".splits must be a non-empty list");
      for (const auto& sp : j["splits"])
        XFER_CHECK(sp == "train" || sp == "test", where, ".splits: expected \"train\" or \"test\", got ", sp.dump());
    }
    XFER_CHECK(!j.contains("pairs") || (j["pairs"].is_number_integer() && j["pairs"].get<int64_t>() >= 1), where,
               ".pairs must be an integer >= 1");
    XFER_CHECK(!j.contains("label_output") || j["label_output"] == "logits" || j["label_output"] == "softmax", where,
               ".label_output must be logits or softmax");
  }
  return t;
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
}

Suite parse_suite(const nlohmann::json& j, const std::string& name) {
  const std::string where = "suite " + name;
  suite_check_keys(j, {"description", "pretrain", "run", "seeds", "tasks", "methods", "tables", "timing"}, where);
  Suite s;
  s.name = name;
  s.description = suite_string(j, "description", where, false);
  if (j.contains("pretrain") && !j["pretrain"].is_null()) {
    s.pretrain = suite_object(j, "pretrain", where);
    suite_pretrain_options(s.pretrain, where + ".pretrain");
  }
  s.run = suite_object(j, "run", where);
  {
    RunOptions r;
    Fields f;
    r.fields(f);
    f.read_json(s.run, where + ".run");
  }
  const nlohmann::json seeds = j.value("seeds", nlohmann::json(1));
  if (seeds.is_number_integer()) {
    XFER_CHECK(seeds.get<int64_t>() >= 1, where, ".seeds must be >= 1, got ", seeds.dump());
    XFER_CHECK(seeds.get<int64_t>() <= kMaxSuiteSeeds, where, ".seeds must be at most ", kMaxSuiteSeeds, ", got ",
               seeds.dump());
    for (int64_t i = 0; i < seeds.get<int64_t>(); ++i) s.seeds.push_back(i);
  } else {
    XFER_CHECK(seeds.is_array() && !seeds.empty() && seeds.size() <= static_cast<size_t>(kMaxSuiteSeeds), where,
               ".seeds must be a count or a list of 1 to ", kMaxSuiteSeeds, " seeds, got ", seeds.dump().substr(0, 80));
    std::set<int64_t> distinct;
    for (const auto& v : seeds) {
      XFER_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, where, ".seeds: expected non-negative integers, got ",
                 v.dump());
      XFER_CHECK(distinct.insert(v.get<int64_t>()).second, where, ".seeds lists ", v.dump(), " twice");
      s.seeds.push_back(v.get<int64_t>());
    }
  }

  XFER_CHECK(j.contains("tasks") && j["tasks"].is_array() && !j["tasks"].empty(), where,
             " needs \"tasks\": a non-empty list");
  std::set<std::string> task_names;
  for (size_t i = 0; i < j["tasks"].size(); ++i) {
    const auto& t = j["tasks"][i];
    const std::string tw = cat(where, ".tasks[", i, "]");
    suite_check_keys(t, {"name", "target", "source", "run", "options", "pretrain"}, tw);
    SuiteTask task;
    task.target = suite_string(t, "target", tw, true);
    task.name = t.contains("name") ? suite_string(t, "name", tw, true) : task.target;
    task.source = suite_string(t, "source", tw, false);
    task.run = suite_object(t, "run", tw);
    if (t.contains("pretrain") && !t["pretrain"].is_null()) task.pretrain = suite_object(t, "pretrain", tw);
    task.options = suite_object(t, "options", tw);
    try {
      DatasetSpec::parse(task.target);
      if (!task.source.empty()) DatasetSpec::parse(task.source);
    } catch (const BadInput& e) {
      throw BadInput(cat(tw, " ('", task.name, "'): ", e.what()));
    }
    XFER_CHECK(task_names.insert(task.name).second, where, ": two tasks are named '", task.name, "'");
    s.tasks.push_back(std::move(task));
  }

  XFER_CHECK(j.contains("methods") && j["methods"].is_array() && !j["methods"].empty(), where,
             " needs \"methods\": a non-empty list");
  std::set<std::string> labels;
  auto add = [&](SuiteMethod m, const std::string& mw) {
    XFER_CHECK(labels.insert(m.label).second, mw, ": the label '", m.label, "' is used twice");
    s.methods.push_back(std::move(m));
  };
  for (size_t i = 0; i < j["methods"].size(); ++i) {
    const auto& m = j["methods"][i];
    const std::string mw = cat(where, ".methods[", i, "]");
    if (m.is_string() && (m == "all" || m == "core")) {
      std::vector<std::string> unfit;  // methods needing data of another shape (GradMix: labelled sources)
      for (const auto& info : methods().all()) {
        if (!(m == "all" || info.core) || labels.count(info.name)) continue;
        if (!info.demo_command.empty()) {
          unfit.push_back(info.name);
          continue;
        }
        SuiteMethod entry;
        entry.label = entry.method = info.name;
        add(std::move(entry), mw);
      }
      std::string names;
      for (const auto& u : unfit) names += (names.empty() ? "" : ", ") + u;
      if (!unfit.empty())
        s.notes.push_back(cat(names, " need several labelled sources and are skipped here (the `gradmix` ",
                              "suite runs them)"));
      continue;
    }
    SuiteMethod entry;
    bool optional = false;
    if (m.is_string()) {
      entry.method = entry.label = m.get<std::string>();
    } else {
      suite_check_keys(m, {"label", "method", "options", "run", "pretrain", "search", "sweep", "tasks", "optional"}, mw);
      entry.method = suite_string(m, "method", mw, true);
      if (m.contains("tasks")) {
        XFER_CHECK(m["tasks"].is_array() && !m["tasks"].empty(), mw, ".tasks must be a non-empty list of task ",
                   "names, got ", m["tasks"].dump());
        for (const auto& name : m["tasks"]) {
          XFER_CHECK(name.is_string() && task_names.count(name.get<std::string>()), mw, ".tasks: no task named ",
                     name.dump());
          entry.tasks.push_back(name.get<std::string>());
        }
      }
      entry.label = m.contains("label") ? suite_string(m, "label", mw, true) : entry.method;
      entry.options = suite_object(m, "options", mw);
      entry.run = suite_object(m, "run", mw);
      if (m.contains("pretrain") && !m["pretrain"].is_null()) entry.pretrain = suite_object(m, "pretrain", mw);
      if (m.contains("search") && !m["search"].is_null()) {
        entry.search = suite_object(m, "search", mw);
        check_search(entry.search, mw);
      }
      if (m.contains("sweep") && !m["sweep"].is_null()) {
        XFER_CHECK(entry.search.is_null(), mw, ": \"search\" and \"sweep\" cannot be combined");
        check_sweep(m["sweep"], mw);
        entry.sweep = m["sweep"];
      }
      XFER_CHECK(!m.contains("optional") || m["optional"].is_boolean(), mw, ".optional must be true or false, got ",
                 m.value("optional", nlohmann::json()).dump());
      optional = m.value("optional", false);
    }
    if (!methods().has(entry.method)) {
      XFER_CHECK(optional, mw, ": unknown method '", entry.method, "'; valid methods: ", methods().names());
      s.notes.push_back(cat("'", entry.label, "' skipped: method ", entry.method, " is not in this build"));
      continue;
    }
    add(std::move(entry), mw);
  }
  XFER_CHECK(!s.methods.empty(), where, ": none of its methods is in this build");
  std::vector<std::string> task_list, label_list;
  for (const auto& t : s.tasks) task_list.push_back(t.name);
  for (const auto& m : s.methods) label_list.push_back(m.label);
  check_folder_names(task_list, "task name", where);
  check_folder_names(label_list, "method label", where);
  const double runs = static_cast<double>(s.tasks.size()) * static_cast<double>(s.methods.size()) *
                      static_cast<double>(s.seeds.size());
  XFER_CHECK(runs <= kMaxSuiteRuns, where, " asks for ", runs, " runs (", s.tasks.size(), " tasks x ",
             s.methods.size(), " methods x ", s.seeds.size(), " seeds); at most ", kMaxSuiteRuns, " are run");
  // A task's method options go to the methods that have them; one that no method has is a typo.
  for (size_t i = 0; i < s.tasks.size(); ++i)
    for (const auto& [key, value] : s.tasks[i].options.items()) {
      bool used = false;
      for (const auto& m : s.methods) used = used || method_option_names(m.method).count(key) > 0;
      XFER_CHECK(used, where, ".tasks[", i, "].options: no method of the suite has the option '", key, "'");
    }

  if (j.contains("tables")) {
    XFER_CHECK(j["tables"].is_array(), where, ".tables must be a list, got ", j["tables"].dump());
    for (size_t i = 0; i < j["tables"].size(); ++i) s.tables.push_back(parse_table(s, j["tables"][i], cat(where, ".tables[", i, "]")));
  }

  if (j.contains("timing")) {
    const auto& t = j["timing"];
    if (t.is_boolean()) {
      s.timing = t.get<bool>();
    } else {
      suite_check_keys(t, {"task", "steps"}, where + ".timing");
      s.timing_task = suite_string(t, "task", where + ".timing", false);
      XFER_CHECK(s.timing_task.empty() || task_names.count(s.timing_task), where, ".timing.task: no task named '",
                 s.timing_task, "'");
      XFER_CHECK(!t.contains("steps") || t["steps"].is_number_integer(), where, ".timing.steps must be an integer, got ",
                 t.value("steps", nlohmann::json()).dump());
      s.timing_steps = t.value("steps", int64_t{60});
      XFER_CHECK(s.timing_steps >= 1 && s.timing_steps <= 100000, where, ".timing.steps must be in [1, 100000], got ",
                 s.timing_steps);
    }
  }
  // Every run's options are checked now, not when its turn comes.
  plan_runs(s, "runs/check", "");
  // A sweep reports the point best on validation: every task needs a validation split.
  for (const auto& m : s.methods)
    for (const auto& t : s.tasks)
      if (!m.sweep.is_null()) {
        const DatasetSpec spec = DatasetSpec::parse(t.target);
        XFER_CHECK(spec.val_count > 0 || spec.val_fraction > 0, where, ": method '", m.label, "' sweeps and keeps the ",
                   "point best on validation, but task '", t.name, "' (", t.target, ") has no validation split: add val=N");
      }
  return s;
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
  const Suite suite = load_suite(opts.suite);
  const std::string dir = opts.out.empty() ? (fs::path("runs") / ("bench-" + suite.name)).string() : opts.out;
  const std::vector<RunRequest> plan = plan_runs(suite, dir, opts.cache);
  const std::string exe = opts.executable.empty() ? self_executable() : opts.executable;
  const int64_t threads =
      opts.threads > 0 ? opts.threads : std::max<int64_t>(1, available_cores() / std::max<int64_t>(1, opts.jobs));
  make_dirs(dir);
  const double start = now_seconds();
  out << "Suite " << suite.name << ": " << suite.description << "\n"
      << plan.size() << " runs (" << suite.methods.size() << " methods x " << suite.tasks.size() << " tasks x "
      << suite.seeds.size() << " seeds), " << opts.jobs << " at a time with " << threads << " threads each; output in "
      << dir << "\n";
  for (const auto& n : suite.notes) out << "note: " << n << "\n";

  // Source models first, in this process, one per distinct recipe (in order: one may need another).
  std::set<std::string> pretrained;
  for (const auto& q : plan)
    for (const auto& recipe : q.pretrains)
      if (pretrained.insert(recipe.dump()).second) {
        RunOptions p = suite_pretrain_options(recipe, "pretrain");
        p.threads = 0;
        cached_pretrain(p, opts.cache, out);
      }

  std::vector<RunRecord> records(plan.size());
  std::deque<size_t> pending;
  int64_t skipped = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (already_done(plan[i])) {
      records[i] = record_of(plan[i]);
      ++skipped;
    } else {
      pending.push_back(i);
    }
  }
  if (skipped) out << skipped << " runs already finished with the same options: skipped\n";
  std::map<pid_t, size_t> running;
  Progress progress("bench", static_cast<int64_t>(plan.size()));
  int64_t finished = skipped;
  while (!pending.empty() || !running.empty()) {
    while (!pending.empty() && static_cast<int64_t>(running.size()) < opts.jobs) {
      const size_t i = pending.front();
      pending.pop_front();
      const RunRequest& q = plan[i];
      const fs::path request = fs::path(q.dir) / "request.json";
      // A search resumes its study when re-run with the same request; another request starts afresh.
      if (!q.search.is_null() && fs::exists(request) && read_json_file(request.string()) != q.config)
        fs::remove_all(q.dir);
      make_dirs(q.dir);
      fs::remove(fs::path(q.dir) / "result.json");
      write_json_file(request.string(), q.config);
      const std::string log = (fs::path(q.dir) / "run.log").string();
      fs::remove(log);
      std::vector<std::string> args = {exe, q.search.is_null() ? "finetune" : "search", "--config", request.string(),
                                       "--out", q.dir, "--threads", std::to_string(threads)};
      if (q.search.is_null()) args.push_back("--overwrite");
      else for (const auto& a : search_arguments(q.search)) args.push_back(a);
      running[spawn_process(args, log, log)] = i;
    }
    const ExitStatus st = wait_process(-1, /*interruptible=*/true);
    if (st.pid < 0) {  // SIGINT/SIGTERM: the runs in flight checkpoint and stop; a re-run redoes them
      std::vector<pid_t> pids;
      for (const auto& [pid, i] : running) pids.push_back(pid);
      stop_processes(pids);
      progress.finish();
      throw_if_stop_requested(cat("the suite, with ", finished, " of ", plan.size(),
                                  " runs finished (run the same command to continue),"));
    }
    auto it = running.find(st.pid);
    if (it == running.end()) continue;
    const size_t i = it->second;
    running.erase(it);
    if (st.ok() && !plan[i].search.is_null()) adopt_best_trial(plan[i].dir);
    records[i] = record_of(plan[i]);
    if (!st.ok() || !records[i].ok) {
      records[i].ok = false;
      records[i].error = run_error((fs::path(plan[i].dir) / "run.log").string(), st);
    }
    ++finished;
    const RunRecord& r = records[i];
    progress.message(cat(r.method, " on ", r.task, ", seed ", r.seed, ": ",
                         r.ok ? cat("test top-1 ", fixed(100 * r.test_top1, 1), "%") : "FAILED: " + r.error));
    progress.update(finished, "");
  }
  progress.finish();

  std::vector<std::string> task_names, labels;
  for (const auto& t : suite.tasks) task_names.push_back(t.name);
  for (const auto& m : suite.methods) labels.push_back(m.label);
  std::vector<std::string> notes = suite.notes;
  const std::vector<RunRecord> cells = best_of_sweeps(plan, records, notes);
  for (const auto& line : search_compute(plan)) notes.push_back("compute: " + line);
  std::ostringstream md;
  md << "# " << suite.name << "\n\n" << suite.description << "\n\nTest top-1 (%), mean ± std over "
     << suite.seeds.size() << " seeds; best per column in bold.\n\n"
     << summary_table(cells, task_names, labels, "test_top1") << "\nMean per-class accuracy (%).\n\n"
     << summary_table(cells, task_names, labels, "test_mean_class");
  for (const auto& n : notes) md << "\nNote: " << n << "\n";
  std::vector<RunRecord> all_runs = records;  // results.csv keeps every sweep point, named by it
  for (size_t i = 0; i < plan.size(); ++i)
    if (!plan[i].point.empty()) all_runs[i].method += " [" + plan[i].point + "]";
  write_file_atomic((fs::path(dir) / "results.csv").string(), records_csv(all_runs));
  write_file_atomic((fs::path(dir) / "table.md").string(), md.str());
  out << "\n" << md.str();
  if (!suite.tables.empty()) {
    const std::string tables = suite_tables(suite, plan, records, threads, out);
    md << tables;
    write_file_atomic((fs::path(dir) / "table.md").string(), md.str());
    out << tables;
  }

  std::string timing;
  if (opts.timing && suite.timing) {
    timing = measure_timing(suite, plan, opts.cache, out);
    write_file_atomic((fs::path(dir) / "timing.md").string(), timing);
    out << "\n" << timing;
  }
  int64_t failed = 0;
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : all_runs) {
    failed += r.ok ? 0 : 1;
    runs.push_back({{"task", r.task}, {"method", r.method}, {"seed", r.seed}, {"ok", r.ok}, {"error", r.error},
                    {"test_top1", r.test_top1}, {"test_mean_class", r.test_mean_class}, {"dir", r.dir}});
  }
  const nlohmann::json bench = {{"suite", suite.name}, {"description", suite.description},
                                {"xfer_version", kVersion}, {"tasks", task_names},
                                {"methods", labels}, {"seeds", suite.seeds},
                                {"notes", notes}, {"runs", runs},
                                {"failed", failed}, {"seconds", now_seconds() - start}};
  write_json_file((fs::path(dir) / "bench.json").string(), bench);
  out << "\nDone in " << fixed((now_seconds() - start) / 60, 1) << " min" << (failed ? cat(", ", failed, " runs failed") : "")
      << ". Tables in " << (fs::path(dir) / "table.md").string() << "\n";
  return bench;
}

}  // namespace xfer
