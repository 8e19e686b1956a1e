#include "xfer/data/mat.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace xfer {
namespace {

// Data types of MAT v5 elements.
enum : uint32_t {
  kMiInt8 = 1,
  kMiUint8 = 2,
  kMiInt16 = 3,
  kMiUint16 = 4,
  kMiInt32 = 5,
  kMiUint32 = 6,
  kMiSingle = 7,
  kMiDouble = 9,
  kMiInt64 = 12,
  kMiUint64 = 13,
  kMiMatrix = 14,
  kMiCompressed = 15,
  kMiUtf8 = 16,
  kMiUtf16 = 17,
  kMiUtf32 = 18,
};
// Array classes (the low byte of the array flags).
enum : uint32_t {
  kMxCell = 1,
  kMxStruct = 2,
  kMxObject = 3,
  kMxChar = 4,
  kMxSparse = 5,
  kMxDouble = 6,
  kMxSingle = 7,
  kMxInt8 = 8,
  kMxUint8 = 9,
  kMxInt16 = 10,
  kMxUint16 = 11,
  kMxInt32 = 12,
  kMxUint32 = 13,
  kMxInt64 = 14,
  kMxUint64 = 15,
};
constexpr int kMatMaxDepth = 32;
// Deflate cannot expand input by more than about 1032:1; a larger declared size is a lie (or a bomb).
constexpr size_t kMatMaxInflateRatio = 1032;

const char* mat_class_name(uint32_t c, bool logical) {
  if (logical) return "logical";
  static const char* names[] = {"?",    "cell",  "struct", "object", "char",  "sparse", "double", "single",
                                "int8", "uint8", "int16",  "uint16", "int32", "uint32", "int64",  "uint64"};
  return c < 16 ? names[c] : "?";
}

size_t mat_type_size(uint32_t type) {
  switch (type) {
    case kMiInt8:
    case kMiUint8:
    case kMiUtf8:
      return 1;
    case kMiInt16:
    case kMiUint16:
    case kMiUtf16:
      return 2;
    case kMiInt32:
    case kMiUint32:
    case kMiSingle:
    case kMiUtf32:
      return 4;
    case kMiDouble:
    case kMiInt64:
    case kMiUint64:
      return 8;
    default:
      return 0;
  }
}

template <class T>
T mat_load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // little-endian files on little-endian hosts
  return v;
}

/// One data element: its type and a view of its bytes.
struct MatElement {
  uint32_t type = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;
};

/// Reads consecutive data elements from a byte range, every length checked against it.
class MatReader {
 public:
  MatReader(const uint8_t* p, size_t n, const std::string& name) : p_(p), n_(n), name_(name) {}
  bool done() const { return pos_ == n_; }
  size_t left() const { return n_ - pos_; }

  /// The next element; `top` elements may be miCOMPRESSED, which are not padded.
  MatElement next(const std::string& what) {
    XFER_CHECK(left() >= 8, name_, ": truncated MAT data (", left(), " bytes left where the tag of ", what,
               " needs 8)");
    const uint32_t first = mat_load<uint32_t>(p_ + pos_);
    MatElement e;
    if ((first >> 16) != 0) {  // small element: count in the high half, up to 4 data bytes inline
      e.type = first & 0xffff;
      e.size = first >> 16;
      XFER_CHECK(e.size <= 4, name_, ": small data element of ", what, " declares ", e.size,
                 " bytes (at most 4 fit)");
      e.data = p_ + pos_ + 4;
      pos_ += 8;
      return e;
    }
    e.type = first;
    e.size = mat_load<uint32_t>(p_ + pos_ + 4);
    XFER_CHECK(e.size <= left() - 8, name_, ": ", what, " declares ", e.size, " bytes but only ", left() - 8,
               " are left in the file");
    e.data = p_ + pos_ + 8;
    size_t step = 8 + e.size;
    if (e.type != kMiCompressed) step = std::min(left(), (step + 7) / 8 * 8);  // 8-byte padding
    pos_ += step;
    return e;
  }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  const std::string& name_;
};

