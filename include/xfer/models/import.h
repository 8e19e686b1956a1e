#pragma once
/// Pretrained networks from outside xfer (`--init state_dict:FILE`, `--init torchscript:FILE`), and models
/// going back out to PyTorch (`xfer export`).
///
/// state_dict:FILE  the state dict of a torchvision ResNet-18 or ResNet-50 as torch.save writes it:
///                  torch.save(model.state_dict(), FILE) (the torch hub cache holds such files), a plain
///                  dict, or a training checkpoint holding one under 'state_dict' or 'model' (see
///                  read_torch_state_dict: parsed by xfer, never unpickled; "module." prefixes are dropped).
///                  Names are torchvision's: the backbone takes conv1 ... layer4, `fc` becomes the "source"
///                  head (kept for SMILE, XMixup's two heads, Co-Tuning). The architecture (resnet18/50,
///                  width) is read from the weights unless --backbone says.
/// torchscript:FILE a scripted (torch.jit.script, not traced: BN must be able to train) torchvision or timm
///                  model. Its parameters and buffers are trained in place; its classifier (`fc`, `head` or
///                  `classifier`, a Linear) is taken off and becomes the "source" head.
/// scripts/export_torchvision.py writes both forms.
#include <map>
#include <string>

#include <torch/types.h>

#include "xfer/data/dataset.h"
#include "xfer/models/model.h"

namespace xfer {

/// Whether `init` names an external model (state_dict:... or torchscript:...).
bool is_external_init(const std::string& init);

/// Reads a state dict written by torch.save (read_torch_state_dict). BadInput naming the file.
std::map<std::string, torch::Tensor> read_state_dict(const std::string& path);

/// The one table between xfer's state names and PyTorch's: a backbone's entries keep their names without
/// "backbone." (built-in backbones use torchvision's names; a TorchScript backbone its own), and the head
/// `head` is the classifier `classifier` (torchvision's `fc`). "" for entries outside it (other heads).
/// Import reads a "source" head this way; export writes the chosen head.
std::string pytorch_name(const std::string& xfer_name, const std::string& head,
                         const std::string& classifier = "fc");
std::string xfer_name(const std::string& pytorch_name, const std::string& head,
                      const std::string& classifier = "fc");

/// The classifier's attribute name of `model`'s backbone in PyTorch: the TorchScript model's own (fc, head or
/// classifier), else "fc".
std::string pytorch_classifier(const Model& model);

/// `model`'s backbone and head `head` under their PyTorch names (pytorch_name), contiguous CPU copies, in the
/// model's order.
std::vector<std::pair<std::string, torch::Tensor>> pytorch_state_dict(const Model& model,
                                                                      const std::string& head);
/// Writes pytorch_state_dict as torch.save writes a dict of tensors: torch.load reads it, and
/// load_state_dict(strict=True) takes it into torchvision's ResNet-18/50 (for resnet18/50 at width 64 with
/// the ImageNet stem on 3 channels) or into scripts/xfer_models.py's definition of the backbone.
void save_pytorch_state_dict(const Model& model, const std::string& head, const std::string& path);
/// Writes a TorchScript file of a model whose backbone came from one (--init torchscript:FILE): the script
/// with the trained weights and head `head` in place of its classifier, in eval mode. BadInput for other
/// backbones, or a script whose classifier xfer did not find.
void save_torchscript(const Model& model, const std::string& head, const std::string& path);
/// How to build the PyTorch model that save_pytorch_state_dict's file loads into, as Python code:
/// "torchvision.models.resnet50(num_classes=5)" or "xfer_models.build('cnn4:width=16', 1, 5)".
std::string pytorch_constructor(const Model& model, const std::string& head);

/// Loads `init` as a Model with a "source" head (when the network has a classifier) for images of the
/// given geometry and normalisation. `backbone`: "" to infer it from the weights.
Model load_external_model(const std::string& init, const std::string& backbone, int64_t in_channels,
                          int64_t height, int64_t width, const Normalization& input);

/// Copies torchvision-named weights into `model` (backbone names as they are, fc.* -> the "source" head).
/// Names and shapes must match: BadInput lists the first mismatches.
void load_torchvision_weights(Model& model, const std::map<std::string, torch::Tensor>& weights,
                              const std::string& what);

}  // namespace xfer
