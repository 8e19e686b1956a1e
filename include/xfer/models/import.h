#pragma once
/// Pretrained networks from outside xfer (`--init state_dict:FILE`, `--init torchscript:FILE`).
///
/// state_dict:FILE  a plain dict {name: tensor} of a torchvision ResNet-18 or ResNet-50, saved from Python as
///                  torch.save(dict(model.state_dict()), FILE). LibTorch 1.13 cannot unpickle Python's
///                  OrderedDict, hence dict(...). Names are torchvision's: the backbone takes conv1 ...
///                  layer4, `fc` becomes the "source" head (kept for SMILE, XMixup's two heads, Co-Tuning).
///                  The architecture (resnet18/50, width) is read from the weights unless --backbone says.
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

/// Reads a file written by torch.save(dict_of_tensors). BadInput naming the file, with the dict(sd) hint.
std::map<std::string, torch::Tensor> read_state_dict(const std::string& path);

/// Loads `init` as a Model with a "source" head (when the network has a classifier) for images of the
/// given geometry and normalisation. `backbone`: "" to infer it from the weights.
Model load_external_model(const std::string& init, const std::string& backbone, int64_t in_channels,
                          int64_t height, int64_t width, const Normalization& input);

/// Copies torchvision-named weights into `model` (backbone names as they are, fc.* -> the "source" head).
/// Names and shapes must match: BadInput lists the first mismatches.
void load_torchvision_weights(Model& model, const std::map<std::string, torch::Tensor>& weights,
                              const std::string& what);

}  // namespace xfer
