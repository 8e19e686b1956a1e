#include "xfer/search/study.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>

#include "xfer/core/error.h"
#include "xfer/search/sql.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const char* const kStudyFormat = "xfer-study-1";

/// The tables, in SQLite's types; PostgreSQL's are spelled out where they differ.
std::string study_schema(SqlDialect dialect) {
  std::string sql =
      "CREATE TABLE IF NOT EXISTS study(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS trials(number INTEGER PRIMARY KEY, state TEXT NOT NULL, params TEXT NOT "
      "NULL, value REAL, retry_of INTEGER, worker TEXT, run_dir TEXT, error TEXT, created REAL, started "
      "REAL, finished REAL, heartbeat REAL, sample_seconds REAL);"
      "CREATE TABLE IF NOT EXISTS intermediate(trial INTEGER NOT NULL, step INTEGER NOT NULL, value REAL "
      "NOT NULL, PRIMARY KEY(trial, step));"
      "CREATE TABLE IF NOT EXISTS workers(worker TEXT PRIMARY KEY, trials INTEGER, sample_seconds REAL, "
      "storage_seconds REAL, run_seconds REAL, finished REAL);";
  if (dialect == SqlDialect::postgresql) {
    // SQLite's REAL and INTEGER are 8 bytes; PostgreSQL's are 4.
    for (const auto& [from, to] : {std::pair<std::string, std::string>{" REAL", " DOUBLE PRECISION"},
                                   std::pair<std::string, std::string>{" INTEGER", " BIGINT"}})
      for (size_t at = sql.find(from); at != std::string::npos; at = sql.find(from, at + to.size()))
        sql.replace(at, from.size(), to);
  }
  return sql;
}

/// PostgreSQL keeps each study in schema xfer_study_NAME of the database.
std::string study_namespace(const std::string& name, const std::string& where) {
  XFER_CHECK(!name.empty() && name.size() <= 40 &&
                 name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                     std::string::npos,
             "a study in ", where, " needs a --study name of 1 to 40 letters, digits, '_' or '-', got '",
             name, "'");
  return "xfer_study_" + name;
}

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

std::string study_meta(SqlDb& db, const std::string& key) {
  const auto rows = db.query("SELECT value FROM study WHERE key = ?", {key});
  return rows.empty() ? std::string() : rows[0].text(0);
}

/// One row of `trials` as TrialRecord reads it (the columns of kStudyTrialColumns).
const char* const kStudyTrialColumns =
    "number, state, params, value, retry_of, worker, run_dir, error, created, started, finished, heartbeat, "
    "sample_seconds";

}  // namespace

double Study::now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

double Study::clock() const {
  return now() + db_->clock_offset();
}

std::string Study::worker_id() {
  return cat(study_host(), ":", getpid());
}

bool Study::worker_gone(const std::string& worker) {
  return study_worker_gone(worker);
}

void Study::open(const std::string& storage, const std::string& name, double busy_timeout) {
  storage_ = storage;
  busy_timeout_ = busy_timeout;
  db_ = open_sql(storage, "study", busy_timeout);
  path_ = db_->where();
  if (db_->dialect() == SqlDialect::postgresql) db_->use_namespace(study_namespace(name, path_));
}

