#include "xfer/report/report.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Every line of metrics.jsonl as JSON (malformed lines are skipped).
std::vector<nlohmann::json> read_metrics(const fs::path& file) {
  std::vector<nlohmann::json> lines;
  if (!fs::exists(file)) return lines;
  std::istringstream in(read_file(file.string()));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded() && j.is_object() && j.contains("step") && j["step"].is_number()) lines.push_back(std::move(j));
  }
  return lines;
}

/// The series of `key` over steps, from the lines that have it.
Series metric_series(const std::vector<nlohmann::json>& lines, const std::string& key, const std::string& name,
                     double scale = 1.0) {
  Series s{name, {}, {}, {}};
  for (const auto& l : lines)
    if (l.contains(key) && l[key].is_number()) {
      s.x.push_back(l["step"].get<double>());
      s.y.push_back(scale * l[key].get<double>());
    }
  return s;
}

/// Keys of the logged loss parts (everything numeric but the bookkeeping fields).
std::vector<std::string> part_keys(const std::vector<nlohmann::json>& lines) {
  static const std::set<std::string> bookkeeping = {"step", "lr", "loss", "samples_per_s", "elapsed_s",
                                                    "val_top1", "val_mean_class"};
  std::set<std::string> keys;
  for (const auto& l : lines)
    for (const auto& [k, v] : l.items())
      if (v.is_number() && !bookkeeping.count(k)) keys.insert(k);
  return {keys.begin(), keys.end()};
}

class ReportWriter {
 public:
  explicit ReportWriter(fs::path dir) : dir_(std::move(dir)) {}

