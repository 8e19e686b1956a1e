#pragma once
/// Plots rendered by gnuplot (Debian's gnuplot-nox) to PNG or SVG, chosen by the file extension.
///
/// A plot is data, not a script: methods and reports fill a `Plot` and call `write_plot`. Without
/// gnuplot on the PATH nothing is written and `write_plot` returns false, so callers can say "skipped:
/// install gnuplot-nox". Files appear atomically (rendered to a temporary name, then renamed).
#include <cmath>
#include <string>
#include <vector>

namespace xfer {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::vector<double> err;  // optional error bars (same length as y)
  std::string style{};      // overrides the plot's style for this series (not in bar charts); "" = the plot's
};

struct Plot {
  std::string title, xlabel, ylabel;
  /// lines | points | linespoints | bars (bar charts: one bar per x per series; `xtics` label the bars)
  std::string style = "lines";
  bool logx = false, logy = false;
  std::vector<std::string> xtics;   // labels at x = 0, 1, 2, ... (bar charts, categories)
  std::vector<double> xtic_values;  // where the xtics go instead (same length), e.g. labels per class
  double xmin = NAN, xmax = NAN, ymin = NAN, ymax = NAN;  // axis range; NaN: gnuplot's autoscale
  /// Error-bar series k is drawn shifted by (k - (n-1)/2) x dodge along x (a factor on a log axis), so
  /// bars of series at the same x do not hide each other; the data keep their x.
  double dodge = 0;
  std::vector<Series> series;
  int width = 800, height = 500;
};

/// A matrix as a coloured grid with row and column labels (XMixup's pairing similarities, confusion).
struct Heatmap {
  std::string title, xlabel, ylabel;
  std::vector<std::vector<double>> values;  // rows x columns
  std::vector<std::string> row_labels, column_labels;
  int width = 800, height = 600;
  int decimals = 2;               // of the value written in each cell (cells are left blank beyond 30 x 30)
  std::string value_label{};      // the colour bar's label
  double vmin = NAN, vmax = NAN;  // the colour bar's range; NaN: the data's
};

/// Whether gnuplot can be run.
bool have_gnuplot();
/// Renders to `path` (.png or .svg). Returns false, writing nothing, when gnuplot is missing; throws
/// BadInput when the plot is malformed or gnuplot fails.
bool write_plot(const std::string& path, const Plot& plot);
bool write_heatmap(const std::string& path, const Heatmap& map);

}  // namespace xfer
