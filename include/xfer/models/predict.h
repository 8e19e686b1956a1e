#pragma once
/// Batched inference: what a model makes of every example of a dataset, in one pass.
///
/// Eval mode (batch norm uses its running statistics), inference mode (c10::InferenceMode), the evaluation
/// transform (normalisation; image folders are decoded with their evaluation resize and center crop), in
/// batches of `batch_size`, each on the model's device. The model's train/eval mode is restored afterwards.
///
/// `xfer rank` reads features and source-head logits through it. The other inference loops of the tree
/// (trainer.cpp's evaluate, pairing.cpp's extract_features, pseudo_labels.cpp's ensemble_probabilities,
/// importance.cpp's estimate_target_distribution) predate it and are to move onto it.
#include <cstdint>
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
};

struct Predictions {
  torch::Tensor features;                       // float32 (N, feature_dim) on the CPU; undefined unless asked
  std::map<std::string, torch::Tensor> logits;  // per head asked: float32 (N, head outputs) on the CPU
};

/// Runs every example of `data` through `model` once. BadInput if the data is empty, its images are not
/// the shape the model takes (channels x height x width), a head is missing (the message lists the
/// model's heads), or nothing is asked for.
Predictions predict(const Model& model, const TensorDataset& data, const PredictOptions& opts = {});

/// BadInput naming `what` unless `data`'s images are the shape `model` takes.
void check_input_shape(const Model& model, const TensorDataset& data, const std::string& what);

}  // namespace xfer
