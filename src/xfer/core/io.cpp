#include "xfer/core/io.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
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

void write_file_atomic(const std::string& path, const std::string& data) {
  const fs::path target(path);
  if (target.has_parent_path()) make_dirs(target.parent_path().string());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  XFER_CHECK(fd >= 0, "cannot write ", tmp, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw BadInput(cat("cannot write ", path, ": ", std::strerror(err), " (the previous file is kept)"));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const int sync_err = errno;
  ::close(fd);
  if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = synced ? errno : sync_err;
    ::unlink(tmp.c_str());
    throw BadInput(cat("cannot write ", path, ": ", std::strerror(err), " (the previous file is kept)"));
  }
}

bool is_gzip(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

std::string gunzip(const std::string& bytes, const std::string& name) {
  z_stream zs{};
  XFER_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "zlib init failed for ", name);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  std::string out;
  out.resize(std::max<size_t>(bytes.size() * 4, 1 << 16));
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (zs.total_out == out.size()) out.resize(out.size() * 2);
    zs.next_out = reinterpret_cast<Bytef*>(&out[zs.total_out]);
    zs.avail_out = static_cast<uInt>(out.size() - zs.total_out);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
      inflateEnd(&zs);
      throw BadInput(cat(name, ": truncated gzip stream (ends after ", bytes.size(), " bytes)"));
    }
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      throw BadInput(cat(name, ": corrupt gzip stream (", msg, ")"));
    }
  }
  out.resize(zs.total_out);
  inflateEnd(&zs);
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

void write_json_file(const std::string& path, const nlohmann::json& value) {
  write_file_atomic(path, value.dump(2) + "\n");
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  XFER_CHECK(!ec, "cannot create directory ", path, ": ", ec.message());
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
