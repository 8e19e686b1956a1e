#include "xfer/report/figures.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/report/table.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// The series of `key` over steps, from the lines that have it as a number.
Series metric_series(const std::vector<nlohmann::json>& lines, const std::string& key,
                     const std::string& name, double scale = 1.0) {
  Series s;
  s.name = name;
  for (const auto& l : lines)
    if (l.contains(key) && l[key].is_number()) {
      s.x.push_back(l["step"].get<double>());
      s.y.push_back(scale * l[key].get<double>());
    }
  return s;
}

/// Keys of the logged loss parts: every number but the bookkeeping fields and the evaluations
/// (val_*, train_*).
std::vector<std::string> part_keys(const std::vector<nlohmann::json>& lines) {
  static const std::set<std::string> bookkeeping = {"step",         "lr",
                                                    "loss",         "samples_per_s",
                                                    "elapsed_s",    "skipped_steps",
                                                    "allreduce_ms", "allreduce_wait_ms"};
  std::set<std::string> keys;
  for (const auto& l : lines)
    for (const auto& [k, v] : l.items())
      if (v.is_number() && !bookkeeping.count(k) && k.rfind("val_", 0) != 0 && k.rfind("train_", 0) != 0)
        keys.insert(k);
  return {keys.begin(), keys.end()};
}

/// A weight as people write it: 0.01, 1e-05, 2.5.
std::string short_number(double v) {
  std::ostringstream os;
  os.precision(3);
  os << v;
  return os.str();
}

Plot line_plot(const std::string& title, const std::string& ylabel) {
  Plot p;
  p.title = title;
  p.xlabel = "step";
  p.ylabel = ylabel;
  return p;
}

void add_if_any(Plot& p, Series s) {
  if (!s.y.empty()) p.series.push_back(std::move(s));
}

/// Class names of a result.json, or "0", "1", ... when it has none (or not `k` of them).
std::vector<std::string> class_names(const nlohmann::json& result, size_t k) {
  std::vector<std::string> names;
  if (result.contains("classes") && result["classes"].is_array() && result["classes"].size() == k)
    for (const auto& c : result["classes"]) names.push_back(c.is_string() ? c.get<std::string>() : c.dump());
  else
    for (size_t i = 0; i < k; ++i) names.push_back(std::to_string(i));
  return names;
}

const nlohmann::json* test_field(const nlohmann::json& result, const char* key) {
  if (!result.is_object() || !result.contains("test") || !result["test"].is_object()) return nullptr;
  const auto& t = result["test"];
  return t.contains(key) && t[key].is_array() && !t[key].empty() ? &t[key] : nullptr;
}

}  // namespace

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> lines;
  if (!fs::is_regular_file(path)) return lines;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded() && j.is_object() && j.contains("step") && j["step"].is_number())
      lines.push_back(std::move(j));
  }
  return lines;
}

Plot loss_plot(const std::vector<nlohmann::json>& lines, const std::string& title) {
  Plot p = line_plot(title, "loss");
  add_if_any(p, metric_series(lines, "loss", "total"));
  for (const auto& k : part_keys(lines)) {
    if (k.find('/') != std::string::npos) continue;
    Series s;
    std::set<double> weights;
    for (const auto& l : lines) {
      if (!l.contains(k) || !l[k].is_number()) continue;
      double w = 1;
      if (l.contains("part_weights") && l["part_weights"].is_object() && l["part_weights"].contains(k) &&
          l["part_weights"][k].is_number())
        w = l["part_weights"][k].get<double>();
      weights.insert(w);
      s.x.push_back(l["step"].get<double>());
      s.y.push_back(w * l[k].get<double>());
    }
    if (s.y.empty()) continue;
    if (weights.size() > 1)
      s.name = k + " x weight";
    else if (*weights.begin() != 1)
      s.name = k + " x " + short_number(*weights.begin());
    else
      s.name = k;
    p.series.push_back(std::move(s));
  }
  // A lone part equal to the total (plain fine-tuning's ce) would hide under it: the total names it instead.
  if (p.series.size() == 2 && p.series[1].x == p.series[0].x) {
    bool same = true;
    for (size_t i = 0; i < p.series[0].y.size(); ++i)
      same = same && std::abs(p.series[1].y[i] - p.series[0].y[i]) <=
                         1e-9 * std::max(1.0, std::abs(p.series[0].y[i]));
    if (same) {
      p.series[0].name = "total (= " + p.series[1].name + ")";
      p.series.pop_back();
    }
  }
  Series val = metric_series(lines, "val_loss", "validation loss");
  val.style = "linespoints";
  add_if_any(p, std::move(val));
  return p;
}

