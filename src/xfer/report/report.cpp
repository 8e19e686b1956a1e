#include "xfer/report/report.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/data/spec.h"
#include "xfer/report/figures.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Text from the data as one line of Markdown: no line breaks, and no brackets that would end a link.
std::string md_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    out += u < 0x20 || u == 0x7f ? ' ' : c == '[' ? '(' : c == ']' ? ')' : c;
  }
  return out;
}

/// A plot's file name from a name in the data: letters, digits and '_' only.
std::string file_name(const std::string& s) {
  std::string name;
  for (char c : s) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return name.substr(0, 64);
}

class ReportWriter {
 public:
  explicit ReportWriter(fs::path dir) : dir_(std::move(dir)) {}

  /// Draws a plot to NAME.png beside the report and links it; notes why when it cannot. A plot without
  /// data is left out.
  void plot(const std::string& name, const Plot& p) {
    if (p.series.empty()) return;
    drawn(name, p.title, write_plot((dir_ / (name + ".png")).string(), p));
  }
  void heatmap(const std::string& name, const Heatmap& h) {
    if (h.values.empty()) return;
    drawn(name, h.title, write_heatmap((dir_ / (name + ".png")).string(), h));
  }
  /// Links a picture another command drew into the directory (a search's history.png).
  void link(const std::string& file, const std::string& title) {
    if (fs::is_regular_file(dir_ / file)) md_ << "![" << title << "](" << file << ")\n\n";
  }
  std::ostringstream& md() { return md_; }
  nlohmann::json finish() {
    const std::string path = (dir_ / "report.md").string();
    std::string text = md_.str();
    for (const auto& n : notes_) text += "\n> " + n + "\n";
    write_file_atomic(path, text);
    return {{"report", path}, {"plots", plots_}, {"notes", notes_}};
  }

 private:
  void drawn(const std::string& name, const std::string& title, bool ok) {
    if (ok) {
      md_ << "![" << md_text(title) << "](" << name << ".png)\n\n";
      plots_.push_back(name + ".png");
      return;
    }
    const std::string n = "Plots skipped: gnuplot is not installed (Debian package gnuplot-nox).";
    if (std::find(notes_.begin(), notes_.end(), n) == notes_.end()) notes_.push_back(n);
  }
  fs::path dir_;
  std::ostringstream md_;
  std::vector<std::string> plots_, notes_;
};

/// A run directory named in a JSON file of `dir`: the path as recorded is relative to where the command ran
/// and the directory may have moved since, so its last `tail` components under `dir` come first (never
/// climbing out with ".."), then the path as recorded. Empty when neither is a directory.
fs::path locate_run(const fs::path& dir, const nlohmann::json& recorded, size_t tail) {
  if (!recorded.is_string() || recorded.get<std::string>().empty()) return {};
  const fs::path path(recorded.get<std::string>());
  std::vector<fs::path> parts;
  for (const auto& c : path.lexically_normal())
    if (!c.empty()) parts.push_back(c);
  if (parts.size() >= tail) {
    fs::path inside = dir;
    bool plain = true;
    for (size_t i = parts.size() - tail; i < parts.size(); ++i) {
      plain = plain && parts[i] != ".." && parts[i] != "." && parts[i] != "/";
      inside /= parts[i];
    }
    if (plain && fs::is_directory(inside)) return inside;
  }
  return fs::is_directory(path) ? path : fs::path();
}

nlohmann::json read_result(const fs::path& run) {
  const fs::path file = run / "result.json";
  return fs::is_regular_file(file) ? read_json_file(file.string()) : nlohmann::json::object();
}

/// The labelled examples per class of a target spec; nothing when the spec does not parse or gives none.
std::optional<int64_t> spec_per_class(const nlohmann::json& target) {
  if (!target.is_string()) return std::nullopt;
  try {
    return DatasetSpec::parse(target.get<std::string>()).per_class;
  } catch (const BadInput&) {
    return std::nullopt;
  }
}

/// A target spec without its per_class= key: the task that sizes of a comparison share.
std::string without_per_class(const std::string& spec) {
  std::string out, part;
  std::istringstream in(spec);
  while (std::getline(in, part, ':'))
    if (part.rfind("per_class=", 0) != 0) out += (out.empty() ? "" : ":") + part;
  return out;
}

std::string percent(const nlohmann::json& v) {
  return v.is_number() ? fixed(100 * v.get<double>(), 2) + "%" : "-";
}

