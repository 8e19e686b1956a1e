// Progress in a log (stderr not a terminal, as under ctest): timestamped lines every --log-interval seconds,
// whatever the step count, and a closing line with the time taken.
#include <unistd.h>

#include <chrono>
#include <regex>
#include <sstream>
#include <thread>

#include "support.h"
#include "xfer/core/runtime.h"

namespace xfer {
namespace {

/// Captures std::cerr while alive.
class CaptureStderr {
 public:
  CaptureStderr() : old_(std::cerr.rdbuf(text_.rdbuf())) {}
  ~CaptureStderr() { std::cerr.rdbuf(old_); }
  std::string text() const { return text_.str(); }

 private:
  std::ostringstream text_;
  std::streambuf* old_;
};

TEST(Progress, LogLinesComeEveryIntervalWithATimestampAndEndWithTheTimeTaken) {
  if (::isatty(STDERR_FILENO) == 1) GTEST_SKIP() << "stderr is a terminal here: Progress draws a bar instead";
  const double saved = progress_interval();
  const int saved_verbosity = verbosity();
  set_verbosity(1);
  set_progress_interval(0.2);
  std::string text;
  {
    CaptureStderr capture;
    Progress p("train", 100);
    p.update(1, "loss 2.3");  // before the first interval: nothing
    p.update(2, "loss 2.2");
    EXPECT_EQ(capture.text(), "");
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    p.update(3, "loss 2.1");    // an interval passed: one line
    p.update(4, "loss 2.0");    // too soon again
    p.update(100, "loss 1.0");  // the end always prints
    text = capture.text();
  }
  set_progress_interval(saved);
  set_verbosity(saved_verbosity);
  const std::regex line(
      R"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d train 3/100  loss 2\.1  [0-9.]+ it/s  ETA \d+:\d\d\n)"
      R"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d train 100/100  loss 1\.0  [0-9.]+ it/s  in 0:00\n)");
  EXPECT_TRUE(std::regex_match(text, line)) << text;
  EXPECT_THROW(set_progress_interval(0), BadInput);
}

TEST(Progress, AQuietRunPrintsNothingAndAnUnknownRateIsNotShownAsZero) {
  if (::isatty(STDERR_FILENO) == 1) GTEST_SKIP() << "stderr is a terminal here: Progress draws a bar instead";
  const int saved_verbosity = verbosity();
  std::string quiet, first;
  {
    CaptureStderr capture;
    set_verbosity(0);
    Progress p("train", 10);
    p.update(10, "done");
    quiet = capture.text();
  }
  {
    CaptureStderr capture;
    set_verbosity(1);
    Progress p("eval", 5, 5);  // a resumed run that had finished: no new work, no rate
    p.update(5, "");
    first = capture.text();
  }
  set_verbosity(saved_verbosity);
  EXPECT_EQ(quiet, "");
  EXPECT_NE(first.find(" eval 5/5  -- it/s  in 0:00"), std::string::npos) << first;
}

}  // namespace
}  // namespace xfer
