// The SQLite study: creation and resumption, refusing another space, stale trials of dead workers,
// concurrent claims, locked and corrupt databases.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <sqlite3.h>

#include "study_fixture.h"
#include "support.h"
#include "xfer/search/study.h"

extern char** environ;

namespace xfer {
namespace {

TEST(Study, ClaimsUpToTheBudgetAndResumes) {
  test::TempDir dir;
  const std::string path = dir.file("study.sqlite");
  {
    Study s(path, test::study_info());
    for (int i = 0; i < 3; ++i) {
      auto t = s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs());
      ASSERT_TRUE(t);
      EXPECT_EQ(t->number, i);
      EXPECT_EQ(t->run_dir, "runs/" + std::to_string(i));
      EXPECT_EQ(t->params.at("x"), i / 100.0) << "the sampler sees the complete trials";
      s.complete(t->number, 0.5 + i, {{5, 0.1}, {10, 0.2 + i}});
    }
    EXPECT_FALSE(s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs()));
    EXPECT_EQ(s.running(), 0);
  }
  // Reopened (a new process would do the same): the trials are there; a larger budget extends the study.
  Study s(path, test::study_info());
  auto trials = s.trials();
  ASSERT_EQ(trials.size(), 3u);
  EXPECT_EQ(trials[2].state, "COMPLETE");
  EXPECT_EQ(*trials[2].value, 2.5);
  EXPECT_EQ(trials[2].intermediate, (std::vector<std::pair<int64_t, double>>{{5, 0.1}, {10, 2.2}}));
  EXPECT_EQ(trials[1].params.at("c"), 1.0);
  auto t = s.claim("w", {4, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->number, 3);
  s.fail(t->number, "the loss is nan at step 3", {});
  EXPECT_EQ(s.trials()[3].state, "FAILED");
  EXPECT_FALSE(s.claim("w", {4, 60, 1}, test::study_sampler(), test::study_dirs()))
      << "a diverged trial counts";
}

TEST(Study, RefusesAnotherSpaceOrConfigurationNamingTheDifference) {
  test::TempDir dir;
  const std::string path = dir.file("study.sqlite");
  { Study s(path, test::study_info()); }
  StudyInfo other = test::study_info();
  other.space = SearchSpace::parse({"x=lin:-2:1", "c=cat:a,b"});
  test::expect_bad_input([&] { Study s(path, other); },
                         {"another space", "x is lin:-2:1 now but lin:-1:1 in the study"});
  other = test::study_info();
  other.space = SearchSpace::parse({"x=lin:-1:1"});
  test::expect_bad_input([&] { Study s(path, other); }, {"also searches c=cat:a,b"});
  other = test::study_info();
  other.config["iterations"] = 20;
  test::expect_bad_input([&] { Study s(path, other); }, {"iterations = 10, not 20"});
  other = test::study_info();
  other.name = "other";
  test::expect_bad_input([&] { Study s(path, other); }, {"named 'test'", "'other'"});
  other = test::study_info();
  other.sampler = "random";
  test::expect_bad_input([&] { Study s(path, other); }, {"tpe sampler, not random"});
}

TEST(Study, StaleTrialsFailAndAreRetriedWithoutLosingCompletedOnes) {
  test::TempDir dir;
  const std::string path = dir.file("study.sqlite");
  Study a(path, test::study_info()), b(path, test::study_info());
  auto t0 = a.claim("host-a:1", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  a.complete(t0->number, 0.7, {});
  auto t1 = a.claim("host-a:1", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t1);
  // Worker a stops sending heartbeats. With a generous timeout, b leaves its trial alone.
  auto t2 = b.claim("host-b:2", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t2);
  EXPECT_EQ(t2->number, 2);
  b.complete(t2->number, 0.9, {});
  EXPECT_FALSE(b.claim("host-b:2", {3, 60, 1}, test::study_sampler(), test::study_dirs()));
  EXPECT_EQ(b.running(), 1);
  // Past the timeout, b's next claim fails trial 1 and runs it again with the same parameters.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  auto retry = b.claim("host-b:2", {3, 0.2, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(retry);
  EXPECT_EQ(retry->number, 3);
  EXPECT_EQ(*retry->retry_of, 1);
  EXPECT_EQ(retry->params, t1->params);
  b.complete(retry->number, 0.8, {});
  const auto trials = b.trials();
  ASSERT_EQ(trials.size(), 4u);
  EXPECT_EQ(trials[0].state, "COMPLETE");
  EXPECT_EQ(*trials[0].value, 0.7);
  EXPECT_EQ(trials[1].state, "FAILED");
  EXPECT_NE(trials[1].error.find("no heartbeat"), std::string::npos) << trials[1].error;
  EXPECT_EQ(trials[2].state, "COMPLETE");
  EXPECT_EQ(trials[3].state, "COMPLETE");
  // One retry only: a retry that goes stale too is failed for good.
  EXPECT_FALSE(b.claim("host-b:2", {3, 0.2, 1}, test::study_sampler(), test::study_dirs()));
}

TEST(Study, HeartbeatsKeepATrialAliveAndADeadLocalWorkerFailsAtOnce) {
  test::TempDir dir;
  const std::string path = dir.file("study.sqlite");
  Study a(path, test::study_info()), b(path, test::study_info());
  auto t = a.claim(Study::worker_id(), {2, 0.3, 0}, test::study_sampler(), test::study_dirs());
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    a.heartbeat(t->number);
  }
  EXPECT_EQ(b.fail_stale(0.3, 0), 0) << "heartbeats every 0.1 s keep it running";
  // A worker on this host whose process is gone: its trial fails without waiting for the timeout.
  pid_t pid = 0;
  char arg0[] = "/bin/true";
  char* argv[] = {arg0, nullptr};
  ASSERT_EQ(posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ), 0);
  waitpid(pid, nullptr, 0);
  auto dead = b.claim(Study::worker_id().substr(0, Study::worker_id().rfind(':') + 1) + std::to_string(pid),
                      {2, 3600, 0}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(dead);
  EXPECT_EQ(a.fail_stale(3600, 0), 1);
  EXPECT_EQ(a.trials()[dead->number].state, "FAILED");
  EXPECT_EQ(a.trials()[t->number].state, "RUNNING");
}

TEST(Study, ConcurrentWorkersNeverClaimTheSameTrial) {
  test::TempDir dir;
  const std::string path = dir.file("study.sqlite");
  { Study s(path, test::study_info()); }
  const int budget = 40, workers = 4;
  std::vector<std::vector<int64_t>> ran(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      Study s(path, test::study_info());  // each worker has its own connection, as processes do
      while (auto t = s.claim("w" + std::to_string(w), {budget, 60, 1}, test::study_sampler(),
                              test::study_dirs())) {
        ran[w].push_back(t->number);
        s.complete(t->number, static_cast<double>(t->number), {});
      }
    });
  for (auto& t : threads) t.join();
  std::multiset<int64_t> all;
  for (const auto& r : ran) all.insert(r.begin(), r.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(budget));
  for (int64_t n = 0; n < budget; ++n) EXPECT_EQ(all.count(n), 1u) << "trial " << n;
  Study s(path, test::study_info());
  for (const auto& t : s.trials()) EXPECT_EQ(t.state, "COMPLETE");
}