/// The result of a run as a two-column table.
void result_table(std::ostringstream& md, const nlohmann::json& r) {
  Table t({"field", "value"});
  auto text = [&r](const char* key) {
    return r.contains(key) && r[key].is_string() ? r[key].get<std::string>() : "";
  };
  auto integer = [&r](const char* key) {
    return r.contains(key) && r[key].is_number() ? r[key].dump() : "-";
  };
  auto value = [&r](const char* key) { return r.contains(key) ? r[key] : nlohmann::json(); };
  t.add_row({"method", text("method")});
  t.add_row({"target", text("target")});
  t.add_row({"seed", integer("seed")});
  t.add_row({"test top-1", percent(value("test_top1"))});
  if (r.contains("test") && r["test"].is_object() && r["test"].contains("top5"))
    t.add_row({"test top-5", percent(r["test"]["top5"])});
  t.add_row({"test mean per-class accuracy", percent(value("test_mean_class"))});
  t.add_row({"best validation top-1", percent(value("best_val_top1"))});
  t.add_row({"iterations", integer("iterations")});
  t.add_row(
      {"time per step", value("step_ms").is_number() ? fixed(r["step_ms"].get<double>(), 2) + " ms" : "-"});
  md << t.markdown() << "\n";
}

/// The figures of one run: learning curves from metrics.jsonl, test results from result.json.
void run_figures(ReportWriter& w, const fs::path& run, const nlohmann::json& result,
                 const std::string& prefix, const std::string& title) {
  const auto lines = read_metrics((run / "metrics.jsonl").string());
  auto& md = w.md();
  if (!lines.empty()) {
    md << "## Learning curves\n\n";
    w.plot(prefix + "loss", loss_plot(lines, title + ": training loss, parts as they enter the total"));
    for (const auto& [group, p] : group_plots(lines, title)) w.plot(prefix + "loss_" + file_name(group), p);
    w.plot(prefix + "lr", lr_plot(lines, title + ": learning rate"));
    w.plot(prefix + "accuracy", accuracy_plot(lines, title + ": accuracy during training"));
  }
  const Heatmap confusion = confusion_heatmap(result, title + ": test confusion matrix");
  const Plot per_class =
      per_class_plot(result, cat(title, ": test accuracy per class (mean ",
                                 percent(result.value("test_mean_class", nlohmann::json())), ")"));
  if (!confusion.values.empty() || !per_class.series.empty()) md << "## Test results\n\n";
  w.heatmap(prefix + "confusion", confusion);
  w.plot(prefix + "per_class", per_class);
}

void run_report(ReportWriter& w, const fs::path& dir) {
  auto& md = w.md();
  const std::string name = dir.filename().string();
  md << "# Run " << md_text(name) << "\n\n";
  const nlohmann::json result = read_result(dir);
  if (fs::exists(dir / "result.json"))
    result_table(md, result);
  else
    md << "No result.json yet: the run has not finished.\n\n";
  run_figures(w, dir, result, "", name);

  if (fs::exists(dir / "pairing.json")) {
    const auto p = read_json_file((dir / "pairing.json").string());
    if (p.contains("similarity") && p.contains("target_classes") && p.contains("source_classes")) {
      md << "## Auxiliary pairing\n\n";
      Heatmap h;
      h.title = "cosine similarity of class centroids";
      h.xlabel = "source class";
      h.ylabel = "target class";
      h.values = p["similarity"].get<std::vector<std::vector<double>>>();
      h.row_labels = p["target_classes"].get<std::vector<std::string>>();
      h.column_labels = p["source_classes"].get<std::vector<std::string>>();
      h.value_label = "cosine similarity";
      w.heatmap("pairing", h);
    }
  }
  if (fs::exists(dir / "weights.json")) {
    const auto j = read_json_file((dir / "weights.json").string());
    if (j.contains("classes") && j["classes"].is_array()) {
      std::vector<std::pair<double, std::string>> ws;
      for (const auto& c : j["classes"])
        if (c.contains("weight") && c.contains("name"))
          ws.emplace_back(c["weight"].get<double>(), c["name"].get<std::string>());
      std::sort(ws.rbegin(), ws.rend());
      Plot p;
      p.title = "importance weights w(y) = P_t(y) / P_s(y)";
      p.xlabel = "source class";
      p.ylabel = "weight";
      p.style = "bars";
      Series s;
      for (size_t i = 0; i < ws.size(); ++i) {
        s.x.push_back(static_cast<double>(i));
        s.y.push_back(ws[i].first);
        p.xtics.push_back(ws[i].second);
      }
      if (!ws.empty()) {
        p.series.push_back(s);
        md << "## Importance weights\n\n";
        w.plot("weights", p);
      }
    }
  }
}

