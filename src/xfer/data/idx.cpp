#include "xfer/data/idx.h"

#include <unistd.h>

#include <cstring>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace xfer {
namespace {

struct IdxType {
  uint8_t code;
  torch::ScalarType dtype;
  size_t bytes;
};

constexpr IdxType kTypes[] = {
    {0x08, torch::kUInt8, 1}, {0x09, torch::kInt8, 1},    {0x0B, torch::kInt16, 2},
    {0x0C, torch::kInt32, 4}, {0x0D, torch::kFloat32, 4}, {0x0E, torch::kFloat64, 8},
};

uint32_t read_be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void swap_bytes(char* data, size_t count, size_t width) {
  if (width == 1) return;
  for (size_t i = 0; i < count; ++i) std::reverse(data + i * width, data + (i + 1) * width);
}

}  // namespace

namespace {
/// The bytes an IDX file of this header declares (header included), or 0 when `head` is too short to say.
/// A gzipped file is inflated only that far: a gzip bomb of a few MB must not expand to gigabytes first.
size_t idx_declared_size(const std::string& head) {
  const auto* p = reinterpret_cast<const unsigned char*>(head.data());
  if (head.size() < 4) return 0;
  size_t width = 0;
  for (const auto& t : kTypes)
    if (t.code == p[2]) width = t.bytes;
  const size_t header = 4 + 4 * static_cast<size_t>(p[3]);
  if (width == 0 || head.size() < header) return 0;
  size_t count = 1;
  for (int d = 0; d < p[3]; ++d) {
    const uint32_t dim = read_be32(p + 4 + 4 * d);
    if (dim > 0x7fffffffu || (dim != 0 && count > (size_t(1) << 40) / dim)) return 0;
    count *= dim;
  }
  return header + count * width;
}
}  // namespace

IdxArray parse_idx(const std::string& raw, const std::string& name) {
  std::string bytes;
  if (is_gzip(raw)) {
    // Inflate the header, then exactly what it declares (one byte more shows trailing data).
    const size_t declared = idx_declared_size(gunzip(raw, name, 4 + 4 * 255, /*prefix_only=*/true));
    const double memory =
        static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
    XFER_CHECK(memory <= 0 || static_cast<double>(declared) <= memory / 2, name, ": the IDX header declares ",
               declared, " bytes, more than half of this machine's memory");
    bytes = declared == 0 ? gunzip(raw, name, 4 + 4 * 255, true) : gunzip(raw, name, declared + 1, true);
    XFER_CHECK(bytes.size() <= declared || declared == 0, name, ": the gzip stream holds more than the ",
               declared, " bytes its IDX header declares");
  } else {
    bytes = raw;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  XFER_CHECK(bytes.size() >= 4, name, ": not an IDX file (", bytes.size(), " bytes, the header needs 4)");
  XFER_CHECK(p[0] == 0 && p[1] == 0, name, ": not an IDX file (bad magic bytes 0x", std::hex, int(p[0]),
             " 0x", int(p[1]), ", expected 0x0 0x0)");
  const IdxType* type = nullptr;
  for (const auto& t : kTypes)
    if (t.code == p[2]) type = &t;
  XFER_CHECK(type != nullptr, name, ": unknown IDX type code 0x", std::hex, int(p[2]),
             " (valid: 0x08 0x09 0x0b 0x0c 0x0d 0x0e)");
  const int ndims = p[3];
  XFER_CHECK(ndims >= 1, name, ": IDX header declares 0 dimensions");
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  XFER_CHECK(bytes.size() >= header, name, ": truncated IDX header (", bytes.size(), " bytes, needs ", header,
             " for ", ndims, " dimensions)");

  IdxArray out;
  size_t count = 1;
  for (int d = 0; d < ndims; ++d) {
    const uint32_t dim = read_be32(p + 4 + 4 * d);
    XFER_CHECK(dim <= 0x7fffffffu, name, ": dimension ", d, " is negative or too large (", dim, ")");
    out.dims.push_back(dim);
    XFER_CHECK(dim == 0 || count <= (size_t(1) << 40) / dim, name, ": IDX dimensions are implausibly large");
    count *= dim;
  }
  const size_t expected = header + count * type->bytes;
  XFER_CHECK(bytes.size() >= expected, name, ": truncated IDX data (", bytes.size() - header,
             " bytes of data, the header declares ", count * type->bytes, ")");
  XFER_CHECK(bytes.size() == expected, name, ": ", bytes.size() - expected,
             " trailing bytes after the IDX data the header declares");

  out.data = torch::empty(out.dims, torch::TensorOptions().dtype(type->dtype));
  if (count == 0) return out;  // an empty array has no storage to copy into
  char* dst = static_cast<char*>(out.data.data_ptr());
  std::memcpy(dst, bytes.data() + header, count * type->bytes);
  swap_bytes(dst, count, type->bytes);  // IDX is big-endian; this code targets little-endian hosts
  return out;
}

IdxArray read_idx(const std::string& path) {
  return parse_idx(read_file(path), path);
}

std::string encode_idx(const torch::Tensor& data) {
  const IdxType* type = nullptr;
  for (const auto& t : kTypes)
    if (t.dtype == data.scalar_type()) type = &t;
  XFER_CHECK(type != nullptr, "encode_idx: unsupported dtype ", data.scalar_type());
  XFER_CHECK(data.dim() >= 1 && data.dim() <= 255, "encode_idx: bad number of dimensions ", data.dim());
  std::string out = {0, 0, static_cast<char>(type->code), static_cast<char>(data.dim())};
  for (int64_t d : data.sizes()) {
    const auto v = static_cast<uint32_t>(d);
    out += {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
            static_cast<char>(v)};
  }
  const torch::Tensor c = data.contiguous();
  std::string body(static_cast<const char*>(c.data_ptr()), c.numel() * type->bytes);
  swap_bytes(body.data(), c.numel(), type->bytes);
  return out + body;
}

}  // namespace xfer
