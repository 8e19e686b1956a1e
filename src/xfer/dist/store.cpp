#include "xfer/dist/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/text.h"

namespace xfer::dist {
namespace {

enum Status : uint8_t { kOk = 0, kAbsent = 1, kTimedOut = 2, kRefused = 3 };

double store_clock() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Encoder {
  std::string out;
  Encoder& u8(uint8_t v) { return out.push_back(static_cast<char>(v)), *this; }
  Encoder& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  Encoder& str(const std::string& s) { return le(s.size(), 4), out += s, *this; }
};

/// Reads fields from the bytes of a request received so far. `more` turns true when they end first;
/// `error` is set as soon as a declared length is over its limit, before anything of that length is kept.
struct Decoder {
  explicit Decoder(const std::string& bytes) : in(bytes) {}
  const std::string& in;
  size_t pos = 0;
  bool more = false;
  std::string error;
  bool have(size_t n) {
    if (in.size() - pos >= n) return true;
    more = true;
    return false;
  }
  uint64_t le(int n) {
    if (!have(static_cast<size_t>(n))) return 0;
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i)
      v = (v << 8) | static_cast<unsigned char>(in[pos + static_cast<size_t>(i)]);
    pos += static_cast<size_t>(n);
    return v;
  }
  std::string str(size_t max, const char* what) {
    const uint64_t n = le(4);
    if (more || !error.empty()) return {};
    if (n > max) {
      error = cat("a ", what, " of ", n, " bytes (at most ", max, ")");
      return {};
    }
    if (!have(n)) return {};
    std::string s = in.substr(pos, n);
    pos += n;
    return s;
  }
  bool ok() const { return !more && error.empty(); }
};

struct Request {
  char op = 0;
  std::vector<std::string> keys;
  std::string value;
  int64_t number = 0;
  uint64_t timeout_ms = 0;
};

/// 1: `r` holds a whole request; 0: more bytes are needed; -1: refused (`error` says why).
int parse_request(const std::string& in, const StoreLimits& limits, Request& r, std::string& error) {
  if (in.empty()) return 0;
  Decoder d(in);
  r = Request();
  r.op = in[0];
  d.pos = 1;
  switch (r.op) {
    case 'S':
      r.keys.push_back(d.str(limits.max_key, "key"));
      r.value = d.str(limits.max_value, "value");
      break;
    case 'G':
    case 'D':
      r.keys.push_back(d.str(limits.max_key, "key"));
      break;
    case 'A':
      r.keys.push_back(d.str(limits.max_key, "key"));
      r.number = static_cast<int64_t>(d.le(8));
      break;
    case 'C':
    case 'W': {
      const uint64_t n = d.le(4);
      if (d.ok() && (n == 0 || n > limits.max_wait_keys))
        d.error = cat(n, " keys in one request (1 to ", limits.max_wait_keys, ")");
      for (uint64_t i = 0; d.ok() && i < n; ++i) r.keys.push_back(d.str(limits.max_key, "key"));
      if (r.op == 'W') r.timeout_ms = d.le(8);
    } break;
    case 'N':
      break;
    default:
      d.error = cat("unknown request 0x", std::hex, static_cast<int>(static_cast<unsigned char>(r.op)));
  }
  if (!d.error.empty()) {
    error = d.error;
    return -1;
  }
  if (d.more) return 0;
  if (d.pos != in.size()) {
    error = "bytes after the request";
    return -1;
  }
  return 1;
}

/// The addresses of host:port for a stream socket.
struct Addresses {
  addrinfo* list = nullptr;
  Addresses(const std::string& host, int port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &list);
    XFER_CHECK(rc == 0 && list != nullptr, "rendezvous: cannot resolve the master address '", printable(host),
               "' (", ::gai_strerror(rc), ")");
  }
  ~Addresses() {
    if (list) ::freeaddrinfo(list);
  }
};

std::string numeric_address(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a).sin_addr, buf, sizeof buf);
  if (a.ss_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(a).sin6_addr, buf, sizeof buf);
  return buf;
}

