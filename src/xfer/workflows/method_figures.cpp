#include "xfer/workflows/method_figures.h"

#include <algorithm>

#include "xfer/core/error.h"

namespace xfer {

Table importance_table(const ImportanceWeights& w, int64_t n) {
  const std::vector<int64_t> same = same_counts(w, n);
  const std::vector<int64_t> elastic = n <= w.source_size() ? elastic_counts(w, n) : std::vector<int64_t>{};
  Table t({"#", "class", "examples", "P_t", "P_s", "w = P_t/P_s", cat("same rate (N=", n, ")"),
           elastic.empty() ? cat("elastic (N=", n, ")") : cat("elastic rate (N=", n, ")")});
  for (size_t c = 2; c < 8; ++c) t.align_right(c);
  t.align_right(0);
  int rank = 0;
  auto rate = [&](int64_t drawn, int64_t y) {
    return w.examples[y] > 0
               ? fixed(100.0 * static_cast<double>(drawn) / static_cast<double>(w.examples[y]), 1) + "%"
               : std::string("-");
  };
  for (int64_t y : w.order())
    t.add_row({std::to_string(++rank), w.classes[y], std::to_string(w.examples[y]), fixed(w.p_target[y], 4),
               fixed(w.p_source[y], 4), fixed(w.weight[y], 3), rate(same[y], y),
               elastic.empty() ? std::string("N > source") : rate(elastic[y], y)});
  return t;
}

Plot importance_plot(const ImportanceWeights& w) {
  Plot p;
  p.title = cat("Importance weights w = P_t / P_s (temperature ", w.temperature, ")");
  p.xlabel = "source class, sorted by weight";
  p.ylabel = "w = P_t / P_s";
  p.style = "bars";
  Series s;
  s.name = "w";
  double x = 0;
  for (int64_t y : w.order()) {
    p.xtics.push_back(w.classes[y]);
    s.x.push_back(x++);
    s.y.push_back(w.weight[y]);
  }
  p.series.push_back(s);
  return p;
}

Plot smooth_schedule_plot(const std::vector<SmoothSchedule>& schedules, const std::string& title) {
  Plot plot;
  plot.title = title;
  plot.xlabel = "step t";
  plot.ylabel = "lambda(t) (target weight)";
  for (const auto& s : schedules) {
    XFER_CHECK(s.total_steps > 0, "a schedule to plot needs a positive number of steps, got ", s.total_steps);
    Series line;
    line.name = s.label;
    const int64_t points = std::min<int64_t>(s.total_steps, 400);
    for (int64_t i = 0; i < points; ++i) {
      const int64_t step = i * (s.total_steps - 1) / std::max<int64_t>(points - 1, 1);
      line.x.push_back(static_cast<double>(step + 1));
      line.y.push_back(s.options.lambda(step, s.total_steps));
    }
    plot.series.push_back(std::move(line));
    if (s.selected_step > 0) {
      Series mark;
      mark.name = s.label + ": selected step";
      mark.x = {static_cast<double>(s.selected_step), static_cast<double>(s.selected_step)};
      mark.y = {0.0, 1.0};
      plot.series.push_back(std::move(mark));
    }
  }
  return plot;
}

}  // namespace xfer
