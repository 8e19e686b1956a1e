#include "xfer/search/study.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>

#include <sqlite3.h>

#include "xfer/core/error.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const char* const kStudyFormat = "xfer-study-1";

/// Turns an SQLite failure into an error that names the file and says what to do.
[[noreturn]] void study_fail(int rc, sqlite3* db, const std::string& path, const std::string& what) {
  const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  const int primary = rc & 0xff;
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
    throw std::runtime_error(cat("the study database ", path, " stayed locked while ", what, " (", msg,
                                 "): another process holds a write lock; raise --busy-timeout or retry"));
  if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
    throw BadInput(cat(path, " is not a readable study database (", msg,
                       "); it was left untouched: restore it "
                       "from a copy or use another --out / --storage"));
  if (primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY || primary == SQLITE_PERM)
    throw BadInput(cat("cannot write the study database ", path, " (", msg, ")"));
  throw std::runtime_error(cat("study database ", path, ": ", what, ": ", msg));
}

/// A prepared statement with typed binds and reads.
class StudyStmt {
 public:
  StudyStmt(sqlite3* db, const std::string& path, const char* sql) : db_(db), path_(path) {
    const int rc = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
    if (rc != SQLITE_OK) study_fail(rc, db, path, cat("preparing '", sql, "'"));
  }
  ~StudyStmt() { sqlite3_finalize(stmt_); }
  StudyStmt(const StudyStmt&) = delete;
  StudyStmt& operator=(const StudyStmt&) = delete;

  StudyStmt& bind(int i, double v) { return check(sqlite3_bind_double(stmt_, i, v)); }
  StudyStmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(stmt_, i, v)); }
  StudyStmt& bind(int i, const std::string& v) {
    return check(sqlite3_bind_text(stmt_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  StudyStmt& bind_null(int i) { return check(sqlite3_bind_null(stmt_, i)); }
  /// true while there is a row.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    study_fail(rc, db_, path_, cat("running '", sqlite3_sql(stmt_), "'"));
  }
  bool null(int i) { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  double real(int i) { return sqlite3_column_double(stmt_, i); }
  int64_t integer(int i) { return sqlite3_column_int64(stmt_, i); }
  std::string text(int i) {
    const auto* p = sqlite3_column_text(stmt_, i);
    return p ? std::string(reinterpret_cast<const char*>(p)) : std::string();
  }

 private:
  StudyStmt& check(int rc) {
    if (rc != SQLITE_OK) study_fail(rc, db_, path_, "binding a value");
    return *this;
  }
  sqlite3* db_;
  std::string path_;
  sqlite3_stmt* stmt_ = nullptr;
};

void study_exec(sqlite3* db, const std::string& path, const char* sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
  if (err) sqlite3_free(err);
  if (rc != SQLITE_OK) study_fail(rc, db, path, cat("running '", sql, "'"));
}

/// BEGIN IMMEDIATE (the write lock, waiting out the busy timeout) ... COMMIT, or ROLLBACK on unwinding.
class StudyTransaction {
 public:
  StudyTransaction(sqlite3* db, const std::string& path) : db_(db), path_(path) {
    study_exec(db, path, "BEGIN IMMEDIATE");
  }
  ~StudyTransaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    study_exec(db_, path_, "COMMIT");
    done_ = true;
  }

 private:
  sqlite3* db_;
  std::string path_;
  bool done_ = false;
};

std::string study_host() {
  char host[256] = {0};
  if (gethostname(host, sizeof host - 1) != 0) return "localhost";
  return host;
}

/// Whether the worker "HOST:PID" is certainly gone: on this host, and no such process.
bool study_worker_gone(const std::string& worker) {
  const size_t colon = worker.rfind(':');
  if (colon == std::string::npos || worker.substr(0, colon) != study_host()) return false;
  char* end = nullptr;
  const long pid = std::strtol(worker.c_str() + colon + 1, &end, 10);
  if (pid <= 0 || *end != '\0') return false;
  if (pid == static_cast<long>(getpid())) return false;
  return kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

std::string study_meta(sqlite3* db, const std::string& path, const std::string& key) {
  StudyStmt s(db, path, "SELECT value FROM study WHERE key = ?");
  s.bind(1, key);
  return s.step() ? s.text(0) : std::string();
}

}  // namespace

double Study::now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Study::worker_id() {
  return cat(study_host(), ":", getpid());
}

void Study::open(double busy_timeout) {
  XFER_CHECK(busy_timeout >= 0, "--busy-timeout must be >= 0, got ", busy_timeout);
  const fs::path parent = fs::path(path_).parent_path();
  XFER_CHECK(parent.empty() || fs::is_directory(parent), "the directory of the study database ", path_,
             " does not exist");
  int rc = sqlite3_open_v2(path_.c_str(), &db_,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) study_fail(rc, db_, path_, "opening");
  sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout * 1000));
  sqlite3_extended_result_codes(db_, 1);
  // A file that is not a database fails here, before anything is written to it.
  {
    StudyStmt check(db_, path_, "PRAGMA quick_check");
    while (check.step()) {
      const std::string line = check.text(0);
      XFER_CHECK(line == "ok", path_, " is a damaged SQLite database (", line,
                 "); it was left untouched: restore "
                 "it from a copy or use another --out / --storage");
    }
  }
  study_exec(db_, path_, "PRAGMA journal_mode=WAL");
  study_exec(db_, path_, "PRAGMA synchronous=FULL");
}

