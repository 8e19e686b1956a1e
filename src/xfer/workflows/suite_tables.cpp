#include "xfer/workflows/suite_tables.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/stats.h"
#include "xfer/core/version.h"
#include "xfer/methods/registry.h"
#include "xfer/report/table.h"
#include "xfer/workflows/analyze.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/timing.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// The values an analysis gave for one table row, over the seeds, and the errors met.
struct SuiteRow {
  std::map<std::string, std::vector<double>> values;  // column -> one value per seed
  std::vector<std::string> errors;
};

/// "mean ± std" of a column over the seeds that gave it, "(n/m)" when some did not, "-" when none did.
std::string suite_cell(const SuiteRow& row, const std::string& column, size_t seeds, double scale,
                       int precision) {
  const auto it = row.values.find(column);
  if (it == row.values.end() || it->second.empty()) return "-";
  std::string cell = format_mean_std(mean_std(it->second), scale, precision);
  if (it->second.size() < seeds) cell += cat(" (", it->second.size(), "/", seeds, ")");
  return cell;
}

/// The source task of a forgetting table: its "source", the task's, or the task's pre-training source.
std::string suite_forgetting_source(const Suite& s, const SuiteTable& t) {
  if (t.options.contains("source")) return t.options["source"].get<std::string>();
  const SuiteTask& task =
      *std::find_if(s.tasks.begin(), s.tasks.end(), [&](const SuiteTask& x) { return x.name == t.task; });
  if (!task.source.empty()) return task.source;
  const nlohmann::json pretrain =
      task.pretrain.is_object() ? suite_merged(s.pretrain, task.pretrain) : s.pretrain;
  XFER_CHECK(pretrain.is_object(), "suite ", s.name, ": the forgetting table of task '", t.task,
             "' needs a source: ", "give it \"source\", or the task a source");
  return PretrainPlan::from_json(pretrain, "suite " + s.name + " (pretrain)").opts.source;
}

/// Runs `analyze` on every finished run of each of the table's methods, in this process; `collect` turns an
/// analysis.json into the row's values.
std::map<std::string, SuiteRow> suite_analyse(
    const SuiteTable& t, const std::vector<RunRequest>& plan, const std::vector<RunRecord>& records,
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
                                   const std::vector<RunRecord>& records, int64_t threads,
                                   std::ostream& out) {
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
  return cat("Test top-1 (%) of a fresh linear head on the frozen backbone, trained on the source task ",
             source,
             " (XMixup Table 2): its classes in the auxiliary set (Auxiliary), the others (ABA) and all; "
             "mean ± std ",
             "over ", s.seeds.size(), " seeds, task '", t.task, "'.\n\n", table.markdown(), notes);
}

/// SMILE Table 6: Label-IL and Feature-IL of every run on each split.
std::string suite_interpolation_table(const Suite& s, const SuiteTable& t,
                                      const std::vector<RunRequest>& plan,
                                      const std::vector<RunRecord>& records, int64_t threads,
                                      std::ostream& out) {
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
  return cat(
      "Interpolation losses (SMILE Eq. 7, Table 6; lower is more linear): Label-IL on the target head's ",
      label_output,
      ", Feature-IL on the pooled features, each the mean over random pairs of a split's images; ",
      "mean ± std over ", s.seeds.size(), " seeds, task '", t.task, "'.\n\n", table.markdown(), notes);
}

}  // namespace

std::vector<RunRecord> best_of_sweeps(const std::vector<RunRequest>& plan,
                                      const std::vector<RunRecord>& records,
                                      std::vector<std::string>& notes) {
  std::vector<RunRecord> out;
  std::map<std::tuple<std::string, std::string, int64_t>, size_t>
      cell;                                   // (task, label, seed) -> index in out
  std::map<std::string, std::string> chosen;  // label -> "task seed: point; ..."
  std::map<size_t, std::string> point_of;     // index in out -> its point
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
    text +=
        cat(text.empty() ? "" : "; ", std::get<0>(key), " seed ", std::get<2>(key), ": ", point_of[index]);
  }
  for (const auto& [label, text] : chosen)
    notes.push_back(cat("'", label, "' reports per cell the sweep point best on validation: ", text));
  return out;
}

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
    const nlohmann::json doc = read_json_file(best.string());
    const nlohmann::json c =
        doc.is_object() ? doc.value("compute", nlohmann::json::object()) : nlohmann::json();
    XFER_CHECK(c.is_object(), best.string(), ": not a search result (no \"compute\" object)");
    if (!by_label.count(q.label)) order.push_back(q.label);
    Sum& s = by_label[q.label];
    ++s.cells;
    const std::string where = best.string() + ": compute.";
    s.trials += json_int_or(c, "trials", 0, where + "trials");
    s.pruned += json_int_or(c, "pruned", 0, where + "pruned");
    s.steps += json_int_or(c, "steps", 0, where + "steps");
    const nlohmann::json seconds = c.value("run_seconds", nlohmann::json(0.0));
    XFER_CHECK(seconds.is_number(), where, "run_seconds must be a number, got ", seconds.dump());
    s.seconds += seconds.get<double>();
  }
  std::vector<std::string> lines;
  for (const auto& label : order) {
    const Sum& s = by_label[label];
    lines.push_back(cat("'", label, "' searched ", s.cells, " cells: ", s.trials, " trials (", s.pruned,
                        " pruned), ", s.steps, " training steps, ", fixed(s.seconds / 3600, 2),
                        " h of trial run time in all; per cell ",
                        fixed(static_cast<double>(s.trials) / s.cells, 1), " trials, ", s.steps / s.cells,
                        " steps, ", fixed(s.seconds / 60 / s.cells, 1), " min"));
  }
  return lines;
}

