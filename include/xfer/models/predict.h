#pragma once
/// Batched inference: what a model makes of every example of a dataset, in one pass.
///
/// Eval mode (batch norm uses its running statistics), inference mode (c10::InferenceMode), the evaluation
/// transform (normalisation; image folders are decoded with their evaluation resize and center crop), in
/// batches of `batch_size`, each on the model's device. The model's train/eval mode is restored afterwards.
///
/// The one inference loop of the tree: evaluation, `xfer rank`, XMixup's class pairing, DATL's target
/// distribution, GradMix's pseudo-label ensemble and the forgetting probe all read through it, so all run
/// with the batch norms folded into their convolutions (models/backbone.h) and without autograd.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "xfer/data/dataset.h"
#include "xfer/models/model.h"

namespace xfer {

struct PredictOptions {
  bool features = true;            // the pooled backbone features g(x)
  std::vector<std::string> heads;  // the logits of these heads
  int64_t batch_size = 500;
  int64_t first = 0, stop = -1;  // the examples [first, stop) (-1: to the end)
};

struct Predictions {
  torch::Tensor features;                       // float32 (N, feature_dim) on the CPU; undefined unless asked
  std::map<std::string, torch::Tensor> logits;  // per head asked: float32 (N, head outputs) on the CPU
};

/// Runs every example of `data` through `model` once. BadInput if the data is empty, its images are not
/// the shape the model takes (channels x height x width), a head is missing (the message lists the
/// model's heads), or nothing is asked for.
Predictions predict(const Model& model, const TensorDataset& data, const PredictOptions& opts = {});

/// The same pass, streamed: `each(start, end, batch)` for consecutive batches of the range, with the
/// batch's features and logits as computed (on the model's device, its dtype, inference tensors: read them
/// inside `each`, or clone).
void predict_each(const Model& model, const TensorDataset& data, const PredictOptions& opts,
                  const std::function<void(int64_t start, int64_t end, const Predictions& batch)>& each);

/// BadInput naming `what` unless `data`'s images are the shape `model` takes.
void check_input_shape(const Model& model, const TensorDataset& data, const std::string& what);

}  // namespace xfer
