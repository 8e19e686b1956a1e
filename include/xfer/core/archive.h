#pragma once
/// Archive: named tensors and strings, the saved state of models, optimizers, teachers and methods.
///
/// Nested archives are stored flat under "KEY/..." names. The encoding is xfer's own, not TorchScript's
/// or pickle's: LibTorch's readers of those formats trust their input (a crafted checkpoint crashed
/// inside the TorchScript parser), while this one is a short list of records read with every length and
/// shape checked, so a malformed file is a BadInput, never a crash.
///
/// Encoding (little-endian): "XARC", version (u32), record count (u64), then per record
///   kind (u8: 0 tensor, 1 text), key length (u32), key,
///   tensor: dtype (u8, torch::ScalarType), rank (u8), sizes (i64 x rank), the contiguous data;
///   text:   length (u64), the bytes.
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

namespace torch::nn {
class Module;
}

namespace xfer {

class Archive {
 public:
  /// Stores a contiguous CPU copy of `tensor` (a later in-place change of the original is not seen).
  void write(const std::string& key, const torch::Tensor& tensor);
  void write_text(const std::string& key, const std::string& text);
  /// Stores `nested` under "key/"; an empty nested archive is kept (reading it back succeeds).
  void write(const std::string& key, const Archive& nested);
  /// Every parameter and buffer of `module`, by its dotted name.
  void write_module(const torch::nn::Module& module);

  bool has(const std::string& key) const;
  bool try_read(const std::string& key, torch::Tensor& out) const;
  bool try_read(const std::string& key, Archive& nested) const;
  /// BadInput naming the key when absent.
  torch::Tensor read(const std::string& key) const;
  std::string read_text(const std::string& key) const;
  Archive nested(const std::string& key) const;
  /// Copies every parameter and buffer of `module` from the archive. BadInput naming the first missing,
  /// surplus or differently shaped entry; `what` starts the message ("the checkpoint's model").
  void read_module(torch::nn::Module& module, const std::string& what) const;

  /// Keys at this level (nested archives once, without their "/").
  std::vector<std::string> keys() const;
  /// Everything, by full "KEY/..." name.
  const std::map<std::string, torch::Tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& texts() const { return texts_; }

  std::string encode() const;
  /// Tensors are placed on `device`. BadInput ("NAME: ...") on anything malformed.
  static Archive decode(const std::string& bytes, const std::string& name,
                        torch::Device device = torch::kCPU);

 private:
  std::map<std::string, torch::Tensor> tensors_;
  std::map<std::string, std::string> texts_;  // "KEY/" -> "" marks a nested archive
};

}  // namespace xfer
