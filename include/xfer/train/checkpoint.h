#pragma once
/// Checkpoint files.
///
/// Layout: the 8 bytes "XFERCKPT", the format version (uint32 LE), the payload length (uint64 LE), the
/// CRC-32 of the payload (uint32 LE), then the payload: a torch archive holding
///   meta       a JSON string: format, xfer version, the model's Arch, the step, the method, trainer state
///   model      the model's parameters and buffers
///   optimizer, method, ...   nested archives written by their owners
/// Files are written to a temporary file, fsynced and renamed, so a crash leaves the previous file.
/// Reading checks the magic, version, length and checksum, and names the file and the problem.
#include <string>

#include <nlohmann/json.hpp>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "xfer/models/model.h"

namespace xfer {

constexpr uint32_t kCheckpointFormat = 1;

/// The header of a checkpoint file holding `payload` (magic, format, length, checksum).
std::string checkpoint_header(const std::string& payload);

class CheckpointWriter {
 public:
  /// `meta` gets "format" and "xfer_version" added.
  explicit CheckpointWriter(nlohmann::json meta);
  void write_model(const Model& model);
  void write(const std::string& key, torch::serialize::OutputArchive& nested);
  void write(const std::string& key, const torch::Tensor& tensor);
  /// Writes the file atomically.
  void commit(const std::string& path);

 private:
  nlohmann::json meta_;
  torch::serialize::OutputArchive archive_;
};

class CheckpointReader {
 public:
  /// Tensors are loaded onto `device` (the model's, when resuming on a GPU).
  explicit CheckpointReader(const std::string& path, torch::Device device = torch::kCPU);
  const std::string& path() const { return path_; }
  const nlohmann::json& meta() const { return meta_; }
  Arch arch() const { return Arch::from_json(meta_.at("arch")); }
  /// A model built from the checkpoint's architecture, with its weights.
  Model read_model();
  bool has(const std::string& key);
  /// Reads a nested archive; BadInput if absent.
  void read(const std::string& key, torch::serialize::InputArchive& nested);
  torch::Tensor read_tensor(const std::string& key);

 private:
  std::string path_;
  torch::Device device_;
  nlohmann::json meta_;
  torch::serialize::InputArchive archive_;
};

/// Resolves `--init`/`--model` arguments: a checkpoint file, or a run directory (its
/// checkpoints/best.pt, else checkpoints/last.pt).
std::string resolve_checkpoint(const std::string& path_or_run_dir);

}  // namespace xfer
