#include "xfer/models/pickle.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"

namespace xfer {
namespace {

uint64_t zip_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

/// Whether [offset, offset + length) lies inside `size` bytes, without overflow.
bool zip_fits(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace

bool TorchZip::looks_like_zip(const std::string& bytes) {
  return bytes.rfind("PK\x03\x04", 0) == 0;
}

TorchZip::TorchZip(const std::string& bytes, const std::string& name) : name_(name) {
  const uint64_t size = bytes.size();
  const char* b = bytes.data();
  // The end-of-central-directory record: the last 22 bytes, or before a comment of up to 65535 bytes.
  uint64_t eocd = size;
  for (uint64_t back = 22; back <= std::min<uint64_t>(size, 22 + 65535) && eocd == size; ++back)
    if (zip_le(b + size - back, 4) == 0x06054b50) eocd = size - back;
  XFER_CHECK(eocd < size, name, ": not a zip archive (no end-of-directory record)");
  uint64_t count = zip_le(b + eocd + 10, 2), cd_size = zip_le(b + eocd + 12, 4),
           cd_offset = zip_le(b + eocd + 16, 4);
  if (count == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff) {  // zip64
    XFER_CHECK(eocd >= 20 && zip_le(b + eocd - 20, 4) == 0x07064b50, name, ": truncated zip64 directory");
    const uint64_t z = zip_le(b + eocd - 20 + 8, 8);
    XFER_CHECK(zip_fits(z, 56, size) && zip_le(b + z, 4) == 0x06064b50, name, ": bad zip64 directory record");
    count = zip_le(b + z + 32, 8), cd_size = zip_le(b + z + 40, 8), cd_offset = zip_le(b + z + 48, 8);
  }
  XFER_CHECK(zip_fits(cd_offset, cd_size, size) && count <= cd_size / 46, name, ": the zip directory (",
             count, " entries at byte ", cd_offset, ") lies outside the file");
  uint64_t pos = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    XFER_CHECK(zip_fits(pos, 46, cd_offset + cd_size) && zip_le(b + pos, 4) == 0x02014b50, name,
               ": zip directory entry ", i, " is malformed");
    const uint64_t method = zip_le(b + pos + 10, 2), name_len = zip_le(b + pos + 28, 2),
                   extra_len = zip_le(b + pos + 30, 2), comment_len = zip_le(b + pos + 32, 2);
    uint64_t packed = zip_le(b + pos + 20, 4), length = zip_le(b + pos + 24, 4),
             local = zip_le(b + pos + 42, 4);
    XFER_CHECK(zip_fits(pos + 46, name_len + extra_len + comment_len, cd_offset + cd_size), name,
               ": zip directory entry ", i, " runs past the directory");
    const std::string entry(b + pos + 46, name_len);
    // zip64 sizes and offset, in this order, for the fields that hold 0xffffffff.
    for (uint64_t x = pos + 46 + name_len; x + 4 <= pos + 46 + name_len + extra_len;) {
      const uint64_t id = zip_le(b + x, 2), n = zip_le(b + x + 2, 2);
      XFER_CHECK(x + 4 + n <= pos + 46 + name_len + extra_len, name, ": bad extra field in zip entry ",
                 entry);
      uint64_t at = x + 4;
      for (uint64_t* field : {&length, &packed, &local})
        if (id == 0x0001 && *field == 0xffffffff) {
          XFER_CHECK(at + 8 <= x + 4 + n, name, ": short zip64 field in entry ", entry);
          *field = zip_le(b + at, 8);
          at += 8;
        }
      x += 4 + n;
    }
    XFER_CHECK((method == 0 && packed == length) || method == 8, name, ": zip entry ", entry, " uses method ",
               method, "; torch.save and torch.jit.save store entries or deflate them");
    XFER_CHECK(zip_fits(local, 30, size) && zip_le(b + local, 4) == 0x04034b50, name, ": zip entry ", entry,
               " points outside the file");
    const uint64_t data = local + 30 + zip_le(b + local + 26, 2) + zip_le(b + local + 28, 2);
    XFER_CHECK(zip_fits(data, packed, size), name, ": zip entry ", entry, " (", packed,
               " bytes) runs past the file");
    XFER_CHECK(entries_.emplace(entry, Entry{std::string_view(b + data, packed), method, length}).second,
               name, ": zip entry ", entry, " appears twice");
    if (i == 0) prefix_ = entry.substr(0, entry.find('/') + 1);
    pos += 46 + name_len + extra_len + comment_len;
  }
  XFER_CHECK(!entries_.empty(), name, ": an empty zip archive");
}

std::string TorchZip::read(const std::string& entry, size_t max_bytes) const {
  auto it = entries_.find(entry);
  XFER_CHECK(it != entries_.end(), name_, ": the archive has no ", entry);
  const Entry& e = it->second;
  XFER_CHECK(e.length <= max_bytes, name_, ": zip entry ", entry, " declares ", e.length, " bytes; at most ",
             max_bytes, " are read");
  if (e.method == 0) return std::string(e.data);
  // Deflate expands at most 1032-fold: a larger declared length is a lie, refused before it is allocated.
  XFER_CHECK(e.length <= e.data.size() * 1032 + 64, name_, ": zip entry ", entry, " declares ", e.length,
             " bytes from ", e.data.size(), " deflated ones");
  // Raw deflate, inflated into exactly the declared length: a stream that holds more or less is refused.
  std::string out(static_cast<size_t>(e.length) + 1, '\0');
  z_stream zs{};
  XFER_CHECK(inflateInit2(&zs, -MAX_WBITS) == Z_OK, "zlib init failed for ", name_);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(e.data.data()));
  zs.avail_in = static_cast<uInt>(std::min<size_t>(e.data.size(), 1u << 30));
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(std::min<size_t>(out.size(), 1u << 30));
  const int rc = inflate(&zs, Z_FINISH);
  const uint64_t produced = zs.total_out;
  inflateEnd(&zs);
  XFER_CHECK(rc == Z_STREAM_END && produced == e.length, name_, ": zip entry ", entry,
             " does not inflate to the ", e.length, " bytes it declares");
  out.resize(static_cast<size_t>(produced));
  return out;
}

std::vector<std::string> TorchZip::names() const {
  std::vector<std::string> out;
  for (const auto& [n, v] : entries_) out.push_back(n);
  return out;
}

namespace {

/// A model of LibTorch's unpickler: the same opcodes, stack, marks and memo, with values reduced to what the
/// checks need. Values live in one arena and refer to each other by index, so a pickle that puts a list
/// into itself makes no reference cycle and nothing walks values recursively.
class PickleMachine {
 public:
  enum Kind : uint8_t {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kObject,
    kCall,
    kPersid
  };
  struct Value {
    Kind kind = kNone;
    int64_t i = 0;
    std::string s;  // a string; a global's "module.name"
    std::vector<uint32_t>
        items;  // tuple/list elements; dict keys and values, alternating; call: {global, args}
  };

