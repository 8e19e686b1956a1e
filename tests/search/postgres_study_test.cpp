// The study on a real, throwaway PostgreSQL server: the SQLite study's behaviour (claims, budget, resume,
// stale retries, concurrent claims), studies joined by name, passwords never shown, a server that goes
// away; and `xfer search` worker processes sharing one study on it, one of them killed mid-trial.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "study_fixture.h"
#include "support.h"
#include "xfer/core/io.h"
#include "xfer/search/sql.h"
#include "xfer/search/study.h"

extern char** environ;

namespace fs = std::filesystem;

namespace xfer {
namespace {

TEST(PostgresStudy, ClaimsUpToTheBudgetResumesAndRefusesAnotherConfiguration) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  const std::string url = server.url();
  {
    Study s(url, test::study_info());
    for (int i = 0; i < 3; ++i) {
      auto t = s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs());
      ASSERT_TRUE(t);
      EXPECT_EQ(t->number, i);
      EXPECT_EQ(t->params.at("x"), i / 100.0) << "the sampler sees the complete trials";
      s.report(t->number, 5, 0.1);
      s.complete(t->number, 0.5 + i + 1e-13, {{5, 0.1}, {10, 0.2 + i}});
    }
    EXPECT_FALSE(s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs()));
    EXPECT_EQ(s.running(), 0);
    EXPECT_EQ(s.complete_count(), 3);
    EXPECT_EQ(s.complete_values_at(10), (std::vector<double>{0.2 + 0, 0.2 + 1, 0.2 + 2}));
  }
  Study s(url, test::study_info());
  auto trials = s.trials();
  ASSERT_EQ(trials.size(), 3u);
  EXPECT_EQ(trials[2].state, "COMPLETE");
  EXPECT_EQ(*trials[2].value, 2.5 + 1e-13) << "doubles round-trip exactly";
  EXPECT_EQ(trials[2].intermediate, (std::vector<std::pair<int64_t, double>>{{5, 0.1}, {10, 2.2}}));
  EXPECT_EQ(trials[1].params.at("c"), 1.0);
  auto t = s.claim("w", {5, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->number, 3);
  s.fail(t->number, "the loss is nan at step 3", {});
  EXPECT_EQ(s.trials()[3].state, "FAILED");
  t = s.claim("w", {5, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t);
  s.report(t->number, 1, 0.3);
  s.prune(t->number);
  EXPECT_EQ(s.trials()[4].state, "PRUNED");
  EXPECT_EQ(s.trials()[4].intermediate, (std::vector<std::pair<int64_t, double>>{{1, 0.3}}));
  EXPECT_FALSE(s.claim("w", {5, 60, 1}, test::study_sampler(), test::study_dirs()))
      << "failed and pruned trials count";
  s.record_worker({"w", 5, 0.5, 0.25, 10});
  s.record_worker({"w", 6, 0.5, 0.25, 12});  // a worker's stats are replaced, not added
  ASSERT_EQ(s.workers().size(), 1u);
  EXPECT_EQ(s.workers()[0].trials, 6);
  EXPECT_EQ(s.workers()[0].run_seconds, 12);

  StudyInfo other = test::study_info();
  other.space = SearchSpace::parse({"x=lin:-2:1", "c=cat:a,b"});
  test::expect_bad_input([&] { Study x(url, other); },
                         {"another space", "x is lin:-2:1 now but lin:-1:1 in the study"});
  other = test::study_info();
  other.config["iterations"] = 20;
  test::expect_bad_input([&] { Study x(url, other); }, {"iterations = 10, not 20"});
  other = test::study_info();
  other.sampler = "random";
  test::expect_bad_input([&] { Study x(url, other); }, {"tpe sampler, not random"});
}

TEST(PostgresStudy, StudiesAreJoinedByNameInOneDatabase) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  Study a(server.url(), test::study_info("alpha")), b(server.url(), test::study_info("beta"));
  a.complete(a.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs())->number, 0.5, {});
  EXPECT_EQ(a.trials().size(), 1u);
  EXPECT_EQ(b.trials().size(), 0u) << "another study's trials are its own";
  Study joined(server.url(), 60, "alpha");  // a second worker joins by name
  EXPECT_EQ(joined.info().name, "alpha");
  EXPECT_EQ(joined.trials().size(), 1u);
  test::expect_bad_input([&] { Study x(server.url(), 60, "gamma"); }, {"no study named 'gamma'"});
  // Heartbeats are stamped on the server's clock; this machine's is the same one.
  EXPECT_LT(std::abs(open_sql(server.url(), "study", 10)->clock_offset()), 0.5);
  test::TempDir dir;
  EXPECT_EQ(open_sql(dir.file("study.sqlite"), "study", 10)->clock_offset(), 0);
  test::expect_bad_input([&] { Study x(server.url(), test::study_info("a b")); }, {"--study name", "'a b'"});
}

