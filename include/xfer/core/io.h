#pragma once
/// Files: whole-file reads with clear errors, atomic writes, gzip, JSON.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace xfer {

/// Reads a whole file; BadInput naming the path if it is missing or unreadable.
std::string read_file(const std::string& path);

/// A file written in pieces that appears at `path` only on commit(): a temporary file beside it, created
/// exclusively under an unpredictable name (PATH.tmp.PID.RANDOM, O_EXCL|O_NOFOLLOW, so a planted file or
/// symlink cannot redirect the write), fsynced and renamed. Destroyed without commit(), it removes the
/// temporary file and keeps the previous one. Temporary files of `path` left by killed processes (whose
/// PID no longer runs) are removed on commit.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const char* data, size_t size);
  void write(const std::string& data) { write(data.data(), data.size()); }
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  [[noreturn]] void fail(int err);
  std::string path_, tmp_;
  int fd_ = -1;
};

/// Writes `data` to `path` atomically (an AtomicFile): a reader sees the old file or the new one, never a
/// half-written one; on failure the old file is kept and the error names the path.
void write_file_atomic(const std::string& path, const std::string& data);

/// True if `bytes` start with the gzip magic number.
bool is_gzip(const std::string& bytes);
/// Inflates a whole gzip stream (CRC checked). `name` is used in errors about corrupt or truncated data.
/// More than `max_bytes` of output is refused (BadInput) before it is allocated: a gzip bomb of a few MB
/// expands to gigabytes. With `prefix_only`, inflating stops after `max_bytes` and returns them.
std::string gunzip(const std::string& bytes, const std::string& name, size_t max_bytes = size_t(1) << 32,
                   bool prefix_only = false);

/// Parses a JSON file; BadInput naming the path and the parser's position on malformed input.
nlohmann::json read_json_file(const std::string& path);
/// A whole number of a JSON document from outside, as int64: a float, a string or a number out of range
/// is BadInput naming `what` (nlohmann's get<int64_t> casts a float, undefined behaviour out of range).
int64_t json_int(const nlohmann::json& value, const std::string& what);
/// json_int of every element of an array.
std::vector<int64_t> json_ints(const nlohmann::json& array, const std::string& what);
/// json_int of `object[key]`, or `fallback` when the object has no such key.
int64_t json_int_or(const nlohmann::json& object, const std::string& key, int64_t fallback,
                    const std::string& what);
/// Writes pretty JSON atomically.
void write_json_file(const std::string& path, const nlohmann::json& value);

/// Creates a directory and its parents; BadInput naming the path on failure.
void make_dirs(const std::string& path);

/// BadInput naming `what` when `text` is not valid UTF-8 (JSON outputs hold only UTF-8); the bad byte's
/// position is given and the text is echoed with the invalid bytes as \xNN.
void check_utf8(const std::string& text, const std::string& what);
/// `text` with invalid UTF-8 bytes as \xNN and control characters as \n, \t or \xNN: safe to print.
std::string printable(const std::string& text);

/// CRC-32 (zlib's) of a byte string.
uint32_t crc32_of(const std::string& bytes);

}  // namespace xfer