  /// `allowed`: when given, the only globals the pickle may name (anything else is refused where it is
  /// named), and the pickle is never handed to LibTorch, so opcodes LibTorch lacks but Python's pickler
  /// writes (APPEND) are taken too.
  PickleMachine(std::string_view in, std::string what, const std::set<std::string>* allowed = nullptr)
      : in_(in), what_(std::move(what)), allowed_(allowed) {}

  /// Runs to STOP; returns the one value left.
  uint32_t run() {
    XFER_CHECK(in_.size() <= kMaxBytes, what_, ": a pickle of ", in_.size(), " bytes; at most ", kMaxBytes,
               " are read");
    XFER_CHECK(byte() == 0x80 && byte() == 2, what_, ": not a pickle of protocol 2 (what torch.save writes)");
    while (true) {
      op_ = pos_;
      const char op = static_cast<char>(byte());
      if (op == '.') break;
      step(op);
    }
    fail_if(stack_.size() != 1 || !marks_.empty(), "STOP leaves ", stack_.size(), " values and ",
            marks_.size(), " marks; expected one value");
    fail_if(pos_ != in_.size(), in_.size() - pos_, " bytes after STOP");
    return stack_.back();
  }

  const Value& at(uint32_t v) const { return values_[v]; }
  /// The text of `v` when it is a string, a global or an int, for messages.
  std::string text(uint32_t v) const {
    const Value& x = values_[v];
    return x.kind == kStr || x.kind == kGlobal ? printable(x.s.substr(0, 80))
           : x.kind == kInt                    ? std::to_string(x.i)
                                               : "";
  }

