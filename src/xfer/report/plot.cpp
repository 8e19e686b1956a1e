#include "xfer/report/plot.h"

#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A string as one field of gnuplot's tab-separated labels file. gnuplot reads data files as text, never
/// as commands; still, a newline would start another record, a tab another field and a double quote opens
/// a quoted field, so control characters become spaces, double quotes single ones, invalid UTF-8 '?'.
std::string label_text(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f)
      out += ' ';
    else if (c == '"')
      out += '\'';
    else
      out += s[i];
  }
  try {
    check_utf8(out, "label");
  } catch (const BadInput&) {
    for (char& c : out)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
  }
  return out;
}

/// Every text of a plot (title, axis labels, series names, tic labels) goes to labels.tsv; the script only
/// names them by index, as L[k]: no text from the data is ever part of gnuplot's commands.
class Labels {
 public:
  /// The gnuplot expression of `text`: "L[k]".
  std::string add(const std::string& text) {
    file_ << count_ << '\t' << label_text(text) << '\n';
    return cat("L[", ++count_, "]");
  }
  std::string file() const { return file_.str(); }
  /// The fixed prologue that loads labels.tsv into the array L.
  std::string prologue() const {
    return cat("set datafile separator \"\\t\"\narray L[", count_, "]\n",
               "stats 'labels.tsv' using (L[int($1)+1] = stringcolumn(2), 0) nooutput\n",
               "set datafile separator whitespace\n");
  }

 private:
  std::ostringstream file_;
  int count_ = 0;
};

std::string number(double v) {
  if (!std::isfinite(v)) return "NaN";
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

std::string terminal(const std::string& ext, int width, int height) {
  XFER_CHECK(width >= 16 && width <= 10000 && height >= 16 && height <= 10000,
             "plot size must be in [16, 10000], got ", width, "x", height);
  if (ext == ".png")
    return cat("set terminal pngcairo size ", width, ",", height, " font 'sans,10' noenhanced\n");
  return cat("set terminal svg size ", width, ",", height, " dynamic font 'sans,10' noenhanced\n");
}

std::string extension_of(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  XFER_CHECK(ext == ".png" || ext == ".svg", "plots are written as .png or .svg, got '", path, "'");
  return ext;
}

/// Runs gnuplot on a fixed script in a private directory beside `path` (mkdtemp): the script, the labels
/// and the data are files there with fixed names, gnuplot is started without a shell (posix_spawn) in
/// that directory, and its output is renamed to `path`.
void render(const std::string& path, const std::string& body, const Labels& labels, const std::string& data,
            int width, int height) {
  const std::string ext = extension_of(path);
  const fs::path target(path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  make_dirs(parent.string());
  std::string pattern = (parent / ".xfer-plot-XXXXXX").string();
  XFER_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot draw ", path, ": cannot create a directory in ",
             parent.string(), " (", std::strerror(errno), ")");
  const fs::path work(pattern);
  std::error_code ec;
  try {
    const std::string out = "plot" + ext;
    write_file_atomic((work / "labels.tsv").string(), labels.file());
    write_file_atomic((work / "data.dat").string(), data);
    write_file_atomic((work / "plot.gp").string(), terminal(ext, width, height) + "set output '" + out +
                                                       "'\n" + labels.prologue() + "datafile = 'data.dat'\n" +
                                                       body);
    const ExitStatus status = wait_process(
        spawn_process({find_program("gnuplot"), "plot.gp"}, "gnuplot.log", "gnuplot.log", {}, work.string()));
    if (!status.ok() || !fs::exists(work / out)) {
      std::string log = fs::exists(work / "gnuplot.log") ? read_file((work / "gnuplot.log").string()) : "";
      while (!log.empty() && (log.front() == '\n' || log.front() == ' ')) log.erase(0, 1);
      throw BadInput(cat("gnuplot failed to draw ", path, ": ", printable(log.substr(0, log.find('\n')))));
    }
    fs::rename(work / out, target, ec);
    XFER_CHECK(!ec, "cannot write ", path, ": ", ec.message());
  } catch (...) {
    fs::remove_all(work, ec);
    throw;
  }
  fs::remove_all(work, ec);
}

}  // namespace

bool have_gnuplot() {
  static const bool found = !find_program("gnuplot").empty();
  return found;
}

