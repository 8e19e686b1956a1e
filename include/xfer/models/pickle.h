#pragma once
/// Reading the files torch.save and torch.jit.save write, without trusting them.
///
/// Both are zip archives (stored, uncompressed) holding pickles and raw tensor data. LibTorch 1.13's own
/// readers assume well-formed input: a 4-byte pickle ("\x80\x02\x85.", a tuple of an empty stack) crashed
/// it. Here:
/// - `TorchZip` reads the archive's directory with every offset and length checked;
/// - `check_pickle` runs a pickle through a model of LibTorch's unpickler (a stack of typed values, marks and
///   a memo; nothing is called, no global resolved) and refuses, naming the byte, anything that would reach
///   an unchecked path of LibTorch's: too few values for an opcode, a memo index never stored, items set on
///   what is not a dict, REDUCE/BUILD on what GLOBAL did not push, a malformed tensor record;
/// - `read_torch_state_dict` goes further for `--init state_dict:FILE` and never hands the file to LibTorch:
///   it parses the pickle of a state dict itself and builds each tensor from its bounds-checked storage
///   record. Such a pickle may name only the globals a file of tensors needs (an allowlist, as
///   torch.load(weights_only=True) has); any other is refused where it is named, and none is ever called.
/// Python pickles are a program for a stack machine; only the opcodes LibTorch's unpickler knows are taken.
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <torch/types.h>

namespace xfer {

/// The entries of a zip archive held in memory (`bytes` must outlive it), stored or deflated (torch.jit.save
/// deflates its code files). BadInput naming `name` on a malformed archive.
class TorchZip {
 public:
  TorchZip(const std::string& bytes, const std::string& name);
  /// Whether `bytes` start like a zip archive.
  static bool looks_like_zip(const std::string& bytes);
  /// The archive's top folder ("archive/" or the file's stem, as torch writes it), with the slash.
  const std::string& prefix() const { return prefix_; }
  bool has(const std::string& entry) const { return entries_.count(entry) > 0; }
  /// The bytes of `entry` (a full name), inflated if need be; BadInput if absent, or if it holds more than
  /// `max_bytes` or other than the length its directory entry declares.
  std::string read(const std::string& entry, size_t max_bytes = size_t(1) << 36) const;
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::string_view data;            // as stored
    uint64_t method = 0, length = 0;  // 0 stored, 8 deflated; the length once inflated
  };
  std::string name_, prefix_;
  std::map<std::string, Entry> entries_;
};

/// Refuses (BadInput naming `what` and the byte offset) a pickle that LibTorch's unpickler could not read
/// safely; see the file comment.
void check_pickle(std::string_view pickle, const std::string& what);

/// The tensors of a state dict written by torch.save (zip format): torch.save(model.state_dict()) (an
/// OrderedDict) or a plain dict of tensors, directly or inside a checkpoint dict under 'state_dict', 'model'
/// or 'model_state_dict' (timm, the Transfer-Learning-Library, Lightning; nested up to 3 deep; its other
/// entries are parsed, never built). A "module." prefix on every name (DistributedDataParallel) is taken off,
/// as is torch.compile's "_orig_mod.". BadInput naming `what` on anything else.
std::map<std::string, torch::Tensor> read_torch_state_dict(const std::string& bytes, const std::string& what);

/// The globals a pickle read by read_torch_state_dict may name: collections.OrderedDict, the tensor and
/// parameter rebuild functions, the storage types and argparse.Namespace (data only).
const std::set<std::string>& state_dict_globals();

}  // namespace xfer