Study::Study(const std::string& path, const StudyInfo& info, double busy_timeout) : info_(info) {
  open(path, info.name, busy_timeout);
  sql_retrying(*db_, busy_timeout_, [&] {
    SqlTransaction tx(*db_);
    db_->create_namespace();
    {
      // Someone else's database: do not write into it.
      const auto tables = db_->tables();
      const bool ours = std::find(tables.begin(), tables.end(), "study") != tables.end();
      XFER_CHECK(tables.empty() || ours, path_,
                 db_->dialect() == SqlDialect::sqlite
                     ? " is an SQLite database but not an xfer study"
                     : cat(" has tables in schema xfer_study_", info.name, " that are not an xfer study"),
                 "; use another --out / --storage");
    }
    db_->exec(study_schema(db_->dialect()));
    const std::string format = study_meta(*db_, "format");
    const std::map<std::string, std::string> mine = {{"name", info.name},
                                                     {"space", info.space.to_json().dump()},
                                                     {"sampler", info.sampler},
                                                     {"seed", std::to_string(info.seed)},
                                                     {"config", info.config.dump()}};
    if (format.empty()) {
      auto insert = [&](const std::string& k, const std::string& v) {
        db_->query("INSERT INTO study(key, value) VALUES (?, ?)", {k, v});
      };
      insert("format", kStudyFormat);
      insert("created", std::to_string(clock()));
      for (const auto& [k, v] : mine) insert(k, v);
    } else {
      XFER_CHECK(format == kStudyFormat, path_, " holds a study of format '", format, "'; this xfer reads ",
                 kStudyFormat);
      const std::string where = cat("the study in ", path_);
      const std::string name = study_meta(*db_, "name");
      XFER_CHECK(name == info.name, where, " is named '", name, "', not '", info.name, "'");
      const std::string why =
          info.space.difference(SearchSpace::from_json(nlohmann::json::parse(study_meta(*db_, "space"))));
      XFER_CHECK(why.empty(), where, " searches another space: ", why,
                 ". Search the study's space, or start a new study with another --out / --storage");
      const std::string sampler = study_meta(*db_, "sampler");
      XFER_CHECK(sampler == info.sampler, where, " uses the ", sampler, " sampler, not ", info.sampler);
      const std::string seed = study_meta(*db_, "seed");
      XFER_CHECK(seed == std::to_string(info.seed), where, " was seeded with ", seed, ", not ", info.seed);
      const nlohmann::json stored = nlohmann::json::parse(study_meta(*db_, "config"));
      for (const auto& [k, v] : info.config.items()) {
        const nlohmann::json before = stored.contains(k) ? stored[k] : nlohmann::json(nullptr);
        XFER_CHECK(before == v, where, " runs its trials with ", k, " = ", before.dump(), ", not ", v.dump());
      }
      for (const auto& [k, v] : stored.items())
        XFER_CHECK(info.config.contains(k), where, " runs its trials with ", k, " = ", v.dump(),
                   ", which is not set now");
    }
    tx.commit();
  });
}

Study::Study(const std::string& path, double busy_timeout, const std::string& name) {
  XFER_CHECK(is_postgresql_url(path) || fs::exists(path.rfind("sqlite:", 0) == 0 ? path.substr(7) : path),
             "no study database at ", path);
  open(path, name, busy_timeout);
  try {
    sql_retrying(*db_, busy_timeout_, [&] {
      XFER_CHECK(db_->namespace_exists(), "no study named '", name, "' in ", path_);
      XFER_CHECK(study_meta(*db_, "format") == kStudyFormat, path_, " is not an xfer study");
      info_.name = study_meta(*db_, "name");
      info_.space = SearchSpace::from_json(nlohmann::json::parse(study_meta(*db_, "space")));
      info_.sampler = study_meta(*db_, "sampler");
      info_.seed = std::stoull(study_meta(*db_, "seed"));
      info_.config = nlohmann::json::parse(study_meta(*db_, "config"));
    });
  } catch (const nlohmann::json::exception& e) {
    throw BadInput(cat(path_, ": malformed study record: ", e.what()));
  }
}

Study::~Study() = default;

std::unique_ptr<Study> Study::connect_again() const {
  return std::unique_ptr<Study>(new Study(storage_, busy_timeout_, info_.name));
}

int64_t Study::fail_stale_locked(double stale_after, int64_t retries) {
  struct Stale {
    int64_t number;
    std::string worker, params;
    std::optional<int64_t> retry_of;
    double age;
  };
  std::vector<Stale> stale;
  const double t = clock();
  for (const auto& row :
       db_->query("SELECT number, worker, heartbeat, params, retry_of FROM trials WHERE state = 'RUNNING'")) {
    Stale x{row.integer(0), row.text(1), row.text(3), std::nullopt, t - row.real(2)};
    if (!row.null(4)) x.retry_of = row.integer(4);
    if (x.age > stale_after || study_worker_gone(x.worker)) stale.push_back(std::move(x));
  }
  for (const auto& x : stale) {
    db_->query("UPDATE trials SET state = 'FAILED', finished = ?, error = ? WHERE number = ?",
               {t, cat("worker ", x.worker, " stopped: no heartbeat for ", static_cast<int64_t>(x.age), " s"),
                x.number});
    const int64_t root = x.retry_of.value_or(x.number);
    if (db_->query("SELECT COUNT(*) FROM trials WHERE retry_of = ?", {root})[0].integer(0) >= retries)
      continue;
    const int64_t next = db_->query("SELECT COALESCE(MAX(number), -1) + 1 FROM trials")[0].integer(0);
    db_->query("INSERT INTO trials(number, state, params, retry_of, created) VALUES (?, 'WAITING', ?, ?, ?)",
               {next, x.params, root, t});
  }
  return static_cast<int64_t>(stale.size());
}

int64_t Study::fail_stale(double stale_after, int64_t retries) {
  int64_t n = 0;
  sql_retrying(*db_, busy_timeout_, [&] {
    SqlTransaction tx(*db_);
    n = fail_stale_locked(stale_after, retries);
    tx.commit();
  });
  return n;
}

