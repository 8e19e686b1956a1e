// Hostile input (issue 21): `xfer report` over a run directory whose names (metrics keys, class names, the
// directory itself) carry gnuplot and shell code. The plots are drawn and nothing is run: gnuplot gets a
// fixed script, the names only as data.
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/report/plot.h"
#include "xfer/report/report.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Names that each try another way out of a gnuplot string into a command; each would create marker k.
std::vector<std::string> hrp_names(const test::TempDir& dir) {
  const auto marker = [&](int k) { return dir.file(cat("ran", k)); };
  return {cat("a\nsystem(\"touch ", marker(1), "\")\n#"),      cat("b'\nsystem('touch ", marker(2), "')\n'"),
          cat("c\\' . system(\"touch ", marker(3), "\") . '"), cat("`touch ", marker(4), "`"),
          cat("@x \" ; system('touch ", marker(5), "')"),      cat("d\r\n! touch ", marker(6), "\n"),
          cat("e\\\nsystem(\"touch ", marker(7), "\")")};
}

TEST(HostileReport, NamesCarryingCodeAreDrawnAndNothingRuns) {
  test::TempDir dir;
  const std::vector<std::string> names = hrp_names(dir);
  // The run directory's own name is a title too.
  const std::string run = dir.file("run'\nsystem('touch " + dir.file("ran0") + "')\n'");
  make_dirs(run);
  std::ofstream metrics(run + "/metrics.jsonl");
  for (int step = 1; step <= 3; ++step) {
    nlohmann::json line = {{"step", step}, {"loss", 1.0 / step}, {"val_top1", 0.1 * step}};
    for (size_t k = 0; k < names.size(); ++k) {
      line[names[k]] = 0.1 * static_cast<double>(k + step);                                // a loss part
      line["grp" + std::to_string(k) + "/" + names[k]] = 0.2 * static_cast<double>(step);  // a group's series
      line[names[k] + "/part"] = 0.3;  // a group named by the name
    }
    metrics << line.dump() << "\n";
  }
  metrics.close();
  write_json_file(run + "/result.json",
                  {{"method", names[0]},
                   {"target", names[1]},
                   {"test_top1", 0.5},
                   {"classes", {names[4], names[5]}},  // the confusion matrix's labels
                   {"test", {{"confusion", {{3, 1}, {0, 4}}}, {"per_class", {0.75, 1.0}}}}});
  write_json_file(run + "/pairing.json", {{"similarity", {{0.1, 0.2}, {0.3, 0.4}}},
                                          {"target_classes", {names[2], names[3]}},
                                          {"source_classes", {names[4], names[5]}}});
  nlohmann::json classes = nlohmann::json::array();
  for (const auto& n : names) classes.push_back({{"name", n}, {"weight", 1.5}});
  write_json_file(run + "/weights.json", {{"classes", classes}});

  const nlohmann::json r = write_report(run);
  for (int k = 0; k <= 7; ++k)
    EXPECT_FALSE(fs::exists(dir.file(cat("ran", k)))) << "a name ran code: ran" << k;
  ASSERT_TRUE(fs::exists(run + "/report.md"));
  if (!have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed: nothing was drawn";
  // loss, accuracy, one plot per group (7 grpK and 7 named by the names), confusion, per-class accuracy,
  // the pairing and the weights.
  EXPECT_EQ(r["plots"].size(), 2u + 14u + 2u + 2u) << r.dump();
  for (const auto& p : r["plots"]) {
    const std::string path = run + "/" + p.get<std::string>();
    ASSERT_TRUE(fs::exists(path)) << path;
    EXPECT_EQ(read_file(path).substr(1, 3), "PNG") << path;
  }
  for (const auto& e : fs::directory_iterator(run))  // no script, data or temporary directory left behind
    EXPECT_TRUE(e.path().extension() == ".png" || e.path().extension() == ".md" ||
                e.path().extension() == ".json" || e.path().extension() == ".jsonl")
        << e.path();
}

TEST(HostileReport, JsonOfTheWrongShapeIsBadInput) {
  test::TempDir dir;
  nlohmann::json bench = {{"tasks", nlohmann::json::array({"t"})}, {"methods", nlohmann::json::array({"m"})}};
  bench["runs"] = nlohmann::json::array({nlohmann::json{{"task", "t"}}});  // no "method", "ok", ...
  write_json_file(dir.file("bench.json"), bench);
  test::expect_bad_input([&] { write_report(dir.path()); }, {"report: ", "not what xfer writes"});
  write_json_file(dir.file("bench.json"), {{"tasks", 5}});
  test::expect_bad_input([&] { write_report(dir.path()); }, {"not what xfer writes"});
}

}  // namespace
}  // namespace xfer