/// Inflates a zlib stream into at most `limit` bytes.
std::string mat_inflate(const uint8_t* src, size_t n, size_t limit, const std::string& name) {
  z_stream zs{};
  XFER_CHECK(inflateInit(&zs) == Z_OK, name, ": zlib init failed");
  std::string out(limit, '\0');
  zs.next_in = const_cast<Bytef*>(src);
  zs.avail_in = static_cast<uInt>(n);
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(limit);
  int rc = Z_OK;
  while (rc == Z_OK && zs.avail_out > 0) rc = inflate(&zs, Z_NO_FLUSH);
  const size_t got = zs.total_out;
  const std::string msg = zs.msg ? zs.msg : "";
  inflateEnd(&zs);
  XFER_CHECK(rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR, name,
             ": corrupt compressed MAT element (", msg.empty() ? cat("zlib error ", rc) : msg, ")");
  out.resize(got);
  return out;
}

std::string mat_utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// Characters of a char array as UTF-8; `count` returns how many characters there were.
std::string mat_text(const MatElement& e, size_t& count, const std::string& what, const std::string& name) {
  std::string out;
  if (e.type == kMiUtf8 || e.type == kMiUint8 || e.type == kMiInt8) {
    out.assign(reinterpret_cast<const char*>(e.data), e.size);
    check_utf8(out, cat(name, ": ", what));
    count = 0;
    for (unsigned char c : out) count += (c & 0xC0) != 0x80;  // code points, as MATLAB counts characters
    return out;
  }
  if (e.type == kMiUint16 || e.type == kMiUtf16) {
    XFER_CHECK(e.size % 2 == 0, name, ": ", what, " holds an odd number of UTF-16 bytes (", e.size, ")");
    count = e.size / 2;
    for (size_t i = 0; i < count; ++i) {
      uint32_t u = mat_load<uint16_t>(e.data + 2 * i);
      if (u >= 0xD800 && u < 0xDC00 && i + 1 < count) {
        const uint32_t lo = mat_load<uint16_t>(e.data + 2 * (i + 1));
        if (lo >= 0xDC00 && lo < 0xE000) {
          u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);  // dimensions count UTF-16 units, as MATLAB
          ++i;
        }
      }
      if (u >= 0xD800 && u < 0xE000) u = 0xFFFD;  // a lone surrogate
      out += mat_utf8_of(u);
    }
    return out;
  }
  throw BadInput(cat(name, ": ", what, " stores characters as data type ", e.type,
                     " (supported: UTF-8, UTF-16, uint8, uint16)"));
}

/// Appends the values of a numeric element, converted to double.
void mat_numbers(const MatElement& e, std::vector<double>& out, const std::string& what,
                 const std::string& name) {
  const size_t w = mat_type_size(e.type);
  XFER_CHECK(w > 0 && e.type != kMiUtf8 && e.type != kMiUtf16 && e.type != kMiUtf32, name, ": ", what,
             " has numeric data of unknown type ", e.type);
  XFER_CHECK(e.size % w == 0, name, ": ", what, " holds ", e.size, " bytes, not a whole number of ", w,
             "-byte values");
  const size_t n = e.size / w;
  out.reserve(out.size() + n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = e.data + i * w;
    double v = 0;
    switch (e.type) {
      case kMiInt8:
        v = mat_load<int8_t>(p);
        break;
      case kMiUint8:
        v = mat_load<uint8_t>(p);
        break;
      case kMiInt16:
        v = mat_load<int16_t>(p);
        break;
      case kMiUint16:
        v = mat_load<uint16_t>(p);
        break;
      case kMiInt32:
        v = mat_load<int32_t>(p);
        break;
      case kMiUint32:
        v = mat_load<uint32_t>(p);
        break;
      case kMiSingle:
        v = mat_load<float>(p);
        break;
      case kMiDouble:
        v = mat_load<double>(p);
        break;
      case kMiInt64:
        v = static_cast<double>(mat_load<int64_t>(p));
        break;
      case kMiUint64:
        v = static_cast<double>(mat_load<uint64_t>(p));
        break;
    }
    out.push_back(v);
  }
}

MatArray mat_parse_matrix(const MatElement& e, int depth, std::string* var_name, const std::string& what,
                          const std::string& name);

/// The variable or cell/field value in element `e` (a miMATRIX).
MatArray mat_parse_value(const MatElement& e, int depth, const std::string& what, const std::string& name) {
  XFER_CHECK(e.type == kMiMatrix, name, ": ", what, " is a data element of type ", e.type,
             " where an array (miMATRIX, 14) belongs");
  return mat_parse_matrix(e, depth, nullptr, what, name);
}

