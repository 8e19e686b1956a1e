#pragma once
/// Plots rendered by gnuplot (Debian's gnuplot-nox) to PNG or SVG, chosen by the file extension.
///
/// A plot is data, not a script: methods and reports fill a `Plot` and call `write_plot`. Without
/// gnuplot on the PATH nothing is written and `write_plot` returns false, so callers can say "skipped:
/// install gnuplot-nox". Files appear atomically (rendered to a temporary name, then renamed).
#include <string>
#include <vector>

namespace xfer {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::vector<double> err;  // optional error bars (same length as y)
};

struct Plot {
  std::string title, xlabel, ylabel;
  /// lines | points | linespoints | bars (bar charts: one bar per x per series; `xtics` label the bars)
  std::string style = "lines";
  bool logx = false, logy = false;
  std::vector<std::string> xtics;  // labels at x = 0, 1, 2, ... (bar charts, categories)
  std::vector<Series> series;
  int width = 800, height = 500;
};

/// A matrix as a coloured grid with row and column labels (XMixup's pairing similarities, confusion).
struct Heatmap {
  std::string title, xlabel, ylabel;
  std::vector<std::vector<double>> values;  // rows x columns
  std::vector<std::string> row_labels, column_labels;
  int width = 800, height = 600;
};

/// Whether gnuplot can be run.
bool have_gnuplot();
/// Renders to `path` (.png or .svg). Returns false, writing nothing, when gnuplot is missing; throws
/// BadInput when the plot is malformed or gnuplot fails.
bool write_plot(const std::string& path, const Plot& plot);
bool write_heatmap(const std::string& path, const Heatmap& map);

}  // namespace xfer
