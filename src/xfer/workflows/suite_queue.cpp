#include "xfer/workflows/suite_queue.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/search/sql.h"
#include "xfer/search/study.h"
#include "xfer/workflows/suite_plan.h"
#include "xfer/workflows/suite_runs.h"
#include "xfer/workflows/suite_tables.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const char* const kQueueFormat = "xfer-queue-1";

std::string queue_schema(SqlDialect dialect) {
  const std::string real = dialect == SqlDialect::postgresql ? "DOUBLE PRECISION" : "REAL";
  const std::string integer = dialect == SqlDialect::postgresql ? "BIGINT" : "INTEGER";
  return cat("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);",
             "CREATE TABLE IF NOT EXISTS runs(key TEXT PRIMARY KEY, position ", integer,
             " NOT NULL, request TEXT NOT NULL, state TEXT NOT NULL, worker TEXT, attempts ", integer,
             " NOT NULL DEFAULT 0, heartbeat ", real, ", started ", real, ", finished ", real, ", seconds ",
             real, ", result TEXT, error TEXT);");
}

/// A suite's queue is namespace xfer_queue_SUITE of the database.
std::string queue_namespace(const Suite& s) {
  const std::string slug = suite_slug(s.name);
  XFER_CHECK(slug.size() <= 40, "a suite queued in a database needs a name of at most 40 characters, got '",
             s.name, "'");
  return "xfer_queue_" + slug;
}

/// The run's key: its directory relative to the suite's output (runs/TASK/LABEL/seedN).
std::string queue_key(const RunRequest& q, const std::string& out) {
  return fs::path(q.dir).lexically_relative(out).generic_string();
}

std::string queue_request(const RunRequest& q) {
  return nlohmann::json{{"task", q.task},   {"label", q.label},   {"seed", q.seed},
                        {"point", q.point}, {"config", q.config}, {"search", q.search}}
      .dump();
}

/// Opens the queue of suite `s` in `storage`; `create` makes it (inside the caller's transaction: not
/// here), else a missing queue is an error naming the command that makes it.
std::unique_ptr<SqlDb> queue_open(const std::string& storage, const Suite& s, double busy_timeout) {
  auto db = open_sql(storage, "queue", busy_timeout);
  db->use_namespace(queue_namespace(s));
  return db;
}

void queue_check_exists(SqlDb& db, const Suite& s) {
  const auto tables = db.tables();
  XFER_CHECK(db.namespace_exists() && std::find(tables.begin(), tables.end(), "runs") != tables.end(),
             "no queue of suite ", s.name, " in ", db.where(), ": queue it first with `xfer bench --suite ",
             s.name, " --storage ", db.where(), "`");
  const auto rows = db.query("SELECT value FROM meta WHERE key = 'suite'");
  XFER_CHECK(!rows.empty() && rows[0].text(0) == s.name, db.where(), " holds the queue of suite '",
             rows.empty() ? std::string() : rows[0].text(0), "', not '", s.name, "'");
}

/// Puts the RUNNING runs whose heartbeat is older than `stale_after` (or whose worker on this host is gone)
/// back in the queue, or FAILED once they ran `retries` + 1 times. Returns how many.
int64_t queue_requeue_stale(SqlDb& db, double stale_after, int64_t retries) {
  const double t = Study::now() + db.clock_offset();
  int64_t n = 0;
  for (const auto& row :
       db.query("SELECT key, worker, heartbeat, attempts FROM runs WHERE state = 'RUNNING'")) {
    const double age = t - row.real(2);
    const std::string worker = row.text(1);
    if (age <= stale_after && !Study::worker_gone(worker)) continue;
    // Compare-and-set on the heartbeat read: a worker that beat meanwhile keeps its run.
    n += !db.query(
                "UPDATE runs SET state = CASE WHEN attempts > ? THEN 'FAILED' ELSE 'WAITING' END, error = ? "
                "WHERE key = ? AND state = 'RUNNING' AND worker = ? AND heartbeat <= ? RETURNING key",
                {retries,
                 cat("worker ", worker, " stopped: no heartbeat for ", static_cast<int64_t>(age), " s"),
                 row.text(0), worker, row.real(2)})
              .empty();
  }
  return n;
}

}  // namespace

