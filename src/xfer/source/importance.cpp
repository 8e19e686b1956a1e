#include "xfer/source/importance.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/models/predict.h"

namespace xfer {
namespace {

void datl_check_size(int64_t n, const std::string& matcher) {
  XFER_CHECK(n > 0, "--size (the pre-training set's size N) must be > 0 for the ", matcher, " matcher, got ",
             n);
}

}  // namespace

torch::Tensor tempered_softmax(const torch::Tensor& logits, double temperature) {
  XFER_CHECK(std::isfinite(temperature) && temperature > 0, "--temperature must be > 0, got ", temperature);
  return torch::softmax(logits.to(torch::kFloat64) / temperature, -1);
}

ImportanceWeights ImportanceWeights::from_target_distribution(std::vector<std::string> classes,
                                                              std::vector<int64_t> examples,
                                                              std::vector<double> p_target,
                                                              double temperature) {
  const size_t k = classes.size();
  XFER_CHECK(k > 0, "importance weights need at least one source class");
  XFER_CHECK(examples.size() == k && p_target.size() == k, "importance weights: ", k, " classes but ",
             examples.size(), " counts and ", p_target.size(), " target probabilities");
  XFER_CHECK(std::isfinite(temperature) && temperature > 0, "--temperature must be > 0, got ", temperature);
  double sum_p = 0;
  int64_t n = 0;
  for (size_t y = 0; y < k; ++y) {
    XFER_CHECK(std::isfinite(p_target[y]) && p_target[y] >= 0, "P_t of class '", classes[y],
               "' must be a finite number >= 0, got ", p_target[y]);
    XFER_CHECK(examples[y] >= 0, "class '", classes[y], "' has a negative example count ", examples[y]);
    sum_p += p_target[y];
    n += examples[y];
  }
  XFER_CHECK(sum_p > 0, "the target distribution P_t is all zeros");
  XFER_CHECK(n > 0, "the source has no examples");
  ImportanceWeights w;
  w.classes = std::move(classes);
  w.examples = std::move(examples);
  w.temperature = temperature;
  for (size_t y = 0; y < k; ++y) {
    const double pt = p_target[y] / sum_p;
    XFER_CHECK(pt == 0 || w.examples[y] > 0, "class '", w.classes[y], "' has P_t = ", pt,
               " but no examples in the source, so it cannot be sampled");
    const double ps = static_cast<double>(w.examples[y]) / static_cast<double>(n);
    w.p_target.push_back(pt);
    w.p_source.push_back(ps);
    w.weight.push_back(ps > 0 ? pt / ps : 0.0);
  }
  return w;
}

int64_t ImportanceWeights::source_size() const {
  return std::accumulate(examples.begin(), examples.end(), int64_t{0});
}

std::vector<int64_t> ImportanceWeights::order() const {
  std::vector<int64_t> idx(classes.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return weight[a] > weight[b]; });
  return idx;
}

nlohmann::json ImportanceWeights::to_json() const {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t y = 0; y < classes.size(); ++y)
    rows.push_back({{"label", y},
                    {"name", classes[y]},
                    {"examples", examples[y]},
                    {"p_target", p_target[y]},
                    {"p_source", p_source[y]},
                    {"weight", weight[y]}});
  return {{"kind", "xfer importance weights"},
          {"temperature", temperature},
          {"provenance", provenance},
          {"classes", rows}};
}

ImportanceWeights ImportanceWeights::from_json(const nlohmann::json& j, const std::string& where) {
  XFER_CHECK(
      j.is_object() && j.contains("classes") && j["classes"].is_array() && !j["classes"].empty(), where,
      ": not an importance-weights file (expected an object with a \"classes\" array, as `xfer weights` "
      "writes)");
  std::vector<std::string> names;
  std::vector<int64_t> examples;
  std::vector<double> p_target;
  for (const auto& c : j["classes"]) {
    XFER_CHECK(c.is_object() && c.contains("name") && c["name"].is_string() && c.contains("p_target") &&
                   c["p_target"].is_number() && c.contains("examples") && c["examples"].is_number_integer(),
               where, ": each class needs \"name\", \"examples\" and \"p_target\", got ", c.dump());
    names.push_back(c["name"].get<std::string>());
    examples.push_back(c["examples"].get<int64_t>());
    p_target.push_back(c["p_target"].get<double>());
  }
  const double t =
      j.contains("temperature") && j["temperature"].is_number() ? j["temperature"].get<double>() : 2.0;
  try {
    ImportanceWeights w = from_target_distribution(names, examples, p_target, t);
    if (j.contains("provenance")) w.provenance = j["provenance"];
    return w;
  } catch (const BadInput& e) {
    throw BadInput(cat(where, ": ", e.what()));
  }
}

