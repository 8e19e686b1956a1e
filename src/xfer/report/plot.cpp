#include "xfer/report/plot.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// gnuplot string literal: single quotes, with embedded ones doubled.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string number(double v) {
  if (!std::isfinite(v)) return "NaN";
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

std::string terminal(const std::string& path, int width, int height) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".png") return cat("set terminal pngcairo size ", width, ",", height, " font 'sans,10'\n");
  if (ext == ".svg") return cat("set terminal svg size ", width, ",", height, " dynamic font 'sans,10'\n");
  throw BadInput(cat("plots are written as .png or .svg, got '", path, "'"));
}

/// Runs a gnuplot script whose output goes to `tmp_out`, then renames it to `path`.
void render(const std::string& path, const std::string& script_body, const std::string& data, int width, int height) {
  const fs::path target(path);
  if (target.has_parent_path()) make_dirs(target.parent_path().string());
  const std::string stem = path + ".plot." + std::to_string(::getpid());
  const std::string tmp_out = stem + target.extension().string(), data_file = stem + ".dat", script = stem + ".gp";
  write_file_atomic(data_file, data);
  write_file_atomic(script, terminal(path, width, height) + "set output " + quoted(tmp_out) + "\n" +
                                "datafile = " + quoted(data_file) + "\n" + script_body);
  const int rc = std::system(cat("gnuplot ", quoted(script), " > ", quoted(stem + ".log"), " 2>&1").c_str());
  std::string log;
  if (rc != 0 && fs::exists(stem + ".log")) log = read_file(stem + ".log");
  std::error_code ec;
  fs::remove(data_file, ec);
  fs::remove(script, ec);
  fs::remove(stem + ".log", ec);
  if (rc != 0 || !fs::exists(tmp_out)) {
    fs::remove(tmp_out, ec);
    throw BadInput(cat("gnuplot failed to draw ", path, ": ", log.substr(0, log.find('\n'))));
  }
  fs::rename(tmp_out, path);
}

}  // namespace

bool have_gnuplot() {
  static const bool found = std::system("command -v gnuplot > /dev/null 2>&1") == 0;
  return found;
}

bool write_plot(const std::string& path, const Plot& plot) {
  XFER_CHECK(!plot.series.empty(), "plot '", plot.title, "' has no data");
  for (const auto& s : plot.series) {
    XFER_CHECK(s.x.size() == s.y.size() && !s.y.empty(), "plot '", plot.title, "': series '", s.name,
               "' needs as many x as y values, and at least one");
    XFER_CHECK(s.err.empty() || s.err.size() == s.y.size(), "plot '", plot.title, "': series '", s.name,
               "' has ", s.err.size(), " error bars for ", s.y.size(), " values");
  }
  if (!have_gnuplot()) return false;
  const bool bars = plot.style == "bars";
  XFER_CHECK(bars || plot.style == "lines" || plot.style == "points" || plot.style == "linespoints",
             "plot style must be lines, points, linespoints or bars, got '", plot.style, "'");

  // One data block per series, separated by two blank lines (gnuplot's `index`).
  std::ostringstream data;
  for (const auto& s : plot.series) {
    for (size_t i = 0; i < s.y.size(); ++i)
      data << number(s.x[i]) << ' ' << number(s.y[i]) << ' ' << (s.err.empty() ? "0" : number(s.err[i])) << '\n';
    data << "\n\n";
  }
  std::ostringstream gp;
  gp << "set title " << quoted(plot.title) << "\nset xlabel " << quoted(plot.xlabel) << "\nset ylabel "
     << quoted(plot.ylabel) << "\nset grid\nset key outside right top\n";
  if (plot.logx) gp << "set logscale x\n";
  if (plot.logy) gp << "set logscale y\n";
  if (!plot.xtics.empty()) {
    gp << "set xtics (";
    for (size_t i = 0; i < plot.xtics.size(); ++i) gp << (i ? ", " : "") << quoted(plot.xtics[i]) << ' ' << i;
    gp << ") rotate by -30\nset xrange [-0.6:" << plot.xtics.size() - 0.4 << "]\n";
  }
  const double n = static_cast<double>(plot.series.size());
  const double width = bars ? 0.8 / n : 0;
  if (bars) gp << "set style fill solid 0.6 border -1\nset boxwidth " << width << "\nset yrange [0:*]\n";
  gp << "plot ";
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const auto& s = plot.series[k];
    const std::string title = "title " + quoted(s.name);
    if (k) gp << ", \\\n     ";
    if (bars) {
      const double shift = (static_cast<double>(k) - (n - 1) / 2) * width;
      gp << "datafile index " << k << " using ($1+" << shift << "):2 with boxes " << title;
      if (!s.err.empty())
        gp << ", datafile index " << k << " using ($1+" << shift << "):2:3 with yerrorbars lc black pt 0 notitle";
    } else if (!s.err.empty()) {
      gp << "datafile index " << k << " using 1:2:3 with yerrorlines " << title;
    } else {
      gp << "datafile index " << k << " using 1:2 with " << plot.style << " lw 2 " << title;
    }
  }
  gp << "\n";
  render(path, gp.str(), data.str(), plot.width, plot.height);
  return true;
}

bool write_heatmap(const std::string& path, const Heatmap& map) {
  XFER_CHECK(!map.values.empty() && !map.values[0].empty(), "heatmap '", map.title, "' has no data");
  const size_t rows = map.values.size(), cols = map.values[0].size();
  for (const auto& r : map.values)
    XFER_CHECK(r.size() == cols, "heatmap '", map.title, "': rows have different lengths");
  XFER_CHECK(map.row_labels.empty() || map.row_labels.size() == rows, "heatmap '", map.title, "': ",
             map.row_labels.size(), " row labels for ", rows, " rows");
  XFER_CHECK(map.column_labels.empty() || map.column_labels.size() == cols, "heatmap '", map.title, "': ",
             map.column_labels.size(), " column labels for ", cols, " columns");
  if (!have_gnuplot()) return false;
  std::ostringstream data;
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) data << c << ' ' << r << ' ' << number(map.values[r][c]) << '\n';
  auto tics = [](const char* axis, const std::vector<std::string>& labels) {
    std::ostringstream t;
    if (labels.empty()) return t.str();
    t << "set " << axis << "tics (";
    for (size_t i = 0; i < labels.size(); ++i) t << (i ? ", " : "") << quoted(labels[i]) << ' ' << i;
    t << ")" << (axis[0] == 'x' ? " rotate by -45" : "") << "\n";
    return t.str();
  };
  std::ostringstream gp;
  gp << "set title " << quoted(map.title) << "\nset xlabel " << quoted(map.xlabel) << "\nset ylabel "
     << quoted(map.ylabel) << "\nset xrange [-0.5:" << cols - 0.5 << "]\nset yrange [" << rows - 0.5
     << ":-0.5]\nset palette rgb 33,13,10\nunset key\n"
     << tics("x", map.column_labels) << tics("y", map.row_labels)
     << "plot datafile using 1:2:3 with image, datafile using 1:2:(sprintf('%.2f', $3)) with labels font ',8'\n";
  render(path, gp.str(), data.str(), map.width, map.height);
  return true;
}

}  // namespace xfer