void QueueWorkerOptions::fields(Fields& f) {
  f.add("storage", storage, "the queue's database: postgresql://USER@HOST:PORT/DB, or an SQLite FILE");
  f.add("queue", queue, "the suite whose queue to drain, as given to xfer bench --suite");
  f.add("out", out, "this worker's output directory (default runs/bench-SUITE)");
  f.add("cache", cache, "cache of pre-trained source models (default $XDG_CACHE_HOME/xfer or ~/.cache/xfer)");
  f.add("threads", threads, "CPU threads per run (0 = all cores)").non_negative();
  f.add("heartbeat", heartbeat, "seconds between heartbeats of a running run").positive();
  f.add("stale_after", stale_after, "seconds without a heartbeat after which a run goes to another worker")
      .positive();
  f.add("retries", retries, "times a run whose worker stopped is run again").non_negative();
  f.add("busy_timeout", busy_timeout, "seconds to wait for a locked database, or for a server that went away")
      .non_negative();
  f.add("executable", executable, "the xfer binary that runs each run (default: this one)");
}

void QueueWorkerOptions::validate() {
  check_options(*this);
  XFER_CHECK(!storage.empty(), "xfer worker needs --storage (the database the suite was queued in)");
  XFER_CHECK(!queue.empty(), "xfer worker needs --queue SUITE");
  XFER_CHECK(stale_after > heartbeat, "--stale-after (", stale_after, " s) must be longer than --heartbeat (",
             heartbeat, " s)");
}

int64_t enqueue_suite(const BenchOptions& opts, std::ostream& out) {
  check_options(const_cast<BenchOptions&>(opts));
  const Suite suite = load_suite(opts.suite);
  const std::string dir = opts.out.empty() ? (fs::path("runs") / ("bench-" + suite.name)).string() : opts.out;
  const std::vector<RunRequest> plan = plan_runs(suite, dir, opts.cache);
  auto db = queue_open(opts.storage, suite, 60);
  int64_t queued = 0;
  sql_retrying(*db, 60, [&] {
    queued = 0;
    SqlTransaction tx(*db);
    db->create_namespace();
    db->exec(queue_schema(db->dialect()));
    const auto meta = db->query("SELECT value FROM meta WHERE key = 'suite'");
    if (meta.empty()) {
      db->query("INSERT INTO meta(key, value) VALUES ('format', ?)", {std::string(kQueueFormat)});
      db->query("INSERT INTO meta(key, value) VALUES ('suite', ?)", {suite.name});
    } else {
      XFER_CHECK(meta[0].text(0) == suite.name, db->where(), " holds the queue of suite '", meta[0].text(0),
                 "', not '", suite.name, "'");
    }
    std::map<std::string, std::string> before;
    for (const auto& row : db->query("SELECT key, request FROM runs")) before[row.text(0)] = row.text(1);
    for (size_t i = 0; i < plan.size(); ++i) {
      const std::string key = queue_key(plan[i], dir), request = queue_request(plan[i]);
      const auto it = before.find(key);
      if (it != before.end() && it->second == request) continue;
      // New, or asked for with other options: queued afresh.
      db->query(
          "INSERT INTO runs(key, position, request, state, attempts) VALUES (?, ?, ?, 'WAITING', 0) ON "
          "CONFLICT(key) DO UPDATE SET position = excluded.position, request = excluded.request, state = "
          "'WAITING', worker = NULL, attempts = 0, heartbeat = NULL, started = NULL, finished = NULL, "
          "seconds = "
          "NULL, result = NULL, error = NULL",
          {key, static_cast<int64_t>(i), request});
      ++queued;
    }
    tx.commit();
  });
  out << "Suite " << suite.name << ": " << plan.size() << " runs, " << queued << " queued now ("
      << plan.size() - static_cast<size_t>(queued) << " already in the queue) in " << db->where() << "\n"
      << "Start workers on any machine:  xfer worker --queue " << opts.suite << " --storage " << db->where()
      << " --out DIR\n"
      << "Then build the tables:         xfer bench --suite " << opts.suite << " --storage " << db->where()
      << " --collect\n";
  return queued;
}

