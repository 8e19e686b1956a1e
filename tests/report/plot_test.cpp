#include <filesystem>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/report/plot.h"

namespace xfer {
namespace {

TEST(Plot, WritesPngAndSvgAtomicallyOrSaysGnuplotIsMissing) {
  test::TempDir dir;
  Plot p;
  p.title = "lambda(t)";
  p.xlabel = "step";
  p.ylabel = "weight";
  p.series = {{"a", {0, 1, 2}, {0.1, 0.5, 0.9}, {}}, {"b's", {0, 1, 2}, {0.2, 0.3, 0.4}, {0.01, 0.02, 0.03}}};
  if (!have_gnuplot()) {
    EXPECT_FALSE(write_plot(dir.file("p.png"), p));
    EXPECT_FALSE(std::filesystem::exists(dir.file("p.png")));
    GTEST_SKIP() << "gnuplot is not installed";
  }
  ASSERT_TRUE(write_plot(dir.file("p.png"), p));
  EXPECT_EQ(read_file(dir.file("p.png")).substr(1, 3), "PNG");
  p.style = "bars";
  p.xtics = {"x0", "x1", "x2"};
  ASSERT_TRUE(write_plot(dir.file("bars.svg"), p));
  EXPECT_NE(read_file(dir.file("bars.svg")).find("<svg"), std::string::npos);
  Heatmap h{"similarity", "source", "target", {{0.1, 0.9}, {0.5, 0.2}}, {"t0", "t1"}, {"s0", "s1"}};
  ASSERT_TRUE(write_heatmap(dir.file("h.png"), h));
  // Nothing but the plots is left behind (no scripts, data or temporary files).
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 3);
}

TEST(Plot, MalformedPlotsAreBadInput) {
  test::TempDir dir;
  Plot p;
  p.series = {{"a", {0, 1}, {1}, {}}};
  test::expect_bad_input([&] { write_plot(dir.file("p.png"), p); }, {"series 'a'", "as many x as y"});
  p.series = {{"a", {0, 1}, {1, 2}, {}}};
  if (have_gnuplot())
    test::expect_bad_input([&] { write_plot(dir.file("p.gif"), p); }, {".png or .svg", "p.gif"});
  p.style = "pie";
  if (have_gnuplot()) test::expect_bad_input([&] { write_plot(dir.file("p.png"), p); }, {"'pie'"});
  Heatmap h{"m", "", "", {{1, 2}, {3}}, {}, {}};
  test::expect_bad_input([&] { write_heatmap(dir.file("h.png"), h); }, {"rows have different lengths"});
}

}  // namespace
}  // namespace xfer
