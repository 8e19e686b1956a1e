#pragma once
/// Auxiliary sample selection by class pairing (XMixup, section 3 and 4.2).
///
/// Every target and source training example goes through the pretrained backbone (eval mode, no grad,
/// the evaluation transform); each class is the centroid of its pooled features (Eq. 1),
///     centroid(c) = 1/|c| sum_{x_i in c} g(x_i; theta_pretrain),
/// and classes are compared by the cosine of their centroids. Pairing is greedy and one-to-one: take
/// the most similar (target, source) pair whose classes are both unpaired, until every target class
/// has a source class (a round). Rounds repeat over the source classes still unused until the
/// auxiliary set (the union of the paired source classes) holds at least `aux_size` examples, so a
/// target class may own several source classes (section 4.2: 100k-200k of ImageNet's 1.28M).
///
/// Smaller auxiliary sets (Fig. 3, "to decrease the size, we perform random sampling from the default
/// dataset"): an `aux_size` below one round's examples keeps exactly `aux_size` examples of the paired
/// classes, drawn at random (seeded) in proportion to each class's size, at least one per class.
///
/// Ablations of the auxiliary set (Table 3 and Fig. 3): `random` draws as many source examples as the
/// paired set holds, uniformly from the whole source and without regard to class; `all` is the whole
/// source. Both mix a target example with any auxiliary example, not with its paired classes.
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json_fwd.hpp>

#include "xfer/data/dataset.h"
#include "xfer/data/loader.h"
#include "xfer/models/model.h"

#include "xfer/core/fields.h"

namespace xfer {

class Fields;

/// Pooled features g(x) of every image of `data` through `model`'s backbone, in eval mode under no-grad
/// with the evaluation transform, in batches: float (N, feature_dim), on the CPU. The model's mode is
/// restored afterwards.
torch::Tensor extract_features(const Model& model, const TensorDataset& data, int64_t batch_size = 500);

/// Eq. 1: the mean feature of each class, (K, D) float64. `labels` int64 (N) in [0, K). BadInput naming
/// the class (from `class_names` when given) if a class has no example.
torch::Tensor class_centroids(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes,
                              const std::vector<std::string>& class_names = {});

/// Cosine similarity of every row of `a` (A, D) with every row of `b` (B, D): (A, B) float64.
torch::Tensor cosine_similarity_matrix(const torch::Tensor& a, const torch::Tensor& b);

/// One pair of the selection.
struct ClassPair {
  int64_t target = 0, source = 0;  // class labels in the target and source tasks
  double similarity = 0;           // cosine of their centroids
  int64_t round = 1;               // the pairing round that made it (1-based)
};

/// One greedy round over a (T, S) similarity matrix: repeatedly takes the most similar pair whose target
/// and source classes are both still unpaired in this round, skipping sources in `used`. Pairs as many
/// target classes as there are unused sources, in the order they were taken. Ties go to the lower
/// target, then the lower source index.
std::vector<ClassPair> greedy_pairing(const torch::Tensor& similarity, const std::vector<bool>& used,
                                      int64_t round = 1);

/// Greedy rounds until the paired source classes hold at least `min_samples` examples (at least one
/// round). `source_counts`: examples per source class. BadInput if the source has fewer classes than the
/// target (pairing is one-to-one) or fewer examples than `min_samples`.
std::vector<ClassPair> pair_classes(const torch::Tensor& similarity,
                                    const std::vector<int64_t>& source_counts, int64_t min_samples);

/// The result of auxiliary sample selection, as written to pairing.json.
struct Pairing {
  std::vector<std::string> target_classes, source_classes;
  std::vector<int64_t> target_counts, source_counts;  // training examples per class
  std::vector<std::vector<double>> similarity;        // (T, S) cosine of the class centroids
  int64_t aux_size = 0;                               // the threshold asked for
  std::vector<ClassPair> pairs;                       // in the order they were made

  /// Examples in the paired source classes.
  int64_t samples() const;
  /// Examples in the auxiliary set: `aux_size` when it is below the first round's examples (the paired set
  /// subsampled), else samples().
  int64_t aux_examples() const;
  /// The source classes of each target class, in pairing order.
  std::vector<std::vector<int64_t>> sources_by_target() const;