  /// Draws a plot to NAME.png beside the report and links it; notes why when it cannot.
  void plot(const std::string& name, const Plot& p) {
    if (p.series.empty()) return;
    if (write_plot((dir_ / (name + ".png")).string(), p)) {
      md_ << "![" << p.title << "](" << name << ".png)\n\n";
      plots_.push_back(name + ".png");
    } else {
      note_no_gnuplot();
    }
  }
  void heatmap(const std::string& name, const Heatmap& h) {
    if (write_heatmap((dir_ / (name + ".png")).string(), h)) {
      md_ << "![" << h.title << "](" << name << ".png)\n\n";
      plots_.push_back(name + ".png");
    } else {
      note_no_gnuplot();
    }
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
  void note_no_gnuplot() {
    const std::string n = "Plots skipped: gnuplot is not installed (Debian package gnuplot-nox).";
    if (std::find(notes_.begin(), notes_.end(), n) == notes_.end()) notes_.push_back(n);
  }
  fs::path dir_;
  std::ostringstream md_;
  std::vector<std::string> plots_, notes_;
};

/// Learning curves of one run: loss and its parts, grouped parts, validation accuracy.
void run_curves(ReportWriter& w, const fs::path& run, const std::string& prefix, const std::string& title) {
  const auto lines = read_metrics(run / "metrics.jsonl");
  if (lines.empty()) return;
  Plot loss{title + ": training loss", "step", "loss", "lines", false, false, {}, {}};
  loss.series.push_back(metric_series(lines, "loss", "total"));
  std::map<std::string, Plot> groups;
  for (const auto& k : part_keys(lines)) {
    const size_t slash = k.find('/');
    if (slash == std::string::npos) {
      loss.series.push_back(metric_series(lines, k, k));
      continue;
    }
    const std::string group = k.substr(0, slash);
    Plot& g = groups[group];
    g.title = title + ": " + group;
    g.xlabel = "step";
    g.ylabel = group;
    g.series.push_back(metric_series(lines, k, k.substr(slash + 1)));
  }
  w.plot(prefix + "loss", loss);
  for (auto& [group, p] : groups) {
    std::string name;
    for (char c : group) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    w.plot(prefix + name, p);
  }
  Plot val{title + ": validation top-1", "step", "top-1 (%)", "linespoints", false, false, {}, {}};
  const Series v = metric_series(lines, "val_top1", "validation", 100.0);
  if (!v.y.empty()) {
    val.series.push_back(v);
    w.plot(prefix + "val", val);
  }
}

void run_report(ReportWriter& w, const fs::path& dir) {
  auto& md = w.md();
  md << "# Run " << dir.filename().string() << "\n\n";
  if (fs::exists(dir / "result.json")) {
    const auto r = read_json_file((dir / "result.json").string());
    Table t({"field", "value"});
    auto pct = [](const nlohmann::json& v) { return v.is_number() ? fixed(100 * v.get<double>(), 2) + "%" : "-"; };
    t.add_row({"method", r.value("method", "")});
    t.add_row({"target", r.value("target", "")});
    t.add_row({"seed", std::to_string(r.value("seed", 0))});
    t.add_row({"test top-1", pct(r.value("test_top1", nlohmann::json()))});
    t.add_row({"test mean per-class accuracy", pct(r.value("test_mean_class", nlohmann::json()))});
    t.add_row({"best validation top-1", pct(r.value("best_val_top1", nlohmann::json()))});
    t.add_row({"iterations", std::to_string(r.value("iterations", 0))});
    t.add_row({"time per step", fixed(r.value("step_ms", 0.0), 2) + " ms"});
    md << t.markdown() << "\n";
  } else {
    md << "No result.json yet: the run has not finished.\n\n";
  }
  md << "## Learning curves\n\n";
  run_curves(w, dir, "", dir.filename().string());

  if (fs::exists(dir / "pairing.json")) {
    const auto p = read_json_file((dir / "pairing.json").string());
    if (p.contains("similarity") && p.contains("target_classes") && p.contains("source_classes")) {
      md << "## Auxiliary pairing\n\n";
      w.heatmap("pairing", {"cosine similarity of class centroids", "source class", "target class",
                            p["similarity"].get<std::vector<std::vector<double>>>(),
                            p["target_classes"].get<std::vector<std::string>>(),
                            p["source_classes"].get<std::vector<std::string>>()});
    }
  }
  if (fs::exists(dir / "weights.json")) {
    const auto j = read_json_file((dir / "weights.json").string());
    if (j.contains("classes") && j["classes"].is_array()) {
      std::vector<std::pair<double, std::string>> ws;
      for (const auto& c : j["classes"])
        if (c.contains("weight") && c.contains("name")) ws.emplace_back(c["weight"].get<double>(), c["name"].get<std::string>());
      std::sort(ws.rbegin(), ws.rend());
      Plot p{"importance weights w(y) = P_t(y) / P_s(y)", "source class", "weight", "bars", false, false, {}, {}};
      Series s{"w", {}, {}, {}};
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

void bench_report(ReportWriter& w, const fs::path& dir) {
  const auto bench = read_json_file((dir / "bench.json").string());
  auto& md = w.md();
  md << "# Benchmark " << bench.value("suite", "") << "\n\n" << bench.value("description", "") << "\n\n";
  if (fs::exists(dir / "table.md")) {
    std::string table = read_file((dir / "table.md").string());
    if (table.rfind("# ", 0) == 0) table = table.substr(table.find('\n') + 1);  // its own title
    md << "## Accuracy\n" << table << "\n";
  }
  const auto tasks = bench.value("tasks", std::vector<std::string>{});
  const auto labels = bench.value("methods", std::vector<std::string>{});
  const nlohmann::json runs = bench.value("runs", nlohmann::json::array());
  // Per-method accuracy with error bars: one series per task, one bar per method.
  Plot acc{"test top-1 (mean ± std over seeds)", "", "top-1 (%)", "bars", false, false, labels, {}};
  for (const auto& t : tasks) {
    Series s{t, {}, {}, {}};
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
  if (fs::exists(dir / "timing.md")) md << "## Time per step\n\n" << read_file((dir / "timing.md").string()) << "\n";
  // Validation curves of each method's first run on the first task.
  if (!tasks.empty()) {
    Plot val{"validation top-1 on " + tasks.front() + " (first seed)", "step", "top-1 (%)", "lines", false, false, {}, {}};
    for (const auto& label : labels)
      for (const auto& r : runs)
        if (r.at("task") == tasks.front() && r.at("method") == label && r.at("ok").get<bool>()) {
          const Series s = metric_series(read_metrics(fs::path(r.at("dir").get<std::string>()) / "metrics.jsonl"),
                                         "val_top1", label, 100.0);
          if (!s.y.empty()) val.series.push_back(s);
          break;
        }
    if (!val.series.empty()) {
      md << "## Validation curves\n\n";
      w.plot("val_curves", val);
    }
  }
}

}  // namespace

nlohmann::json write_report(const std::string& path) {
  const fs::path dir(path);
  XFER_CHECK(fs::is_directory(dir), "report: ", path, " is not a directory");
  ReportWriter w(dir);
  try {
    if (fs::exists(dir / "bench.json"))
      bench_report(w, dir);
    else if (fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "result.json"))
      run_report(w, dir);
    else
      throw BadInput(cat("report: ", path, " is neither a run directory (metrics.jsonl) nor a bench directory ",
                         "(bench.json)"));
  } catch (const nlohmann::json::exception& e) {  // a file of the wrong shape: a value missing or of another type
    throw BadInput(cat("report: ", path, ": a JSON file there is not what xfer writes (", e.what(), ")"));
  }
  return w.finish();
}

}  // namespace xfer