bool write_plot(const std::string& path, const Plot& plot) {
  XFER_CHECK(!plot.series.empty(), "plot '", plot.title, "' has no data");
  const bool bars = plot.style == "bars";
  auto line_style = [](const std::string& s) { return s == "lines" || s == "points" || s == "linespoints"; };
  for (const auto& s : plot.series) {
    XFER_CHECK(s.x.size() == s.y.size() && !s.y.empty(), "plot '", plot.title, "': series '", s.name,
               "' needs as many x as y values, and at least one");
    XFER_CHECK(s.err.empty() || s.err.size() == s.y.size(), "plot '", plot.title, "': series '", s.name,
               "' has ", s.err.size(), " error bars for ", s.y.size(), " values");
    XFER_CHECK(s.style.empty() || (!bars && line_style(s.style)), "plot '", plot.title, "': series '", s.name,
               "' has style '", s.style, "' (lines, points or linespoints, and none in bar charts)");
  }
  XFER_CHECK(plot.xtic_values.empty() || plot.xtic_values.size() == plot.xtics.size(), "plot '", plot.title,
             "': ", plot.xtic_values.size(), " tic positions for ", plot.xtics.size(), " tic labels");
  XFER_CHECK(std::isfinite(plot.dodge) && plot.dodge >= 0, "plot '", plot.title, "': dodge must be >= 0");
  if (!have_gnuplot()) return false;
  XFER_CHECK(bars || line_style(plot.style), "plot style must be lines, points, linespoints or bars, got '",
             plot.style, "'");

  // One data block per series, separated by two blank lines (gnuplot's `index`).
  std::ostringstream data;
  for (const auto& s : plot.series) {
    for (size_t i = 0; i < s.y.size(); ++i)
      data << number(s.x[i]) << ' ' << number(s.y[i]) << ' ' << (s.err.empty() ? "0" : number(s.err[i]))
           << '\n';
    data << "\n\n";
  }
  Labels labels;
  std::ostringstream gp;
  gp << "set title " << labels.add(plot.title) << "\nset xlabel " << labels.add(plot.xlabel)
     << "\nset ylabel " << labels.add(plot.ylabel) << "\nset grid\nset key outside right top\n";
  if (plot.logx) gp << "set logscale x\n";
  if (plot.logy) gp << "set logscale y\n";
  if (!plot.xtics.empty()) {
    // At most ~40 labels: beyond that every k-th, or they print over each other.
    const size_t every = (plot.xtics.size() + 39) / 40;
    const bool at_values = !plot.xtic_values.empty();
    gp << "set xtics (";
    bool first = true;
    for (size_t i = 0; i < plot.xtics.size(); i += every) {
      gp << (first ? "" : ", ") << labels.add(plot.xtics[i]) << ' '
         << (at_values ? number(plot.xtic_values[i]) : number(i));
      first = false;
    }
    gp << ")" << (at_values ? "" : " rotate by -30") << "\n";
    if (!at_values) gp << "set xrange [-0.6:" << plot.xtics.size() - 0.4 << "]\n";
  }
  auto range = [&gp](const char* axis, double lo, double hi) {
    if (std::isnan(lo) && std::isnan(hi)) return;
    gp << "set " << axis << "range [" << (std::isnan(lo) ? "*" : number(lo)) << ":"
       << (std::isnan(hi) ? "*" : number(hi)) << "]\n";
  };
  range("x", plot.xmin, plot.xmax);
  const double n = static_cast<double>(plot.series.size());
  const double width = bars ? 0.8 / n : 0;
  if (bars) {
    gp << "set style fill solid 0.6 border -1\nset boxwidth " << width << "\n";
    if (std::isnan(plot.ymin) && std::isnan(plot.ymax)) gp << "set yrange [0:*]\n";
  }
  range("y", plot.ymin, plot.ymax);
  gp << "plot ";
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const auto& s = plot.series[k];
    const std::string title = "title " + labels.add(s.name);
    // Eight colours, then the same colours dashed: a legend of ten methods stays readable.
    const std::string look = cat("lc ", k % 8 + 1, " dt ", k / 8 % 5 + 1, " pt ", k % 13 + 1);
    const double offset = static_cast<double>(k) - (n - 1) / 2;
    std::string x = "1";
    if (plot.dodge > 0 && !s.err.empty())
      x = plot.logx ? cat("($1*", number(std::pow(1 + plot.dodge, offset)), ")")
                    : cat("($1+", number(offset * plot.dodge), ")");
    if (k) gp << ", \\\n     ";
    if (bars) {
      const double shift = offset * width;
      gp << "datafile index " << k << " using ($1+" << number(shift) << "):2 with boxes lc " << k % 8 + 1
         << ' ' << title;
      if (!s.err.empty())
        gp << ", datafile index " << k << " using ($1+" << number(shift)
           << "):2:3 with yerrorbars lc black pt 7 ps 0.5 notitle";
    } else if (!s.err.empty()) {
      gp << "datafile index " << k << " using " << x << ":2:3 with yerrorlines lw 2 " << look << ' ' << title;
    } else {
      gp << "datafile index " << k << " using 1:2 with " << (s.style.empty() ? plot.style : s.style)
         << " lw 2 " << look << ' ' << title;
    }
  }
  gp << "\n";
  render(path, gp.str(), labels, data.str(), plot.width, plot.height);
  return true;
}

