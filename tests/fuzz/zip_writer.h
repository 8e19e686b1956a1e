#pragma once
/// A zip archive of stored (uncompressed) entries, as torch.save writes them: for the pickle fuzz target and
/// the hostile-input tests, which wrap a crafted data.pkl in a well-formed archive so that the pickle reader,
/// not the archive check, is what they reach.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <zlib.h>

namespace xfer::fuzz {

inline std::string stored_zip(const std::vector<std::pair<std::string, std::string>>& entries) {
  auto le = [](std::string& out, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  std::string out, directory;
  for (const auto& [name, data] : entries) {
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    const uint64_t offset = out.size();
    le(out, 0x04034b50, 4), le(out, 20, 2), le(out, 0, 2), le(out, 0, 2), le(out, 0, 4), le(out, crc, 4);
    le(out, data.size(), 4), le(out, data.size(), 4), le(out, name.size(), 2), le(out, 0, 2);
    out += name + data;
    le(directory, 0x02014b50, 4), le(directory, 20, 2), le(directory, 20, 2), le(directory, 0, 2);
    le(directory, 0, 2), le(directory, 0, 4), le(directory, crc, 4), le(directory, data.size(), 4);
    le(directory, data.size(), 4), le(directory, name.size(), 2), le(directory, 0, 2), le(directory, 0, 2);
    le(directory, 0, 2), le(directory, 0, 2), le(directory, 0, 4), le(directory, offset, 4);
    directory += name;
  }
  const uint64_t at = out.size();
  out += directory;
  le(out, 0x06054b50, 4), le(out, 0, 2), le(out, 0, 2), le(out, entries.size(), 2),
      le(out, entries.size(), 2);
  le(out, directory.size(), 4), le(out, at, 4), le(out, 0, 2);
  return out;
}

}  // namespace xfer::fuzz
