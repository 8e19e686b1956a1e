#pragma once
/// Files: whole-file reads with clear errors, atomic writes, gzip, JSON.
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace xfer {

/// Reads a whole file; BadInput naming the path if it is missing or unreadable.
std::string read_file(const std::string& path);

/// Writes `data` to `path` atomically: a temporary file beside it, fsync, rename. A reader sees the old
/// file or the new one, never a half-written one; on failure the old file is kept and the error names
/// the path.
void write_file_atomic(const std::string& path, const std::string& data);

/// True if `bytes` start with the gzip magic number.
bool is_gzip(const std::string& bytes);
/// Inflates a whole gzip stream (CRC checked). `name` is used in errors about corrupt or truncated data.
std::string gunzip(const std::string& bytes, const std::string& name);

/// Parses a JSON file; BadInput naming the path and the parser's position on malformed input.
nlohmann::json read_json_file(const std::string& path);
/// Writes pretty JSON atomically.
void write_json_file(const std::string& path, const nlohmann::json& value);

/// Creates a directory and its parents; BadInput naming the path on failure.
void make_dirs(const std::string& path);

/// CRC-32 (zlib's) of a byte string.
uint32_t crc32_of(const std::string& bytes);

}  // namespace xfer