TEST(PostgresStudy, StaleTrialsFailAndAreRetriedWithoutLosingCompletedOnes) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  Study a(server.url(), test::study_info()), b(server.url(), test::study_info());
  auto t0 = a.claim("host-a:1", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  a.complete(t0->number, 0.7, {});
  auto t1 = a.claim("host-a:1", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t1);
  auto t2 = b.claim("host-b:2", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t2);
  EXPECT_EQ(t2->number, 2);
  b.complete(t2->number, 0.9, {});
  EXPECT_FALSE(b.claim("host-b:2", {3, 60, 1}, test::study_sampler(), test::study_dirs()));
  EXPECT_EQ(b.running(), 1);
  // Heartbeats keep trial 1 alive; once they stop, b's next claim fails it and runs it again.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    a.heartbeat(t1->number);
  }
  EXPECT_EQ(b.fail_stale(0.3, 1), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  auto retry = b.claim("host-b:2", {3, 0.3, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(retry);
  EXPECT_EQ(retry->number, 3);
  EXPECT_EQ(*retry->retry_of, 1);
  EXPECT_EQ(retry->params, t1->params);
  b.complete(retry->number, 0.8, {});
  const auto trials = b.trials();
  ASSERT_EQ(trials.size(), 4u);
  EXPECT_EQ(trials[1].state, "FAILED");
  EXPECT_NE(trials[1].error.find("no heartbeat"), std::string::npos) << trials[1].error;
  for (int n : {0, 2, 3}) EXPECT_EQ(trials[n].state, "COMPLETE") << n;
  EXPECT_FALSE(b.claim("host-b:2", {3, 0.3, 1}, test::study_sampler(), test::study_dirs()))
      << "one retry only";
}

TEST(PostgresStudy, ConcurrentWorkersNeverClaimTheSameTrial) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  { Study s(server.url(), test::study_info()); }
  const int budget = 40, workers = 4;
  std::vector<std::vector<int64_t>> ran(workers);
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      Study s(server.url(), test::study_info());  // each worker has its own connection, as processes do
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
  Study s(server.url(), test::study_info());
  for (const auto& t : s.trials()) EXPECT_EQ(t.state, "COMPLETE");
}

TEST(PostgresStudy, PasswordsAreNeverShown) {
  EXPECT_EQ(redact_storage("postgresql://me:s3cret@db.example:5433/xfer"),
            "postgresql://me@db.example:5433/xfer");
  EXPECT_EQ(redact_storage("postgres://me:s3cret@h/db?sslmode=require&password=s3cret"),
            "postgres://me@h/db?sslmode=require");
  EXPECT_EQ(redact_storage("runs/study.sqlite"), "runs/study.sqlite");
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  // Trust authentication ignores the password; the study must not repeat it.
  const std::string url = "postgresql://xfer:s3cret@127.0.0.1:" + std::to_string(server.port()) + "/xfer";
  Study s(url, test::study_info());
  EXPECT_EQ(s.path(), server.url());
  try {
    Study x("postgresql://xfer:s3cret@127.0.0.1:1/xfer", test::study_info());
    ADD_FAILURE() << "expected an unreachable server";
  } catch (const std::exception& e) {
    EXPECT_EQ(std::string(e.what()).find("s3cret"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("postgresql://xfer@127.0.0.1:1/xfer"), std::string::npos)
        << e.what();
  }
}

TEST(PostgresStudy, AServerThatGoesAwayIsWaitedForThenAOneLineError) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  Study s(server.url(), test::study_info(), /*busy_timeout=*/30);
  auto t = s.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs());
  ASSERT_TRUE(t);
  // Down for a second: the worker reconnects and its operation goes through once.
  server.stop();
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::seconds(1));
    server.start();
  });
  s.complete(t->number, 0.5, {});
  restart.join();
  EXPECT_EQ(s.trials().size(), 1u);
  EXPECT_EQ(s.trials()[0].state, "COMPLETE");
  // Down for good: bounded retries, then one line naming the database.
  Study impatient(server.url(), test::study_info(), /*busy_timeout=*/1.5);
  server.stop();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    impatient.claim("w", {3, 60, 1}, test::study_sampler(), test::study_dirs());
    ADD_FAILURE() << "expected the server to stay away";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("gave up after"), std::string::npos) << what;
    EXPECT_NE(what.find(server.url()), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(waited, 1.4);
  EXPECT_LT(waited, 10);
  server.start();
  Study again(server.url(), test::study_info());
  EXPECT_EQ(again.trials().size(), 1u) << "nothing half-written";
}