std::vector<std::pair<std::string, Plot>> group_plots(const std::vector<nlohmann::json>& lines,
                                                      const std::string& title) {
  std::map<std::string, Plot> groups;
  for (const auto& k : part_keys(lines)) {
    const size_t slash = k.find('/');
    if (slash == std::string::npos) continue;
    const std::string group = k.substr(0, slash);
    auto it = groups.find(group);
    if (it == groups.end()) it = groups.emplace(group, line_plot(title + ": " + group, group)).first;
    add_if_any(it->second, metric_series(lines, k, k.substr(slash + 1)));
  }
  return {groups.begin(), groups.end()};
}

Plot lr_plot(const std::vector<nlohmann::json>& lines, const std::string& title) {
  Plot p = line_plot(title, "learning rate");
  add_if_any(p, metric_series(lines, "lr", ""));  // one line needs no legend
  return p;
}

Plot accuracy_plot(const std::vector<nlohmann::json>& lines, const std::string& title) {
  Plot p = line_plot(title, "accuracy (%)");
  p.style = "linespoints";
  add_if_any(p, metric_series(lines, "train_top1", "train top-1", 100));
  add_if_any(p, metric_series(lines, "val_top1", "validation top-1", 100));
  add_if_any(p, metric_series(lines, "val_top5", "validation top-5", 100));
  return p;
}

Heatmap confusion_heatmap(const nlohmann::json& result, const std::string& title) {
  Heatmap h;
  h.title = title;
  h.xlabel = "predicted class";
  h.ylabel = "true class";
  h.value_label = "test examples";
  h.decimals = 0;
  const nlohmann::json* m = test_field(result, "confusion");
  if (!m) return h;
  const size_t k = m->size();
  for (const auto& row : *m) {
    XFER_CHECK(row.is_array() && row.size() == k, "result.json: the confusion matrix is not ", k, " x ", k);
    std::vector<double> r;
    for (const auto& v : row) {
      XFER_CHECK(v.is_number() && v.get<double>() >= 0, "result.json: the confusion matrix holds ", v.dump(),
                 ", not a count");
      r.push_back(v.get<double>());
    }
    h.values.push_back(std::move(r));
  }
  h.row_labels = h.column_labels = class_names(result, k);
  // Cells big enough for their count, and room for the class names under and beside them.
  const int n = static_cast<int>(std::min<size_t>(k, 100));
  h.width = std::clamp(320 + 36 * n, 640, 2400);
  h.height = std::clamp(260 + 32 * n, 520, 2400);
  return h;
}

Plot per_class_plot(const nlohmann::json& result, const std::string& title) {
  Plot p;
  p.title = title;
  p.xlabel = "class";
  p.ylabel = "test accuracy (%)";
  p.style = "bars";
  p.ymin = 0;
  p.ymax = 100;
  const nlohmann::json* pc = test_field(result, "per_class");
  if (!pc) return p;
  p.xtics = class_names(result, pc->size());
  Series s;  // no name: one series needs no legend
  for (size_t i = 0; i < pc->size(); ++i)
    if ((*pc)[i].is_number()) {  // null: the class has no test examples
      s.x.push_back(static_cast<double>(i));
      s.y.push_back(100 * (*pc)[i].get<double>());
    }
  add_if_any(p, std::move(s));
  p.width = std::clamp(300 + 24 * static_cast<int>(std::min<size_t>(pc->size(), 200)), 800, 4000);
  return p;
}