int64_t run_queue_worker(const QueueWorkerOptions& opts, std::ostream& out) {
  QueueWorkerOptions checked = opts;
  checked.validate();
  const Suite suite = load_suite(opts.queue);
  const std::string dir = opts.out.empty() ? (fs::path("runs") / ("bench-" + suite.name)).string() : opts.out;
  const std::vector<RunRequest> plan = plan_runs(suite, dir, opts.cache);
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < plan.size(); ++i) index[queue_key(plan[i], dir)] = i;
  auto db = queue_open(opts.storage, suite, opts.busy_timeout);
  sql_retrying(*db, opts.busy_timeout, [&] { queue_check_exists(*db, suite); });
  make_dirs(dir);
  RunProcesses how;
  how.executable = opts.executable.empty() ? self_executable() : opts.executable;
  how.jobs = 1;
  how.threads = opts.threads > 0 ? opts.threads : available_cores();
  const std::string worker = Study::worker_id();
  const std::string claim_sql = cat(
      "UPDATE runs SET state = 'RUNNING', worker = ?, heartbeat = ?, started = ?, attempts = attempts + 1, "
      "error = NULL WHERE key = (SELECT key FROM runs WHERE state = 'WAITING' ORDER BY position, key LIMIT 1",
      db->dialect() == SqlDialect::postgresql ? " FOR UPDATE SKIP LOCKED" : "", ") RETURNING key");
  out << "Worker " << worker << " on the queue of suite " << suite.name << " in " << db->where()
      << "; runs in " << dir << " with " << how.threads << " threads each" << std::endl;
  const double poll = std::min(opts.heartbeat, 2.0);
  int64_t ran = 0;
  double storage_seconds = 0;  // claiming and recording runs: the queue's own cost
  auto timed = [&](const std::function<void()>& fn) {
    const auto s0 = std::chrono::steady_clock::now();
    sql_retrying(*db, opts.busy_timeout, fn);
    storage_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
  };
  while (true) {
    throw_if_stop_requested("the worker (its run goes back to the queue when it goes stale)");
    std::string key;
    timed([&] {
      key.clear();
      queue_requeue_stale(*db, opts.stale_after, opts.retries);
      const double t = Study::now() + db->clock_offset();
      const auto rows = db->query(claim_sql, {worker, t, t});
      if (!rows.empty()) key = rows[0].text(0);
    });
    if (key.empty()) {
      auto unfinished = [&] {
        int64_t n = 0;
        sql_retrying(*db, opts.busy_timeout, [&] {
          n = db->query("SELECT COUNT(*) FROM runs WHERE state IN ('RUNNING', 'WAITING')")[0].integer(0);
        });
        return n;
      };
      const int64_t others = unfinished();
      if (others == 0) break;
      // Others' runs are going on: wait, in case their workers stop and the runs come back; leave as soon as
      // one ends (a plain sleep of `poll` kept this worker waiting for up to `poll` after the suite).
      wait_until(poll, [&] { return unfinished() < others; });
      continue;
    }
    const auto it = index.find(key);
    std::string state = "FAILED", error, result;
    double seconds = 0;
    if (it == index.end()) {
      error = cat("not in this worker's plan of suite ", suite.name, " (another suite file?)");
    } else {
      const size_t i = it->second;
      const auto t0 = std::chrono::steady_clock::now();
      try {
        pretrain_sources({plan[i]}, opts.cache, how.threads, out);
        std::vector<RunRecord> records(plan.size());
        {
          // The run's heartbeat, on its own connection; only while this worker still holds the run.
          std::shared_ptr<SqlDb> db = queue_open(opts.storage, suite, opts.busy_timeout);
          const double patience = opts.busy_timeout;
          const Periodic beat(opts.heartbeat, [db, key, worker, patience] {
            try {
              sql_retrying(*db, patience, [&] {
                db->query("UPDATE runs SET heartbeat = ? WHERE key = ? AND worker = ? AND state = 'RUNNING'",
                          {Study::now() + db->clock_offset(), key, worker});
              });
            } catch (const std::exception& e) {
              log_warn(cat("worker: run ", key, ": heartbeat failed: ", e.what()));
            }
          });
          run_processes(
              plan, {i}, how, records, [](size_t) {}, 0);
        }
        if (records[i].ok) {
          state = "DONE";
          result = read_file((fs::path(plan[i].dir) / "result.json").string());
        } else {
          error = records[i].error;
        }
      } catch (const Interrupted&) {
        throw;  // the run goes stale and back to the queue
      } catch (const std::exception& e) {
        error = e.what();
      }
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    bool counted = false;
    timed([&] {
      // Only the worker holding the run (or nobody, if it was requeued and not yet taken) records it.
      counted =
          !db->query(
                 "UPDATE runs SET state = ?, result = ?, error = ?, finished = ?, seconds = ?, worker = ? "
                 "WHERE key = ? AND ((state = 'RUNNING' AND worker = ?) OR state = 'WAITING') RETURNING key",
                 {state, result.empty() ? SqlValue() : SqlValue(result),
                  error.empty() ? SqlValue() : SqlValue(error), Study::now() + db->clock_offset(), seconds,
                  worker, key, worker})
               .empty();
    });
    ++ran;
    out << "run " << key << ": "
        << (state == "DONE" ? cat("test top-1 ",
                                  fixed(100 * nlohmann::json::parse(result).value("test_top1", 0.0), 1), "%")
                            : "FAILED: " + error)
        << " (" << fixed(seconds, 1) << " s)"
        << (counted ? "" : "; not counted: the run was given to another worker meanwhile") << std::endl;
  }
  out << "Worker " << worker << ": " << ran << " runs; the queue is drained. Queue overhead per run: "
      << fixed(1000 * storage_seconds / static_cast<double>(std::max<int64_t>(ran, 1)), 2) << " ms"
      << std::endl;
  return ran;
}

