#include "xfer/source/pairing.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>

#include <zlib.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/text.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/loader.h"
#include "xfer/models/predict.h"

namespace xfer {
namespace {

/// What pairing needs of the sizes: at least as many source classes as target classes, and a threshold
/// the source can reach.
void pairing_check_sizes(int64_t target_classes, int64_t source_classes, int64_t source_size,
                         int64_t aux_size) {
  XFER_CHECK(aux_size >= 0, "--aux-size must be >= 0, got ", aux_size);
  XFER_CHECK(source_classes >= target_classes, "pairing is one-to-one, but the source has ", source_classes,
             " classes and the target ", target_classes, "; use a source with at least ", target_classes,
             " classes, or --aux all (the whole source)");
  XFER_CHECK(aux_size <= source_size, "--aux-size ", aux_size, " is larger than the source (", source_size,
             " training examples); --aux all would use all ", source_size);
}

}  // namespace

torch::Tensor extract_features(const Model& frozen, const TensorDataset& data, int64_t batch_size) {
  XFER_CHECK(data.size() > 0, "cannot extract features of an empty dataset");
  return predict(frozen, data, {true, {}, batch_size}).features;
}

torch::Tensor class_centroids(const torch::Tensor& features, const torch::Tensor& labels, int64_t num_classes,
                              const std::vector<std::string>& class_names) {
  XFER_CHECK(features.dim() == 2 && labels.dim() == 1 && features.size(0) == labels.size(0),
             "centroids need ", "features (N, D) and labels (N), got ", features.sizes(), " and ",
             labels.sizes());
  const torch::Tensor f = features.to(torch::kFloat64).cpu();
  const torch::Tensor y = labels.to(torch::kInt64).cpu();
  torch::Tensor sums = torch::zeros({num_classes, f.size(1)}, f.options());
  sums.index_add_(0, y, f);
  const torch::Tensor counts = torch::bincount(y, {}, num_classes);
  for (int64_t c = 0; c < num_classes; ++c)
    XFER_CHECK(counts[c].item<int64_t>() > 0, "class ",
               c < static_cast<int64_t>(class_names.size()) ? "'" + class_names[c] + "'" : std::to_string(c),
               " has no training examples, so it has no centroid");
  return sums / counts.to(torch::kFloat64).unsqueeze(1);
}

torch::Tensor cosine_similarity_matrix(const torch::Tensor& a, const torch::Tensor& b) {
  XFER_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
             "cosine similarity needs (A, D) and (B, D), got ", a.sizes(), " and ", b.sizes());
  const torch::Tensor x = a.to(torch::kFloat64), z = b.to(torch::kFloat64);
  // A zero centroid (all-zero features after ReLU) has no direction: its similarity is 0.
  const torch::Tensor na = x.norm(2, 1, true).clamp_min(1e-300), nb = z.norm(2, 1, true).clamp_min(1e-300);
  return torch::mm(x / na, (z / nb).t());
}

std::vector<ClassPair> greedy_pairing(const torch::Tensor& similarity, const std::vector<bool>& used,
                                      int64_t round) {
  const torch::Tensor s = similarity.to(torch::kFloat64).cpu().contiguous();
  const int64_t T = s.size(0), S = s.size(1);
  XFER_CHECK(static_cast<int64_t>(used.size()) == S, "greedy pairing: ", used.size(), " used flags for ", S,
             " source classes");
  const double* v = s.data_ptr<double>();
  std::vector<bool> target_done(T, false), source_done(used);
  std::vector<ClassPair> pairs;
  while (true) {
    int64_t bt = -1, bs = -1;
    for (int64_t t = 0; t < T; ++t) {
      if (target_done[t]) continue;
      for (int64_t j = 0; j < S; ++j)
        if (!source_done[j] && (bt < 0 || v[t * S + j] > v[bt * S + bs])) bt = t, bs = j;
    }
    if (bt < 0) break;
    target_done[bt] = true;
    source_done[bs] = true;
    pairs.push_back({bt, bs, v[bt * S + bs], round});
  }
  return pairs;
}