std::optional<TrialRecord> Study::claim(const std::string& worker, const ClaimOptions& opts,
                                        const SampleFn& sample, const RunDirFn& run_dir) {
  std::optional<TrialRecord> claimed;
  sql_retrying(*db_, busy_timeout_, [&] {
    claimed.reset();
    SqlTransaction tx(*db_);
    fail_stale_locked(opts.stale_after, opts.retries);
    const double t = clock();
    TrialRecord r;
    r.state = "RUNNING";
    r.worker = worker;
    r.created = r.started = r.heartbeat = t;
    const auto waiting = db_->query(
        "SELECT number, params, retry_of FROM trials WHERE state = 'WAITING' ORDER BY number LIMIT 1");
    if (!waiting.empty()) {
      r.number = waiting[0].integer(0);
      if (!waiting[0].null(2)) r.retry_of = waiting[0].integer(2);
      r.params = info_.space.values_from_json(nlohmann::json::parse(waiting[0].text(1)));
      r.run_dir = run_dir(r.number);
      db_->query(
          "UPDATE trials SET state = 'RUNNING', worker = ?, run_dir = ?, started = ?, heartbeat = ? WHERE "
          "number = ?",
          {worker, r.run_dir, t, t, r.number});
      tx.commit();
      claimed = std::move(r);
      return;
    }
    if (db_->query("SELECT COUNT(*) FROM trials WHERE retry_of IS NULL")[0].integer(0) >= opts.budget) {
      tx.commit();  // keeps the stale trials failed
      return;
    }
    std::vector<Observation> complete;
    // Pruned trials with their last intermediate value, as Optuna's TPE sees them.
    for (const auto& row : db_->query(
             "SELECT t.params, t.value, t.state, (SELECT i.step FROM intermediate i WHERE i.trial = t.number "
             "ORDER BY i.step DESC LIMIT 1), (SELECT i.value FROM intermediate i WHERE i.trial = t.number "
             "ORDER BY i.step DESC LIMIT 1) FROM trials t WHERE t.state IN ('COMPLETE', 'PRUNED') ORDER BY "
             "t.number")) {
      Observation o;
      o.params = info_.space.values_from_json(nlohmann::json::parse(row.text(0)));
      if (row.text(2) == "PRUNED") {
        o.pruned = true;
        o.pruned_step = row.null(3) ? -1 : row.integer(3);
        o.value = row.null(4) ? 0.0 : row.real(4);
      } else {
        o.value = row.real(1);
      }
      complete.push_back(std::move(o));
    }
    r.number = db_->query("SELECT COALESCE(MAX(number), -1) + 1 FROM trials")[0].integer(0);
    const auto s0 = std::chrono::steady_clock::now();
    r.params = sample(complete, r.number);
    r.sample_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    r.run_dir = run_dir(r.number);
    db_->query(
        "INSERT INTO trials(number, state, params, worker, run_dir, created, started, heartbeat, "
        "sample_seconds) VALUES (?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?)",
        {r.number, info_.space.values_json(r.params).dump(), worker, r.run_dir, t, t, t, r.sample_seconds});
    tx.commit();
    claimed = std::move(r);
  });
  return claimed;
}

void Study::heartbeat(int64_t number) {
  sql_retrying(*db_, busy_timeout_, [&] {
    db_->query("UPDATE trials SET heartbeat = ? WHERE number = ? AND state = 'RUNNING'", {clock(), number});
  });
}

namespace {
void study_write_intermediate(SqlDb& db, int64_t number,
                              const std::vector<std::pair<int64_t, double>>& values) {
  // Many rows per statement: one round trip to a server instead of one per validation.
  const size_t chunk = 200;
  for (size_t from = 0; from < values.size(); from += chunk) {
    const size_t to = std::min(values.size(), from + chunk);
    std::string sql = "INSERT INTO intermediate(trial, step, value) VALUES ";
    std::vector<SqlValue> params;
    for (size_t i = from; i < to; ++i) {
      sql += i == from ? "(?, ?, ?)" : ", (?, ?, ?)";
      params.insert(params.end(), {number, values[i].first, values[i].second});
    }
    db.query(sql + " ON CONFLICT(trial, step) DO UPDATE SET value = excluded.value", params);
  }
}
}  // namespace

void Study::complete(int64_t number, double value,
                     const std::vector<std::pair<int64_t, double>>& intermediate) {
  sql_retrying(*db_, busy_timeout_, [&] {
    SqlTransaction tx(*db_);
    db_->query("UPDATE trials SET state = 'COMPLETE', value = ?, finished = ?, error = NULL WHERE number = ?",
               {value, clock(), number});
    study_write_intermediate(*db_, number, intermediate);
    // If this trial was given up for dead meanwhile, its queued retry is no longer needed.
    db_->query(
        "DELETE FROM trials WHERE state = 'WAITING' AND retry_of = (SELECT COALESCE(retry_of, number) FROM "
        "trials WHERE number = ?)",
        {number});
    tx.commit();
  });
}

