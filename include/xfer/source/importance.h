#pragma once
/// Domain Adaptive Transfer Learning (Ngiam, Peng, Vasudevan, Kornblith, Le, Pang: "Domain Adaptive
/// Transfer Learning with Specialist Models", 2018): choose *what to pre-train on*.
///
/// Importance weights (section 3.3). A classifier trained on the whole source label set predicts on the
/// target images only (their labels are never used):
///
///   P_t(y) = mean over target images x of softmax(f(x) / T)_y     T: temperature (section 4, default 2)
///   P_s(y) = n_y / n                                               n_y: source examples of class y
///   w(y)   = P_t(y) / P_s(y)
///
/// Distribution matchers (section 4.3, appendix 6.1) build a pre-training set of N source examples:
///
///   same      with replacement, class y gets N * P_t(y) examples: each of its examples is drawn
///             N * w(y) / n times on average (the "sample rate" of Table 5)
///   elastic   without replacement: classes in descending w; a class that cannot supply its share gives
///             all it has and the rest of the budget is re-divided among the remaining classes in
///             proportion to P_t, recursively
///
/// Counts are made whole by largest-remainder rounding, so they are deterministic; the examples inside a
/// class are drawn by the seed. The appendix's example: n = {A:10, B:40, C:50}, P_t = {.5, .3, .2},
/// N = 30 gives same {15, 9, 6} and elastic {10, 12, 8}.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "xfer/data/dataset.h"
#include "xfer/models/model.h"

namespace xfer {

class Fields;

/// softmax(logits / T) over the last dimension; BadInput if T <= 0. logits (N, K) -> (N, K).
torch::Tensor tempered_softmax(const torch::Tensor& logits, double temperature);

/// The importance weights of a source's classes for one target.
struct ImportanceWeights {
  std::vector<std::string> classes;  // source class names, by label
  std::vector<int64_t> examples;     // n_y
  std::vector<double> p_target;      // P_t(y), sums to 1
  std::vector<double> p_source;      // P_s(y) = n_y / n
  std::vector<double> weight;        // w(y) = P_t(y) / P_s(y); 0 for a class without examples
  double temperature = 2.0;
  nlohmann::json provenance = nlohmann::json::object();  // model, head, specs, target image count

  /// Builds P_s and w from P_t (renormalised to sum 1) and the source's class counts. BadInput if the
  /// sizes differ, a P_t is negative or not finite, or a class with P_t > 0 has no examples.
  static ImportanceWeights from_target_distribution(std::vector<std::string> classes,
                                                    std::vector<int64_t> examples,
                                                    std::vector<double> p_target, double temperature = 2.0);
  int64_t source_size() const;
  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
  /// Labels by descending w (ties: lower label first).
  std::vector<int64_t> order() const;

  /// weights.json: {"kind", "temperature", "provenance", "classes": [{label, name, examples, p_target,
  /// p_source, weight}, ...]} in label order.
  nlohmann::json to_json() const;
  /// Parses weights.json; BadInput naming `where` on a malformed file.
  static ImportanceWeights from_json(const nlohmann::json& j, const std::string& where);
};

/// P_t over the classes of `model`'s `head`: the mean of tempered_softmax over `images` (uint8,
/// (N, C, H, W)), transformed as the model expects, in eval mode and without gradients, in batches.
std::vector<double> estimate_target_distribution(Model& model, const std::string& head,
                                                 const torch::Tensor& images, double temperature,
                                                 int64_t batch_size = 500);

/// P_t from `model`'s `head` on the target images, P_s from `source`'s labels. BadInput if the head's size
/// or class names differ from the source's, or the images do not fit the model.
ImportanceWeights compute_importance_weights(Model& model, const std::string& head,
                                             const TensorDataset& source, const torch::Tensor& target_images,
                                             double temperature, int64_t batch_size = 500);

/// The weights `model` gives `source`'s classes for the target `target_spec`: P_t from its `head` ("" = the
/// "source" head, or its only head) on the training images of that spec, loaded with `seed` (their labels
/// are never read). The provenance names the source, the target and the image count; the caller adds the
/// model's file.
ImportanceWeights importance_weights_for_target(Model& model, std::string head, const TensorDataset& source,
                                                const std::string& source_name,
                                                const std::string& target_spec, double temperature,
                                                uint64_t seed);

/// The weights re-based on `source`: its class names must be the file's, in order (BadInput naming
/// `where` and both lists otherwise); P_s and w are recomputed from its counts.
ImportanceWeights weights_for_source(const ImportanceWeights& weights, const TensorDataset& source,
                                     const std::string& where);

/// Largest-remainder rounding: whole counts summing to `total`, each within [floor(q), ceil(q)] of its
/// quota q_i = total * shares_i / sum(shares) and at most caps_i (when given). Ties: lower index first.
std::vector<int64_t> largest_remainder(const std::vector<double>& shares, int64_t total,
                                       const std::vector<int64_t>& caps = {});

/// Same distribution matcher: per-class counts N * P_t(y), made whole. BadInput if N <= 0.
std::vector<int64_t> same_counts(const ImportanceWeights& w, int64_t n);
/// Elastic distribution matcher: per-class counts, each at most n_y. BadInput if N <= 0 or N exceeds the
/// source's unique examples (the message says how many there are). When the classes left all have
/// P_t = 0, the rest is divided in proportion to their sizes.
std::vector<int64_t> elastic_counts(const ImportanceWeights& w, int64_t n);

/// A matcher's pre-training set: indices into the source (grouped by class), its per-class counts and
/// its number of distinct examples.
struct MatchedSet {
  std::vector<int64_t> indices;
  std::vector<int64_t> counts;
  int64_t unique = 0;
};
/// Runs matcher `same` or `elastic` over the source's per-class example indices (`by_class[y]`, as
/// TensorDataset::indices_by_class gives). Draws are a pure function of (seed, class).
MatchedSet match_distribution(const std::string& matcher, const ImportanceWeights& w,
                              const std::vector<std::vector<int64_t>>& by_class, int64_t n, uint64_t seed);

/// How `xfer pretrain --method datl` uses importance weights (the options of method datl).
struct PretrainSampling {
  std::string weights;  // weights.json of `xfer weights`
  // Or computed in the run, as `xfer weights` does: a source classifier and the target images it sees.
  std::string weights_from, weights_target;
  double weights_temperature = 2.0;
  std::string matcher = "none";  // none | same | elastic
  int64_t size = 0;              // N, for same and elastic
  bool loss_weights = false;     // matcher none: the whole source, each example's loss times w(y)

  /// The weights' origin, for messages: the file, or "the weights of MODEL".
  std::string weights_name() const;
  void fields(Fields& f);
  /// BadInput on a combination that means nothing (no weights, a matcher without N, N <= 0, ...).
  void check() const;
};

/// The pre-training data and loss weights `opts` ask for.
struct SampledSource {
  TensorDataset data;                // what to pre-train on: the matched set, or the whole source
  std::vector<double> loss_weights;  // per class, with --loss-weights (empty otherwise)
  nlohmann::json summary;            // for result.json: weights, matcher, size, unique, per-class counts
};
/// Reads opts.weights (or takes `computed`, from opts.weights_from), checks it against `source` and applies
/// the matcher (seed: derive_seed(seed, "matcher")) or the loss weights.
SampledSource sample_source(const TensorDataset& source, const PretrainSampling& opts, uint64_t seed,
                            const ImportanceWeights* computed = nullptr);

}  // namespace xfer
