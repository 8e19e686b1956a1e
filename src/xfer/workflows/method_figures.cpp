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

Plot option_curve_plot(const OptionCurve& curve, const std::vector<TrialCurve>& trials,
                       const std::string& title) {
  Plot plot;
  plot.title = title;
  plot.xlabel = curve.xlabel;
  plot.ylabel = curve.ylabel;
  double low = 0, high = 1;  // the marks span the curves' range (lambda: [0, 1])
  for (const auto& t : trials)
    for (double v : t.y) low = std::min(low, v), high = std::max(high, v);
  for (const auto& t : trials) {
    Series line;
    line.name = t.label;
    line.x = t.x;
    line.y = t.y;
    plot.series.push_back(std::move(line));
    if (t.selected_step > 0) {
      Series mark;
      mark.name = t.label + ": selected step";
      mark.x = {static_cast<double>(t.selected_step), static_cast<double>(t.selected_step)};
      mark.y = {low, high};
      plot.series.push_back(std::move(mark));
    }
  }
  return plot;
}

}  // namespace xfer
