#pragma once
/// Checkpoint files.
///
/// Layout: the 8 bytes "XFERCKPT", the format version (uint32 LE), the payload length (uint64 LE), the
/// CRC-32 of the payload (uint32 LE), then the payload: an xfer::Archive (xfer/core/archive.h) holding
///   meta       a JSON text: format, xfer version, the model's Arch, the step, the method, trainer state
///   model      the model's parameters and buffers
///   optimizer, method, ...   nested archives written by their owners
/// Format 1 (xfer 0.1.0 until November 2026) stored a TorchScript archive, which LibTorch parses without
/// bounds checks; it is refused with the version numbers. Files are written to a temporary file, fsynced and
/// renamed, so a crash leaves the previous file. Reading checks the magic, version, length and checksum, and
/// names the file and the problem.
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/core/archive.h"

#include "xfer/models/model.h"

namespace xfer {

constexpr uint32_t kCheckpointFormat = 2;

/// The header of a checkpoint file holding `payload` (magic, format, length, checksum).
std::string checkpoint_header(const std::string& payload);
/// The format version in the header of the checkpoint at `path`; 0 if it is missing or not a checkpoint.
uint32_t checkpoint_format_of(const std::string& path);

class CheckpointWriter {
 public:
  /// `meta` gets "format" and "xfer_version" added.
  explicit CheckpointWriter(nlohmann::json meta);
  void write_model(const Model& model);
  void write(const std::string& key, const Archive& nested);
  void write(const std::string& key, const torch::Tensor& tensor);
  /// Writes the file atomically.
  void commit(const std::string& path);

 private:
  nlohmann::json meta_;
  Archive archive_;
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
  bool has(const std::string& key) const;
  /// A nested archive; BadInput naming the file if absent.
  Archive read(const std::string& key) const;
  torch::Tensor read_tensor(const std::string& key) const;
  const Archive& archive() const { return archive_; }

 private:
  std::string path_;
  torch::Device device_;
  nlohmann::json meta_;
  Archive archive_;
};

/// Resolves `--init`/`--model` arguments: a checkpoint file, or a run directory (its
/// checkpoints/best.pt, else checkpoints/last.pt).
std::string resolve_checkpoint(const std::string& path_or_run_dir);

}  // namespace xfer