Study::Study(const std::string& path, const StudyInfo& info, double busy_timeout) : path_(path), info_(info) {
  try {
    open(busy_timeout);
    StudyTransaction tx(db_, path_);
    {
      // Someone else's database: do not write into it.
      StudyStmt tables(db_, path_, "SELECT name FROM sqlite_master WHERE type = 'table'");
      bool any = false, ours = false;
      while (tables.step()) {
        any = true;
        ours = ours || tables.text(0) == "study";
      }
      XFER_CHECK(!any || ours, path_,
                 " is an SQLite database but not an xfer study; use another --out / --storage");
    }
    study_exec(
        db_, path_,
        "CREATE TABLE IF NOT EXISTS study(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE IF NOT EXISTS trials(number INTEGER PRIMARY KEY, state TEXT NOT NULL, params TEXT NOT "
        "NULL, value REAL, retry_of INTEGER, worker TEXT, run_dir TEXT, error TEXT, created REAL, started "
        "REAL, finished REAL, heartbeat REAL, sample_seconds REAL);"
        "CREATE TABLE IF NOT EXISTS intermediate(trial INTEGER NOT NULL, step INTEGER NOT NULL, value REAL "
        "NOT NULL, PRIMARY KEY(trial, step));"
        "CREATE TABLE IF NOT EXISTS workers(worker TEXT PRIMARY KEY, trials INTEGER, sample_seconds REAL, "
        "storage_seconds REAL, run_seconds REAL, finished REAL);");
    const std::string format = study_meta(db_, path_, "format");
    const std::map<std::string, std::string> mine = {{"name", info.name},
                                                     {"space", info.space.to_json().dump()},
                                                     {"sampler", info.sampler},
                                                     {"seed", std::to_string(info.seed)},
                                                     {"config", info.config.dump()}};
    if (format.empty()) {
      auto insert = [&](const std::string& k, const std::string& v) {
        StudyStmt s(db_, path_, "INSERT INTO study(key, value) VALUES (?, ?)");
        s.bind(1, k).bind(2, v);
        s.step();
      };
      insert("format", kStudyFormat);
      insert("created", std::to_string(now()));
      for (const auto& [k, v] : mine) insert(k, v);
    } else {
      XFER_CHECK(format == kStudyFormat, path_, " holds a study of format '", format, "'; this xfer reads ",
                 kStudyFormat);
      const std::string where = cat("the study in ", path_);
      const std::string name = study_meta(db_, path_, "name");
      XFER_CHECK(name == info.name, where, " is named '", name, "', not '", info.name, "'");
      const std::string why = info.space.difference(
          SearchSpace::from_json(nlohmann::json::parse(study_meta(db_, path_, "space"))));
      XFER_CHECK(why.empty(), where, " searches another space: ", why,
                 ". Search the study's space, or start a new study with another --out / --storage");
      const std::string sampler = study_meta(db_, path_, "sampler");
      XFER_CHECK(sampler == info.sampler, where, " uses the ", sampler, " sampler, not ", info.sampler);
      const std::string seed = study_meta(db_, path_, "seed");
      XFER_CHECK(seed == std::to_string(info.seed), where, " was seeded with ", seed, ", not ", info.seed);
      const nlohmann::json stored = nlohmann::json::parse(study_meta(db_, path_, "config"));
      for (const auto& [k, v] : info.config.items()) {
        const nlohmann::json before = stored.contains(k) ? stored[k] : nlohmann::json(nullptr);
        XFER_CHECK(before == v, where, " runs its trials with ", k, " = ", before.dump(), ", not ", v.dump());
      }
      for (const auto& [k, v] : stored.items())
        XFER_CHECK(info.config.contains(k), where, " runs its trials with ", k, " = ", v.dump(),
                   ", which is not set now");
    }
    tx.commit();
  } catch (...) {
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Study::Study(const std::string& path, double busy_timeout) : path_(path) {
  XFER_CHECK(fs::exists(path), "no study database at ", path);
  try {
    open(busy_timeout);
    XFER_CHECK(study_meta(db_, path_, "format") == kStudyFormat, path_, " is not an xfer study");
    info_.name = study_meta(db_, path_, "name");
    info_.space = SearchSpace::from_json(nlohmann::json::parse(study_meta(db_, path_, "space")));
    info_.sampler = study_meta(db_, path_, "sampler");
    info_.seed = std::stoull(study_meta(db_, path_, "seed"));
    info_.config = nlohmann::json::parse(study_meta(db_, path_, "config"));
  } catch (const nlohmann::json::exception& e) {
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
    throw BadInput(cat(path, ": malformed study record: ", e.what()));
  } catch (...) {
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Study::~Study() {
  if (db_) sqlite3_close(db_);
}

int64_t Study::fail_stale_locked(double stale_after, int64_t retries) {
  struct Stale {
    int64_t number;
    std::string worker, params;
    std::optional<int64_t> retry_of;
    double age;
  };
  std::vector<Stale> stale;
  const double t = now();
  {
    StudyStmt s(db_, path_,
                "SELECT number, worker, heartbeat, params, retry_of FROM trials WHERE state = 'RUNNING'");
    while (s.step()) {
      Stale x{s.integer(0), s.text(1), s.text(3), std::nullopt, t - s.real(2)};
      if (!s.null(4)) x.retry_of = s.integer(4);
      if (x.age > stale_after || study_worker_gone(x.worker)) stale.push_back(std::move(x));
    }
  }
  for (const auto& x : stale) {
    StudyStmt f(db_, path_, "UPDATE trials SET state = 'FAILED', finished = ?, error = ? WHERE number = ?");
    f.bind(1, t).bind(
        2, cat("worker ", x.worker, " stopped: no heartbeat for ", static_cast<int64_t>(x.age), " s"));
    f.bind(3, x.number);
    f.step();
    const int64_t root = x.retry_of.value_or(x.number);
    StudyStmt count(db_, path_, "SELECT COUNT(*) FROM trials WHERE retry_of = ?");
    count.bind(1, root);
    count.step();
    if (count.integer(0) >= retries) continue;
    StudyStmt next(db_, path_, "SELECT COALESCE(MAX(number), -1) + 1 FROM trials");
    next.step();
    StudyStmt add(
        db_, path_,
        "INSERT INTO trials(number, state, params, retry_of, created) VALUES (?, 'WAITING', ?, ?, ?)");
    add.bind(1, next.integer(0)).bind(2, x.params).bind(3, root).bind(4, t);
    add.step();
  }
  return static_cast<int64_t>(stale.size());
}

int64_t Study::fail_stale(double stale_after, int64_t retries) {
  StudyTransaction tx(db_, path_);
  const int64_t n = fail_stale_locked(stale_after, retries);
  tx.commit();
  return n;
}

std::optional<TrialRecord> Study::claim(const std::string& worker, const ClaimOptions& opts,
                                        const SampleFn& sample, const RunDirFn& run_dir) {
  StudyTransaction tx(db_, path_);
  fail_stale_locked(opts.stale_after, opts.retries);
  const double t = now();
  TrialRecord r;
  r.state = "RUNNING";
  r.worker = worker;
  r.created = r.started = r.heartbeat = t;
  std::string params_json;
  {
    StudyStmt waiting(
        db_, path_,
        "SELECT number, params, retry_of FROM trials WHERE state = 'WAITING' ORDER BY number LIMIT 1");
    if (waiting.step()) {
      r.number = waiting.integer(0);
      params_json = waiting.text(1);
      if (!waiting.null(2)) r.retry_of = waiting.integer(2);
    }
  }
  if (!params_json.empty()) {
    r.params = info_.space.values_from_json(nlohmann::json::parse(params_json));
    r.run_dir = run_dir(r.number);
    StudyStmt take(
        db_, path_,
        "UPDATE trials SET state = 'RUNNING', worker = ?, run_dir = ?, started = ?, heartbeat = ? WHERE "
        "number = ?");
    take.bind(1, worker).bind(2, r.run_dir).bind(3, t).bind(4, t).bind(5, r.number);
    take.step();
    tx.commit();
    return r;
  }
  {
    StudyStmt count(db_, path_, "SELECT COUNT(*) FROM trials WHERE retry_of IS NULL");
    count.step();
    if (count.integer(0) >= opts.budget) {
      tx.commit();  // keeps the stale trials failed
      return std::nullopt;
    }
  }
  std::vector<Observation> complete;
  {
    // Pruned trials with their last intermediate value, as Optuna's TPE sees them.
    StudyStmt done(
        db_, path_,
        "SELECT t.params, t.value, t.state, (SELECT i.step FROM intermediate i WHERE i.trial = t.number "
        "ORDER BY i.step DESC LIMIT 1), (SELECT i.value FROM intermediate i WHERE i.trial = t.number "
        "ORDER BY i.step DESC LIMIT 1) FROM trials t WHERE t.state IN ('COMPLETE', 'PRUNED') ORDER BY "
        "t.number");
    while (done.step()) {
      Observation o;
      o.params = info_.space.values_from_json(nlohmann::json::parse(done.text(0)));
      if (done.text(2) == "PRUNED") {
        o.pruned = true;
        o.pruned_step = done.null(3) ? -1 : done.integer(3);
        o.value = done.null(4) ? 0.0 : done.real(4);
      } else {
        o.value = done.real(1);
      }
      complete.push_back(std::move(o));
    }
  }
  {
    StudyStmt next(db_, path_, "SELECT COALESCE(MAX(number), -1) + 1 FROM trials");
    next.step();
    r.number = next.integer(0);
  }
  const auto s0 = std::chrono::steady_clock::now();
  r.params = sample(complete, r.number);
  r.sample_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
  r.run_dir = run_dir(r.number);
  StudyStmt add(db_, path_,
                "INSERT INTO trials(number, state, params, worker, run_dir, created, started, heartbeat, "
                "sample_seconds) VALUES (?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?)");
  add.bind(1, r.number).bind(2, info_.space.values_json(r.params).dump()).bind(3, worker).bind(4, r.run_dir);
  add.bind(5, t).bind(6, t).bind(7, t).bind(8, r.sample_seconds);
  add.step();
  tx.commit();
  return r;
}

void Study::heartbeat(int64_t number) {
  StudyStmt s(db_, path_, "UPDATE trials SET heartbeat = ? WHERE number = ? AND state = 'RUNNING'");
  s.bind(1, now()).bind(2, number);
  s.step();
}

namespace {
void study_write_intermediate(sqlite3* db, const std::string& path, int64_t number,
                              const std::vector<std::pair<int64_t, double>>& values) {
  for (const auto& [step, value] : values) {
    StudyStmt s(db, path, "INSERT OR REPLACE INTO intermediate(trial, step, value) VALUES (?, ?, ?)");
    s.bind(1, number).bind(2, step).bind(3, value);
    s.step();
  }
}
}  // namespace

void Study::complete(int64_t number, double value,
                     const std::vector<std::pair<int64_t, double>>& intermediate) {
  StudyTransaction tx(db_, path_);
  {
    StudyStmt s(
        db_, path_,
        "UPDATE trials SET state = 'COMPLETE', value = ?, finished = ?, error = NULL WHERE number = ?");
    s.bind(1, value).bind(2, now()).bind(3, number);
    s.step();
  }
  study_write_intermediate(db_, path_, number, intermediate);
  {
    // If this trial was given up for dead meanwhile, its queued retry is no longer needed.
    StudyStmt s(
        db_, path_,
        "DELETE FROM trials WHERE state = 'WAITING' AND retry_of = (SELECT COALESCE(retry_of, number) FROM "
        "trials WHERE number = ?)");
    s.bind(1, number);
    s.step();
  }
  tx.commit();
}

void Study::fail(int64_t number, const std::string& error,
                 const std::vector<std::pair<int64_t, double>>& intermediate) {
  StudyTransaction tx(db_, path_);
  StudyStmt s(db_, path_, "UPDATE trials SET state = 'FAILED', finished = ?, error = ? WHERE number = ?");
  s.bind(1, now()).bind(2, error).bind(3, number);
  s.step();
  study_write_intermediate(db_, path_, number, intermediate);
  tx.commit();
}

void Study::report(int64_t number, int64_t step, double value) {
  StudyTransaction tx(db_, path_);
  study_write_intermediate(db_, path_, number, {{step, value}});
  tx.commit();
}

void Study::prune(int64_t number) {
  StudyStmt s(db_, path_, "UPDATE trials SET state = 'PRUNED', finished = ?, error = NULL WHERE number = ?");
  s.bind(1, now()).bind(2, number);
  s.step();
}

int64_t Study::complete_count() {
  StudyStmt s(db_, path_, "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'");
  s.step();
  return s.integer(0);
}

std::vector<double> Study::complete_values_at(int64_t step) {
  StudyStmt s(
      db_, path_,
      "SELECT i.value FROM intermediate i JOIN trials t ON t.number = i.trial WHERE t.state = 'COMPLETE' AND "
      "i.step = ? ORDER BY t.number");
  s.bind(1, step);
  std::vector<double> out;
  while (s.step()) out.push_back(s.real(0));
  return out;
}

void Study::record_worker(const WorkerStats& w) {
  StudyStmt s(db_, path_,
              "INSERT OR REPLACE INTO workers(worker, trials, sample_seconds, storage_seconds, run_seconds, "
              "finished) "
              "VALUES (?, ?, ?, ?, ?, ?)");
  s.bind(1, w.worker)
      .bind(2, w.trials)
      .bind(3, w.sample_seconds)
      .bind(4, w.storage_seconds)
      .bind(5, w.run_seconds);
  s.bind(6, now());
  s.step();
}

std::vector<TrialRecord> Study::trials() {
  std::vector<TrialRecord> out;
  StudyStmt s(
      db_, path_,
      "SELECT number, state, params, value, retry_of, worker, run_dir, error, created, started, finished, "
      "heartbeat, sample_seconds FROM trials ORDER BY number");
  while (s.step()) {
    TrialRecord r;
    r.number = s.integer(0);
    r.state = s.text(1);
    r.params = info_.space.values_from_json(nlohmann::json::parse(s.text(2)));
    if (!s.null(3)) r.value = s.real(3);
    if (!s.null(4)) r.retry_of = s.integer(4);
    r.worker = s.text(5);
    r.run_dir = s.text(6);
    r.error = s.text(7);
    r.created = s.real(8);
    r.started = s.real(9);
    r.finished = s.real(10);
    r.heartbeat = s.real(11);
    r.sample_seconds = s.real(12);
    out.push_back(std::move(r));
  }
  StudyStmt iv(db_, path_, "SELECT trial, step, value FROM intermediate ORDER BY trial, step");
  while (iv.step()) {
    const int64_t n = iv.integer(0);
    for (auto& r : out)
      if (r.number == n) r.intermediate.emplace_back(iv.integer(1), iv.real(2));
  }
  return out;
}

std::vector<WorkerStats> Study::workers() {
  std::vector<WorkerStats> out;
  StudyStmt s(
      db_, path_,
      "SELECT worker, trials, sample_seconds, storage_seconds, run_seconds FROM workers ORDER BY finished");
  while (s.step()) out.push_back({s.text(0), s.integer(1), s.real(2), s.real(3), s.real(4)});
  return out;
}

int64_t Study::running() {
  StudyStmt s(db_, path_, "SELECT COUNT(*) FROM trials WHERE state IN ('RUNNING', 'WAITING')");
  s.step();
  return s.integer(0);
}

}  // namespace xfer