std::vector<double> estimate_target_distribution(Model& model, const std::string& head,
                                                 const torch::Tensor& images, double temperature,
                                                 int64_t batch_size) {
  XFER_CHECK(std::isfinite(temperature) && temperature > 0, "--temperature must be > 0, got ", temperature);
  XFER_CHECK(batch_size >= 1, "batch size must be >= 1, got ", batch_size);
  XFER_CHECK(images.dim() == 4 && images.size(0) > 0, "the target has no images");
  const Arch& arch = model->arch();
  XFER_CHECK(arch.head(head) != nullptr, "the classifier has no '", head, "' head");
  XFER_CHECK(
      images.size(1) == arch.in_channels && images.size(2) == arch.height && images.size(3) == arch.width,
      "the target images are ", images.size(1), "x", images.size(2), "x", images.size(3),
      " but the classifier takes ", arch.in_channels, "x", arch.height, "x", arch.width);
  TensorDataset target;
  target.images = images;
  target.labels = torch::zeros({images.size(0)}, torch::kInt64);  // unread: predict needs only the images
  const torch::Tensor logits = predict(model, target, {false, {head}, batch_size}).logits.at(head);
  const torch::Tensor mean = tempered_softmax(logits, temperature).mean(0).contiguous();
  return std::vector<double>(mean.data_ptr<double>(), mean.data_ptr<double>() + mean.numel());
}

ImportanceWeights compute_importance_weights(Model& model, const std::string& head,
                                             const TensorDataset& source, const torch::Tensor& target_images,
                                             double temperature, int64_t batch_size) {
  XFER_CHECK(std::isfinite(temperature) && temperature > 0, "--temperature must be > 0, got ", temperature);
  const HeadInfo* info = model->arch().head(head);
  XFER_CHECK(info != nullptr, "the classifier has no '", head, "' head");
  const int64_t outputs = static_cast<int64_t>(info->class_names.size());
  XFER_CHECK(
      outputs == source.num_classes(), "the classifier's '", head, "' head has ", outputs,
      " outputs but the source has ", source.num_classes(),
      " classes; train the classifier on the whole source label set (e.g. `xfer pretrain --source` with the "
      "same spec)");
  XFER_CHECK(info->class_names == source.class_names, "the classifier's '", head, "' classes (",
             join(info->class_names, ", "), ") are not the source's (", join(source.class_names, ", "), ")");
  std::vector<double> p_t = estimate_target_distribution(model, head, target_images, temperature, batch_size);
  ImportanceWeights w = ImportanceWeights::from_target_distribution(source.class_names, source.class_counts(),
                                                                    p_t, temperature);
  w.provenance["target_images"] = target_images.size(0);
  w.provenance["head"] = head;
  return w;
}

ImportanceWeights weights_for_source(const ImportanceWeights& weights, const TensorDataset& source,
                                     const std::string& where) {
  XFER_CHECK(weights.classes.size() == source.class_names.size(), where, " lists ", weights.classes.size(),
             " classes (", join(weights.classes, ", "), ") but the source has ", source.class_names.size(),
             " (", join(source.class_names, ", "), ")");
  for (size_t y = 0; y < weights.classes.size(); ++y)
    XFER_CHECK(weights.classes[y] == source.class_names[y], where, ": class ", y, " is '", weights.classes[y],
               "' there but '", source.class_names[y],
               "' in the source; the weights were computed for another "
               "source (",
               join(weights.classes, ", "), " vs ", join(source.class_names, ", "), ")");
  ImportanceWeights w = ImportanceWeights::from_target_distribution(weights.classes, source.class_counts(),
                                                                    weights.p_target, weights.temperature);
  w.provenance = weights.provenance;
  return w;
}

std::vector<int64_t> largest_remainder(const std::vector<double>& shares, int64_t total,
                                       const std::vector<int64_t>& caps) {
  const size_t k = shares.size();
  XFER_CHECK(total >= 0, "cannot divide a negative total ", total);
  XFER_CHECK(caps.empty() || caps.size() == k, "largest_remainder: ", k, " shares but ", caps.size(),
             " caps");
  std::vector<int64_t> out(k, 0);
  const double sum = std::accumulate(shares.begin(), shares.end(), 0.0);
  if (total == 0 || k == 0) return out;
  XFER_CHECK(sum > 0, "cannot divide ", total, " in proportion to shares that are all zero");
  auto cap = [&](size_t i) { return caps.empty() ? total : caps[i]; };
  std::vector<double> rest(k);
  int64_t given = 0;
  for (size_t i = 0; i < k; ++i) {
    const double quota = static_cast<double>(total) * shares[i] / sum;
    out[i] = std::min<int64_t>(static_cast<int64_t>(std::floor(quota)), cap(i));
    rest[i] = quota - static_cast<double>(out[i]);
    given += out[i];
  }
  std::vector<size_t> idx(k);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return rest[a] > rest[b]; });
  // One extra example per class, largest remainder first; a second pass only if caps got in the way.
  for (int pass = 0; pass < 2 && given < total; ++pass)
    for (size_t i : idx) {
      if (given == total) break;
      if (out[i] < cap(i) && (pass == 1 || rest[i] > 0)) ++out[i], ++given;
    }
  XFER_CHECK(given == total, "cannot divide ", total, " examples within the class sizes");
  return out;
}