int socket_port(int fd) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(a).sin6_port
                                       : reinterpret_cast<sockaddr_in&>(a).sin_port);
}

/// Rank 0's store: the keys in memory, served to the other ranks by one poll() thread, one request per
/// connection.
class StoreServer final : public KeyValueStore {
 public:
  StoreServer(const std::string& host, int port, double timeout, const StoreLimits& limits)
      : limits_(limits) {
    timeout_ = timeout;
    const Addresses addresses(host, port);
    int err = 0;
    for (addrinfo* a = addresses.list; a && listen_fd_ < 0; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) continue;
      const int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
        listen_fd_ = fd;
        sockaddr_storage bound{};
        socklen_t len = sizeof bound;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
        address_ = numeric_address(bound);
      } else {
        err = errno;
        ::close(fd);
      }
    }
    XFER_CHECK(listen_fd_ >= 0, "rendezvous: cannot serve on ", printable(host), ":", port, " (",
               std::strerror(err), ")");
    port_ = socket_port(listen_fd_);
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
      ::close(listen_fd_);
      throw BadInput(cat("rendezvous: cannot create a pipe (", std::strerror(errno), ")"));
    }
    thread_ = std::thread([this] { serve(); });
  }

  ~StoreServer() override {
    stop_ = true;
    wake();
    thread_.join();
    for (auto& c : conns_) ::close(c.fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  void set(const std::string& key, const std::string& value) override {
    std::string error;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error = store_locked(key, value);
    }
    XFER_CHECK(error.empty(), "rendezvous: ", error);
    changed();
  }
  std::string get(const std::string& key) override {
    wait({key}, timeout_);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = kv_.find(key);
    XFER_CHECK(it != kv_.end(), "rendezvous: key '", printable(key), "' was deleted while waited for");
    return it->second;
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int64_t result = 0;
    std::string error;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      error = add_locked(key, delta, result);
    }
    XFER_CHECK(error.empty(), "rendezvous: ", error);
    changed();
    return result;
  }
  bool check(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return all_set_locked(keys);
  }
  void wait(const std::vector<std::string>& keys, double seconds) override {
    std::unique_lock<std::mutex> lock(mutex_);
    const bool done =
        cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return all_set_locked(keys); });
    XFER_CHECK(done, "rendezvous: no rank set ", missing_locked(keys), " within ", seconds,
               " s (XFER_DIST_TIMEOUT); a rank did not start or cannot reach the master");
  }
  bool remove(const std::string& key) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = kv_.find(key);
    if (it == kv_.end()) return false;
    bytes_ -= it->first.size() + it->second.size();
    kv_.erase(it);
    return true;
  }
  int64_t num_keys() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(kv_.size());
  }
  int port() const override { return port_; }
  std::string bound_address() const override { return address_; }

 private:
  /// One connection, one request: read it, wait for its keys (a 'W'), write the reply, close.
  struct Conn {
    enum State { kRead, kWait, kWrite } state = kRead;
    int fd = -1;
    std::string in, out;
    double deadline = 0;  // of the current state
    Request request;
  };

  /// Stores key=value unless a limit forbids it; returns why it does.
  std::string store_locked(const std::string& key, const std::string& value) {
    auto it = kv_.find(key);
    const size_t old = it == kv_.end() ? 0 : key.size() + it->second.size();
    if (it == kv_.end() && kv_.size() >= limits_.max_keys)
      return cat("the store holds ", kv_.size(), " keys already");
    if (bytes_ - old + key.size() + value.size() > limits_.max_bytes)
      return cat("the store would hold more than ", limits_.max_bytes, " bytes");
    bytes_ = bytes_ - old + key.size() + value.size();
    kv_[key] = value;
    return "";
  }
  std::string add_locked(const std::string& key, int64_t delta, int64_t& result) {
    int64_t current = 0;
    if (auto it = kv_.find(key); it != kv_.end()) {
      const std::optional<int64_t> held = parse_int64(it->second);
      if (!held) return cat("key '", printable(key), "' does not hold a counter");
      current = *held;
    }
    if (__builtin_add_overflow(current, delta, &result))
      return cat("counter '", printable(key), "' overflows");
    return store_locked(key, std::to_string(result));
  }
  bool all_set_locked(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return kv_.count(k) > 0; });
  }
  std::string missing_locked(const std::vector<std::string>& keys) const {
    std::string out;
    for (const auto& k : keys)
      if (!kv_.count(k)) out += (out.empty() ? "'" : ", '") + printable(k.substr(0, 64)) + "'";
    return out;
  }
  void wake() {
    const char c = 1;
    (void)!::write(wake_[1], &c, 1);
  }
  void changed() {
    cv_.notify_all();
    wake();
  }

  /// The reply to a whole request (a wait whose keys are all set included).
  std::string answer(const Request& r) {
    Encoder e;
    std::lock_guard<std::mutex> lock(mutex_);
    std::string error;
    switch (r.op) {
      case 'S':
        error = store_locked(r.keys[0], r.value);
        break;
      case 'G': {
        auto it = kv_.find(r.keys[0]);
        return it == kv_.end() ? e.u8(kAbsent).str("").out : e.u8(kOk).str(it->second).out;
      }
      case 'A': {
        int64_t result = 0;
        error = add_locked(r.keys[0], r.number, result);
        if (error.empty()) return e.u8(kOk).str(std::to_string(result)).out;
      } break;
      case 'C':
      case 'W':
        return e.u8(all_set_locked(r.keys) ? kOk : r.op == 'C' ? kAbsent : kTimedOut).str("").out;
      case 'D': {
        auto it = kv_.find(r.keys[0]);
        if (it == kv_.end()) return e.u8(kAbsent).str("").out;
        bytes_ -= it->first.size() + it->second.size();
        kv_.erase(it);
      } break;
      case 'N':
        return e.u8(kOk).str(std::to_string(kv_.size())).out;
    }
    return error.empty() ? e.u8(kOk).str("").out : e.u8(kRefused).str(error).out;
  }

  void accept_all() {
    while (true) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      if (conns_.size() >=
          limits_.max_connections) {  // a peer holding many connections cannot starve the rest
        ::close(fd);
        continue;
      }
      Conn c;
      c.fd = fd;
      c.deadline = store_clock() + limits_.request_seconds;
      conns_.push_back(std::move(c));
    }
  }

  size_t max_request() const { return 64 + 2 * limits_.max_key + limits_.max_value; }

  void reply(Conn& c, std::string out) {
    c.out = std::move(out);
    c.state = Conn::kWrite;
    c.deadline = store_clock() + limits_.request_seconds;
  }

  /// Reads what arrived and acts on a whole request; returns false when the peer is gone.
  bool receive(Conn& c) {
    char buf[65536];
    while (c.state == Conn::kRead) {
      if (c.in.size() >= max_request()) {
        reply(c, Encoder().u8(kRefused).str("the request is too long").out);
        break;
      }
      const ssize_t n = ::recv(c.fd, buf, std::min(sizeof buf, max_request() - c.in.size()), 0);
      if (n == 0) return false;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      c.in.append(buf, static_cast<size_t>(n));
      std::string error;
      const int parsed = parse_request(c.in, limits_, c.request, error);
      if (parsed < 0) {
        reply(c, Encoder().u8(kRefused).str(error).out);
      } else if (parsed > 0 && c.request.op == 'W') {
        c.state = Conn::kWait;
        c.deadline =
            store_clock() + std::min<double>(static_cast<double>(c.request.timeout_ms) / 1000.0, timeout_);
      } else if (parsed > 0) {
        reply(c, answer(c.request));
        if (c.request.op == 'S' || c.request.op == 'A' || c.request.op == 'D') changed();  // wake the waiters
      }
    }
    return true;
  }

  /// Moves one connection on; returns false when it is to be closed.
  bool advance(Conn& c, short revents, double now) {
    if (c.state == Conn::kRead && (revents & (POLLIN | POLLHUP | POLLERR)) && !receive(c)) return false;
    if (c.state == Conn::kWait) {
      bool ready;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ready = all_set_locked(c.request.keys);
      }
      if (ready || now >= c.deadline) reply(c, answer(c.request));
    }
    if (c.state == Conn::kWrite && (revents & POLLOUT)) {
      const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
      if (n > 0) c.out.erase(0, static_cast<size_t>(n));
      if (c.out.empty()) return false;  // answered: one request per connection
    }
    // A peer that sends nothing, half a request, or does not read its reply, is dropped in time.
    return c.state == Conn::kWait || now < c.deadline;
  }

  void serve() {
    while (!stop_) {
      std::vector<pollfd> fds{{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      double next = store_clock() + 0.2;
      for (const auto& c : conns_) {
        const short events = c.state == Conn::kRead ? POLLIN : c.state == Conn::kWrite ? POLLOUT : 0;
        fds.push_back({c.fd, events, 0});
        next = std::min(next, c.deadline);
      }
      ::poll(fds.data(), fds.size(), static_cast<int>(std::max(0.0, next - store_clock()) * 1000) + 1);
      char drain[64];
      while (::read(wake_[0], drain, sizeof drain) > 0) {
      }
      const double now = store_clock();
      std::vector<Conn> kept;
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (advance(conns_[i], fds[i + 2].revents, now))
          kept.push_back(std::move(conns_[i]));
        else
          ::close(conns_[i].fd);
      }
      conns_ = std::move(kept);
      if (fds[1].revents & POLLIN) accept_all();
    }
  }

  StoreLimits limits_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, std::string> kv_;
  size_t bytes_ = 0;
  int listen_fd_ = -1, port_ = 0, wake_[2] = {-1, -1};
  std::string address_;
  std::vector<Conn> conns_;  // the server thread's alone
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

/// A rank other than 0: one connection per request to the server, retried until the timeout while the
/// server is not up yet.
class StoreClient final : public KeyValueStore {
 public:
  StoreClient(const std::string& host, int port, double timeout) : host_(host), port_(port) {
    timeout_ = timeout;
    const Addresses check(host, port);  // an unresolvable name fails now, not after the timeout
  }

  void set(const std::string& key, const std::string& value) override {
    expect_ok(call(Encoder().u8('S').str(key).str(value).out, timeout_), "set");
  }
  std::string get(const std::string& key) override {
    wait({key}, timeout_);
    const auto [status, value] = call(Encoder().u8('G').str(key).out, timeout_);
    XFER_CHECK(status == kOk, "rendezvous: key '", printable(key), "' was deleted while waited for");
    return value;
  }
  int64_t add(const std::string& key, int64_t delta) override {
    return number(
        expect_ok(call(Encoder().u8('A').str(key).le(static_cast<uint64_t>(delta), 8).out, timeout_), "add"));
  }
  bool check(const std::vector<std::string>& keys) override {
    return call(keys_request('C', keys).out, timeout_).first == kOk;
  }
  void wait(const std::vector<std::string>& keys, double seconds) override {
    const auto ms = static_cast<uint64_t>(seconds * 1000);
    const auto [status, reason] = call(keys_request('W', keys).le(ms, 8).out, seconds + 5);
    XFER_CHECK(status != kRefused, "rendezvous: the master refused a wait: ", printable(reason));
    XFER_CHECK(status == kOk, "rendezvous: no rank set '", printable(keys.front().substr(0, 64)), "'",
               keys.size() > 1 ? cat(" and ", keys.size() - 1, " more keys") : "", " within ", seconds,
               " s (XFER_DIST_TIMEOUT); a rank did not start or cannot reach the master");
  }
  bool remove(const std::string& key) override {
    return call(Encoder().u8('D').str(key).out, timeout_).first == kOk;
  }
  int64_t num_keys() override {
    return number(expect_ok(call(Encoder().u8('N').out, timeout_), "count keys"));
  }
  int port() const override { return port_; }
  std::string bound_address() const override { return ""; }

 private:
  static Encoder keys_request(char op, const std::vector<std::string>& keys) {
    Encoder e;
    e.u8(static_cast<uint8_t>(op)).le(keys.size(), 4);
    for (const auto& k : keys) e.str(k);
    return e;
  }
  static std::string expect_ok(const std::pair<uint8_t, std::string>& reply, const char* what) {
    XFER_CHECK(reply.first == kOk, "rendezvous: the master refused to ", what, ": ", printable(reply.second));
    return reply.second;
  }
  static int64_t number(const std::string& text) {
    const std::optional<int64_t> v = parse_int64(text);
    XFER_CHECK(v, "rendezvous: the master sent '", printable(text.substr(0, 32)), "' for a number");
    return *v;
  }

  /// Connects (retrying until `deadline`), sends `request` and reads the reply.
  int open_connection(double deadline) {
    std::string last = "no address";
    while (true) {
      const Addresses addresses(host_, port_);
      for (addrinfo* a = addresses.list; a; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        int err = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        if (err == EINPROGRESS) {
          pollfd p{fd, POLLOUT, 0};
          const int ms = static_cast<int>(std::max(0.0, std::min(deadline - store_clock(), 5.0)) * 1000);
          socklen_t len = sizeof err;
          err = ::poll(&p, 1, ms) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err
                                                                                                  : ETIMEDOUT;
        }
        if (err == 0) return fd;
        last = std::strerror(err);
        ::close(fd);
      }
      XFER_CHECK(store_clock() < deadline, "rendezvous: cannot reach the master at ", printable(host_), ":",
                 port_, " within ", timeout_, " s (XFER_DIST_TIMEOUT): ", last);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  std::pair<uint8_t, std::string> call(const std::string& request, double seconds) {
    const double deadline = store_clock() + seconds;
    const int fd = open_connection(deadline);
    std::string reply;
    bool sent = false;
    size_t done = 0;
    try {
      while (true) {
        pollfd p{fd, static_cast<short>(sent ? POLLIN : POLLOUT), 0};
        const double left = deadline - store_clock();
        XFER_CHECK(left > 0 && ::poll(&p, 1, static_cast<int>(left * 1000) + 1) >= 0,
                   "rendezvous: the master at ", printable(host_), ":", port_, " did not answer within ",
                   seconds, " s");
        if (!p.revents) continue;
        if (!sent) {
          const ssize_t n = ::send(fd, request.data() + done, request.size() - done, MSG_NOSIGNAL);
          XFER_CHECK(n >= 0 || errno == EAGAIN, "rendezvous: lost the master at ", printable(host_), ":",
                     port_, " (", std::strerror(errno), ")");
          done += n > 0 ? static_cast<size_t>(n) : 0;
          sent = done == request.size();
          continue;
        }
        char buf[65536];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EAGAIN) continue;
        if (n > 0) reply.append(buf, static_cast<size_t>(n));
        Decoder d(reply);
        const uint8_t status = static_cast<uint8_t>(d.le(1));
        const std::string payload = d.str(size_t(64) << 20, "reply");
        XFER_CHECK(d.error.empty(), "rendezvous: the master sent ", d.error);
        if (d.ok()) {
          ::close(fd);
          return {status, payload};
        }
        XFER_CHECK(n > 0, "rendezvous: the master at ", printable(host_), ":", port_,
                   " closed the connection");
      }
    } catch (...) {
      ::close(fd);
      throw;
    }
  }

  std::string host_;
  int port_;
};

}  // namespace

std::unique_ptr<KeyValueStore> KeyValueStore::serve(const std::string& host, int port, double timeout_seconds,
                                                    const StoreLimits& limits) {
  XFER_CHECK(port >= 0 && port < 65536, "rendezvous: port must be in [0, 65535], got ", port);
  return std::make_unique<StoreServer>(host, port, timeout_seconds, limits);
}

std::unique_ptr<KeyValueStore> KeyValueStore::connect(const std::string& host, int port,
                                                      double timeout_seconds) {
  XFER_CHECK(port > 0 && port < 65536, "rendezvous: port must be in [1, 65535], got ", port);
  return std::make_unique<StoreClient>(host, port, timeout_seconds);
}

}  // namespace xfer::dist
