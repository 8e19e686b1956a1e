#include "xfer/train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <sstream>

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

CheckpointWriter::CheckpointWriter(nlohmann::json meta) : meta_(std::move(meta)) {
  meta_["format"] = kCheckpointFormat;
  meta_["xfer_version"] = kVersion;
}

void CheckpointWriter::write_model(const Model& model) {
  meta_["arch"] = model->arch().to_json();
  torch::serialize::OutputArchive nested;
  model->save(nested);
  archive_.write("model", nested);
}

void CheckpointWriter::write(const std::string& key, torch::serialize::OutputArchive& nested) {
  archive_.write(key, nested);
}

void CheckpointWriter::write(const std::string& key, const torch::Tensor& tensor) {
  archive_.write(key, tensor.to(torch::kCPU), /*is_buffer=*/true);
}

void CheckpointWriter::commit(const std::string& path) {
  XFER_CHECK(meta_.contains("arch"), "internal: a checkpoint needs a model");
  archive_.write("meta", c10::IValue(meta_.dump()));
  std::ostringstream payload_stream;
  archive_.save_to(payload_stream);
  const std::string payload = payload_stream.str();
  write_file_atomic(path, checkpoint_header(payload) + payload);
}

CheckpointReader::CheckpointReader(const std::string& path, torch::Device device) : path_(path), device_(device) {
  const std::string file = read_file(path);
  XFER_CHECK(file.size() >= kHeader && std::memcmp(file.data(), kMagic, sizeof kMagic) == 0, path,
             ": not an xfer checkpoint (bad magic bytes)");
  const auto format = get<uint32_t>(file, 8);
  XFER_CHECK(format == kCheckpointFormat, path, ": checkpoint format ", format, ", this xfer ", kVersion,
             " reads format ", kCheckpointFormat);
  const auto size = get<uint64_t>(file, 12);
  XFER_CHECK(file.size() - kHeader == size, path, ": truncated checkpoint (", file.size() - kHeader,
             " of ", size, " payload bytes)");
  const auto crc = get<uint32_t>(file, 20);
  XFER_CHECK(crc32_of(file.substr(kHeader)) == crc, path, ": corrupt checkpoint (checksum mismatch)");
  try {
    archive_.load_from(file.data() + kHeader, size, device_);
    c10::IValue meta;
    archive_.read("meta", meta);
    meta_ = nlohmann::json::parse(meta.toStringRef());
  } catch (const std::exception& e) {
    throw BadInput(cat(path, ": unreadable checkpoint payload"));
  }
  XFER_CHECK(meta_.contains("arch"), path, ": checkpoint has no model architecture");
}

Model CheckpointReader::read_model() {
  Model model(arch());
  model->to(device_);
  torch::serialize::InputArchive nested;
  read("model", nested);
  try {
    model->load(nested);
  } catch (const c10::Error& e) {
    throw BadInput(cat(path_, ": the stored weights do not match the stored architecture"));
  }
  return model;
}

bool CheckpointReader::has(const std::string& key) {
  const auto keys = archive_.keys();
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

void CheckpointReader::read(const std::string& key, torch::serialize::InputArchive& nested) {
  XFER_CHECK(archive_.try_read(key, nested), path_, ": checkpoint has no '", key, "' section");
}

torch::Tensor CheckpointReader::read_tensor(const std::string& key) {
  torch::Tensor t;
  XFER_CHECK(archive_.try_read(key, t, /*is_buffer=*/true), path_, ": checkpoint has no '", key, "' tensor");
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
