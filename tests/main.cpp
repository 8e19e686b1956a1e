// Tests run one LibTorch thread each: ctest runs them in parallel, and results must not depend on it.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "support.h"
#include "xfer/core/runtime.h"

namespace {

/// Under XFER_TESTS_NO_SKIP=1 (CI) a skipped test fails: a missing dataset, tool or build option must not
/// pass silently. The failure is added in OnTestEnd, which runs before the result printer's, so gtest
/// prints FAILED (not SKIPPED, which ctest would count as passed) and exits non-zero.
class SkipIsFailure : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Skipped())
      ADD_FAILURE() << info.test_suite_name() << "." << info.name()
                    << " was skipped, and XFER_TESTS_NO_SKIP=1 makes a skip a failure";
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (xfer::test::skips_are_failures())
    ::testing::UnitTest::GetInstance()->listeners().Append(new SkipIsFailure);
  at::set_num_threads(1);
  xfer::set_verbosity(0);
  return RUN_ALL_TESTS();
}