  nlohmann::json to_json() const;
  /// BadInput naming `where` on a malformed file.
  static Pairing from_json(const nlohmann::json& j, const std::string& where);
  /// BadInput naming `where` unless the class names (and their order) are those of the tasks.
  void check_matches(const TensorDataset& target, const TensorDataset& source,
                     const std::string& where) const;
};

/// Selection from features: centroids, cosine similarities and greedy rounds.
Pairing pair_by_features(const torch::Tensor& target_features, const TensorDataset& target,
                         const torch::Tensor& source_features, const TensorDataset& source, int64_t aux_size);

/// The whole selection: features of both training sets through the pretrained model, then
/// `pair_by_features`. Checks the sizes first, so a bad --aux-size fails before any forward pass. The
/// source centroids (every source example through the backbone: the expensive half) are kept for the
/// process, keyed by the content of the weights and the source data, so the demo's runs share them.
Pairing select_auxiliary(const Model& pretrained, const TensorDataset& target, const TensorDataset& source,
                         int64_t aux_size);

/// Where the auxiliary examples come from: the paired source classes of each target class, examples drawn
/// from the whole source, or the whole source.
enum class AuxMode { paired, random, all };
XFER_ENUM_NAMES(AuxMode, "paired", "random", "all")

/// The options of auxiliary sample selection shared by xmixup, seqtrain and cotrain.
struct AuxOptions {
  AuxMode aux = AuxMode::paired;
  int64_t aux_size = 0;  // minimum auxiliary examples; 0: one pairing round
  std::string pairing;   // a pairing.json from `xfer select`; "" computes the pairing in setup

  void fields(Fields& f);
};

/// Which source examples each target class draws its auxiliary examples from.
struct AuxPools {
  AuxMode mode = AuxMode::paired;
  std::vector<std::vector<int64_t>> pools;  // paired: one per target class; random/all: one shared
  std::vector<int64_t> source_classes;      // source classes present in the auxiliary set, ascending

  /// The source example indices target class `t` draws from.
  const std::vector<int64_t>& pool_of(int64_t t) const { return pools.size() == 1 ? pools[0] : pools[t]; }
  /// Every auxiliary example, ascending (seqtrain and cotrain train on this set).
  std::vector<int64_t> all() const;
  int64_t size() const;
};

/// The auxiliary set of `mode`: `paired` from the pairing's classes (subsampled to aux_examples() by `seed`
/// when that is below one round), `random` aux_examples() examples of the whole source drawn without
/// replacement by `seed`, `all` the whole source (pairing unused, may be null). BadInput if a subsampled
/// paired set would leave a paired class without examples.
AuxPools make_aux_pools(AuxMode mode, const Pairing* pairing, const TensorDataset& source,
                        int64_t target_classes, uint64_t seed);

/// Eq. 3, as a batch stream's sampler: batch b holds, slot for slot, one auxiliary example for each
/// example of batch b of the target stream, drawn uniformly from the pool of that example's class by a
/// generator seeded with (seed, b). The target stream's indices come from `target_order`, an
/// independent replay of its sampler (`default_sampler(target size, target stream seed)`), so batch b
/// is a pure function of b: it is assembled on the loader's worker thread and resumes from the stream
/// position alone. Pools that do not depend on the class (random, all) need no `target_order`.
class AuxSampler : public Sampler {
 public:
  AuxSampler(std::shared_ptr<const AuxPools> pools, std::unique_ptr<Sampler> target_order,
             torch::Tensor target_labels, uint64_t seed);
  std::vector<int64_t> indices(int64_t batch, int64_t batch_size) override;

 private:
  std::shared_ptr<const AuxPools> pools_;
  std::unique_ptr<Sampler> target_order_;
  std::vector<int64_t> target_labels_;
  uint64_t seed_;
};

/// Seeded epoch shuffles over a subset of a dataset (`indices`), for streams over the auxiliary set.
class SubsetSampler : public Sampler {
 public:
  SubsetSampler(std::vector<int64_t> indices, uint64_t seed);
  std::vector<int64_t> indices(int64_t batch, int64_t batch_size) override;

 private:
  std::vector<int64_t> subset_;
  std::unique_ptr<Sampler> order_;
};

/// The pairing a method uses: read from opts.pairing and checked against the tasks, or computed with
/// `select_auxiliary`. Not needed (empty Pairing) when opts.aux is `all`.
Pairing resolve_pairing(const AuxOptions& opts, const Model& pretrained, const TensorDataset& target,
                        const TensorDataset& source);

}  // namespace xfer