std::vector<int64_t> same_counts(const ImportanceWeights& w, int64_t n) {
  datl_check_size(n, "same");
  return largest_remainder(w.p_target, n);
}

std::vector<int64_t> elastic_counts(const ImportanceWeights& w, int64_t n) {
  datl_check_size(n, "elastic");
  const int64_t unique = w.source_size();
  XFER_CHECK(n <= unique, "--size ", n,
             " is larger than the source: the elastic matcher never repeats an example "
             "and the source has ",
             unique, " unique examples (use --matcher same to repeat examples)");
  std::vector<int64_t> out(w.classes.size(), 0);
  std::vector<int64_t> active;  // classes still to divide among, by descending w
  for (int64_t y : w.order())
    if (w.examples[y] > 0) active.push_back(y);
  int64_t budget = n;
  while (budget > 0) {
    // Shares in proportion to P_t; by their sizes once every class left has P_t = 0.
    std::vector<double> shares;
    for (int64_t y : active) shares.push_back(w.p_target[y]);
    if (std::accumulate(shares.begin(), shares.end(), 0.0) <= 0)
      for (size_t i = 0; i < active.size(); ++i) shares[i] = static_cast<double>(w.examples[active[i]]);
    const double sum = std::accumulate(shares.begin(), shares.end(), 0.0);
    // share / n_y is proportional to w, so if the highest-w class can supply its share, every class can.
    const int64_t top = active.front();
    if (static_cast<double>(budget) * shares.front() / sum > static_cast<double>(w.examples[top])) {
      out[top] = w.examples[top];
      budget -= w.examples[top];
      active.erase(active.begin());
      continue;
    }
    std::vector<int64_t> caps;
    for (int64_t y : active) caps.push_back(w.examples[y]);
    const std::vector<int64_t> part = largest_remainder(shares, budget, caps);
    for (size_t i = 0; i < active.size(); ++i) out[active[i]] = part[i];
    break;
  }
  return out;
}

MatchedSet match_distribution(const std::string& matcher, const ImportanceWeights& w,
                              const std::vector<std::vector<int64_t>>& by_class, int64_t n, uint64_t seed) {
  XFER_CHECK(matcher == "same" || matcher == "elastic", "--matcher must be same or elastic here, got '",
             matcher, "'");
  XFER_CHECK(by_class.size() == w.classes.size(), "the source has ", by_class.size(),
             " classes but the weights ", w.classes.size());
  for (size_t y = 0; y < by_class.size(); ++y)
    XFER_CHECK(static_cast<int64_t>(by_class[y].size()) == w.examples[y], "class '", w.classes[y], "' has ",
               by_class[y].size(), " examples but the weights count ", w.examples[y]);
  const bool same = matcher == "same";
  MatchedSet set;
  set.counts = same ? same_counts(w, n) : elastic_counts(w, n);
  for (size_t y = 0; y < by_class.size(); ++y) {
    const int64_t k = set.counts[y];
    if (k == 0) continue;
    const uint64_t class_seed = derive_seed(seed, cat(matcher, "/", y));
    std::vector<int64_t> picked;
    if (same) {  // with replacement, uniformly within the class
      std::mt19937_64 engine(class_seed);
      const uint64_t m = by_class[y].size();
      XFER_CHECK(m > 0, "class '", w.classes[y], "' has no examples to draw ", k, " from");
      for (int64_t i = 0; i < k; ++i) picked.push_back(by_class[y][uniform_index(engine, m)]);
      std::sort(picked.begin(), picked.end());
      set.unique += static_cast<int64_t>(std::unique(picked.begin(), picked.end()) - picked.begin());
    } else {  // a seeded shuffle of the class, cut at its count
      picked = by_class[y];
      shuffle_in_place(picked, class_seed);
      picked.resize(k);
      std::sort(picked.begin(), picked.end());
      set.unique += k;
    }
    set.indices.insert(set.indices.end(), picked.begin(), picked.end());
  }
  return set;
}

