// ProcessGroup: children's exit codes, signals, several at once, and children that are not the group's.
#include <signal.h>

#include <chrono>
#include <set>

#include "support.h"
#include "xfer/core/process.h"

namespace xfer {
namespace {

std::vector<std::string> sh(const std::string& script) {
  return {"/bin/sh", "-c", script};
}

TEST(Process, ExitCodeAndSignalOfOneChild) {
  ProcessGroup group;
  const size_t three = group.start(sh("exit 3"));
  const auto ended = group.wait_any();
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->index, three);
  EXPECT_EQ(ended->status.code, 3);
  EXPECT_EQ(ended->status.signal, 0);
  EXPECT_FALSE(ended->status.ok());
  EXPECT_EQ(group.running(), 0u);
  EXPECT_FALSE(group.wait_any().has_value());  // nothing left to wait for

  ProcessGroup killed;
  killed.start(sh("kill -9 $$"));
  const auto k = killed.wait_any();
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->status.signal, SIGKILL);
  EXPECT_EQ(k->status.code, 128 + SIGKILL);
}

TEST(Process, WaitAllGivesTheFirstFailureInStartOrder) {
  ProcessGroup group;
  group.start(sh("sleep 0.2; exit 0"));
  group.start(sh("sleep 0.4; exit 4"));  // fails last, but was started before the one below
  group.start(sh("exit 7"));
  group.start(sh("kill -TERM $$"));
  EXPECT_EQ(group.size(), 4u);
  EXPECT_EQ(group.wait_all(), 4);
  EXPECT_EQ(group.running(), 0u);

  ProcessGroup fine;
  for (int i = 0; i < 6; ++i) fine.start(sh("sleep 0.1"));
  EXPECT_EQ(fine.running(), 6u);
  EXPECT_EQ(fine.wait_all(), 0);
}

TEST(Process, RunsNAtOnceAndEachEndsOnce) {
  ProcessGroup group;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 8; ++i) group.start(sh("sleep 0.5; exit " + std::to_string(i)));
  std::set<size_t> seen;
  while (const auto e = group.wait_any()) {
    EXPECT_TRUE(seen.insert(e->index).second);
    EXPECT_EQ(e->status.code, static_cast<int>(e->index));
    EXPECT_FALSE(group.is_running(e->index));
  }
  EXPECT_EQ(seen.size(), 8u);
  // Eight half-second children side by side take about half a second, not four.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3.0);
}

TEST(Process, StopsKillsAndLeavesOtherChildrenAlone) {
  // A child that is not the group's ends first: the group waits for its own, and the other stays for its
  // owner.
  const pid_t other = spawn_process(sh("exit 9"), "", "");
  ProcessGroup group;
  group.start(sh("sleep 0.3; exit 2"));
  const auto e = group.wait_any();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->status.code, 2);
  EXPECT_EQ(wait_process(other).code, 9);

  // stop(): SIGTERM to the running children, then they are reaped.
  ProcessGroup stopped;
  stopped.start(sh("sleep 30"));
  stopped.start(sh("exit 0"));
  stopped.stop();
  EXPECT_EQ(stopped.running(), 0u);

  // A group dropped with children running (an exception) kills them.
  const auto t0 = std::chrono::steady_clock::now();
  {
    ProcessGroup dropped;
    dropped.start(sh("sleep 30"));
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  test::expect_bad_input(
      [] {
        ProcessGroup g;
        g.start({"/no/such/program"});
      },
      {"/no/such/program"});
}

}  // namespace
}  // namespace xfer
