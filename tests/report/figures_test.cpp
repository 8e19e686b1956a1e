// What the figures of `xfer report` show (issue 27): loss parts as they enter the total, the confusion
// matrix of result.json, error bars over seeds; and a report on what `xfer demo` writes.
#include <filesystem>
#include <fstream>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/report/figures.h"
#include "xfer/report/report.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const Series& fig_series(const Plot& p, const std::string& name) {
  for (const auto& s : p.series)
    if (s.name == name) return s;
  ADD_FAILURE() << "no series '" << name << "' in '" << p.title << "'";
  static const Series none;
  return none;
}

TEST(ReportFigures, LossPartsEnterTheTotalWithTheirWeights) {
  // SMILE-like step lines: fe enters as 0.01 x fe, fc with a weight that changes, ce with none (weight 1).
  const std::vector<nlohmann::json> lines = {
      {{"step", 10},
       {"lr", 0.1},
       {"loss", 2.0},
       {"ce", 1.5},
       {"fe", 40.0},
       {"fc", 2.0},
       {"part_weights", {{"fe", 0.01}, {"fc", 0.5}}},
       {"samples_per_s", 900.0},
       {"gradmix/w1", 0.3}},
      {{"step", 10}, {"val_top1", 0.4}, {"val_mean_class", 0.4}, {"val_loss", 1.7}},
      {{"step", 20},
       {"lr", 0.05},
       {"loss", 1.0},
       {"ce", 0.6},
       {"fe", 20.0},
       {"fc", 1.0},
       {"train_top1", 0.7},
       {"part_weights", {{"fe", 0.01}, {"fc", 0.2}}},
       {"samples_per_s", 950.0},
       {"gradmix/w1", 0.4}},
      {{"step", 20}, {"val_top1", 0.5}, {"val_mean_class", 0.5}, {"val_loss", 1.2}, {"val_top5", 0.9}}};
  const Plot loss = loss_plot(lines, "run");
  std::vector<std::string> names;
  for (const auto& s : loss.series) names.push_back(s.name);
  // Bookkeeping, evaluations and grouped diagnostics are no parts.
  EXPECT_EQ(names, (std::vector<std::string>{"total", "ce", "fc x weight", "fe x 0.01", "validation loss"}));
  const Series& fe = fig_series(loss, "fe x 0.01");
  ASSERT_EQ(fe.y.size(), 2u);
  EXPECT_DOUBLE_EQ(fe.y[0], 0.4);
  EXPECT_DOUBLE_EQ(fe.y[1], 0.2);
  EXPECT_EQ(fig_series(loss, "fc x weight").y, (std::vector<double>{1.0, 0.2}));
  EXPECT_EQ(fig_series(loss, "ce").y, (std::vector<double>{1.5, 0.6}));
  EXPECT_EQ(fig_series(loss, "total").x, (std::vector<double>{10, 20}));
  const Series& val = fig_series(loss, "validation loss");
  EXPECT_EQ(val.y, (std::vector<double>{1.7, 1.2}));
  EXPECT_EQ(val.style, "linespoints");

  const auto groups = group_plots(lines, "run");
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].first, "gradmix");
  EXPECT_EQ(groups[0].second.series.at(0).y, (std::vector<double>{0.3, 0.4}));
  EXPECT_EQ(lr_plot(lines, "run").series.at(0).y, (std::vector<double>{0.1, 0.05}));
  const Plot acc = accuracy_plot(lines, "run");
  EXPECT_EQ(fig_series(acc, "train top-1").y, (std::vector<double>{70}));
  EXPECT_EQ(fig_series(acc, "validation top-1").y, (std::vector<double>{40, 50}));
  EXPECT_EQ(fig_series(acc, "validation top-5").x, (std::vector<double>{20}));
  // A lone part equal to the total is named by the total rather than drawn under it.
  const Plot plain =
      loss_plot({{{"step", 1}, {"loss", 0.9}, {"ce", 0.9}}, {{"step", 2}, {"loss", 0.5}, {"ce", 0.5}}}, "");
  ASSERT_EQ(plain.series.size(), 1u);
  EXPECT_EQ(plain.series[0].name, "total (= ce)");
  // Nothing logged, nothing to draw.
  EXPECT_TRUE(accuracy_plot({{{"step", 1}, {"loss", 1.0}}}, "").series.empty());
}

TEST(ReportFigures, ConfusionHeatMapIsResultJsonsMatrix) {
  const nlohmann::json result = {
      {"classes", {"Pullover", "Coat", "Shirt"}},
      {"test_mean_class", 0.6},
      {"test", {{"confusion", {{5, 1, 0}, {2, 3, 1}, {0, 0, 6}}}, {"per_class", {0.8333, 0.5, nullptr}}}}};
  const Heatmap h = confusion_heatmap(result, "c");
  EXPECT_EQ(h.values, (std::vector<std::vector<double>>{{5, 1, 0}, {2, 3, 1}, {0, 0, 6}}));
  EXPECT_EQ(h.values, result["test"]["confusion"].get<std::vector<std::vector<double>>>());
  EXPECT_EQ(h.row_labels, (std::vector<std::string>{"Pullover", "Coat", "Shirt"}));
  EXPECT_EQ(h.column_labels, h.row_labels);
  EXPECT_EQ(h.decimals, 0);
  // A class without test examples (null) gets no bar; the others keep their place.
  const Plot pc = per_class_plot(result, "p");
  ASSERT_EQ(pc.series.size(), 1u);
  EXPECT_EQ(pc.series[0].x, (std::vector<double>{0, 1}));
  EXPECT_DOUBLE_EQ(pc.series[0].y[0], 83.33);
  EXPECT_EQ(pc.xtics, h.row_labels);
  // A result without a test evaluation draws nothing; a matrix of the wrong shape is bad input.
  EXPECT_TRUE(confusion_heatmap({{"test_top1", 0.5}}, "c").values.empty());
  test::expect_bad_input(
      [] {
        confusion_heatmap({{"test", {{"confusion", {{1, 2}, {3}}}}}}, "c");
      },
      {"2 x 2"});
  test::expect_bad_input(
      [] {
        confusion_heatmap({{"test", {{"confusion", {{1, -2}, {3, 4}}}}}}, "c");
      },
      {"-2", "not a count"});
}