std::vector<ClassPair> pair_classes(const torch::Tensor& similarity,
                                    const std::vector<int64_t>& source_counts, int64_t min_samples) {
  const int64_t T = similarity.size(0), S = similarity.size(1);
  XFER_CHECK(static_cast<int64_t>(source_counts.size()) == S, "pairing: ", source_counts.size(),
             " source class counts for ", S, " classes");
  pairing_check_sizes(T, S, std::accumulate(source_counts.begin(), source_counts.end(), int64_t{0}),
                      min_samples);
  std::vector<bool> used(S, false);
  std::vector<ClassPair> pairs;
  int64_t samples = 0;
  for (int64_t round = 1; round == 1 || samples < min_samples; ++round) {
    for (const auto& p : greedy_pairing(similarity, used, round)) {
      used[p.source] = true;
      samples += source_counts[p.source];
      pairs.push_back(p);
    }
  }
  return pairs;
}

int64_t Pairing::samples() const {
  int64_t n = 0;
  for (const auto& p : pairs) n += source_counts.at(p.source);
  return n;
}

int64_t Pairing::aux_examples() const {
  int64_t first_round = 0;
  for (const auto& p : pairs)
    if (p.round == 1) first_round += source_counts.at(p.source);
  return aux_size > 0 && aux_size < first_round ? aux_size : samples();
}

std::vector<std::vector<int64_t>> Pairing::sources_by_target() const {
  std::vector<std::vector<int64_t>> out(target_classes.size());
  for (const auto& p : pairs) out.at(p.target).push_back(p.source);
  return out;
}

nlohmann::json Pairing::to_json() const {
  nlohmann::json pairs_json = nlohmann::json::array();
  for (const auto& p : pairs)
    pairs_json.push_back({{"target", target_classes[p.target]},
                          {"source", source_classes[p.source]},
                          {"target_label", p.target},
                          {"source_label", p.source},
                          {"similarity", p.similarity},
                          {"round", p.round},
                          {"samples", source_counts[p.source]}});
  return {{"format", "xfer-pairing-1"},       {"target_classes", target_classes},
          {"source_classes", source_classes}, {"target_counts", target_counts},
          {"source_counts", source_counts},   {"aux_size", aux_size},
          {"aux_samples", samples()},         {"aux_examples", aux_examples()},
          {"similarity", similarity},         {"pairs", pairs_json}};
}

Pairing Pairing::from_json(const nlohmann::json& j, const std::string& where) {
  Pairing p;
  try {
    XFER_CHECK(j.value("format", "") == "xfer-pairing-1", where,
               " is not a pairing file of `xfer select` (format '", j.value("format", ""), "')");
    p.target_classes = j.at("target_classes").get<std::vector<std::string>>();
    p.source_classes = j.at("source_classes").get<std::vector<std::string>>();
    p.target_counts = json_ints(j.at("target_counts"), where + ": target_counts");
    p.source_counts = json_ints(j.at("source_counts"), where + ": source_counts");
    p.similarity = j.at("similarity").get<std::vector<std::vector<double>>>();
    p.aux_size = json_int(j.at("aux_size"), where + ": aux_size");
    for (const auto& e : j.at("pairs"))
      p.pairs.push_back({json_int(e.at("target_label"), where + ": target_label"),
                         json_int(e.at("source_label"), where + ": source_label"),
                         e.at("similarity").get<double>(), json_int(e.at("round"), where + ": round")});
  } catch (const nlohmann::json::exception& e) {
    throw BadInput(cat(where, ": malformed pairing file: ", e.what()));
  }
  const int64_t T = static_cast<int64_t>(p.target_classes.size()),
                S = static_cast<int64_t>(p.source_classes.size());
  XFER_CHECK(
      static_cast<int64_t>(p.source_counts.size()) == S && static_cast<int64_t>(p.target_counts.size()) == T,
      where, ": class counts do not match the class lists");
  std::vector<bool> seen(S, false);
  for (const auto& pr : p.pairs) {
    XFER_CHECK(pr.target >= 0 && pr.target < T && pr.source >= 0 && pr.source < S, where, ": pair (",
               pr.target, ", ", pr.source, ") is out of range for ", T, " target and ", S, " source classes");
    XFER_CHECK(!seen[pr.source], where, ": source class '", p.source_classes[pr.source], "' is paired twice");
    seen[pr.source] = true;
  }
  const auto by_target = p.sources_by_target();
  for (int64_t t = 0; t < T; ++t)
    XFER_CHECK(!by_target[t].empty(), where, ": target class '", p.target_classes[t],
               "' has no source class");
  return p;
}