void Study::fail(int64_t number, const std::string& error,
                 const std::vector<std::pair<int64_t, double>>& intermediate) {
  sql_retrying(*db_, busy_timeout_, [&] {
    SqlTransaction tx(*db_);
    db_->query("UPDATE trials SET state = 'FAILED', finished = ?, error = ? WHERE number = ?",
               {clock(), error, number});
    study_write_intermediate(*db_, number, intermediate);
    tx.commit();
  });
}

void Study::report(int64_t number, int64_t step, double value) {
  // One statement: atomic on its own, without the study's write lock.
  sql_retrying(*db_, busy_timeout_, [&] { study_write_intermediate(*db_, number, {{step, value}}); });
}

void Study::prune(int64_t number) {
  sql_retrying(*db_, busy_timeout_, [&] {
    db_->query("UPDATE trials SET state = 'PRUNED', finished = ?, error = NULL WHERE number = ?",
               {clock(), number});
  });
}

int64_t Study::complete_count() {
  int64_t n = 0;
  sql_retrying(*db_, busy_timeout_,
               [&] { n = db_->query("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")[0].integer(0); });
  return n;
}

std::vector<double> Study::complete_values_at(int64_t step) {
  std::vector<double> out;
  sql_retrying(*db_, busy_timeout_, [&] {
    out.clear();
    for (const auto& row : db_->query("SELECT i.value FROM intermediate i JOIN trials t ON t.number = "
                                      "i.trial WHERE t.state = 'COMPLETE' "
                                      "AND i.step = ? ORDER BY t.number",
                                      {step}))
      out.push_back(row.real(0));
  });
  return out;
}

void Study::record_worker(const WorkerStats& w) {
  sql_retrying(*db_, busy_timeout_, [&] {
    db_->query(
        "INSERT INTO workers(worker, trials, sample_seconds, storage_seconds, run_seconds, finished) VALUES "
        "(?, "
        "?, ?, ?, ?, ?) ON CONFLICT(worker) DO UPDATE SET trials = excluded.trials, sample_seconds = "
        "excluded.sample_seconds, storage_seconds = excluded.storage_seconds, run_seconds = "
        "excluded.run_seconds, finished = excluded.finished",
        {w.worker, w.trials, w.sample_seconds, w.storage_seconds, w.run_seconds, clock()});
  });
}

std::vector<TrialRecord> Study::trials() {
  std::vector<TrialRecord> out;
  sql_retrying(*db_, busy_timeout_, [&] {
    out.clear();
    std::map<int64_t, size_t> index;
    for (const auto& row : db_->query(cat("SELECT ", kStudyTrialColumns, " FROM trials ORDER BY number"))) {
      TrialRecord r;
      r.number = row.integer(0);
      r.state = row.text(1);
      r.params = info_.space.values_from_json(nlohmann::json::parse(row.text(2)));
      if (!row.null(3)) r.value = row.real(3);
      if (!row.null(4)) r.retry_of = row.integer(4);
      r.worker = row.text(5);
      r.run_dir = row.text(6);
      r.error = row.text(7);
      r.created = row.real(8);
      r.started = row.real(9);
      r.finished = row.real(10);
      r.heartbeat = row.real(11);
      r.sample_seconds = row.real(12);
      index[r.number] = out.size();
      out.push_back(std::move(r));
    }
    for (const auto& row : db_->query("SELECT trial, step, value FROM intermediate ORDER BY trial, step")) {
      const auto it = index.find(row.integer(0));
      if (it != index.end()) out[it->second].intermediate.emplace_back(row.integer(1), row.real(2));
    }
  });
  return out;
}

std::vector<WorkerStats> Study::workers() {
  std::vector<WorkerStats> out;
  sql_retrying(*db_, busy_timeout_, [&] {
    out.clear();
    for (const auto& row : db_->query("SELECT worker, trials, sample_seconds, storage_seconds, run_seconds "
                                      "FROM workers ORDER BY finished"))
      out.push_back({row.text(0), row.integer(1), row.real(2), row.real(3), row.real(4)});
  });
  return out;
}

int64_t Study::running() {
  int64_t n = 0;
  sql_retrying(*db_, busy_timeout_, [&] {
    n = db_->query("SELECT COUNT(*) FROM trials WHERE state IN ('RUNNING', 'WAITING')")[0].integer(0);
  });
  return n;
}

}  // namespace xfer