MatArray mat_parse_matrix(const MatElement& e, int depth, std::string* var_name, const std::string& what,
                          const std::string& name) {
  XFER_CHECK(depth <= kMatMaxDepth, name, ": arrays nested more than ", kMatMaxDepth, " deep");
  MatArray a;
  if (e.size == 0) {  // an empty array (MATLAB writes [] in cells this way)
    a.mclass = "double";
    a.dims = {0, 0};
    return a;
  }
  MatReader r(e.data, e.size, name);
  const MatElement flags = r.next(what + " (array flags)");
  XFER_CHECK(flags.type == kMiUint32 && flags.size == 8, name, ": ", what,
             " has malformed array flags (type ", flags.type, ", ", flags.size,
             " bytes; expected uint32, 8)");
  const uint32_t f = mat_load<uint32_t>(flags.data);
  const uint32_t cls = f & 0xff;
  const bool complex = (f & 0x800) != 0, logical = (f & 0x200) != 0;
  XFER_CHECK(cls >= kMxCell && cls <= kMxUint64 && cls != kMxObject && cls != kMxSparse, name, ": ", what,
             " is of array class ", cls, " (", mat_class_name(cls, false),
             "); supported: numeric, logical, char, ", "cell, struct");
  a.mclass = mat_class_name(cls, logical);

  const MatElement dims = r.next(what + " (dimensions)");
  XFER_CHECK(dims.type == kMiInt32 && dims.size >= 8 && dims.size % 4 == 0, name, ": ", what,
             " has malformed dimensions (type ", dims.type, ", ", dims.size, " bytes)");
  int64_t numel = 1;
  for (size_t i = 0; i < dims.size / 4; ++i) {
    const int32_t d = mat_load<int32_t>(dims.data + 4 * i);
    XFER_CHECK(d >= 0, name, ": ", what, " has a negative dimension ", d);
    a.dims.push_back(d);
    XFER_CHECK(d == 0 || numel <= (int64_t(1) << 40) / d, name, ": ", what,
               " has implausibly large dimensions");
    numel *= d;
  }
  const MatElement nm = r.next(what + " (name)");
  XFER_CHECK(nm.type == kMiInt8 || nm.type == kMiUint8, name, ": ", what, " has a name of data type ",
             nm.type);
  const std::string array_name(reinterpret_cast<const char*>(nm.data), nm.size);
  if (var_name) {
    check_utf8(array_name, cat(name, ": a variable name"));
    *var_name = array_name;
  }
  const std::string me = var_name ? cat("variable '", printable(array_name), "'") : what;

  if (cls == kMxCell) {
    a.kind = MatArray::Kind::kCell;
    // Every cell is an element with an 8-byte tag: more cells than that cannot be there.
    XFER_CHECK(static_cast<size_t>(numel) <= r.left() / 8, name, ": ", me, " declares ", numel,
               " cells but holds ", r.left(), " bytes");
    a.elements.reserve(static_cast<size_t>(numel));
    for (int64_t i = 0; i < numel; ++i)
      a.elements.push_back(
          mat_parse_value(r.next(cat(me, " cell ", i)), depth + 1, cat(me, " cell ", i), name));
    return a;
  }
  if (cls == kMxStruct) {
    a.kind = MatArray::Kind::kStruct;
    const MatElement len = r.next(me + " (field name length)");
    XFER_CHECK(len.type == kMiInt32 && len.size == 4, name, ": ", me, " has a malformed field name length");
    const int32_t flen = mat_load<int32_t>(len.data);
    XFER_CHECK(flen > 0 && flen <= 4096, name, ": ", me, " has field names of length ", flen);
    const MatElement names = r.next(me + " (field names)");
    XFER_CHECK(names.type == kMiInt8 && names.size % static_cast<size_t>(flen) == 0, name, ": ", me,
               " has malformed field names (", names.size, " bytes for names of ", flen, ")");
    for (size_t i = 0; i < names.size / flen; ++i) {
      const char* p = reinterpret_cast<const char*>(names.data) + i * flen;
      a.fields.emplace_back(p, strnlen(p, static_cast<size_t>(flen)));
      check_utf8(a.fields.back(), cat(name, ": a field name of ", me));
    }
    const size_t total = static_cast<size_t>(numel) * a.fields.size();
    XFER_CHECK(a.fields.empty() || static_cast<size_t>(numel) <= r.left() / 8 / a.fields.size(), name, ": ",
               me, " declares ", numel, " elements of ", a.fields.size(), " fields but holds ", r.left(),
               " bytes");
    a.elements.reserve(total);
    // A struct with no fields holds nothing per element, however many elements its dimensions declare.
    if (a.fields.empty()) return a;
    for (int64_t i = 0; i < numel; ++i)
      for (const auto& field : a.fields) {
        const std::string w = cat(me, "(", i + 1, ").", field);
        a.elements.push_back(mat_parse_value(r.next(w), depth + 1, w, name));
      }
    return a;
  }
  if (cls == kMxChar) {
    a.kind = MatArray::Kind::kChar;
    const MatElement chars = r.next(me + " (characters)");
    size_t count = 0;
    a.text = mat_text(chars, count, me, name);
    XFER_CHECK(static_cast<int64_t>(count) == numel, name, ": ", me, " holds ", count,
               " characters but its dimensions say ", numel);
    return a;
  }
  a.kind = MatArray::Kind::kNumeric;
  mat_numbers(r.next(me + " (real part)"), a.values, me, name);
  XFER_CHECK(static_cast<int64_t>(a.values.size()) == numel, name, ": ", me, " holds ", a.values.size(),
             " values but its dimensions say ", numel);
  if (complex) r.next(me + " (imaginary part)");  // only the real part is kept
  return a;
}

}  // namespace

