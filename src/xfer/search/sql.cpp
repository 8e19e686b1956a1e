#include "xfer/search/sql.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <libpq-fe.h>
#include <sqlite3.h>

#include "xfer/core/error.h"

namespace fs = std::filesystem;

namespace xfer {

const SqlValue& SqlRow::at(size_t i) const {
  if (i >= values_.size())
    throw std::logic_error(cat("SQL row has ", values_.size(), " columns, not ", i + 1));
  return values_[i];
}

bool SqlRow::null(size_t i) const {
  return std::holds_alternative<std::monostate>(at(i));
}

int64_t SqlRow::integer(size_t i) const {
  const SqlValue& v = at(i);
  if (auto p = std::get_if<int64_t>(&v)) return *p;
  if (auto p = std::get_if<double>(&v)) return static_cast<int64_t>(*p);
  if (auto p = std::get_if<std::string>(&v)) return std::stoll(*p);
  return 0;
}

double SqlRow::real(size_t i) const {
  const SqlValue& v = at(i);
  if (auto p = std::get_if<double>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return static_cast<double>(*p);
  if (auto p = std::get_if<std::string>(&v)) return std::stod(*p);
  return 0;
}

std::string SqlRow::text(size_t i) const {
  const SqlValue& v = at(i);
  if (auto p = std::get_if<std::string>(&v)) return *p;
  if (auto p = std::get_if<int64_t>(&v)) return std::to_string(*p);
  if (auto p = std::get_if<double>(&v)) return cat(*p);
  return {};
}

bool is_postgresql_url(const std::string& storage) {
  return storage.rfind("postgresql://", 0) == 0 || storage.rfind("postgres://", 0) == 0;
}

std::string redact_storage(const std::string& storage) {
  if (!is_postgresql_url(storage)) return storage;
  const size_t start = storage.find("://") + 3;
  std::string query;
  std::string rest = storage;
  const size_t q = storage.find('?', start);
  if (q != std::string::npos) {
    rest = storage.substr(0, q);
    // Keep the parameters but a password.
    size_t from = q + 1;
    while (from <= storage.size()) {
      size_t amp = storage.find('&', from);
      if (amp == std::string::npos) amp = storage.size();
      const std::string param = storage.substr(from, amp - from);
      if (!param.empty() && param.rfind("password=", 0) != 0) query += (query.empty() ? "?" : "&") + param;
      from = amp + 1;
    }
  }
  const size_t at = rest.rfind('@');
  if (at != std::string::npos && at > start) {
    const size_t colon = rest.find(':', start);
    if (colon != std::string::npos && colon < at) rest.erase(colon, at - colon);
  }
  return rest + query;
}

namespace {

// ---- SQLite ----------------------------------------------------------------------------------------

class SqliteDb : public SqlDb {
 public:
  SqliteDb(const std::string& path, const std::string& what, double busy_timeout) : path_(path), what_(what) {
    XFER_CHECK(busy_timeout >= 0, "--busy-timeout must be >= 0, got ", busy_timeout);
    const fs::path parent = fs::path(path_).parent_path();
    XFER_CHECK(parent.empty() || fs::is_directory(parent), "the directory of the ", what_, " database ",
               path_, " does not exist");
    const int rc = sqlite3_open_v2(
        path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
    try {
      if (rc != SQLITE_OK) fail(rc, "opening");
      sqlite3_busy_timeout(db_, static_cast<int>(busy_timeout * 1000));
      sqlite3_extended_result_codes(db_, 1);
      // A file that is not a database fails here, before anything is written to it.
      for (const auto& row : query("PRAGMA quick_check", {})) {
        const std::string line = row.text(0);
        XFER_CHECK(line == "ok", path_, " is a damaged SQLite database (", line,
                   "); it was left untouched: restore it from a copy or use another --out / --storage");
      }
      exec("PRAGMA journal_mode=WAL");
      exec("PRAGMA synchronous=FULL");
    } catch (...) {
      sqlite3_close(db_);
      throw;
    }
  }
  ~SqliteDb() override { sqlite3_close(db_); }

  SqlDialect dialect() const override { return SqlDialect::sqlite; }
  const std::string& where() const override { return path_; }

  std::vector<SqlRow> query(const std::string& sql, const std::vector<SqlValue>& params) override {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr);
    if (rc != SQLITE_OK) fail(rc, cat("preparing '", sql, "'"));
    std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(stmt, sqlite3_finalize);
    for (size_t i = 0; i < params.size(); ++i) {
      const int k = static_cast<int>(i + 1);
      const SqlValue& v = params[i];
      if (auto p = std::get_if<int64_t>(&v))
        rc = sqlite3_bind_int64(stmt, k, *p);
      else if (auto p = std::get_if<double>(&v))
        rc = sqlite3_bind_double(stmt, k, *p);
      else if (auto p = std::get_if<std::string>(&v))
        rc = sqlite3_bind_text(stmt, k, p->c_str(), static_cast<int>(p->size()), SQLITE_TRANSIENT);
      else
        rc = sqlite3_bind_null(stmt, k);
      if (rc != SQLITE_OK) fail(rc, "binding a value");
    }
    std::vector<SqlRow> rows;
    while (true) {
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) fail(rc, cat("running '", sql, "'"));
      const int n = sqlite3_column_count(stmt);
      std::vector<SqlValue> values(static_cast<size_t>(n));
      for (int c = 0; c < n; ++c) {
        switch (sqlite3_column_type(stmt, c)) {
          case SQLITE_INTEGER:
            values[c] = static_cast<int64_t>(sqlite3_column_int64(stmt, c));
            break;
          case SQLITE_FLOAT:
            values[c] = sqlite3_column_double(stmt, c);
            break;
          case SQLITE_NULL:
            break;
          default: {
            const auto* p = sqlite3_column_text(stmt, c);
            values[c] = std::string(p ? reinterpret_cast<const char*>(p) : "");
          }
        }
      }
      rows.emplace_back(std::move(values));
    }
    return rows;
  }

  void exec(const std::string& sql) override {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    if (err) sqlite3_free(err);
    if (rc != SQLITE_OK) fail(rc, cat("running '", sql, "'"));
  }

  std::vector<std::string> tables() override {
    std::vector<std::string> out;
    for (const auto& row : query("SELECT name FROM sqlite_master WHERE type = 'table'", {}))
      out.push_back(row.text(0));
    return out;
  }
  void use_namespace(const std::string&) override {}  // a file holds one study
  void create_namespace() override {}
  bool namespace_exists() override { return true; }
  void begin_write() override { exec("BEGIN IMMEDIATE"); }  // the write lock, waiting out the busy timeout
  void commit() override { exec("COMMIT"); }
  void rollback() noexcept override { sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr); }
  void reconnect() override {}

 private:
  /// Turns an SQLite failure into an error that names the file and says what to do.
  [[noreturn]] void fail(int rc, const std::string& doing) {
    const std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    const int primary = rc & 0xff;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
      throw std::runtime_error(cat("the ", what_, " database ", path_, " stayed locked while ", doing, " (",
                                   msg,
                                   "): another process holds a write lock; raise --busy-timeout or retry"));
    if (primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT)
      throw BadInput(
          cat(path_, " is not a readable ", what_, " database (", msg,
              "); it was left untouched: restore it from a copy or use another --out / --storage"));
    if (primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY || primary == SQLITE_PERM)
      throw BadInput(cat("cannot write the ", what_, " database ", path_, " (", msg, ")"));
    throw std::runtime_error(cat(what_, " database ", path_, ": ", doing, ": ", msg));
  }

  std::string path_, what_;
  sqlite3* db_ = nullptr;
};

// ---- PostgreSQL --------------------------------------------------------------------------------------

/// libpq's message on one line.
std::string pg_one_line(const char* msg) {
  std::string s = msg ? msg : "";
  std::replace(s.begin(), s.end(), '\n', ' ');
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

/// `?` placeholders to PostgreSQL's $1, $2, ... (outside quoted literals).
std::string pg_placeholders(const std::string& sql) {
  std::string out;
  int n = 0;
  bool quoted = false;
  for (char c : sql) {
    if (c == '\'') quoted = !quoted;
    if (c == '?' && !quoted)
      out += "$" + std::to_string(++n);
    else
      out += c;
  }
  return out;
}

/// A double as PostgreSQL reads it back exactly.
std::string pg_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// Key space of xfer's advisory locks ("xfer"), apart from other applications' on the same server.
const int kPgLockSpace = 0x78666572;

class PgDb : public SqlDb {
 public:
  PgDb(const std::string& url, const std::string& what, double busy_timeout)
      : url_(url), where_(redact_storage(url)), what_(what), busy_timeout_(busy_timeout) {
    XFER_CHECK(busy_timeout >= 0, "--busy-timeout must be >= 0, got ", busy_timeout);
    conn_ = PQconnectdb(url_.c_str());
    if (!conn_) throw std::bad_alloc();
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string msg = pg_one_line(PQerrorMessage(conn_));
      PQfinish(conn_);
      conn_ = nullptr;
      // An unknown database, role or bad password is the user's to fix; anything else is the server's.
      if (msg.find("does not exist") != std::string::npos ||
          msg.find("authentication") != std::string::npos || msg.find("password") != std::string::npos ||
          msg.find("invalid") != std::string::npos)
        throw BadInput(cat("cannot open the ", what_, " database ", where_, ": ", msg));
      throw std::runtime_error(cat("cannot reach the ", what_, " database ", where_, ": ", msg));
    }
    configure();
  }
  ~PgDb() override {
    if (conn_) PQfinish(conn_);
  }

  SqlDialect dialect() const override { return SqlDialect::postgresql; }
  const std::string& where() const override { return where_; }

  std::vector<SqlRow> query(const std::string& sql, const std::vector<SqlValue>& params) override {
    std::vector<std::string> text(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      const SqlValue& v = params[i];
      if (std::holds_alternative<std::monostate>(v)) continue;
      if (auto p = std::get_if<int64_t>(&v))
        text[i] = std::to_string(*p);
      else if (auto p = std::get_if<double>(&v))
        text[i] = pg_double(*p);
      else
        text[i] = std::get<std::string>(v);
      values[i] = text[i].c_str();
    }
    const std::string pg_sql = pg_placeholders(sql);
    PGresult* res = PQexecParams(conn_, pg_sql.c_str(), static_cast<int>(params.size()), nullptr,
                                 values.data(), nullptr, nullptr, 0);
    std::unique_ptr<PGresult, void (*)(PGresult*)> guard(res, PQclear);
    check(res, sql);
    std::vector<SqlRow> rows;
    const int n = PQntuples(res), cols = PQnfields(res);
    rows.reserve(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r) {
      std::vector<SqlValue> row(static_cast<size_t>(cols));
      for (int c = 0; c < cols; ++c)
        if (!PQgetisnull(res, r, c)) row[c] = std::string(PQgetvalue(res, r, c), PQgetlength(res, r, c));
      rows.emplace_back(std::move(row));
    }
    return rows;
  }

  void exec(const std::string& sql) override {
    PGresult* res = PQexec(conn_, sql.c_str());
    std::unique_ptr<PGresult, void (*)(PGresult*)> guard(res, PQclear);
    check(res, sql);
  }

  std::vector<std::string> tables() override {
    std::vector<std::string> out;
    for (const auto& row :
         query("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", {schema_}))
      out.push_back(row.text(0));
    return out;
  }

  void use_namespace(const std::string& name) override {
    schema_ = name;
    set_search_path();
  }
  void create_namespace() override {
    // An identifier cannot be a parameter: libpq quotes it.
    char* ident = PQescapeIdentifier(conn_, schema_.c_str(), schema_.size());
    if (!ident)
      throw std::runtime_error(cat(what_, " database ", where_, ": ", pg_one_line(PQerrorMessage(conn_))));
    const std::string sql = cat("CREATE SCHEMA IF NOT EXISTS ", ident);
    PQfreemem(ident);
    exec(sql);
  }
  bool namespace_exists() override {
    return !query("SELECT 1 FROM information_schema.schemata WHERE schema_name = ?", {schema_}).empty();
  }
  void begin_write() override {
    exec("BEGIN");
    query("SELECT pg_advisory_xact_lock(?, hashtext(?))", {int64_t{kPgLockSpace}, schema_});
  }
  void commit() override { exec("COMMIT"); }
  void rollback() noexcept override {
    if (PQstatus(conn_) != CONNECTION_OK) return;
    PGresult* res = PQexec(conn_, "ROLLBACK");
    PQclear(res);
  }
  void reconnect() override {
    PQreset(conn_);
    if (PQstatus(conn_) != CONNECTION_OK)
      throw SqlConnectionLost(
          cat("the ", what_, " database ", where_, " is unreachable: ", pg_one_line(PQerrorMessage(conn_))));
    configure();
  }
  double clock_offset() const override { return clock_offset_; }

 private:
  static double wall_now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  void configure() {
    PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);  // "already exists" notices
    // The server's clock against ours, at the middle of one round trip.
    const double t0 = wall_now();
    const auto rows = query("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8", {});
    const double t1 = wall_now();
    clock_offset_ = rows[0].real(0) - (t0 + t1) / 2;
    query("SELECT set_config('lock_timeout', ?, false)",
          {std::to_string(static_cast<int64_t>(busy_timeout_ * 1000))});
    if (!schema_.empty()) set_search_path();
  }
  void set_search_path() {
    char* ident = PQescapeIdentifier(conn_, schema_.c_str(), schema_.size());
    if (!ident)
      throw std::runtime_error(cat(what_, " database ", where_, ": ", pg_one_line(PQerrorMessage(conn_))));
    const std::string path = ident;
    PQfreemem(ident);
    query("SELECT set_config('search_path', ?, false)", {path});
  }
  void check(PGresult* res, const std::string& sql) {
    const ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return;
    const std::string msg = pg_one_line(res ? PQresultErrorMessage(res) : PQerrorMessage(conn_));
    if (PQstatus(conn_) != CONNECTION_OK)
      throw SqlConnectionLost(cat("the ", what_, " database ", where_, " went away: ", msg));
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    if (state && std::string(state) == "55P03")  // lock_not_available: lock_timeout passed
      throw std::runtime_error(cat("the ", what_, " database ", where_, " stayed locked for ", busy_timeout_,
                                   " s (", msg, "): raise --busy-timeout or retry"));
    throw std::runtime_error(cat(what_, " database ", where_, ": running '", sql, "': ", msg));
  }

