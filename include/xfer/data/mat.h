#pragma once
/// MATLAB MAT-files, version 5 (what MATLAB's `save -v7` and scipy.io.savemat write): the numeric, logical,
/// char, cell and struct arrays of its variables, with compressed (miCOMPRESSED) variables inflated. Enough
/// for the annotation files of Flowers-102 (imagelabels.mat, setid.mat) and Stanford Cars (the devkit's
/// struct arrays and class names).
///
/// Layout: a 128-byte header (text, subsystem offset, version 0x0100, endian mark "IM" for little-endian),
/// then data elements, each an 8-byte tag (u32 type, u32 byte count; or the "small element" form, count
/// and type in one u32 and up to 4 data bytes in the next) and its data padded to 8 bytes. A variable is a
/// miMATRIX element: array flags (class), dimensions, name, then the class's own sub-elements.
///
/// Hostile files: every length is checked against the bytes really there; a compressed element may not
/// declare more than deflate can expand its bytes to (1032:1); nesting is at most 32 deep. Sparse arrays,
/// objects, big-endian and v7.3 (HDF5) files are refused with one line naming the file.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace xfer {

/// One MATLAB array.
struct MatArray {
  enum class Kind { kNumeric, kChar, kCell, kStruct };
  Kind kind = Kind::kNumeric;
  std::string mclass;          // "double", "uint8", "logical", "char", "cell", "struct", ...
  std::vector<int64_t> dims;   // at least 2
  std::vector<double> values;  // numeric and logical arrays: the real part, column-major
  std::string text;            // char arrays: UTF-8, column-major (a 1xN row is the string)
  std::vector<MatArray>
      elements;  // cells, column-major; structs: element i's field f at i * fields.size() + f
  std::vector<std::string> fields;  // structs: the field names

  int64_t numel() const;
  /// Struct element i's field `name`; BadInput naming `what` when the array is not a struct, i is out of
  /// range or the field is missing.
  const MatArray& field(int64_t i, const std::string& name, const std::string& what) const;
};

/// The variables of MAT v5 bytes, by name. `name` names the file in errors.
std::map<std::string, MatArray> parse_mat(const std::string& bytes, const std::string& name);
/// Reads and parses a MAT file.
std::map<std::string, MatArray> read_mat(const std::string& path);

}  // namespace xfer
