#include "xfer/report/summary.h"

#include <map>

#include "xfer/core/error.h"
#include "xfer/report/table.h"

namespace xfer {

std::string summary_table(const std::vector<RunRecord>& records, const std::vector<std::string>& tasks,
                          const std::vector<std::string>& methods, const std::string& metric, int precision) {
  XFER_CHECK(metric == "test_top1" || metric == "test_mean_class", "summary metric must be test_top1 or ",
             "test_mean_class, got '", metric, "'");
  struct Cell {
    std::vector<double> values;
    int64_t runs = 0;
    std::string error;
  };
  std::map<std::pair<std::string, std::string>, Cell> cells;
  for (const auto& r : records) {
    Cell& c = cells[{r.method, r.task}];
    ++c.runs;
    if (r.ok)
      c.values.push_back(metric == "test_top1" ? r.test_top1 : r.test_mean_class);
    else if (c.error.empty())
      c.error = r.error;
  }
  // The best mean per column, compared at the precision shown.
  std::map<std::string, std::string> best;
  for (const auto& t : tasks) {
    double top = -1;
    for (const auto& m : methods) {
      auto it = cells.find({m, t});
      if (it != cells.end() && !it->second.values.empty())
        top = std::max(top, mean_std(it->second.values).mean);
    }
    if (top >= 0) best[t] = fixed(100 * top, precision);
  }
  std::vector<std::string> header = {"method"};
  header.insert(header.end(), tasks.begin(), tasks.end());
  Table table(header);
  for (size_t c = 1; c < header.size(); ++c) table.align_right(c);
  for (const auto& m : methods) {
    std::vector<std::string> row = {m};
    for (const auto& t : tasks) {
      auto it = cells.find({m, t});
      if (it == cells.end()) {
        row.push_back("-");
        continue;
      }
      const Cell& c = it->second;
      if (c.values.empty()) {
        row.push_back("failed: " + c.error);
        continue;
      }
      const MeanStd ms = mean_std(c.values);
      std::string text = format_mean_std(ms, 100.0, precision);
      if (best.count(t) && fixed(100 * ms.mean, precision) == best[t]) text = "**" + text + "**";
      if (static_cast<int64_t>(c.values.size()) < c.runs)
        text += cat(" (", c.values.size(), "/", c.runs, ")");
      row.push_back(text);
    }
    table.add_row(row);
  }
  return table.markdown();
}

std::string records_csv(const std::vector<RunRecord>& records) {
  Table t({"task", "method", "seed", "status", "test_top1", "test_mean_class", "best_val_top1", "step_ms",
           "error", "dir"});
  for (const auto& r : records)
    t.add_row({r.task, r.method, std::to_string(r.seed), r.ok ? "ok" : "failed",
               r.ok ? fixed(r.test_top1, 4) : "", r.ok ? fixed(r.test_mean_class, 4) : "",
               r.ok && r.best_val_top1 >= 0 ? fixed(r.best_val_top1, 4) : "", r.ok ? fixed(r.step_ms, 3) : "",
               r.error, r.dir});
  return t.csv();
}

}  // namespace xfer
