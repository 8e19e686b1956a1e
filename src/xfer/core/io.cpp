#include "xfer/core/io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "xfer/core/error.h"

namespace fs = std::filesystem;

namespace xfer {

std::string read_file(const std::string& path) {
  std::error_code ec;
  XFER_CHECK(fs::exists(path, ec), "file not found: ", path);
  XFER_CHECK(!fs::is_directory(path, ec), "expected a file, got a directory: ", path);
  std::ifstream in(path, std::ios::binary);
  XFER_CHECK(in.good(), "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  XFER_CHECK(!in.bad(), "cannot read ", path);
  return ss.str();
}

namespace {

/// 16 hex digits from the kernel's random source: a temporary name nobody can predict.
std::string random_suffix() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) {
    std::random_device rd;
    v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// Removes PATH.tmp.PID[.RANDOM] files beside `path` whose PID no longer runs (left by a kill); the files
/// themselves, never what a symlink points to.
void remove_stale_temporaries(const std::string& path) {
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string prefix = target.filename().string() + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    const std::string digits = rest.substr(0, rest.find('.'));
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    const auto type = it->symlink_status(ec).type();
    if (type == fs::file_type::regular || type == fs::file_type::symlink) ::unlink(it->path().c_str());
  }
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  const fs::path target(path_);
  if (target.has_parent_path()) make_dirs(target.parent_path().string());
  for (int attempt = 0; fd_ < 0 && attempt < 16; ++attempt) {
    tmp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + random_suffix();
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) break;
  }
  XFER_CHECK(fd_ >= 0, "cannot write ", path_, ": ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::fail(int err) {
  ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  throw BadInput(cat("cannot write ", path_, ": ", std::strerror(err), " (the previous file is kept)"));
}

void AtomicFile::write(const char* data, size_t size) {
  XFER_CHECK(fd_ >= 0, "internal: ", path_, " was already committed");
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd_, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(n < 0 ? errno : ENOSPC);
    done += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  XFER_CHECK(fd_ >= 0, "internal: ", path_, " was already committed");
  if (::fsync(fd_) != 0) fail(errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(errno);
  ::close(fd_);
  fd_ = -1;
  remove_stale_temporaries(path_);
}

void write_file_atomic(const std::string& path, const std::string& data) {
  AtomicFile file(path);
  file.write(data);
  file.commit();
}

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

std::string gunzip(const std::string& bytes, const std::string& name, size_t max_bytes, bool prefix_only) {
  z_stream zs{};
  XFER_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "zlib init failed for ", name);
  std::string out;
  int rc = Z_OK;
  size_t fed = 0;
  while (rc != Z_STREAM_END) {
    if (zs.avail_in == 0 && fed < bytes.size()) {  // zlib takes uInt lengths
      const size_t n = std::min<size_t>(bytes.size() - fed, 1u << 30);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data() + fed));
      zs.avail_in = static_cast<uInt>(n);
      fed += n;
    }
    if (zs.total_out == out.size()) {
      if (out.size() >= max_bytes + (prefix_only ? 0 : 1)) break;
      // Grow geometrically, but never past what the caller allows (plus one byte to see an excess).
      const size_t want = std::max<size_t>({out.size() * 2, bytes.size() * 4, size_t(1) << 16});
      out.resize(std::min(want, max_bytes + (prefix_only ? 0 : 1)));
    }
    zs.next_out = reinterpret_cast<Bytef*>(&out[zs.total_out]);
    zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - zs.total_out, 1u << 30));
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && fed == bytes.size()) {
      inflateEnd(&zs);
      throw BadInput(cat(name, ": truncated gzip stream (ends after ", bytes.size(), " bytes)"));
    }
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      throw BadInput(cat(name, ": corrupt gzip stream (", msg, ")"));
    }
  }
  const size_t total = zs.total_out;
  inflateEnd(&zs);
  if (prefix_only) {
    out.resize(std::min(total, max_bytes));
    return out;
  }
  XFER_CHECK(total <= max_bytes, name, ": the gzip stream expands to more than ", max_bytes,
             " bytes, more than the data can hold");
  out.resize(total);
  return out;
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw BadInput(cat(path, ": not valid JSON (byte ", e.byte, ")"));
  }
}

int64_t json_int(const nlohmann::json& value, const std::string& what) {
  XFER_CHECK(value.is_number_integer() &&
                 (!value.is_number_unsigned() ||
                  value.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())),
             what, " must be an integer, got ", value.dump());
  return value.get<int64_t>();
}

std::vector<int64_t> json_ints(const nlohmann::json& array, const std::string& what) {
  XFER_CHECK(array.is_array(), what, " must be a list of integers, got ", array.dump());
  std::vector<int64_t> out;
  out.reserve(array.size());
  for (const auto& v : array) out.push_back(json_int(v, what));
  return out;
}

int64_t json_int_or(const nlohmann::json& object, const std::string& key, int64_t fallback,
                    const std::string& what) {
  if (!object.is_object() || !object.contains(key)) return fallback;
  return json_int(object[key], what);
}

void write_json_file(const std::string& path, const nlohmann::json& value) {
  write_file_atomic(path, value.dump(2) + "\n");
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  XFER_CHECK(!ec, "cannot create directory ", path, ": ", ec.message());
}

namespace {
/// The length of the UTF-8 sequence at s[i], or 0 if it is not valid UTF-8 (overlong forms, surrogates and
/// code points past U+10FFFF included).
size_t utf8_length(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if ((c & 0xe0) == 0xc0)
    n = 2, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0)
    n = 3, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0)
    n = 4, cp = c & 0x07;
  else
    return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}
}  // namespace

std::string printable(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_length(text, i);
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (n == 1 && c >= 0x20 && c != 0x7f) {
      out += text[i];
    } else if (n > 1) {
      out += text.substr(i, n);
      i += n;
      continue;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
    ++i;
  }
  return out;
}

void check_utf8(const std::string& text, const std::string& what) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_length(text, i);
    XFER_CHECK(n > 0, what, " is not valid UTF-8 (byte ", i, " of '", printable(text), "'); rename it");
    i += n;
  }
}

uint32_t crc32_of(const std::string& bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {  // zlib takes uInt lengths
    const size_t n = std::min<size_t>(bytes.size() - done, 1u << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), static_cast<uInt>(n));
    done += n;
  }
  return static_cast<uint32_t>(crc);
}

}  // namespace xfer
