#include "xfer/models/predict.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/data/loader.h"

namespace xfer {

void check_input_shape(const Model& model, const TensorDataset& data, const std::string& what) {
  const Arch& arch = model->arch();
  XFER_CHECK(
      data.channels() == arch.in_channels && data.height() == arch.height && data.width() == arch.width, what,
      "'s images are ", data.channels(), "x", data.height(), "x", data.width(), " but the model takes ",
      arch.in_channels, "x", arch.height, "x", arch.width);
}

void predict_each(const Model& frozen, const TensorDataset& data, const PredictOptions& opts,
                  const std::function<void(int64_t, int64_t, const Predictions&)>& each) {
  XFER_CHECK(opts.batch_size >= 1, "prediction batch size must be >= 1, got ", opts.batch_size);
  XFER_CHECK(opts.features || !opts.heads.empty(), "predict: ask for the features or at least one head");
  XFER_CHECK(data.size() > 0, "cannot predict on an empty dataset");
  const int64_t stop = opts.stop < 0 ? data.size() : opts.stop;
  XFER_CHECK(opts.first >= 0 && opts.first <= stop && stop <= data.size(), "predict: examples [", opts.first,
             ", ", stop, ") are not in a dataset of ", data.size());
  check_input_shape(frozen, data, "the data");
  Model model = frozen;  // the same module: only its mode changes, and is restored
  std::string heads;
  for (const auto& h : model->arch().heads) heads += (heads.empty() ? "" : ", ") + h.name;
  std::vector<torch::nn::Linear> classifiers;
  for (const auto& h : opts.heads) {
    XFER_CHECK(model->has_head(h), "the model has no '", h,
               "' head (it has: ", heads.empty() ? "none" : heads, ")");
    classifiers.push_back(model->head(h));
  }

  const Backbone backbone = folded_backbone(model);  // eval-mode outputs with fewer kernels
  const bool was_training = model->is_training();
  model->eval();
  const InputTransform transform(model->arch().input);
  const torch::Device device = model->backbone->parameters().front().device();
  try {
    c10::InferenceMode inference;
    for (int64_t start = opts.first; start < stop; start += opts.batch_size) {
      const int64_t end = std::min(start + opts.batch_size, stop);
      const torch::Tensor x = transform.normalise(data.eval_images(start, end)).to(device);
      Predictions batch;
      batch.features = backbone->forward(x);
      for (size_t i = 0; i < classifiers.size(); ++i)
        batch.logits[opts.heads[i]] = classifiers[i]->forward(batch.features);
      if (!opts.features) batch.features = torch::Tensor();
      each(start, end, batch);
    }
  } catch (...) {
    model->train(was_training);
    throw;
  }
  model->train(was_training);
}

Predictions predict(const Model& model, const TensorDataset& data, const PredictOptions& opts) {
  std::vector<torch::Tensor> features;
  std::map<std::string, std::vector<torch::Tensor>> logits;
  predict_each(model, data, opts, [&](int64_t, int64_t, const Predictions& batch) {
    if (opts.features) features.push_back(batch.features.to(torch::kCPU, torch::kFloat32));
    for (const auto& [name, z] : batch.logits) logits[name].push_back(z.to(torch::kCPU, torch::kFloat32));
  });
  // Concatenated outside inference mode: the results are ordinary tensors callers may modify in place.
  Predictions out;
  if (opts.features) out.features = torch::cat(features);
  for (auto& [name, parts] : logits) out.logits[name] = torch::cat(parts);
  return out;
}

}  // namespace xfer
