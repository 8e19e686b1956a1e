#pragma once
/// The rendezvous store of a data-parallel run: a small key-value store that rank 0 serves over TCP and the
/// other ranks reach, through which Gloo's pairs exchange their addresses (dist.cpp adapts it to
/// c10d::Store for ProcessGroupGloo, which uses set, get and wait).
///
/// It replaces LibTorch 1.13's TCPStore, whose server listens on every interface whatever the master
/// address, lets a peer declare a 4 GiB key and allocates it, and serves one slow peer at a time. Here:
/// - the server binds the master address only (127.0.0.1 stays loopback; a name binds what it resolves to);
/// - every length a peer declares is checked against `StoreLimits` before a byte of it is stored, and so are
///   the number of keys, the bytes held and the connections open; a request over a limit is refused and
///   its connection closed;
/// - one thread serves every connection with poll(): a peer that connects and sends nothing (or half a
///   request) is dropped after `request_seconds` and never delays the others;
/// - failures (no server within the timeout, a key that never appears) are BadInput, one line.
/// There is no authentication: the port must be reachable only by the job's machines (docs/security.md).
///
/// Wire format, little-endian: a request is one opcode byte and its fields, strings as (u32 length, bytes):
///   'S' key value | 'G' key | 'A' key i64 | 'C' u32 n, n keys | 'W' u32 n, n keys, u64 timeout_ms |
///   'D' key | 'N'
/// a reply is a status byte (0 ok, 1 absent or false, 2 timed out, 3 refused) and a string (the value, an
/// i64, or the reason).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace xfer::dist {

/// What one peer may make the server hold.
struct StoreLimits {
  size_t max_key = 4096;                // bytes of a key
  size_t max_value = size_t(1) << 20;   // bytes of a value
  size_t max_keys = 65536;              // keys held
  size_t max_bytes = size_t(64) << 20;  // bytes held, keys and values
  size_t max_wait_keys = 4096;          // keys in one check or wait
  size_t max_connections = 256;         // open at once; more are closed at once
  double request_seconds = 30;          // to send a whole request after connecting
};

class KeyValueStore {
 public:
  /// Rank 0: serves the store on `host`:`port` (port 0: a free port, see port()), bound to that address only.
  static std::unique_ptr<KeyValueStore> serve(const std::string& host, int port, double timeout_seconds,
                                              const StoreLimits& limits = {});
  /// The other ranks: a client of the server at `host`:`port`, which may start later (connections are retried
  /// until `timeout_seconds` pass).
  static std::unique_ptr<KeyValueStore> connect(const std::string& host, int port, double timeout_seconds);
  virtual ~KeyValueStore() = default;

  virtual void set(const std::string& key, const std::string& value) = 0;
  /// Waits for the key up to the timeout; BadInput if it does not appear.
  virtual std::string get(const std::string& key) = 0;
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  virtual bool check(const std::vector<std::string>& keys) = 0;
  /// Waits until every key is set; BadInput naming the missing ones after `timeout_seconds`.
  virtual void wait(const std::vector<std::string>& keys, double timeout_seconds) = 0;
  virtual bool remove(const std::string& key) = 0;
  virtual int64_t num_keys() = 0;
  /// The port served (rank 0) or reached.
  virtual int port() const = 0;
  /// The numeric address the server's socket is bound to, e.g. "127.0.0.1" ("" for a client).
  virtual std::string bound_address() const = 0;
  double timeout_seconds() const { return timeout_; }

 protected:
  double timeout_ = 300;
};

}  // namespace xfer::dist
