#include <atomic>
#include <chrono>
#include <thread>

#include "support.h"
#include "xfer/core/runtime.h"

namespace xfer {
namespace {

TEST(Periodic, CallsUntilDestroyedAndNeverAfter) {
  std::atomic<int> calls{0};
  {
    const Periodic beat(0.01, [&] { ++calls; });
    // A generous deadline: a loaded machine may delay the thread, never stop it.
    for (int i = 0; i < 500 && calls < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int at_destruction = calls;
  EXPECT_GE(at_destruction, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(calls, at_destruction);
}

TEST(Periodic, DestructionDoesNotWaitOutTheInterval) {
  int calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  {
    const Periodic beat(3600, [&] { ++calls; });
  }
  EXPECT_EQ(calls, 0);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

TEST(WaitUntil, ReturnsAsSoonAsTheConditionHoldsAndFalseWhenTimeRunsOut) {
  int checks = 0;
  EXPECT_TRUE(wait_until(
      60, [&] { return ++checks == 3; }, 0.001));
  EXPECT_EQ(checks, 3) << "checked until it held, then returned (a 60 s wait would have timed the test out)";
  checks = 0;
  EXPECT_TRUE(wait_until(0, [&] { return ++checks > 0; }))
      << "a condition that holds already is not waited for";
  EXPECT_FALSE(wait_until(
      0.02, [] { return false; }, 0.005));
}

}  // namespace
}  // namespace xfer