void Pairing::check_matches(const TensorDataset& target, const TensorDataset& source,
                            const std::string& where) const {
  XFER_CHECK(target_classes == target.class_names, where, " pairs the target classes [",
             join(target_classes, ", "), "] but the task's are [", join(target.class_names, ", "),
             "]; run `xfer select` for this task");
  XFER_CHECK(source_classes == source.class_names, where, " pairs the source classes [",
             join(source_classes, ", "), "] but --source has [", join(source.class_names, ", "),
             "]; run `xfer select` for this source");
}

namespace {

Pairing pairing_from_centroids(const torch::Tensor& target_centroids, const TensorDataset& target,
                               const torch::Tensor& source_centroids, const TensorDataset& source,
                               int64_t aux_size) {
  Pairing p;
  p.target_classes = target.class_names;
  p.source_classes = source.class_names;
  p.target_counts = target.class_counts();
  p.source_counts = source.class_counts();
  p.aux_size = aux_size;
  const torch::Tensor sim = cosine_similarity_matrix(target_centroids, source_centroids);
  for (int64_t t = 0; t < sim.size(0); ++t) {
    const torch::Tensor row = sim[t].contiguous();
    p.similarity.emplace_back(row.data_ptr<double>(), row.data_ptr<double>() + row.size(0));
  }
  p.pairs = pair_classes(sim, p.source_counts, aux_size);
  return p;
}

uint32_t pairing_crc(uint32_t crc, const torch::Tensor& t) {
  const torch::Tensor c = t.detach().contiguous().cpu();
  const auto* bytes = static_cast<const Bytef*>(c.data_ptr());
  const size_t total = static_cast<size_t>(c.numel()) * c.element_size();
  for (size_t done = 0; done < total;) {
    const size_t n = std::min<size_t>(total - done, size_t{1} << 30);
    crc = crc32(crc, bytes + done, static_cast<uInt>(n));
    done += n;
  }
  return crc;
}

/// The source centroids are the expensive half of the selection (every source example through the
/// backbone), and the same in every run of a process that fine-tunes one source model with one source
/// (the demo, seeds and sizes of a study). The last few are kept, keyed by the content of the weights
/// and of the data.
/// What identifies a source's images: their bytes, or an image folder's file paths.
std::string pairing_data_key(const TensorDataset& source) {
  if (!source.is_folder()) return std::to_string(pairing_crc(0, source.images));
  uint32_t crc = crc32(0L, Z_NULL, 0);
  for (int64_t i = 0; i < source.files->size(); ++i) {
    const std::string& p = source.files->path(i);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p.data()), static_cast<uInt>(p.size() + 1));
  }
  return cat("files", crc);
}

torch::Tensor pairing_source_centroids(const Model& pretrained, const TensorDataset& source) {
  static std::mutex mutex;
  static std::vector<std::pair<std::string, torch::Tensor>> cache;
  uint32_t weights = crc32(0L, Z_NULL, 0);
  for (const auto& t : pretrained->backbone->parameters()) weights = pairing_crc(weights, t);
  for (const auto& t : pretrained->backbone->buffers()) weights = pairing_crc(weights, t);
  const std::string key = cat(weights, "/", pairing_data_key(source), "/", pairing_crc(0, source.labels), "/",
                              source.num_classes(), "/", pretrained->backbone->parameters().front().device());
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& [k, c] : cache)
      if (k == key) return c;
  }
  const torch::Tensor c = class_centroids(extract_features(pretrained, source), source.labels,
                                          source.num_classes(), source.class_names);
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 4) cache.erase(cache.begin());
  cache.emplace_back(key, c);
  return c;
}

}  // namespace

Pairing pair_by_features(const torch::Tensor& target_features, const TensorDataset& target,
                         const torch::Tensor& source_features, const TensorDataset& source,
                         int64_t aux_size) {
  return pairing_from_centroids(
      class_centroids(target_features, target.labels, target.num_classes(), target.class_names), target,
      class_centroids(source_features, source.labels, source.num_classes(), source.class_names), source,
      aux_size);
}