/// Accuracy against labels per class for each task (a target spec without per_class=) that runs of several
/// sizes share; with a single task, also for one size.
void comparison_figures(ReportWriter& w, const std::vector<std::pair<std::string, nlohmann::json>>& results,
                        const std::vector<std::string>& methods) {
  std::map<std::string, std::vector<LabelledRun>> by_task;
  std::vector<std::string> tasks;
  for (const auto& [method, r] : results) {
    const auto size = spec_per_class(r.value("target", nlohmann::json()));
    if (!size || !r.contains("test_top1") || !r["test_top1"].is_number()) continue;
    const std::string task = without_per_class(r["target"].get<std::string>());
    if (!by_task.count(task)) tasks.push_back(task);
    by_task[task].push_back({method, *size, r["test_top1"].get<double>()});
  }
  int drawn = 0;
  for (const auto& task : tasks) {
    std::set<int64_t> sizes;
    for (const auto& r : by_task[task]) sizes.insert(r.per_class);
    if (sizes.size() < 2 && tasks.size() > 1) continue;  // one size of many tasks: the bar chart shows it
    if (drawn == 0) w.md() << "## Accuracy against labels per class\n\n";
    ++drawn;
    w.plot(drawn == 1 ? "accuracy_vs_labels" : cat("accuracy_vs_labels_", drawn),
           accuracy_vs_labels(by_task[task], methods, "test top-1 against labels per class: " + task));
  }
}

void demo_report(ReportWriter& w, const fs::path& dir) {
  const auto demo = read_json_file((dir / "demo.json").string());
  auto& md = w.md();
  md << "# Demo\n\n";
  if (fs::is_regular_file(dir / "table.md")) md << read_file((dir / "table.md").string()) << "\n";
  std::vector<std::string> methods;
  for (const auto& e : demo.value("summary", nlohmann::json::array()))
    if (e.is_object() && e.contains("method") && e["method"].is_string())
      methods.push_back(e["method"].get<std::string>());
  std::vector<std::pair<std::string, nlohmann::json>> results;
  std::map<int64_t, std::vector<std::pair<std::string, nlohmann::json>>> by_size;
  for (const auto& r : demo.value("runs", nlohmann::json::array())) {
    if (!r.is_object() || !r.contains("method") || !r["method"].is_string()) continue;
    results.emplace_back(r["method"].get<std::string>(), r);
    if (const auto size = spec_per_class(r.value("target", nlohmann::json())))
      by_size[*size].push_back(results.back());
  }
  comparison_figures(w, results, methods);
  if (!by_size.empty()) md << "## Test accuracy per class\n\n";
  for (const auto& [size, rs] : by_size)
    w.heatmap(cat("per_class_n", size), per_class_by_method(rs, methods,
                                                            cat("test accuracy per class with ", size,
                                                                " labels per class (mean over seeds)")));
  md << "Each run is a directory METHOD/nSIZE-sSEED here; `xfer report` on one draws its learning curves and "
        "confusion matrix.\n";
}