TEST(ReportFigures, ErrorBarsAreTheStandardDeviationOverSeeds) {
  const std::vector<LabelledRun> runs = {{"l2", 10, 0.5},    {"l2", 10, 0.6}, {"l2", 10, 0.7},
                                         {"l2", 50, 0.8},    {"l2", 50, 0.9}, {"scratch", 10, 0.3},
                                         {"smile", 50, 0.95}};
  const Plot p = accuracy_vs_labels(runs, {"scratch", "l2", "bss"}, "t");
  ASSERT_EQ(p.series.size(), 3u);  // bss has no runs; smile is not listed but ran
  EXPECT_EQ(p.series[0].name, "scratch");
  EXPECT_EQ(p.series[1].name, "l2");
  EXPECT_EQ(p.series[2].name, "smile");
  const Series& l2 = p.series[1];
  EXPECT_EQ(l2.x, (std::vector<double>{10, 50}));
  // 50, 60, 70 %: mean 60, sample std 10; 80, 90 %: mean 85, std sqrt(50) = 7.0711.
  ASSERT_EQ(l2.y.size(), 2u);
  EXPECT_NEAR(l2.y[0], 60, 1e-9);
  EXPECT_NEAR(l2.err[0], 10, 1e-9);
  EXPECT_NEAR(l2.y[1], 85, 1e-9);
  EXPECT_NEAR(l2.err[1], 7.0710678118654755, 1e-9);
  EXPECT_EQ(p.series[0].err, (std::vector<double>{0}));  // one seed: no spread
  EXPECT_EQ(p.xtics, (std::vector<std::string>{"10", "50"}));
  EXPECT_EQ(p.xtic_values, (std::vector<double>{10, 50}));
  EXPECT_TRUE(p.logx);

  // Per class and method: the mean over seeds of each class, a class without test examples left blank.
  const nlohmann::json a = {{"classes", {"x", "y"}}, {"test", {{"per_class", {1.0, 0.5}}}}};
  const nlohmann::json b = {{"classes", {"x", "y"}}, {"test", {{"per_class", {0.5, nullptr}}}}};
  const nlohmann::json c = {{"classes", {"x", "y"}}, {"test", {{"per_class", {0.2, 0.4}}}}};
  const Heatmap h = per_class_by_method({{"l2", a}, {"scratch", c}, {"l2", b}}, {"l2", "scratch"}, "h");
  EXPECT_EQ(h.row_labels, (std::vector<std::string>{"l2", "scratch"}));
  EXPECT_EQ(h.column_labels, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(h.values, (std::vector<std::vector<double>>{{75, 50}, {20, 40}}));
  EXPECT_EQ(h.vmin, 0);
  EXPECT_EQ(h.vmax, 100);
}

TEST(ReportOnDemo, WritesTheComparisonAndPerRunPlots) {
  XFER_REQUIRE_FMNIST();
  test::TempDir dir;
  const std::string out = dir.file("demo");
  const auto demo = test::run_cli({"demo", "--methods", "l2,smile", "--sizes", "4,8", "--seeds", "2",
                                   "--iterations", "12", "--pretrain-iterations", "10", "--threads", "1",
                                   "--cache", dir.file("cache"), "--out", out});
  ASSERT_EQ(demo.code, 0) << demo.out << demo.err;
  const auto report = test::run_cli({"report", out});
  ASSERT_EQ(report.code, 0) << report.out << report.err;
  ASSERT_TRUE(fs::exists(out + "/report.md"));
  const std::string md = read_file(out + "/report.md");
  EXPECT_NE(md.find("| l2 "), std::string::npos) << md;  // the demo's table
  if (!have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed: nothing was drawn";
  for (const char* plot : {"accuracy_vs_labels.png", "per_class_n4.png", "per_class_n8.png"}) {
    EXPECT_NE(md.find(std::string("(") + plot + ")"), std::string::npos) << plot << "\n" << md;
    ASSERT_TRUE(fs::exists(out + "/" + plot)) << plot;
    EXPECT_EQ(read_file(out + "/" + plot).substr(1, 3), "PNG") << plot;
  }
  // One of its runs: learning curves with SMILE's weighted parts, the confusion matrix, accuracy per class.
  const std::string run = out + "/smile/n8-s1";
  const nlohmann::json r = write_report(run);
  for (const char* plot : {"loss.png", "lr.png", "confusion.png", "per_class.png"})
    EXPECT_TRUE(fs::exists(run + "/" + plot)) << plot << " " << r.dump();
  const Plot loss = loss_plot(read_metrics(run + "/metrics.jsonl"), "");
  bool weighted = false;
  for (const auto& s : loss.series) weighted = weighted || s.name.rfind("fe x ", 0) == 0;
  EXPECT_TRUE(weighted) << "SMILE's fe should enter with gamma_fe";
}

}  // namespace
}  // namespace xfer
