#include "xfer/source/pseudo_labels.h"

#include <cmath>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/archive.h"
#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/data/loader.h"
#include "xfer/models/predict.h"

namespace xfer {

void check_pseudo_threshold(double threshold) {
  XFER_CHECK(threshold > 0 && threshold < 1, "--pseudo-threshold must be in (0, 1), got ", threshold);
}

namespace {
void check_probs(const torch::Tensor& probs) {
  XFER_CHECK(probs.dim() == 3 && probs.size(0) >= 1 && probs.size(2) >= 1,
             "ensemble probabilities must be (R, N, K) with R >= 1, got ", probs.sizes());
}
}  // namespace

HardLabels hard_pseudo_labels(const torch::Tensor& probs, double threshold) {
  check_pseudo_threshold(threshold);
  check_probs(probs);
  const torch::Tensor p = probs.to(torch::kCPU, torch::kFloat32);
  const torch::Tensor votes = p.argmax(2);  // (R, N)
  const torch::Tensor first = votes[0];     // (N)
  const torch::Tensor agree = (votes == first.unsqueeze(0)).all(0);
  // Each model's probability for the agreed class: (R, N).
  const torch::Tensor chosen = p.gather(2, first.view({1, -1, 1}).expand({p.size(0), -1, 1})).squeeze(2);
  const torch::Tensor confident = (chosen > threshold).all(0);
  const torch::Tensor index = torch::nonzero(agree & confident).flatten();
  return {index, first.index_select(0, index), std::get<0>(chosen.min(0)).index_select(0, index)};
}

torch::Tensor soft_pseudo_labels(const torch::Tensor& probs) {
  check_probs(probs);
  return probs.to(torch::kFloat32).mean(0);
}

torch::Tensor enlarge_per_class(const torch::Tensor& v_labels, const HardLabels& hard, int64_t classes,
                                int64_t per_class, at::Generator& gen) {
  XFER_CHECK(per_class >= 0, "the enlarged V size per class must be >= 0, got ", per_class);
  const torch::Tensor counts = torch::bincount(v_labels.to(torch::kCPU), {}, classes);
  const torch::Tensor labels = hard.labels.to(torch::kCPU);
  std::vector<torch::Tensor> picked;
  for (int64_t c = 0; c < classes; ++c) {
    const int64_t need = per_class - counts[c].item<int64_t>();
    if (need <= 0) continue;
    const torch::Tensor of_class = torch::nonzero(labels == c).flatten();
    const int64_t n = of_class.numel();
    if (n == 0) continue;
    const torch::Tensor order = sample_permutation(gen, n).slice(0, 0, std::min(need, n));
    picked.push_back(of_class.index_select(0, order));
  }
  return picked.empty() ? torch::empty({0}, torch::kInt64) : torch::cat(picked);
}

torch::Tensor ensemble_probabilities(std::vector<Model>& models, const TensorDataset& data,
                                     const std::string& head, int64_t batch_size) {
  XFER_CHECK(!models.empty(), "an ensemble needs at least one model");
  std::vector<torch::Tensor> per_model;
  for (auto& model : models)
    per_model.push_back(torch::softmax(predict(model, data, {false, {head}, batch_size}).logits.at(head), 1));
  return torch::stack(per_model);
}

void save_ensemble_labels(const std::string& path, const EnsembleLabels& labels) {
  check_probs(labels.probs);
  XFER_CHECK(labels.probs.size(1) == labels.images.size(), "ensemble labels: ", labels.probs.size(1),
             " probability rows for ", labels.images.size(), " images");
  Archive archive;
  archive.write("images", labels.images.images);
  archive.write("labels", labels.images.labels);
  archive.write("probs", labels.probs.to(torch::kFloat32));
  archive.write_text("class_names", nlohmann::json(labels.images.class_names).dump());
  write_file_atomic(path, archive.encode());
}

EnsembleLabels load_ensemble_labels(const std::string& path) {
  const std::string bytes = read_file(path);
  EnsembleLabels out;
  try {
    const Archive archive = Archive::decode(bytes, path);
    out.images.images = archive.read("images");
    out.images.labels = archive.read("labels");
    out.probs = archive.read("probs");
    out.images.class_names =
        nlohmann::json::parse(archive.read_text("class_names")).get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    throw BadInput(cat(path, ": not a pseudo-label file of `xfer gradmix-pseudo` (",
                       std::string(e.what()).substr(0, 200), ")"));
  }
  const auto& images = out.images.images;
  const auto& labels = out.images.labels;
  XFER_CHECK(images.dim() == 4 && labels.dim() == 1 && labels.size(0) == images.size(0) &&
                 labels.scalar_type() == torch::kInt64 && out.probs.dim() == 3 &&
                 out.probs.size(1) == images.size(0) &&
                 out.probs.size(2) == static_cast<int64_t>(out.images.class_names.size()),
             path, ": inconsistent pseudo-label file (images ", images.sizes(), ", labels ", labels.sizes(),
             ", probabilities ", out.probs.sizes(), ", ", out.images.class_names.size(), " classes)");
  XFER_CHECK(labels.numel() == 0 || (labels.min().item<int64_t>() >= 0 &&
                                     labels.max().item<int64_t>() < out.images.num_classes()),
             path, ": pseudo-label file with labels outside its ", out.images.num_classes(), " classes");
  return out;
}

}  // namespace xfer