void bench_report(ReportWriter& w, const fs::path& dir) {
  const auto bench = read_json_file((dir / "bench.json").string());
  auto& md = w.md();
  md << "# Benchmark " << md_text(bench.value("suite", "")) << "\n\n"
     << bench.value("description", "") << "\n\n";
  if (fs::exists(dir / "table.md")) {
    std::string table = read_file((dir / "table.md").string());
    if (table.rfind("# ", 0) == 0) table = table.substr(table.find('\n') + 1);  // its own title
    md << "## Accuracy\n" << table << "\n";
  }
  const auto tasks = bench.value("tasks", std::vector<std::string>{});
  const auto labels = bench.value("methods", std::vector<std::string>{});
  const nlohmann::json runs = bench.value("runs", nlohmann::json::array());
  // Per-method accuracy with error bars: one series per task, one bar per method.
  Plot acc;
  acc.title = "test top-1 (mean ± std over seeds)";
  acc.ylabel = "top-1 (%)";
  acc.style = "bars";
  acc.xtics = labels;
  for (const auto& t : tasks) {
    Series s;
    s.name = t;
    for (size_t m = 0; m < labels.size(); ++m) {
      std::vector<double> v;
      for (const auto& r : runs)
        if (r.at("task") == t && r.at("method") == labels[m] && r.at("ok").get<bool>())
          v.push_back(100 * r.at("test_top1").get<double>());
      if (v.empty()) continue;
      const MeanStd ms = mean_std(v);
      s.x.push_back(static_cast<double>(m));
      s.y.push_back(ms.mean);
      s.err.push_back(ms.std);
    }
    if (!s.y.empty()) acc.series.push_back(s);
  }
  w.plot("accuracy", acc);
  if (fs::exists(dir / "timing.md"))
    md << "## Time per step\n\n" << read_file((dir / "timing.md").string()) << "\n";

  // Each successful run's directory (runs/TASK/METHOD/seedN here) and result.json.
  struct Found {
    std::string task, label;
    fs::path dir;
    nlohmann::json result;
  };
  std::vector<Found> found;
  for (const auto& r : runs) {
    if (!r.at("ok").get<bool>()) continue;
    const fs::path run = locate_run(dir, r.value("dir", nlohmann::json()), 4);
    if (!run.empty())
      found.push_back(
          {r.at("task").get<std::string>(), r.at("method").get<std::string>(), run, read_result(run)});
  }
  std::vector<std::pair<std::string, nlohmann::json>> results;
  for (const auto& f : found) results.emplace_back(f.label, f.result);
  comparison_figures(w, results, labels);
  bool heading = false;
  for (size_t t = 0; t < tasks.size() && t < 20; ++t) {
    std::vector<std::pair<std::string, nlohmann::json>> rs;
    for (const auto& f : found)
      if (f.task == tasks[t]) rs.emplace_back(f.label, f.result);
    const Heatmap h =
        per_class_by_method(rs, labels, "test accuracy per class on " + tasks[t] + " (mean over seeds)");
    if (h.values.empty()) continue;
    if (!heading) md << "## Test accuracy per class\n\n";
    heading = true;
    w.heatmap(cat("per_class_task", t + 1), h);
  }
  // Validation curves of each method's first run on the first task.
  if (!tasks.empty()) {
    Plot val;
    val.title = "validation top-1 on " + tasks.front() + " (first seed)";
    val.xlabel = "step";
    val.ylabel = "top-1 (%)";
    val.style = "linespoints";  // markers tell apart methods whose curves coincide
    for (const auto& label : labels)
      for (const auto& f : found)
        if (f.task == tasks.front() && f.label == label) {
          Series s;
          for (const auto& l : read_metrics((f.dir / "metrics.jsonl").string()))
            if (l.contains("val_top1") && l["val_top1"].is_number()) {
              s.x.push_back(l["step"].get<double>());
              s.y.push_back(100 * l["val_top1"].get<double>());
            }
          s.name = label;
          if (!s.y.empty()) val.series.push_back(s);
          break;
        }
    if (!val.series.empty()) {
      md << "## Validation curves\n\n";
      w.plot("val_curves", val);
    }
  }
}

/// A search directory (xfer search --out): its best trial, the plots the search drew, the best trial's
/// figures.
void search_report(ReportWriter& w, const fs::path& dir) {
  const auto best = read_json_file((dir / "best.json").string());
  auto& md = w.md();
  md << "# Search " << md_text(dir.filename().string()) << "\n\n";
  Table t({"field", "value"});
  auto value = [&best](const char* key) { return best.contains(key) ? best[key] : nlohmann::json(); };
  t.add_row({"trials", cat(value("trials").dump(), " (", value("complete").dump(), " complete, ",
                           value("failed").dump(), " failed)")});
  t.add_row({"best trial", value("trial").dump()});
  t.add_row({"its validation top-1", percent(value("val_top1"))});
  t.add_row({"its test top-1", percent(value("test_top1"))});
  t.add_row({"its parameters", md_text(value("params").dump())});
  md << t.markdown() << "\n";
  w.link("history.png", "every trial's validation top-1 and the best so far");
  w.link("schedules.png", "lambda(t) of the best trials");
  const fs::path run = locate_run(dir, value("run_dir"), 2);  // trials/NNNN
  if (run.empty()) {
    md << "The best trial's run directory is not there any more.\n";
    return;
  }
  md << "# Best trial (" << md_text(run.filename().string()) << ")\n\n";
  const nlohmann::json result = read_result(run);
  result_table(md, result);
  run_figures(w, run, result, "best_", "best trial " + run.filename().string());
}

}  // namespace

nlohmann::json write_report(const std::string& path) {
  const fs::path dir(path);
  XFER_CHECK(fs::is_directory(dir), "report: ", path, " is not a directory");
  ReportWriter w(dir);
  try {
    if (fs::exists(dir / "bench.json"))
      bench_report(w, dir);
    else if (fs::exists(dir / "demo.json"))
      demo_report(w, dir);
    else if (fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "result.json"))
      run_report(w, dir);
    else if (fs::exists(dir / "best.json"))
      search_report(w, dir);
    else
      throw BadInput(cat("report: ", path,
                         " is not a run (metrics.jsonl), bench (bench.json), demo (demo.json) ",
                         "or search (best.json) directory"));
  } catch (
      const nlohmann::json::exception& e) {  // a file of the wrong shape: a value missing or of another type
    throw BadInput(cat("report: ", path, ": a JSON file there is not what xfer writes (", e.what(), ")"));
  }
  return w.finish();
}

}  // namespace xfer