bool write_heatmap(const std::string& path, const Heatmap& map) {
  XFER_CHECK(!map.values.empty() && !map.values[0].empty(), "heatmap '", map.title, "' has no data");
  const size_t rows = map.values.size(), cols = map.values[0].size();
  for (const auto& r : map.values)
    XFER_CHECK(r.size() == cols, "heatmap '", map.title, "': rows have different lengths");
  XFER_CHECK(map.row_labels.empty() || map.row_labels.size() == rows, "heatmap '", map.title,
             "': ", map.row_labels.size(), " row labels for ", rows, " rows");
  XFER_CHECK(map.column_labels.empty() || map.column_labels.size() == cols, "heatmap '", map.title,
             "': ", map.column_labels.size(), " column labels for ", cols, " columns");
  XFER_CHECK(!(map.vmin >= map.vmax), "heatmap '", map.title, "': colour range [", map.vmin, ", ", map.vmax,
             "] is empty");
  XFER_CHECK(map.decimals >= 0 && map.decimals <= 6, "heatmap '", map.title,
             "': decimals must be in [0, 6], got ", map.decimals);
  if (!have_gnuplot()) return false;
  std::ostringstream data;
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c) data << c << ' ' << r << ' ' << number(map.values[r][c]) << '\n';
  Labels labels;
  auto tics = [&labels](const char* axis, const std::vector<std::string>& names) {
    std::ostringstream t;
    if (names.empty()) return t.str();
    // At most ~50 labels per axis: beyond that every k-th, or they print over each other.
    const size_t every = (names.size() + 49) / 50;
    t << "set " << axis << "tics (";
    for (size_t i = 0; i < names.size(); i += every) t << (i ? ", " : "") << labels.add(names[i]) << ' ' << i;
    t << ")" << (axis[0] == 'x' ? " rotate by -45" : "") << "\n";
    return t.str();
  };
  std::ostringstream gp;
  gp << "set title " << labels.add(map.title) << "\nset xlabel " << labels.add(map.xlabel) << "\nset ylabel "
     << labels.add(map.ylabel) << "\nset xrange [-0.5:" << cols - 0.5 << "]\nset yrange [" << rows - 0.5
     << ":-0.5]\nset palette rgb 33,13,10\nunset key\nset cblabel " << labels.add(map.value_label) << "\n"
     << tics("x", map.column_labels) << tics("y", map.row_labels);
  if (std::isfinite(map.vmin) || std::isfinite(map.vmax))
    gp << "set cbrange [" << (std::isfinite(map.vmin) ? number(map.vmin) : "*") << ":"
       << (std::isfinite(map.vmax) ? number(map.vmax) : "*") << "]\n";
  gp << "plot datafile using 1:2:3 with image";
  // The value in each cell while cells are large enough to hold one; the format is built here, not taken
  // from the data.
  if (rows <= 30 && cols <= 30)
    gp << ", datafile using 1:2:(sprintf('%." << map.decimals << "f', $3)) with labels font ',8'";
  gp << "\n";
  render(path, gp.str(), labels, data.str(), map.width, map.height);
  return true;
}

}  // namespace xfer
