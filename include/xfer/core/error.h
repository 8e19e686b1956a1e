#pragma once
/// Errors: the library throws, only `main` turns exceptions into messages and exit codes.
///
/// - `BadInput`: the user gave something invalid (a value, a file, a spec). Exit code 2.
/// - `NumericalError`: training diverged (NaN/inf). Exit code 1.
/// - `Interrupted`: SIGINT/SIGTERM arrived; the work so far is saved. Exit code 128 + the signal.
/// Anything else (c10::Error from torch, std::bad_alloc, ...) is an internal failure, exit code 1.
#include <sstream>
#include <stdexcept>
#include <string>

namespace xfer {

class BadInput : public std::runtime_error {
 public:
  explicit BadInput(const std::string& what) : std::runtime_error(what) {}
};

class NumericalError : public std::runtime_error {
 public:
  explicit NumericalError(const std::string& what) : std::runtime_error(what) {}
};

class Interrupted : public std::runtime_error {
 public:
  Interrupted(const std::string& what, int signal) : std::runtime_error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

/// Concatenates its arguments with operator<< (like c10::str; named apart from it so argument-dependent
/// lookup never makes calls ambiguous).
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

}  // namespace xfer

/// Throws xfer::BadInput with the concatenated message when `cond` is false; echo the bad value:
/// XFER_CHECK(alpha > 0, "--alpha must be > 0, got ", alpha);
#define XFER_CHECK(cond, ...)                                      \
  do {                                                             \
    if (!(cond)) throw ::xfer::BadInput(::xfer::cat(__VA_ARGS__)); \
  } while (0)