  std::string url_, where_, what_, schema_;
  double busy_timeout_;
  double clock_offset_ = 0;
  PGconn* conn_ = nullptr;
};

}  // namespace

std::unique_ptr<SqlDb> open_sql(const std::string& storage, const std::string& what, double busy_timeout) {
  if (is_postgresql_url(storage)) return std::make_unique<PgDb>(storage, what, busy_timeout);
  const std::string path = storage.rfind("sqlite:", 0) == 0 ? storage.substr(7) : storage;
  XFER_CHECK(!path.empty(), "--storage sqlite: needs a file name (sqlite:FILE)");
  XFER_CHECK(path.find("://") == std::string::npos, "--storage ", redact_storage(storage),
             " is not a storage xfer knows: use FILE, sqlite:FILE or postgresql://USER@HOST:PORT/DB");
  return std::make_unique<SqliteDb>(path, what, busy_timeout);
}

void sql_retrying(SqlDb& db, double patience, const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  double wait = 0.2;
  while (true) {
    try {
      fn();
      return;
    } catch (const SqlConnectionLost& lost) {
      std::string last = lost.what();
      // Reconnect with back-off; the transaction is redone from the start (the server rolled it back).
      while (true) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (waited >= patience)
          throw std::runtime_error(
              cat(last, "; gave up after ", static_cast<int64_t>(waited),
                  " s of retries (--busy-timeout): start it again and re-run the same command "
                  "to resume"));
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(wait, patience - waited)));
        wait = std::min(2 * wait, 5.0);
        try {
          db.reconnect();
          break;
        } catch (const SqlConnectionLost& again) {
          last = again.what();
        }
      }
    }
  }
}

}  // namespace xfer