// ---- `xfer search` on the server -----------------------------------------------------------------------

class PostgresSearchCli : public ::testing::Test {
 protected:
  void SetUp() override { spec_ = test::write_tiny_idx(dir_.path(), 3, 20, 3); }
  std::vector<std::string> args(const std::string& storage, int64_t trials, int64_t iterations,
                                std::vector<std::string> extra) const {
    std::vector<std::string> a = {"-q",
                                  "search",
                                  "--method",
                                  "scratch",
                                  "--target",
                                  spec_ + ":per_class=10:val=4",
                                  "--backbone",
                                  "cnn4:width=4",
                                  "--iterations",
                                  std::to_string(iterations),
                                  "--batch-size",
                                  "8",
                                  "--threads",
                                  "1",
                                  "--trials",
                                  std::to_string(trials),
                                  "--startup-trials",
                                  "2",
                                  "--param",
                                  "lr=log:0.001:0.1",
                                  "--storage",
                                  storage,
                                  "--out",
                                  dir_.file("search")};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  test::TempDir dir_;
  std::string spec_;
};

TEST_F(PostgresSearchCli, TwoWorkerProcessesNeverRunTheSameTrialAndNoPasswordIsWritten) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  const std::string url = "postgresql://xfer:s3cret@127.0.0.1:" + std::to_string(server.port()) + "/xfer";
  const test::CliOutcome o =
      test::run_cli(args(url, 6, 12, {"--workers", "2", "--worker-exe", std::string(XFER_BINARY), "--json"}));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out.find("s3cret"), std::string::npos) << o.out;
  Study s(server.url(), 60, "search");
  const auto trials = s.trials();
  ASSERT_EQ(trials.size(), 6u);
  std::set<std::string> dirs;
  for (const auto& t : trials) {
    EXPECT_EQ(t.state, "COMPLETE") << t.number;
    EXPECT_TRUE(fs::exists(t.run_dir + "/result.json")) << t.run_dir;
    dirs.insert(t.run_dir);
  }
  EXPECT_EQ(dirs.size(), 6u);
  const auto workers = s.workers();
  ASSERT_EQ(workers.size(), 2u) << "two worker processes, each with its own id";
  EXPECT_EQ(workers[0].trials + workers[1].trials, 6) << "each trial ran once";
  // The URL's password is in no file the search wrote.
  for (const auto& e : fs::recursive_directory_iterator(dir_.file("search")))
    if (e.is_regular_file() && e.file_size() < (1 << 20)) {
      EXPECT_EQ(read_file(e.path().string()).find("s3cret"), std::string::npos) << e.path();
    }
  EXPECT_EQ(read_json_file(dir_.file("search/best.json"))["study"], server.url());
}

TEST_F(PostgresSearchCli, AKilledWorkersTrialIsRetriedAndTheBudgetIsKept) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  const std::string binary = std::string(XFER_BINARY);
  ASSERT_FALSE(binary.empty()) << "the xfer binary is not built next to the tests";
  std::vector<std::string> a = args(server.url(), 4, 150, {"--worker"});
  std::vector<std::string> argv_text = {binary};
  argv_text.insert(argv_text.end(), a.begin(), a.end());
  fs::create_directories(dir_.file("search"));
  std::map<int64_t, double> completed;
  const int64_t killed = test::kill_worker_mid_trial(
      argv_text, [&] { return std::make_unique<Study>(server.url(), 60, "search"); }, completed);
  ASSERT_GE(killed, 1) << "the worker never had a running trial after a completed one";

  // Another worker takes over: the dead worker's trial fails and runs again; nothing is lost or doubled.
  a.pop_back();
  const test::CliOutcome o = test::run_cli(a);
  ASSERT_EQ(o.code, 0) << o.err;
  Study s(server.url(), 60, "search");
  const auto trials = s.trials();
  for (const auto& [n, v] : completed) EXPECT_EQ(*trials[static_cast<size_t>(n)].value, v);
  EXPECT_EQ(trials[static_cast<size_t>(killed)].state, "FAILED");
  int64_t originals = 0, retries = 0, complete = 0;
  for (const auto& t : trials) {
    complete += t.state == "COMPLETE";
    if (t.retry_of) {
      ++retries;
      EXPECT_EQ(*t.retry_of, killed);
      EXPECT_EQ(t.params, trials[static_cast<size_t>(killed)].params);
    } else {
      ++originals;
    }
  }
  EXPECT_EQ(originals, 4);
  EXPECT_EQ(retries, 1);
  EXPECT_EQ(complete, 4) << "the full budget, no double count";
}

}  // namespace
}  // namespace xfer