void PretrainSampling::fields(Fields& f) {
  f.add("weights", weights, "importance weights (weights.json of `xfer weights`) to pre-train by")
      .path(Fields::PathKind::file);
  f.add("weights_from", weights_from,
        "instead of --weights: compute them with this source classifier (a run "
        "directory or checkpoint), as `xfer weights` does")
      .path(Fields::PathKind::model);
  f.add("weights_target", weights_target,
        "with --weights-from: the target spec whose training images (never "
        "its labels) give P_t")
      .path(Fields::PathKind::spec);
  f.add("weights_temperature", weights_temperature, "with --weights-from: softmax temperature T for P_t")
      .positive();
  f.add("matcher", matcher,
        "how the weights build the pre-training set: same (N draws with replacement, "
        "N*P_t(y) of class y), elastic (N distinct examples), or none (the whole source)")
      .choices({"none", "same", "elastic"});
  f.add("size", size, "N: examples in the pre-training set built by --matcher same|elastic");
  f.add("loss_weights", loss_weights,
        "with --matcher none: multiply each example's cross-entropy by w(y) "
        "(mean weight over the source = 1)");
}

void PretrainSampling::check() const {
  XFER_CHECK(weights.empty() || weights_from.empty(),
             "give --weights FILE or --weights-from MODEL, not both");
  XFER_CHECK(!weights.empty() || !weights_from.empty(),
             "method datl pre-trains by importance weights: give --weights FILE "
             "(the weights.json of `xfer weights`) or --weights-from MODEL --weights-target SPEC");
  XFER_CHECK(weights_from.empty() == weights_target.empty(),
             "--weights-from MODEL and --weights-target SPEC go "
             "together: the classifier and the target images it estimates P_t on");
  XFER_CHECK(matcher == "none" || matcher == "same" || matcher == "elastic",
             "--matcher must be one of none, same, elastic, got '", matcher, "'");
  if (matcher == "none") {
    XFER_CHECK(loss_weights, weights_name(), " needs --matcher same|elastic --size N, or --loss-weights");
    XFER_CHECK(size == 0, "--size ", size,
               " is for --matcher same|elastic; --loss-weights uses the whole source");
  } else {
    XFER_CHECK(!loss_weights, "--loss-weights is for --matcher none: the ", matcher,
               " matcher already applies the weights by sampling");
    datl_check_size(size, matcher);
  }
}

std::string PretrainSampling::weights_name() const {
  return weights_from.empty() ? cat("--weights ", weights) : cat("the weights of ", weights_from);
}

ImportanceWeights importance_weights_for_target(Model& model, std::string head, const TensorDataset& source,
                                                const std::string& source_name,
                                                const std::string& target_spec, double temperature,
                                                uint64_t seed) {
  if (head.empty())
    head =
        model->has_head("source") || model->arch().heads.size() != 1 ? "source" : model->arch().heads[0].name;
  const Task target = load_task(target_spec, seed);
  const torch::Tensor target_images = target.train.eval_images(0, target.train.size());
  ImportanceWeights w = compute_importance_weights(model, head, source, target_images, temperature);
  w.provenance["source"] = source_name;
  w.provenance["target"] = target_spec;
  w.provenance["target_images"] = target.train.size();
  return w;
}

SampledSource sample_source(const TensorDataset& source, const PretrainSampling& opts, uint64_t seed,
                            const ImportanceWeights* computed) {
  opts.check();
  SampledSource out;
  out.data = source;
  XFER_CHECK(opts.weights_from.empty() || computed, "internal: --weights-from without computed weights");
  const ImportanceWeights file =
      computed ? *computed : ImportanceWeights::from_json(read_json_file(opts.weights), opts.weights);
  if (file.examples != source.class_counts())
    log_info(cat("note: ", opts.weights_name(),
                 " were computed on a source with other class sizes; P_s and w are ",
                 "recomputed from the pre-training source"));
  const ImportanceWeights w = weights_for_source(file, source, opts.weights_name());
  out.summary = {{"weights", opts.weights},
                 {"matcher", opts.matcher},
                 {"loss_weights", opts.loss_weights},
                 {"source_size", source.size()}};
  if (computed) {
    out.summary["weights_from"] = opts.weights_from;
    out.summary["weights_target"] = opts.weights_target;
    out.summary["p_target"] = w.p_target;
    out.summary["class_weights"] = w.weight;
  }
  if (opts.loss_weights) {
    // sum_y P_s(y) w(y) = sum_y P_t(y) = 1: the mean weight over the source is 1 without rescaling.
    out.loss_weights = w.weight;
    out.summary["size"] = source.size();
    out.summary["unique"] = source.size();
    out.summary["class_weights"] = w.weight;
    return out;
  }
  const MatchedSet set =
      match_distribution(opts.matcher, w, source.indices_by_class(), opts.size, derive_seed(seed, "matcher"));
  out.data = source.subset(torch::tensor(set.indices, torch::kInt64));
  out.summary["size"] = opts.size;
  out.summary["unique"] = set.unique;
  out.summary["class_counts"] = set.counts;
  return out;
}

}  // namespace xfer