TEST(Study, LockedCorruptAndForeignDatabasesAreClearErrors) {
  test::TempDir dir;
  // Corrupt: not a database. The file is left as it was.
  const std::string garbage(4096, 'x');
  { std::ofstream(dir.file("corrupt.sqlite")) << garbage; }
  test::expect_bad_input([&] { Study s(dir.file("corrupt.sqlite"), test::study_info()); },
                         {"corrupt.sqlite", "not a readable study database"});
  EXPECT_EQ(std::filesystem::file_size(dir.file("corrupt.sqlite")), garbage.size());
  // Another program's database: not written into.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.file("foreign.sqlite").c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "CREATE TABLE users(name TEXT)", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  test::expect_bad_input([&] { Study s(dir.file("foreign.sqlite"), test::study_info()); },
                         {"not an xfer study"});
  // Locked: another connection holds the write lock longer than the busy timeout.
  const std::string path = dir.file("study.sqlite");
  Study s(path, test::study_info(), 0.2);
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  try {
    s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs());
    ADD_FAILURE() << "expected a locked-database error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("stayed locked"), std::string::npos) << e.what();
  }
  // Released: the claim goes through (the busy timeout waits for short locks).
  std::thread release([db] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  });
  Study patient(path, test::study_info(), 5);
  release.join();
  EXPECT_TRUE(patient.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs()));
  sqlite3_close(db);
}

}  // namespace
}  // namespace xfer