Pairing select_auxiliary(const Model& pretrained, const TensorDataset& target, const TensorDataset& source,
                         int64_t aux_size) {
  pairing_check_sizes(target.num_classes(), source.num_classes(), source.size(), aux_size);
  XFER_CHECK(target.channels() == source.channels() && target.height() == source.height() &&
                 target.width() == source.width(),
             "target images are ", target.channels(), "x", target.height(), "x", target.width(),
             " but source images ", source.channels(), "x", source.height(), "x", source.width());
  return pairing_from_centroids(class_centroids(extract_features(pretrained, target), target.labels,
                                                target.num_classes(), target.class_names),
                                target, pairing_source_centroids(pretrained, source), source, aux_size);
}

void AuxOptions::fields(Fields& f) {
  f.add("aux", aux,
        "auxiliary set: paired (the classes paired by feature similarity), random (as many "
        "examples, uniformly from the whole source) or all (the whole source)");
  f.add("aux_size", aux_size,
        "repeat the class pairing until the auxiliary set holds at least this many "
        "examples (0: one round); below one round's examples, a seeded random subset of "
        "the paired classes of exactly this size")
      .non_negative();
  f.add("pairing", pairing, "a pairing.json written by `xfer select` (default: pair the classes in setup)")
      .path(Fields::PathKind::file);
}