int64_t MatArray::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

const MatArray& MatArray::field(int64_t i, const std::string& name, const std::string& what) const {
  XFER_CHECK(kind == Kind::kStruct, what, " is a ", mclass, " array, not a struct");
  XFER_CHECK(i >= 0 && i < numel(), what, " has ", numel(), " elements, no element ", i + 1);
  const auto it = std::find(fields.begin(), fields.end(), name);
  XFER_CHECK(it != fields.end(), what, " has no field '", name, "'");
  return elements.at(static_cast<size_t>(i) * fields.size() + static_cast<size_t>(it - fields.begin()));
}

std::map<std::string, MatArray> parse_mat(const std::string& bytes, const std::string& name) {
  XFER_CHECK(bytes.rfind("MATLAB 7.3", 0) != 0, name,
             ": a MAT v7.3 (HDF5) file; save it as version 5/7 (MATLAB `save -v7`, scipy.io.savemat)");
  XFER_CHECK(bytes.size() >= 128, name, ": not a MAT file (", bytes.size(), " bytes, the header needs 128)");
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  XFER_CHECK(p[126] == 'I' && p[127] == 'M', name,
             p[126] == 'M' && p[127] == 'I' ? ": a big-endian MAT file, which is not supported"
                                            : ": not a MAT v5 file (no endian mark \"IM\" at byte 126)");
  XFER_CHECK(mat_load<uint16_t>(p + 124) == 0x0100, name, ": MAT version 0x", std::hex,
             mat_load<uint16_t>(p + 124), ", expected 0x100 (version 5)");
  std::map<std::string, MatArray> vars;
  MatReader top(p + 128, bytes.size() - 128, name);
  while (!top.done()) {
    MatElement e = top.next("a variable");
    std::string buf;  // an inflated variable; `e` points into it
    if (e.type == kMiCompressed) {
      // Inflate the tag first, then exactly what it declares: never more than deflate can expand to.
      const std::string head = mat_inflate(e.data, e.size, 8, name);
      XFER_CHECK(head.size() == 8, name, ": a compressed variable inflates to ", head.size(),
                 " bytes, less than a tag");
      const uint64_t declared = mat_load<uint32_t>(reinterpret_cast<const uint8_t*>(head.data()) + 4);
      XFER_CHECK(declared + 8 <= kMatMaxInflateRatio * e.size + 64, name, ": a compressed variable of ",
                 e.size, " bytes declares ", declared, " bytes, more than deflate can expand it to");
      buf = mat_inflate(e.data, e.size, 8 + declared, name);
      XFER_CHECK(buf.size() == 8 + declared, name, ": a compressed variable inflates to ", buf.size(),
                 " bytes but its tag declares ", 8 + declared, " (truncated)");
      MatReader inner(reinterpret_cast<const uint8_t*>(buf.data()), buf.size(), name);
      e = inner.next("a compressed variable");
    }
    if (e.type != kMiMatrix) continue;  // other top-level elements carry no variables
    std::string var;
    MatArray a = mat_parse_matrix(e, 0, &var, "a variable", name);
    vars[var] = std::move(a);
  }
  return vars;
}

std::map<std::string, MatArray> read_mat(const std::string& path) {
  return parse_mat(read_file(path), path);
}

}  // namespace xfer
