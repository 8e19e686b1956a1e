// A suite as a run queue on a real, throwaway PostgreSQL server: queueing is idempotent, two worker
// processes drain it without running a run twice, --collect gives the local bench's table, and a killed
// worker's run is handed to another.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <set>
#include <sstream>
#include <thread>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/search/sql.h"
#include "xfer/workflows/suite.h"
#include "xfer/workflows/suite_queue.h"

extern char** environ;

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A tiny suite on tiny IDX data: scratch and l2, one task, `seeds` seeds, `iterations` steps per run.
nlohmann::json queue_test_suite(const std::string& spec, int seeds, int iterations) {
  std::string text = R"JSON({
    "description": "tiny",
    "pretrain": {"source": "SPEC", "backbone": "cnn4:width=4", "iterations": 6, "batch_size": 8},
    "run": {"iterations": ITER, "batch_size": 8, "eval_every": 3},
    "seeds": SEEDS,
    "tasks": [{"name": "tiny", "target": "SPEC:per_class=4"}],
    "methods": ["scratch", {"label": "l2 (ft)", "method": "l2"}],
    "timing": false
  })JSON";
  for (size_t p; (p = text.find("SPEC")) != std::string::npos;) text.replace(p, 4, spec);
  text.replace(text.find("ITER"), 4, std::to_string(iterations));
  text.replace(text.find("SEEDS"), 5, std::to_string(seeds));
  return nlohmann::json::parse(text);
}

BenchOptions queue_test_options(const test::TempDir& dir, const std::string& out) {
  BenchOptions o;
  o.suite = dir.file("tiny.json");
  o.out = dir.file(out);
  o.cache = dir.file("cache");
  o.threads = 1;
  o.executable = XFER_BINARY;
  return o;
}

/// Starts `xfer worker` on the queue in its own process group (so that killing the group kills its run too,
/// as a machine that dies would).
pid_t queue_test_worker(const test::TempDir& dir, const std::string& url, const std::string& out) {
  std::vector<std::string> args = {
      XFER_BINARY,       "-q",        "worker", "--queue",     dir.file("tiny.json"),
      "--storage",       url,         "--out",  dir.file(out), "--cache",
      dir.file("cache"), "--threads", "1",      "--heartbeat", "0.5",
      "--stale-after",   "30"};
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, XFER_BINARY, nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot start xfer worker");
  return pid;
}

int queue_test_wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct QueueRow {
  std::string key, state, worker;
  int64_t attempts;
};
std::vector<QueueRow> queue_rows(const std::string& url) {
  auto db = open_sql(url, "queue", 10);
  db->use_namespace("xfer_queue_tiny");
  std::vector<QueueRow> out;
  for (const auto& r :
       db->query("SELECT key, state, COALESCE(worker, ''), attempts FROM runs ORDER BY position"))
    out.push_back({r.text(0), r.text(1), r.text(2), r.integer(3)});
  return out;
}

TEST(PostgresQueue, TwoWorkersDrainASuiteOnceAndCollectGivesTheLocalTable) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 3);
  write_json_file(dir.file("tiny.json"), queue_test_suite(spec, 3, 6));
  // The same suite run here, as one bench.
  BenchOptions local = queue_test_options(dir, "local");
  std::ostringstream log;
  run_bench(local, log);

  BenchOptions queued = queue_test_options(dir, "collected");
  queued.storage = server.url();
  EXPECT_EQ(enqueue_suite(queued, log), 6);
  EXPECT_EQ(enqueue_suite(queued, log), 0) << "queueing again adds nothing";
  EXPECT_EQ(queue_rows(server.url()).size(), 6u);
  EXPECT_THROW(collect_suite(
                   [&] {
                     BenchOptions c = queued;
                     c.collect = true;
                     return c;
                   }(),
                   log),
               std::runtime_error)
      << "nothing has run yet";

  const pid_t a = queue_test_worker(dir, server.url(), "worker-a");
  const pid_t b = queue_test_worker(dir, server.url(), "worker-b");
  EXPECT_EQ(queue_test_wait(a), 0);
  EXPECT_EQ(queue_test_wait(b), 0);
  std::set<std::string> workers;
  for (const auto& r : queue_rows(server.url())) {
    EXPECT_EQ(r.state, "DONE") << r.key;
    EXPECT_EQ(r.attempts, 1) << r.key << " ran once";
    workers.insert(r.worker);
    // Its outputs are under exactly one worker's --out.
    EXPECT_NE(fs::exists(dir.file("worker-a/" + r.key + "/result.json")),
              fs::exists(dir.file("worker-b/" + r.key + "/result.json")))
        << r.key;
  }
  EXPECT_EQ(workers.size(), 2u) << "both workers took runs";

  queued.collect = true;
  const nlohmann::json bench = collect_suite(queued, log);
  EXPECT_EQ(bench["failed"], 0);
  EXPECT_EQ(read_file(dir.file("collected/table.md")), read_file(dir.file("local/table.md")));
  EXPECT_TRUE(fs::exists(dir.file("collected/results.csv")));
}

