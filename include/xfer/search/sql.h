#pragma once
/// The relational databases that studies (and suites' run queues) live in: one narrow interface, two
/// backends, chosen by the storage string:
///
///   FILE, sqlite:FILE                       an SQLite file, shared by processes on one machine
///   postgresql://USER@HOST:PORT/DB          a PostgreSQL server (libpq), shared by machines
///
/// Queries are written once with `?` placeholders and every value is bound as a parameter, never spliced
/// into SQL. On PostgreSQL each study or queue lives in its own schema (its namespace), so one database
/// holds many, joined by name; writers of one namespace serialise on a transaction-level advisory lock, as
/// SQLite's BEGIN IMMEDIATE serialises writers of one file. Credentials come from the URL, PGPASSWORD or
/// ~/.pgpass (as libpq reads them); where() never shows a password.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace xfer {

enum class SqlDialect { sqlite, postgresql };

/// A bound parameter or a value read back: NULL, an integer, a real or text.
using SqlValue = std::variant<std::monostate, int64_t, double, std::string>;

/// One result row; PostgreSQL's values arrive as text and are converted on reading.
class SqlRow {
 public:
  explicit SqlRow(std::vector<SqlValue> values) : values_(std::move(values)) {}
  bool null(size_t i) const;
  int64_t integer(size_t i) const;
  double real(size_t i) const;
  std::string text(size_t i) const;

 private:
  const SqlValue& at(size_t i) const;
  std::vector<SqlValue> values_;
};

/// The server went away (connection refused or dropped): the transaction is lost and may be redone after
/// reconnect().
class SqlConnectionLost : public std::runtime_error {
 public:
  explicit SqlConnectionLost(const std::string& what) : std::runtime_error(what) {}
};

class SqlDb {
 public:
  virtual ~SqlDb() = default;
  virtual SqlDialect dialect() const = 0;
  /// The database for messages and reports: the file, or the URL without its password.
  virtual const std::string& where() const = 0;
  /// Runs one statement with `?` placeholders bound to `params`; returns its rows.
  virtual std::vector<SqlRow> query(const std::string& sql, const std::vector<SqlValue>& params = {}) = 0;
  /// Runs parameterless statements (the schema), several separated by ';'.
  virtual void exec(const std::string& sql) = 0;
  /// The tables of the current namespace (an SQLite file's tables).
  virtual std::vector<std::string> tables() = 0;
  /// Puts the following statements in namespace `name` (PostgreSQL: schema `name`; SQLite: the file).
  virtual void use_namespace(const std::string& name) = 0;
  /// Creates the namespace if missing; call inside begin_write().
  virtual void create_namespace() = 0;
  virtual bool namespace_exists() = 0;
  /// A write transaction that excludes every other writer of the namespace until commit or rollback.
  virtual void begin_write() = 0;
  virtual void commit() = 0;
  virtual void rollback() noexcept = 0;
  /// Connects again after SqlConnectionLost; throws SqlConnectionLost while the server is unreachable.
  virtual void reconnect() = 0;
  /// Seconds to add to this machine's clock to get the database's (0 for a file): workers on several
  /// machines stamp heartbeats on the server's clock, so a skewed machine clock is not a dead worker.
  virtual double clock_offset() const { return 0; }
};

/// Opens `storage` (see above). `what` names the database in errors ("study", "queue"); `busy_timeout` is
/// how long a locked database or namespace is waited for, in seconds.
std::unique_ptr<SqlDb> open_sql(const std::string& storage, const std::string& what, double busy_timeout);
/// Whether `storage` is a PostgreSQL URL (postgresql:// or postgres://).
bool is_postgresql_url(const std::string& storage);
/// `storage` without a password (a URL's user:PASSWORD@ or password= parameter).
std::string redact_storage(const std::string& storage);

/// Runs `fn` (a whole transaction); if the server connection is lost, reconnects with a bounded back-off
/// (0.2 s doubling up to 5 s) and runs `fn` again, for up to `patience` seconds, then throws a one-line
/// error naming the database.
void sql_retrying(SqlDb& db, double patience, const std::function<void()>& fn);

/// A write transaction, rolled back on unwinding.
class SqlTransaction {
 public:
  explicit SqlTransaction(SqlDb& db) : db_(db) { db_.begin_write(); }
  ~SqlTransaction() {
    if (!done_) db_.rollback();
  }
  SqlTransaction(const SqlTransaction&) = delete;
  SqlTransaction& operator=(const SqlTransaction&) = delete;
  void commit() {
    db_.commit();
    done_ = true;
  }

 private:
  SqlDb& db_;
  bool done_ = false;
};

}  // namespace xfer