Heatmap per_class_by_method(const std::vector<std::pair<std::string, nlohmann::json>>& method_results,
                            const std::vector<std::string>& methods, const std::string& title) {
  Heatmap h;
  h.title = title;
  h.xlabel = "class";
  h.ylabel = "method";
  h.value_label = "test accuracy (%)";
  h.decimals = 1;
  h.vmin = 0;  // the same colours in every such map
  h.vmax = 100;
  std::vector<std::string> order = methods;
  std::map<std::string, std::vector<std::vector<double>>> values;  // method -> class -> accuracies
  size_t k = 0;
  for (const auto& [method, result] : method_results) {
    const nlohmann::json* pc = test_field(result, "per_class");
    if (!pc) continue;
    if (k == 0) {
      k = pc->size();
      h.column_labels = class_names(result, k);
    }
    if (pc->size() != k) continue;
    if (std::find(order.begin(), order.end(), method) == order.end()) order.push_back(method);
    auto& v = values[method];
    v.resize(k);
    for (size_t c = 0; c < k; ++c)
      if ((*pc)[c].is_number()) v[c].push_back(100 * (*pc)[c].get<double>());
  }
  for (const auto& m : order) {
    auto it = values.find(m);
    if (it == values.end()) continue;
    std::vector<double> row;
    for (const auto& accs : it->second) row.push_back(accs.empty() ? NAN : mean_std(accs).mean);
    h.values.push_back(std::move(row));
    h.row_labels.push_back(m);
  }
  const int cols = static_cast<int>(std::min<size_t>(k, 100)),
            rows = static_cast<int>(std::min<size_t>(h.values.size(), 100));
  h.width = std::clamp(400 + 60 * cols, 640, 2400);
  h.height = std::clamp(260 + 28 * rows, 400, 2400);
  return h;
}

Plot accuracy_vs_labels(const std::vector<LabelledRun>& runs, const std::vector<std::string>& methods,
                        const std::string& title) {
  Plot p;
  p.title = title;
  p.xlabel = "labelled examples per class";
  p.ylabel = "test top-1 (%), mean ± std over seeds";
  p.style = "linespoints";
  std::vector<std::string> order = methods;  // methods the list misses follow, as the runs name them
  std::map<std::string, std::map<int64_t, std::vector<double>>> cells;
  std::set<int64_t> sizes;
  for (const auto& r : runs) {
    if (std::find(order.begin(), order.end(), r.method) == order.end()) order.push_back(r.method);
    cells[r.method][r.per_class].push_back(100 * r.top1);
    sizes.insert(r.per_class);
  }
  for (const auto& m : order) {
    auto it = cells.find(m);
    if (it == cells.end()) continue;
    Series s;
    s.name = m;
    for (const auto& [size, values] : it->second) {
      const MeanStd ms = mean_std(values);
      s.x.push_back(static_cast<double>(size));
      s.y.push_back(ms.mean);
      s.err.push_back(ms.std);
    }
    p.series.push_back(std::move(s));
  }
  if (sizes.empty()) return p;
  for (int64_t s : sizes) {
    p.xtics.push_back(std::to_string(s));
    p.xtic_values.push_back(static_cast<double>(s));
  }
  const double lo = static_cast<double>(*sizes.begin()), hi = static_cast<double>(*sizes.rbegin());
  // Sizes like 10, 50, 100 spread evenly on a log axis; a little room on both sides for the error bars.
  p.logx = lo > 0 && hi / lo >= 4;
  if (p.logx) {
    p.xmin = lo / 1.4;
    p.xmax = hi * 1.4;
    p.dodge = 0.02;
  } else {
    const double pad = hi > lo ? 0.1 * (hi - lo) : std::max(1.0, 0.2 * lo);
    p.xmin = lo - pad;
    p.xmax = hi + pad;
    p.dodge = pad / 10;
  }
  return p;
}

}  // namespace xfer