TEST(PostgresQueue, AKilledWorkersRunIsHandedToAnother) {
  test::PostgresServer server;
  XFER_REQUIRE_POSTGRES(server);
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 3);
  write_json_file(dir.file("tiny.json"), queue_test_suite(spec, 2, 150));
  BenchOptions queued = queue_test_options(dir, "collected");
  queued.storage = server.url();
  std::ostringstream log;
  ASSERT_EQ(enqueue_suite(queued, log), 4);

  // Worker a is killed, with its run, as soon as it runs one.
  const pid_t a = queue_test_worker(dir, server.url(), "worker-a");
  std::string killed;
  for (int i = 0; i < 3000 && killed.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const auto& r : queue_rows(server.url()))
      if (r.state == "RUNNING") killed = r.key;
  }
  kill(-a, SIGKILL);
  queue_test_wait(a);
  ASSERT_FALSE(killed.empty()) << "worker a never ran a run";

  // Worker b finds a's run stale (its process is gone) and runs it again, with the rest.
  const pid_t b = queue_test_worker(dir, server.url(), "worker-b");
  EXPECT_EQ(queue_test_wait(b), 0);
  int64_t attempts = 0;
  for (const auto& r : queue_rows(server.url())) {
    EXPECT_EQ(r.state, "DONE") << r.key;
    EXPECT_EQ(r.attempts, r.key == killed ? 2 : 1) << r.key;
    attempts += r.attempts;
    EXPECT_TRUE(fs::exists(dir.file("worker-b/" + r.key + "/result.json"))) << r.key;
  }
  EXPECT_EQ(attempts, 5);
  queued.collect = true;
  const nlohmann::json bench = collect_suite(queued, log);
  EXPECT_EQ(bench["failed"], 0);
  EXPECT_EQ(bench["runs"].size(), 4u) << "every run once";
}

TEST(Queue, EveryWorkerAndQueueFlagIsDocumented) {
  const std::string scaling = read_file(std::string(XFER_SOURCE_DIR) + "/docs/scaling.md");
  QueueWorkerOptions worker;
  Fields f;
  worker.fields(f);
  for (const auto& field : f.all())
    EXPECT_NE(scaling.find("`" + field.flag() + "`"), std::string::npos)
        << field.flag() << " is not in docs/scaling.md";
  const std::string bench = read_file(std::string(XFER_SOURCE_DIR) + "/docs/bench.md");
  for (const char* flag : {"`--storage`", "`--collect`"})
    EXPECT_NE(bench.find(flag), std::string::npos) << flag << " is not in docs/bench.md";
}

TEST(Queue, WorkerOptionsAreCheckedBeforeAnythingRuns) {
  QueueWorkerOptions o;
  o.queue = "quick";
  test::expect_bad_input([&] { o.validate(); }, {"--storage"});
  o.storage = "q.sqlite";
  o.heartbeat = 90;
  test::expect_bad_input([&] { o.validate(); },
                         {"--stale-after (60 s) must be longer than --heartbeat (90 s)"});
  const test::CliOutcome cli =
      test::run_cli({"worker", "--queue", "quick", "--storage", "postgresql://u:pw@h/db", "--retries", "-1"});
  EXPECT_EQ(cli.code, 2) << cli.err;
}

}  // namespace
}  // namespace xfer