std::string suite_main_tables(const Suite& s, const std::vector<RunRecord>& cells,
                              const std::vector<std::string>& notes) {
  std::vector<std::string> task_names, labels;
  for (const auto& t : s.tasks) task_names.push_back(t.name);
  for (const auto& m : s.methods) labels.push_back(m.label);
  std::ostringstream md;
  md << "# " << s.name << "\n\n"
     << s.description << "\n\nTest top-1 (%), mean ± std over " << s.seeds.size()
     << " seeds; best per column in bold.\n\n"
     << summary_table(cells, task_names, labels, "test_top1") << "\nMean per-class accuracy (%).\n\n"
     << summary_table(cells, task_names, labels, "test_mean_class");
  for (const auto& n : notes) md << "\nNote: " << n << "\n";
  return md.str();
}

std::string suite_tables(const Suite& s, const std::vector<RunRequest>& plan,
                         const std::vector<RunRecord>& records, int64_t threads, std::ostream& out) {
  std::string md;
  for (const auto& t : s.tables) {
    out << "Table '" << (t.title.empty() ? t.kind : t.title) << "' (" << t.kind << ", task " << t.task
        << ") ..." << std::endl;
    std::string body;
    if (t.kind == "forgetting")
      body = suite_forgetting_table(s, t, plan, records, threads, out);
    else if (t.kind == "interpolation")
      body = suite_interpolation_table(s, t, plan, records, threads, out);
    else
      body = cat("Test top-1 (%), mean ± std over ", s.seeds.size(), " seeds.\n\n",
                 summary_table(records, {t.task}, t.methods, "test_top1"));
    md += cat("\n## ", t.title.empty() ? t.kind : t.title, "\n\n", body);
  }
  return md;
}

std::string measure_timing(const Suite& s, const std::vector<RunRequest>& plan, const std::string& cache,
                           std::ostream& out) {
  const std::string task = s.timing_task.empty() ? s.tasks.front().name : s.timing_task;
  std::vector<const RunRequest*> chosen;
  std::set<std::string> timed;  // a sweep's first point stands for it
  for (const auto& q : plan)
    if (q.task == task && q.seed == s.seeds.front() && timed.insert(q.label).second) chosen.push_back(&q);
  // l2 is the reference; time it even when the suite does not list it, if it can run here.
  RunRequest reference;
  const bool has_l2 = std::any_of(chosen.begin(), chosen.end(),
                                  [](const RunRequest* q) { return q->config["method"] == "l2"; });
  if (!has_l2 && !chosen.empty() && s.pretrain.is_object()) {
    const RunRequest& any = *chosen.front();
    reference = any;
    reference.label = "l2 (reference)";
    reference.config["method"] = "l2";
    reference.config["method_options"] = nlohmann::json::object();
    reference.config["init"] = cached_pretrain_dir(PretrainPlan::from_json(s.pretrain, "timing"), cache);
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
  return cat("Time per training step on task '", task, "' (", s.timing_steps,
             " steps each, interleaved in blocks ", "of ", t.block, " in one process, median; ",
             runs.front()->threads, " threads)\n\n", table.markdown());
}

nlohmann::json bench_json(const Suite& s, const std::vector<RunRecord>& runs,
                          const std::vector<std::string>& notes, double seconds) {
  std::vector<std::string> task_names, labels;
  for (const auto& t : s.tasks) task_names.push_back(t.name);
  for (const auto& m : s.methods) labels.push_back(m.label);
  int64_t failed = 0;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& r : runs) {
    failed += r.ok ? 0 : 1;
    list.push_back({{"task", r.task},
                    {"method", r.method},
                    {"seed", r.seed},
                    {"ok", r.ok},
                    {"error", r.error},
                    {"test_top1", r.test_top1},
                    {"test_mean_class", r.test_mean_class},
                    {"dir", r.dir}});
  }
  return {{"suite", s.name},          {"description", s.description},
          {"xfer_version", kVersion}, {"tasks", task_names},
          {"methods", labels},        {"seeds", s.seeds},
          {"notes", notes},           {"runs", list},
          {"failed", failed},         {"seconds", seconds}};
}

}  // namespace xfer
