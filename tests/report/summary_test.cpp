#include "xfer/report/summary.h"
#include "support.h"

namespace xfer {
namespace {

RunRecord summary_record(const std::string& task, const std::string& method, int64_t seed, double top1) {
  RunRecord r;
  r.task = task;
  r.method = method;
  r.seed = seed;
  r.ok = true;
  r.test_top1 = top1;
  r.test_mean_class = top1 / 2;
  return r;
}

TEST(Summary, MeanStdAndTheBestOfEachColumnInBold) {
  std::vector<RunRecord> rs = {summary_record("A", "l2", 0, 0.70),  summary_record("A", "l2", 1, 0.72),
                               summary_record("A", "mix", 0, 0.80), summary_record("A", "mix", 1, 0.84),
                               summary_record("B", "l2", 0, 0.90),  summary_record("B", "mix", 0, 0.50)};
  const std::string t = summary_table(rs, {"A", "B"}, {"l2", "mix"}, "test_top1");
  // l2 on A: mean 71.0, sample std 1.4142 -> "71.0 ± 1.4"; mix on A: 82.0 ± 2.8, the best of column A.
  EXPECT_EQ(t,
            "| method |              A |        B |\n"
            "|:-------|---------------:|---------:|\n"
            "| l2     |     71.0 ± 1.4 | **90.0** |\n"
            "| mix    | **82.0 ± 2.8** |     50.0 |\n");
  const std::string pc = summary_table(rs, {"A"}, {"l2", "mix"}, "test_mean_class");
  EXPECT_NE(pc.find("**41.0 ± 1.4**"), std::string::npos) << pc;
}

TEST(Summary, TiesAreAllBoldAndFailuresAreMarked) {
  RunRecord failed = summary_record("A", "bad", 0, 0);
  failed.ok = false;
  failed.error = "the loss is nan at step 3";
  RunRecord half = summary_record("A", "half", 1, 0);
  half.ok = false;
  std::vector<RunRecord> rs = {summary_record("A", "x", 0, 0.5), summary_record("A", "y", 0, 0.5), failed,
                               summary_record("A", "half", 0, 0.4), half};
  const std::string t = summary_table(rs, {"A", "B"}, {"x", "y", "bad", "half", "none"}, "test_top1");
  // Both tied cells are bold; "(1/2)": one of two seeds failed; "-": nothing ran.
  EXPECT_EQ(t,
            "| method |                                 A |   B |\n"
            "|:-------|----------------------------------:|----:|\n"
            "| x      |                          **50.0** |   - |\n"
            "| y      |                          **50.0** |   - |\n"
            "| bad    | failed: the loss is nan at step 3 |   - |\n"
            "| half   |                        40.0 (1/2) |   - |\n"
            "| none   |                                 - |   - |\n");
  test::expect_bad_input([&] { summary_table(rs, {"A"}, {"x"}, "val"); }, {"'val'"});
  const std::string csv = records_csv(rs);
  EXPECT_NE(csv.find("A,bad,0,failed,,,,,the loss is nan at step 3,"), std::string::npos) << csv;
}

}  // namespace
}  // namespace xfer
