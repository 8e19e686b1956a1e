#include "xfer/train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/version.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {
constexpr char kMagic[8] = {'X', 'F', 'E', 'R', 'C', 'K', 'P', 'T'};
constexpr size_t kHeader = 8 + 4 + 8 + 4;

template <class T>
void put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

template <class T>
T get(const std::string& in, size_t offset) {
  T v;
  std::memcpy(&v, in.data() + offset, sizeof(T));
  return v;
}
}  // namespace

std::string checkpoint_header(const std::string& payload) {
  std::string header(kMagic, sizeof kMagic);
  put<uint32_t>(header, kCheckpointFormat);
  put<uint64_t>(header, payload.size());
  put<uint32_t>(header, crc32_of(payload));
  return header;
}

uint32_t checkpoint_format_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[12];
  if (!in.read(head, sizeof head) || std::memcmp(head, kMagic, sizeof kMagic) != 0) return 0;
  uint32_t format;
  std::memcpy(&format, head + 8, sizeof format);
  return format;
}

CheckpointWriter::CheckpointWriter(nlohmann::json meta) : meta_(std::move(meta)) {
  meta_["format"] = kCheckpointFormat;
  meta_["xfer_version"] = kVersion;
}

void CheckpointWriter::write_model(const Model& model) {
  meta_["arch"] = model->arch().to_json();
  Archive nested;
  nested.write_module(*model);
  archive_.write("model", nested);
}

void CheckpointWriter::write(const std::string& key, const Archive& nested) {
  archive_.write(key, nested);
}

void CheckpointWriter::write(const std::string& key, const torch::Tensor& tensor) {
  archive_.write(key, tensor);
}

void CheckpointWriter::commit(const std::string& path) {
  XFER_CHECK(meta_.contains("arch"), "internal: a checkpoint needs a model");
  archive_.write_text("meta", meta_.dump());
  const std::string payload = archive_.encode();
  write_file_atomic(path, checkpoint_header(payload) + payload);
}

CheckpointReader::CheckpointReader(const std::string& path, torch::Device device)
    : path_(path), device_(device) {
  const std::string file = read_file(path);
  XFER_CHECK(file.rfind("PK\x03\x04", 0) != 0, path,
             ": not an xfer checkpoint but a zip archive, as torch.save and ",
             "TorchScript write: give it to --init as state_dict:FILE or torchscript:FILE");
  XFER_CHECK(file.size() >= kHeader && std::memcmp(file.data(), kMagic, sizeof kMagic) == 0, path,
             ": not an xfer checkpoint (bad magic bytes)");
  const auto format = get<uint32_t>(file, 8);
  XFER_CHECK(format == kCheckpointFormat, path, ": checkpoint format ", format, ", this xfer ", kVersion,
             " reads format ", kCheckpointFormat);
  const auto size = get<uint64_t>(file, 12);
  XFER_CHECK(file.size() - kHeader == size, path, ": truncated checkpoint (", file.size() - kHeader, " of ",
             size, " payload bytes)");
  const auto crc = get<uint32_t>(file, 20);
  const std::string payload = file.substr(kHeader);
  XFER_CHECK(crc32_of(payload) == crc, path, ": corrupt checkpoint (checksum mismatch)");
  archive_ = Archive::decode(payload, path, device_);
  XFER_CHECK(archive_.texts().count("meta"), path, ": checkpoint has no metadata");
  try {
    meta_ = nlohmann::json::parse(archive_.read_text("meta"));
  } catch (const std::exception& e) {
    throw BadInput(cat(path, ": unreadable checkpoint metadata"));
  }
  XFER_CHECK(meta_.is_object() && meta_.contains("arch"), path, ": checkpoint has no model architecture");
}

Model CheckpointReader::read_model() {
  const Archive stored = read("model");
  try {
    const Arch saved = arch();
    // The declared architecture must fit in the tensors the file holds, checked before building it: a
    // record declaring width=4096 would otherwise allocate gigabytes for a file of a few kilobytes.
    int64_t held = 0;
    for (const auto& [name, t] : stored.tensors()) held += t.numel();
    const int64_t declared = saved.numel();
    XFER_CHECK(declared <= held, "the stored model declares ", saved.backbone, " with ", saved.heads.size(),
               " heads (", declared, " values) but holds ", held, " values");
    Model model(saved);
    model->to(device_);
    stored.read_module(*model, "the stored model");
    return model;
  } catch (const BadInput& e) {
    throw BadInput(cat(path_, ": ", e.what()));
  }
}

bool CheckpointReader::has(const std::string& key) const {
  return archive_.has(key);
}

Archive CheckpointReader::read(const std::string& key) const {
  Archive nested;
  XFER_CHECK(archive_.try_read(key, nested), path_, ": checkpoint has no '", key, "' section");
  return nested;
}

torch::Tensor CheckpointReader::read_tensor(const std::string& key) const {
  torch::Tensor t;
  XFER_CHECK(archive_.try_read(key, t), path_, ": checkpoint has no '", key, "' tensor");
  return t;
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"checkpoints/best.pt", "checkpoints/last.pt"}) {
      const fs::path p = fs::path(path) / name;
      if (fs::exists(p, ec)) return p.string();
    }
    throw BadInput(cat(path, " is a directory without checkpoints/best.pt or checkpoints/last.pt"));
  }
  XFER_CHECK(fs::exists(path, ec), "checkpoint not found: ", path);
  return path;
}

}  // namespace xfer