std::vector<int64_t> AuxPools::all() const {
  std::vector<int64_t> out;
  for (const auto& p : pools) out.insert(out.end(), p.begin(), p.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

int64_t AuxPools::size() const {
  if (pools.size() == 1) return static_cast<int64_t>(pools[0].size());
  int64_t n = 0;
  for (const auto& p : pools) n += static_cast<int64_t>(p.size());
  return n;
}

namespace {

/// How many examples of each paired class a subsampled auxiliary set keeps: `keep` in proportion to the
/// class sizes (largest remainders round up; ties to the earlier class), at least one each.
std::vector<int64_t> pairing_class_quotas(const std::vector<int64_t>& sizes, int64_t keep) {
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const auto classes = static_cast<int64_t>(sizes.size());
  XFER_CHECK(keep >= classes, "--aux-size ", keep, " is smaller than the ", classes,
             " paired source classes; ", "a smaller auxiliary set keeps at least one example of each");
  std::vector<int64_t> quota(sizes.size(), 1);
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = classes;
  for (size_t c = 0; c < sizes.size(); ++c) {
    // The share of the examples beyond the one each class gets anyway.
    const double share = static_cast<double>(keep - classes) * static_cast<double>(sizes[c] - 1) /
                         static_cast<double>(std::max<int64_t>(1, total - classes));
    const auto whole = static_cast<int64_t>(share);
    quota[c] += whole;
    given += whole;
    remainders.emplace_back(share - static_cast<double>(whole), c);
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = 0; given < keep; ++i, ++given) ++quota[remainders[i % remainders.size()].second];
  return quota;
}

}  // namespace

AuxPools make_aux_pools(AuxMode mode, const Pairing* pairing, const TensorDataset& source,
                        int64_t target_classes, uint64_t seed) {
  AuxPools out;
  out.mode = mode;
  const auto by_class = source.indices_by_class();
  if (mode == AuxMode::paired) {
    XFER_CHECK(pairing != nullptr, "--aux paired needs a pairing");
    XFER_CHECK(static_cast<int64_t>(pairing->target_classes.size()) == target_classes, "the pairing has ",
               pairing->target_classes.size(), " target classes, the task ", target_classes);
    // Below one round, each paired class keeps a seeded random share of its examples.
    const bool subsample = pairing->aux_examples() < pairing->samples();
    std::map<int64_t, int64_t> keep;  // source class -> examples kept
    if (subsample) {
      std::vector<int64_t> classes, sizes;
      for (const auto& p : pairing->pairs) {
        classes.push_back(p.source);
        sizes.push_back(static_cast<int64_t>(by_class.at(p.source).size()));
      }
      const std::vector<int64_t> quota = pairing_class_quotas(sizes, pairing->aux_examples());
      for (size_t i = 0; i < classes.size(); ++i) keep[classes[i]] = quota[i];
    }
    for (const auto& sources : pairing->sources_by_target()) {
      std::vector<int64_t> pool;
      for (int64_t s : sources) {
        std::vector<int64_t> members = by_class.at(s);
        if (subsample) {
          shuffle_in_place(members, derive_seed(derive_seed(seed, "subsample"), static_cast<uint64_t>(s)));
          members.resize(static_cast<size_t>(keep.at(s)));
        }
        pool.insert(pool.end(), members.begin(), members.end());
        out.source_classes.push_back(s);
      }
      std::sort(pool.begin(), pool.end());
      out.pools.push_back(std::move(pool));
    }
  } else if (mode == AuxMode::random) {
    XFER_CHECK(pairing != nullptr, "--aux random needs a pairing for its size");
    std::vector<int64_t> all(source.size());
    std::iota(all.begin(), all.end(), int64_t{0});
    shuffle_in_place(all, seed);
    all.resize(static_cast<size_t>(std::min<int64_t>(pairing->aux_examples(), source.size())));
    std::sort(all.begin(), all.end());
    out.pools.push_back(std::move(all));
  } else {
    std::vector<int64_t> all(source.size());
    std::iota(all.begin(), all.end(), int64_t{0});
    out.pools.push_back(std::move(all));
  }
  if (mode != AuxMode::paired) {
    const torch::Tensor labels = source.labels.contiguous();
    const int64_t* y = labels.data_ptr<int64_t>();
    std::vector<bool> present(source.num_classes(), false);
    for (int64_t i : out.pools[0]) present[y[i]] = true;
    for (int64_t c = 0; c < source.num_classes(); ++c)
      if (present[c]) out.source_classes.push_back(c);
  }
  std::sort(out.source_classes.begin(), out.source_classes.end());
  return out;
}

AuxSampler::AuxSampler(std::shared_ptr<const AuxPools> pools, std::unique_ptr<Sampler> target_order,
                       torch::Tensor target_labels, uint64_t seed)
    : pools_(std::move(pools)), target_order_(std::move(target_order)), seed_(seed) {
  XFER_CHECK(pools_ && !pools_->pools.empty(), "the auxiliary set is empty");
  for (const auto& p : pools_->pools) XFER_CHECK(!p.empty(), "a target class has an empty auxiliary pool");
  XFER_CHECK(pools_->pools.size() == 1 || target_order_,
             "paired auxiliary pools need the target stream's order");
  const torch::Tensor y = target_labels.to(torch::kInt64).contiguous();
  target_labels_.assign(y.data_ptr<int64_t>(), y.data_ptr<int64_t>() + y.numel());
}

std::vector<int64_t> AuxSampler::indices(int64_t batch, int64_t batch_size) {
  const bool paired = pools_->pools.size() > 1;
  std::vector<int64_t> out(static_cast<size_t>(batch_size));
  const std::vector<int64_t> targets =
      paired ? target_order_->indices(batch, batch_size) : std::vector<int64_t>{};
  std::mt19937_64 engine(derive_seed(seed_, static_cast<uint64_t>(batch)));
  for (int64_t i = 0; i < batch_size; ++i) {
    const std::vector<int64_t>& pool = pools_->pool_of(paired ? target_labels_.at(targets[i]) : 0);
    out[i] = pool[uniform_index(engine, pool.size())];
  }
  return out;
}

SubsetSampler::SubsetSampler(std::vector<int64_t> indices, uint64_t seed)
    : subset_(std::move(indices)), order_(default_sampler(static_cast<int64_t>(subset_.size()), seed)) {}

std::vector<int64_t> SubsetSampler::indices(int64_t batch, int64_t batch_size) {
  std::vector<int64_t> out = order_->indices(batch, batch_size);
  for (auto& i : out) i = subset_[i];
  return out;
}

Pairing resolve_pairing(const AuxOptions& opts, const Model& pretrained, const TensorDataset& target,
                        const TensorDataset& source) {
  if (opts.aux == AuxMode::all) return {};
  if (!opts.pairing.empty()) {
    const std::string where = "--pairing " + opts.pairing;
    Pairing p = Pairing::from_json(read_json_file(opts.pairing), where);
    p.check_matches(target, source, where);
    XFER_CHECK(opts.aux_size == 0 || opts.aux_size == p.aux_size, "--aux-size ", opts.aux_size,
               " differs from the ", "--aux-size ", p.aux_size, " that ", opts.pairing,
               " was selected with; drop one of them");
    // The sample counts come from this run's source spec, which may hold out another validation split.
    p.source_counts = source.class_counts();
    p.target_counts = target.class_counts();
    return p;
  }
  return select_auxiliary(pretrained, target, source, opts.aux_size);
}

}  // namespace xfer