nlohmann::json collect_suite(const BenchOptions& opts, std::ostream& out) {
  check_options(const_cast<BenchOptions&>(opts));
  const Suite suite = load_suite(opts.suite);
  const std::string dir = opts.out.empty() ? (fs::path("runs") / ("bench-" + suite.name)).string() : opts.out;
  const std::vector<RunRequest> plan = plan_runs(suite, dir, opts.cache);
  auto db = queue_open(opts.storage, suite, 60);
  struct Row {
    std::string state, result, error;
  };
  std::map<std::string, Row> rows;
  sql_retrying(*db, 60, [&] {
    rows.clear();
    queue_check_exists(*db, suite);
    for (const auto& r : db->query("SELECT key, state, result, error FROM runs"))
      rows[r.text(0)] = {r.text(1), r.text(2), r.text(3)};
  });
  std::vector<RunRecord> records(plan.size());
  int64_t waiting = 0, running = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const std::string key = queue_key(plan[i], dir);
    const auto it = rows.find(key);
    XFER_CHECK(it != rows.end(), "run ", key, " of suite ", suite.name, " is not in the queue in ",
               db->where(), ": queue the suite again (xfer bench --suite ", opts.suite, " --storage ",
               db->where(), ")");
    const Row& row = it->second;
    waiting += row.state == "WAITING";
    running += row.state == "RUNNING";
    if (row.state == "DONE") {
      records[i] = record_from_result(plan[i], nlohmann::json::parse(row.result));
    } else {
      records[i] = record_from_result(plan[i], nlohmann::json::object());
      records[i].ok = false;
      records[i].error = row.error;
    }
  }
  if (waiting + running > 0)
    throw std::runtime_error(cat(waiting + running, " of ", plan.size(), " runs of suite ", suite.name,
                                 " are not finished (", waiting, " waiting, ", running,
                                 " running): start workers (xfer worker --queue ", opts.suite, " --storage ",
                                 db->where(), ") or wait, then collect again"));
  std::vector<std::string> notes = suite.notes;
  const std::vector<RunRecord> cells = best_of_sweeps(plan, records, notes);
  if (!suite.tables.empty())
    notes.push_back(
        "the suite's other tables need the runs' directories: build them with xfer bench where the "
        "runs are");
  const std::string md = suite_main_tables(suite, cells, notes);
  std::vector<RunRecord> all_runs = records;  // results.csv keeps every sweep point, named by it
  for (size_t i = 0; i < plan.size(); ++i)
    if (!plan[i].point.empty()) all_runs[i].method += " [" + plan[i].point + "]";
  make_dirs(dir);
  const std::string table_path = (fs::path(dir) / "table.md").string();
  write_file_atomic((fs::path(dir) / "results.csv").string(), records_csv(all_runs));
  write_file_atomic(table_path, md);
  out << md;
  const nlohmann::json bench = bench_json(suite, all_runs, notes, 0);
  write_json_file((fs::path(dir) / "bench.json").string(), bench);
  out << "\nCollected " << plan.size() << " runs from " << db->where() << ". Tables in " << table_path
      << "\n";
  return bench;
}

}  // namespace xfer
