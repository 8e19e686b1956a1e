#pragma once
/// The IDX file format (LeCun's MNIST format, also Fashion-MNIST), raw or gzip-compressed.
///
/// Layout: two zero bytes, a type code (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64),
/// the number of dimensions, then each dimension as a big-endian int32, then the data, big-endian,
/// row-major. Every field is validated; errors name the file and say what is wrong.
#include <string>
#include <vector>

#include <torch/types.h>

namespace xfer {

struct IdxArray {
  std::vector<int64_t> dims;
  torch::Tensor data;  // dtype from the type code, shape `dims`, native byte order
};

/// Parses IDX bytes (gzip is detected and inflated). `name` is the file name used in errors.
IdxArray parse_idx(const std::string& bytes, const std::string& name);
/// Reads and parses an IDX file.
IdxArray read_idx(const std::string& path);

/// Serialises an array as raw IDX bytes (for tests and for users exporting data).
std::string encode_idx(const torch::Tensor& data);

}  // namespace xfer