 private:
  static constexpr size_t kMaxBytes = size_t(64) << 20;
  static constexpr size_t kMaxValues = size_t(1) << 22;

  template <class... Args>
  void fail_if(bool bad, const Args&... args) const {
    if (bad) throw BadInput(cat(what_, ": malformed pickle at byte ", op_, ": ", args...));
  }
  uint8_t byte() {
    fail_if(pos_ >= in_.size(), "it ends without STOP");
    return static_cast<uint8_t>(in_[pos_++]);
  }
  uint64_t le(int n) {
    fail_if(in_.size() - pos_ < static_cast<size_t>(n), "it ends inside an opcode's argument");
    const uint64_t v = zip_le(in_.data() + pos_, n);
    pos_ += static_cast<size_t>(n);
    return v;
  }
  std::string bytes(uint64_t n) {
    fail_if(n > in_.size() - pos_, "a string of ", n, " bytes runs past the end");
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  std::string line() {
    const size_t end = in_.find('\n', pos_);
    fail_if(end == std::string_view::npos || end - pos_ > 256, "a GLOBAL name without its newline");
    std::string s(in_.substr(pos_, end - pos_));
    pos_ = end + 1;
    for (char c : s)
      fail_if(static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e,
              "a GLOBAL name with a control or non-ASCII byte");
    return s;
  }
  uint32_t make(Kind kind, int64_t i = 0, std::string s = {}, std::vector<uint32_t> items = {}) {
    fail_if(values_.size() >= kMaxValues, "more than ", kMaxValues, " values");
    values_.push_back({kind, i, std::move(s), std::move(items)});
    return static_cast<uint32_t>(values_.size() - 1);
  }
  void push(uint32_t v) { stack_.push_back(v); }
  /// The values above the innermost mark: what an opcode may pop.
  size_t poppable() const { return stack_.size() - (marks_.empty() ? 0 : marks_.back()); }
  static std::string name(char op) {
    const auto c = static_cast<unsigned char>(op);
    char buf[8];
    std::snprintf(buf, sizeof buf, c > 0x20 && c < 0x7f ? "'%c'" : "0x%02x", c);
    return buf;
  }
  void need(size_t n, char op) const {
    fail_if(poppable() < n, "opcode ", name(op), " needs ", n, " values, ", poppable(), " there");
  }
  uint32_t pop() {
    const uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  /// Pops the values above the innermost mark and the mark.
  std::vector<uint32_t> pop_mark(char op) {
    fail_if(marks_.empty(), "opcode ", name(op), " without a MARK");
    const size_t start = marks_.back();
    marks_.pop_back();
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(start), stack_.end());
    stack_.resize(start);
    return items;
  }
  Value& top_container(Kind kind, char op) {
    fail_if(stack_.empty() || values_[stack_.back()].kind != kind, "opcode ", name(op),
            " on a value that is not a ", kind == kDict ? "dict" : "list");
    return values_[stack_.back()];
  }
  void memo_put(uint64_t id) {
    fail_if(stack_.empty(), "BINPUT on an empty stack");
    fail_if(id > memo_.size(), "memo index ", id, " skips ", memo_.size());
    if (id == memo_.size())
      memo_.push_back(stack_.back());
    else
      memo_[id] = stack_.back();
  }
  void memo_get(uint64_t id) {
    fail_if(id >= memo_.size(), "memo index ", id, " was never stored (", memo_.size(), " are)");
    push(memo_[id]);
  }
  void tuple(size_t n, char op) {
    need(n, op);
    std::vector<uint32_t> items(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    push(make(kTuple, 0, {}, std::move(items)));
  }
  void step(char op);
  void check_call(uint32_t global, uint32_t args);
  void check_persid(uint32_t pid);

  std::string_view in_;
  std::string what_;
  const std::set<std::string>* allowed_;
  size_t pos_ = 0, op_ = 0;
  std::vector<Value> values_;
  std::vector<uint32_t> stack_, memo_;
  std::vector<size_t> marks_;
};

void PickleMachine::step(char op) {
  switch (op) {
    case '(':
      marks_.push_back(stack_.size());
      break;
    case 'N':
      push(make(kNone));
      break;
    case '\x88':
      push(make(kBool, 1));
      break;
    case '\x89':
      push(make(kBool, 0));
      break;
    case 'K':
      push(make(kInt, static_cast<int64_t>(le(1))));
      break;
    case 'M':
      push(make(kInt, static_cast<int64_t>(le(2))));
      break;
    case 'J':
      push(make(kInt, static_cast<int32_t>(le(4))));
      break;
    case '\x8a': {  // LONG1: little-endian two's complement of n <= 8 bytes
      const int n = byte();
      fail_if(n > 8, "an integer of ", n, " bytes");
      uint64_t v = n ? le(n) : 0;
      if (n && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~uint64_t(0) << (8 * n);
      push(make(kInt, static_cast<int64_t>(v)));
    } break;
    case 'G':
      le(8), push(make(kFloat));
      break;  // the value itself matters to no check
    case 'X':
      push(make(kStr, 0, bytes(le(4))));
      break;
    case ']':
      push(make(kList));
      break;
    case ')':
      push(make(kTuple));
      break;
    case '}':
      push(make(kDict));
      break;
    case 'q':
      memo_put(le(1));
      break;
    case 'r':
      memo_put(le(4));
      break;
    case 'h':
      memo_get(le(1));
      break;
    case 'j':
      memo_get(le(4));
      break;
    case 't':
      push(make(kTuple, 0, {}, pop_mark(op)));
      break;
    case '\x85':
      tuple(1, op);
      break;
    case '\x86':
      tuple(2, op);
      break;
    case '\x87':
      tuple(3, op);
      break;
    case 'l':
      push(make(kList, 0, {}, pop_mark(op)));
      break;
    case 'e': {
      std::vector<uint32_t> items = pop_mark(op);
      Value& list = top_container(kList, op);
      list.items.insert(list.items.end(), items.begin(), items.end());
    } break;
    case 'd': {
      std::vector<uint32_t> items = pop_mark(op);
      fail_if(items.size() % 2 != 0, "DICT of an odd number of values");
      push(make(kDict, 0, {}, std::move(items)));
    } break;
    case 'u': {
      std::vector<uint32_t> items = pop_mark(op);
      fail_if(items.size() % 2 != 0, "SETITEMS of an odd number of values");
      Value& dict = top_container(kDict, op);
      dict.items.insert(dict.items.end(), items.begin(), items.end());
    } break;
    case 's': {
      need(3, op);
      const uint32_t value = pop(), key = pop();
      Value& dict = top_container(kDict, op);
      dict.items.insert(dict.items.end(), {key, value});
    } break;
    case 'c': {
      std::string module = line();
      std::string global = module + "." + line();
      if (allowed_ && !allowed_->count(global))
        throw BadInput(
            cat(what_, ": the pickle names ", printable(global.substr(0, 80)), " (byte ", op_,
                "), which is not one of the globals a file of tensors needs; xfer runs no code from a "
                "pickle and reads only tensors, dicts, lists and numbers (save the state dict alone: "
                "torch.save(model.state_dict(), FILE))"));
      push(make(kGlobal, 0, std::move(global)));
    } break;
    case 'a': {  // APPEND: Python's pickler writes it for a one-item batch
      fail_if(!allowed_, "opcode 0x61 is not one LibTorch reads");
      need(2, op);
      const uint32_t item = pop();
      top_container(kList, op).items.push_back(item);
    } break;
    case '\x81': {  // NEWOBJ: LibTorch pops the arguments; the class stays as the object
      need(2, op);
      const uint32_t args = pop();
      fail_if(values_[args].kind != kTuple || values_[stack_.back()].kind != kGlobal,
              "NEWOBJ needs a class and a tuple");
      const uint32_t cls = pop();
      push(make(kObject, 0, {}, {cls}));
    } break;
    case 'R': {
      need(2, op);
      const uint32_t args = pop(), global = pop();
      check_call(global, args);
      // LibTorch makes collections.OrderedDict() a dict that SETITEMS fills, as Python does.
      if (values_[global].s == "collections.OrderedDict")
        push(make(kDict, 0, values_[global].s));
      else
        push(make(kCall, 0, {}, {global, args}));
    } break;
    case 'b': {  // BUILD: an object's state
      need(2, op);
      const uint32_t state = pop(), obj = pop();
      const Value& o = values_[obj];
      fail_if(o.kind != kObject && o.kind != kGlobal && !(o.kind == kDict && !o.s.empty()),
              "BUILD on a value that is not an object");
      push(make(kObject, 0, {}, {obj, state}));
    } break;
    case 'Q': {
      need(1, op);
      const uint32_t pid = pop();
      check_persid(pid);
      push(make(kPersid, 0, {}, {pid}));
    } break;
    default:
      fail_if(true, "opcode 0x", std::hex, static_cast<int>(static_cast<uint8_t>(op)), std::dec,
              " is not one LibTorch reads");
  }
}

/// The shapes LibTorch's handlers of these globals take for granted.
void PickleMachine::check_call(uint32_t global, uint32_t args) {
  fail_if(values_[global].kind != kGlobal, "REDUCE of a value that GLOBAL did not push");
  const Value& a = values_[args];
  fail_if(a.kind != kTuple, "REDUCE with arguments that are not a tuple");
  const std::string& g = values_[global].s;
  const auto kind_of = [&](size_t k) { return a.items.size() > k ? values_[a.items[k]].kind : kNone; };
  const auto ints = [&](size_t k) {
    if (kind_of(k) != kTuple) return false;
    for (uint32_t v : values_[a.items[k]].items)
      if (values_[v].kind != kInt) return false;
    return true;
  };
  if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor")
    fail_if(a.items.size() < 4 || kind_of(0) != kPersid || kind_of(1) != kInt || !ints(2) || !ints(3), g,
            " needs (storage, offset, sizes, strides)");
  else if (g == "torch._utils._rebuild_parameter")
    fail_if(a.items.size() < 2 || kind_of(0) != kCall, g, " needs (tensor, requires_grad, ...)");
  else if (g.rfind("torch.jit._pickle.build_", 0) == 0 && g != "torch.jit._pickle.build_tensor_from_id")
    fail_if(kind_of(0) != kList, g, " needs a list");
  else if (g == "torch.jit._pickle.build_tensor_from_id")
    fail_if(kind_of(0) != kInt, g, " needs an index");
  else if (g == "torch.jit._pickle.restore_type_tag")
    fail_if(a.items.size() < 2 || kind_of(1) != kStr, g, " needs (value, type name)");
}

void PickleMachine::check_persid(uint32_t pid) {
  const Value& t = values_[pid];
  const auto kind_of = [&](size_t k) { return t.items.size() > k ? values_[t.items[k]].kind : kNone; };
  fail_if(t.kind != kTuple || t.items.size() != 5 || kind_of(0) != kStr ||
              values_[t.items[0]].s != "storage" || kind_of(1) != kGlobal || kind_of(2) != kStr ||
              kind_of(3) != kStr || kind_of(4) != kInt || values_[t.items[4]].i < 0,
          "a tensor's storage record is not ('storage', TYPE, KEY, DEVICE, NUMEL)");
}

}  // namespace

void check_pickle(std::string_view pickle, const std::string& what) {
  PickleMachine(pickle, what).run();
}

namespace {

using PV = PickleMachine::Kind;

const char* pickle_kind_name(PV kind) {
  static const char* names[] = {"None", "bool", "int",    "float",  "string", "tuple",
                                "list", "dict", "global", "object", "call",   "storage"};
  return names[kind];
}

/// The dict `v` is, seeing through BUILD (an OrderedDict's attributes, such as a state dict's _metadata, are
/// set by BUILD on it); nullptr if it is no dict.
const PickleMachine::Value* as_dict(const PickleMachine& m, uint32_t v) {
  for (int depth = 0; depth < 4; ++depth) {
    const auto& x = m.at(v);
    if (x.kind == PV::kDict) return &x;
    if (x.kind != PV::kObject || x.items.size() != 2) return nullptr;  // BUILD: {object, state}
    v = x.items[0];
  }
  return nullptr;
}

bool is_tensor_record(const PickleMachine& m, uint32_t v) {
  const auto& x = m.at(v);
  if (x.kind != PV::kCall) return false;
  const std::string& g = m.at(x.items[0]).s;
  return g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_parameter";
}

struct StorageType {
  const char* name;
  torch::ScalarType dtype;
};
constexpr StorageType kStorageTypes[] = {
    {"torch.FloatStorage", torch::kFloat32}, {"torch.DoubleStorage", torch::kFloat64},
    {"torch.HalfStorage", torch::kFloat16},  {"torch.BFloat16Storage", torch::kBFloat16},
    {"torch.LongStorage", torch::kInt64},    {"torch.IntStorage", torch::kInt32},
    {"torch.ShortStorage", torch::kInt16},   {"torch.CharStorage", torch::kInt8},
    {"torch.ByteStorage", torch::kUInt8},    {"torch.BoolStorage", torch::kBool}};

/// Reads the record `_rebuild_tensor_v2(storage, offset, sizes, strides, ...)` into a tensor of its own,
/// with the storage's length and every element's position checked against the record's bytes.
torch::Tensor rebuild_tensor(const PickleMachine& m, uint32_t v, const TorchZip& zip,
                             const std::string& where) {
  // nn.Parameter(tensor): _rebuild_parameter(_rebuild_tensor_v2(...), requires_grad, hooks).
  if (m.at(v).kind == PV::kCall && m.at(m.at(v).items[0]).s == "torch._utils._rebuild_parameter")
    v = m.at(m.at(v).items[1]).items[0];
  const auto& call = m.at(v);
  XFER_CHECK(call.kind == PV::kCall && m.at(call.items[0]).s == "torch._utils._rebuild_tensor_v2", where,
             " is a ", call.kind == PV::kCall ? m.text(call.items[0]) : pickle_kind_name(call.kind),
             ", not a tensor");
  const auto& args = m.at(call.items[1]).items;  // shapes checked by PickleMachine::check_call
  const auto& pid = m.at(m.at(args[0]).items[0]).items;
  const std::string& type = m.at(pid[1]).s;
  const StorageType* st = nullptr;
  for (const auto& t : kStorageTypes)
    if (type == t.name) st = &t;
  XFER_CHECK(st != nullptr, where, ": storage type ", printable(type), " is not one xfer reads");
  const int64_t itemsize = static_cast<int64_t>(c10::elementSize(st->dtype)), numel = m.at(pid[4]).i;
  const std::string record = zip.read(zip.prefix() + "data/" + m.at(pid[2]).s);
  XFER_CHECK(numel <= static_cast<int64_t>(record.size()) / itemsize &&
                 static_cast<int64_t>(record.size()) == numel * itemsize,
             where, ": its storage declares ", numel, " elements of ", itemsize, " bytes but holds ",
             record.size(), " bytes");
  const int64_t offset = m.at(args[1]).i;
  std::vector<int64_t> sizes, strides;
  for (uint32_t x : m.at(args[2]).items) sizes.push_back(m.at(x).i);
  for (uint32_t x : m.at(args[3]).items) strides.push_back(m.at(x).i);
  XFER_CHECK(sizes.size() == strides.size() && sizes.size() <= 64 && offset >= 0 && offset <= numel, where,
             ": ", sizes.size(), " sizes, ", strides.size(), " strides and offset ", offset,
             " do not describe a tensor");
  // Every element must lie in the storage, and the tensor may not hold more elements than it (a stride of 0
  // would otherwise let a few bytes declare terabytes).
  int64_t count = 1, last = offset;
  for (size_t d = 0; d < sizes.size(); ++d) {
    XFER_CHECK(sizes[d] >= 0 && strides[d] >= 0, where, ": negative size or stride");
    if (sizes[d] == 0) count = 0;
    if (count == 0) continue;
    XFER_CHECK(sizes[d] <= numel && count <= numel / sizes[d] && strides[d] <= numel &&
                   (sizes[d] - 1) <= (numel - last) / std::max<int64_t>(strides[d], 1),
               where, ": sizes ", c10::IntArrayRef(sizes), " with strides ", c10::IntArrayRef(strides),
               " reach past its storage of ", numel, " elements");
    count *= sizes[d];
    last += (sizes[d] - 1) * strides[d];
  }
  XFER_CHECK(count == 0 || last < numel, where, ": its last element lies past its storage of ", numel,
             " elements");
  const bool boolean = st->dtype == torch::kBool;  // bytes other than 0 and 1 are no valid bool
  torch::Tensor storage = torch::empty({numel}, boolean ? torch::kUInt8 : st->dtype);
  if (numel > 0) std::memcpy(storage.data_ptr(), record.data(), record.size());
  if (boolean) storage = storage.ne(0);
  return storage.as_strided(sizes, strides, offset).clone(at::MemoryFormat::Contiguous);
}

}  // namespace

static const std::vector<std::string>& state_dict_wrapper_keys() {
  static const std::vector<std::string> keys = {"state_dict", "model", "model_state_dict"};
  return keys;
}

const std::set<std::string>& state_dict_globals() {
  static const std::set<std::string> globals = [] {
    std::set<std::string> g = {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        // timm's training checkpoints keep their arguments; a Namespace only holds data.
        "argparse.Namespace"};
    for (const auto& t : kStorageTypes) g.insert(t.name);
    return g;
  }();
  return globals;
}

std::map<std::string, torch::Tensor> read_torch_state_dict(const std::string& bytes,
                                                           const std::string& what) {
  XFER_CHECK(TorchZip::looks_like_zip(bytes), what,
             ": not the zip archive torch.save writes (files saved with ",
             "_use_new_zipfile_serialization=False are not read; load and save it again with torch.save, or ",
             "convert it with scripts/export_torchvision.py --from FILE)");
  const TorchZip zip(bytes, what);
  if (zip.has(zip.prefix() + "byteorder"))
    XFER_CHECK(zip.read(zip.prefix() + "byteorder") == "little", what, ": tensors saved big-endian");
  const std::string pickle = zip.read(zip.prefix() + "data.pkl");
  PickleMachine m(pickle, what, &state_dict_globals());
  uint32_t root = m.run();
  // The state dict itself, or inside a training checkpoint's {'state_dict': ...} or {'model': ...}.
  const PickleMachine::Value* dict = nullptr;
  std::string path;
  for (int depth = 0;; ++depth) {
    dict = as_dict(m, root);
    XFER_CHECK(dict, what, path, ": holds a ", pickle_kind_name(m.at(root).kind),
               ", not a state dict (a dict of tensors, or a checkpoint dict with one under 'state_dict' or "
               "'model')");
    bool found = false;
    for (const auto& key : state_dict_wrapper_keys())
      for (size_t i = 0; i + 1 < dict->items.size() && !found && depth < 3; i += 2)
        if (m.at(dict->items[i]).kind == PV::kStr && m.at(dict->items[i]).s == key &&
            as_dict(m, dict->items[i + 1])) {
          root = dict->items[i + 1];
          path += "['" + key + "']";
          found = true;
        }
    if (!found) break;
  }
  std::vector<std::pair<std::string, uint32_t>> entries;
  std::string keys;
  for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
    const auto& key = m.at(dict->items[i]);
    XFER_CHECK(key.kind == PV::kStr, what, path, ": every entry must map a name to a tensor; a key is a ",
               pickle_kind_name(key.kind));
    entries.emplace_back(key.s, dict->items[i + 1]);
    if (i < 16) keys += (keys.empty() ? "" : ", ") + printable(key.s.substr(0, 40));
  }
  XFER_CHECK(!entries.empty(), what, path, ": the dict is empty");
  for (const auto& [name, v] : entries)
    XFER_CHECK(is_tensor_record(m, v), what, path, ": entry '", printable(name.substr(0, 80)), "' is a ",
               m.at(v).kind == PV::kCall ? m.text(m.at(v).items[0]) : pickle_kind_name(m.at(v).kind),
               ", not a tensor, and no 'state_dict' or 'model' entry holds the weights (keys: ", keys,
               dict->items.size() > 16 ? ", ..." : "", ")");
  // DistributedDataParallel's "module." (and torch.compile's "_orig_mod."), when every name has it.
  for (const std::string prefix : {"module.", "_orig_mod."})
    while (std::all_of(entries.begin(), entries.end(),
                       [&](const auto& e) { return e.first.rfind(prefix, 0) == 0; }))
      for (auto& e : entries) e.first.erase(0, prefix.size());
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, v] : entries) {
    XFER_CHECK(!out.count(name), what, path, ": entry '", printable(name), "' appears twice");
    out[name] = rebuild_tensor(m, v, zip, cat(what, ": entry '", printable(name), "'"));
  }
  return out;
}

}  // namespace xfer
