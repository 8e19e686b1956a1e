#include "xfer/core/archive.h"

#include <algorithm>
#include <cstring>
#include <set>

#include <torch/nn/module.h>
#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {
namespace {
constexpr char kArchiveMagic[4] = {'X', 'A', 'R', 'C'};
constexpr uint32_t kArchiveVersion = 1;
constexpr uint8_t kTensorRecord = 0, kTextRecord = 1;
constexpr uint8_t kMaxRank = 16;

// The dtypes state is made of; anything else in a file is refused rather than handed to LibTorch.
const std::set<torch::ScalarType>& stored_dtypes() {
  static const std::set<torch::ScalarType> dtypes = {
      torch::kFloat32, torch::kFloat64, torch::kFloat16, torch::kBFloat16, torch::kInt64,
      torch::kInt32,   torch::kInt16,   torch::kInt8,    torch::kUInt8,    torch::kBool};
  return dtypes;
}

template <class T>
void put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

// Bounds-checked reading of the encoding: every take() names the file and what was cut short.
class Cursor {
 public:
  Cursor(const std::string& bytes, const std::string& name) : bytes_(bytes), name_(name) {}
  const char* take(size_t n, const char* what) {
    XFER_CHECK(n <= bytes_.size() - pos_, name_, ": truncated archive (", what, " at byte ", pos_, ")");
    const char* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <class T>
  T get(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  size_t left() const { return bytes_.size() - pos_; }

 private:
  const std::string& bytes_;
  const std::string& name_;
  size_t pos_ = 0;
};

std::string shape_text(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// Parameters and buffers by dotted name, as torch::nn::Module::named_parameters/named_buffers give them.
std::map<std::string, torch::Tensor> module_state(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> state;
  for (const auto& p : module.named_parameters()) state.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers()) state.emplace(b.key(), b.value());
  return state;
}
}  // namespace

void Archive::write(const std::string& key, const torch::Tensor& tensor) {
  XFER_CHECK(tensor.defined(), "internal: archive key '", key, "' holds an undefined tensor");
  tensors_[key] = tensor.detach().to(torch::kCPU).contiguous().clone();
}

void Archive::write_text(const std::string& key, const std::string& text) {
  texts_[key] = text;
}

void Archive::write(const std::string& key, const Archive& nested) {
  const std::string prefix = key + "/";
  texts_[prefix] = "";
  for (const auto& [k, t] : nested.tensors_) tensors_[prefix + k] = t;
  for (const auto& [k, s] : nested.texts_) texts_[prefix + k] = s;
}

void Archive::write_module(const torch::nn::Module& module) {
  for (const auto& [name, t] : module_state(module)) write(name, t);
}

bool Archive::has(const std::string& key) const {
  return tensors_.count(key) || texts_.count(key) || texts_.count(key + "/");
}

bool Archive::try_read(const std::string& key, torch::Tensor& out) const {
  const auto it = tensors_.find(key);
  if (it == tensors_.end()) return false;
  out = it->second;
  return true;
}

bool Archive::try_read(const std::string& key, Archive& nested) const {
  const std::string prefix = key + "/";
  if (!texts_.count(prefix)) return false;
  nested = Archive();
  for (auto it = tensors_.lower_bound(prefix); it != tensors_.end() && it->first.rfind(prefix, 0) == 0; ++it)
    nested.tensors_[it->first.substr(prefix.size())] = it->second;
  for (auto it = texts_.upper_bound(prefix); it != texts_.end() && it->first.rfind(prefix, 0) == 0; ++it)
    nested.texts_[it->first.substr(prefix.size())] = it->second;
  return true;
}

torch::Tensor Archive::read(const std::string& key) const {
  torch::Tensor t;
  XFER_CHECK(try_read(key, t), "no tensor '", key, "' in the archive");
  return t;
}

std::string Archive::read_text(const std::string& key) const {
  const auto it = texts_.find(key);
  XFER_CHECK(it != texts_.end() && (key.empty() || key.back() != '/'), "no text '", key, "' in the archive");
  return it->second;
}

Archive Archive::nested(const std::string& key) const {
  Archive a;
  XFER_CHECK(try_read(key, a), "no section '", key, "' in the archive");
  return a;
}

void Archive::read_module(torch::nn::Module& module, const std::string& what) const {
  const auto state = module_state(module);
  for (const auto& [name, t] : tensors_)
    XFER_CHECK(state.count(name), what, " has '", name, "', which the model does not");
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : state) {
    const auto it = tensors_.find(name);
    XFER_CHECK(it != tensors_.end(), what, " has no '", name, "'");
    XFER_CHECK(it->second.sizes() == target.sizes(), what, ": '", name, "' is ",
               shape_text(it->second.sizes()), ", the model's is ", shape_text(target.sizes()));
    target.copy_(it->second);
  }
}

std::vector<std::string> Archive::keys() const {
  std::set<std::string> keys;
  auto level = [&](const std::string& k) { keys.insert(k.substr(0, k.find('/'))); };
  for (const auto& entry : tensors_) level(entry.first);
  for (const auto& entry : texts_) level(entry.first);
  return {keys.begin(), keys.end()};
}

std::string Archive::encode() const {
  std::string out(kArchiveMagic, sizeof kArchiveMagic);
  put<uint32_t>(out, kArchiveVersion);
  put<uint64_t>(out, tensors_.size() + texts_.size());
  auto key_record = [&](uint8_t kind, const std::string& key) {
    put<uint8_t>(out, kind);
    put<uint32_t>(out, static_cast<uint32_t>(key.size()));
    out += key;
  };
  for (const auto& [key, t] : tensors_) {
    key_record(kTensorRecord, key);
    put<uint8_t>(out, static_cast<uint8_t>(t.scalar_type()));
    put<uint8_t>(out, static_cast<uint8_t>(t.dim()));
    for (const int64_t s : t.sizes()) put<int64_t>(out, s);
    if (t.numel() > 0) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  }
  for (const auto& [key, text] : texts_) {
    key_record(kTextRecord, key);
    put<uint64_t>(out, text.size());
    out += text;
  }
  return out;
}

Archive Archive::decode(const std::string& bytes, const std::string& name, torch::Device device) {
  Cursor in(bytes, name);
  XFER_CHECK(std::memcmp(in.take(sizeof kArchiveMagic, "magic"), kArchiveMagic, sizeof kArchiveMagic) == 0,
             name, ": not an xfer archive (bad magic bytes)");
  const auto version = in.get<uint32_t>("version");
  XFER_CHECK(version == kArchiveVersion, name, ": archive version ", version, ", this xfer reads version ",
             kArchiveVersion);
  const auto count = in.get<uint64_t>("record count");
  // Each record takes at least 6 bytes: a count beyond that is corrupt, not a reason to loop for long.
  XFER_CHECK(count <= in.left() / 6, name, ": corrupt archive (", count, " records in ", in.left(),
             " bytes)");
  Archive a;
  for (uint64_t r = 0; r < count; ++r) {
    const auto kind = in.get<uint8_t>("record kind");
    const auto key_size = in.get<uint32_t>("key length");
    const std::string key(in.take(key_size, "key"), key_size);
    XFER_CHECK(!key.empty() && !a.tensors_.count(key) && !a.texts_.count(key), name,
               ": corrupt archive (empty or repeated key '", key, "')");
    if (kind == kTextRecord) {
      const auto size = in.get<uint64_t>("text length");
      XFER_CHECK(size <= in.left(), name, ": truncated archive (text '", key, "')");
      a.texts_[key] = std::string(in.take(size, "text"), size);
      continue;
    }
    XFER_CHECK(kind == kTensorRecord, name, ": corrupt archive (record kind ", int(kind), " at '", key, "')");
    const auto dtype = static_cast<torch::ScalarType>(in.get<uint8_t>("dtype"));
    XFER_CHECK(stored_dtypes().count(dtype), name, ": corrupt archive (dtype code ", int(dtype), " at '", key,
               "')");
    const auto rank = in.get<uint8_t>("rank");
    XFER_CHECK(rank <= kMaxRank, name, ": corrupt archive (rank ", int(rank), " at '", key, "')");
    std::vector<int64_t> sizes(rank);
    const uint64_t element = c10::elementSize(dtype);
    uint64_t bytes_needed = element;
    for (auto& s : sizes) {
      s = in.get<int64_t>("size");
      // Checked against the bytes left at every dimension, so the product cannot overflow.
      XFER_CHECK(s >= 0 && (s == 0 || bytes_needed <= in.left() / static_cast<uint64_t>(s)), name,
                 ": corrupt archive (size ", s, " at '", key, "')");
      bytes_needed *= static_cast<uint64_t>(s);
    }
    const char* data = in.take(bytes_needed, "tensor data");
    // A bool is one byte that must be 0 or 1; any other value is undefined behaviour once read.
    XFER_CHECK(dtype != torch::kBool ||
                   std::all_of(data, data + bytes_needed, [](char c) { return c == 0 || c == 1; }),
               name, ": corrupt archive (a bool that is neither 0 nor 1 at '", key, "')");
    torch::Tensor t = torch::empty(sizes, torch::TensorOptions().dtype(dtype));
    if (bytes_needed > 0) std::memcpy(t.data_ptr(), data, bytes_needed);
    a.tensors_[key] = device.is_cpu() ? t : t.to(device);
  }
  XFER_CHECK(in.left() == 0, name, ": corrupt archive (", in.left(), " bytes after the last record)");
  return a;
}

}  // namespace xfer
