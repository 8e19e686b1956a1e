#pragma once
/// Shared by the libFuzzer targets: malformed input must end in xfer::BadInput (a clear error), never in a
/// crash, a sanitizer report, or any other exception. Anything else escaping a target aborts the fuzzer,
/// which records the input as a crash.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/runtime.h"

namespace xfer::fuzz {

template <class Fn>
int expect_clean_errors(const uint8_t* data, size_t size, Fn&& fn) {
  static const bool quiet = [] {
    set_verbosity(0);
    return true;
  }();
  (void)quiet;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    fn(bytes);
  } catch (const BadInput&) {
    // the expected outcome for malformed input
  } catch (const std::exception& e) {
    std::fprintf(stderr, "not a BadInput: %s\n", e.what());
    std::abort();
  }
  return 0;
}

/// The JSON value of `bytes`, or a discarded value when they are not JSON (the JSON parser's own
/// errors are turned into BadInput by read_json_file; the targets fuzz what xfer does with the value).
inline nlohmann::json parse_json(const std::string& bytes) {
  return nlohmann::json::parse(bytes, nullptr, /*allow_exceptions=*/false);
}

}  // namespace xfer::fuzz
