#include "xfer/workflows/rank.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/spec.h"
#include "xfer/models/import.h"
#include "xfer/models/predict.h"
#include "xfer/source/transferability.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A candidate model for the target's images: an xfer run or checkpoint, or torchvision/timm weights
/// (ImageNet's normalisation unless an image folder gives its own, as `finetune --init` does).
Model rank_load_model(const std::string& path, const TensorDataset& target, torch::Device device) {
  Model model{nullptr};
  if (is_external_init(path)) {
    const Normalization input = target.is_folder() ? target.files->options().norm : imagenet_normalization();
    model = load_external_model(path, "", target.channels(), target.height(), target.width(), input);
  } else {
    model = CheckpointReader(resolve_checkpoint(path)).read_model();
  }
  model->to(device);
  return model;
}

/// Runs `fn`, prefixing a BadInput's message with `who`.
template <class Fn>
auto rank_naming(const std::string& who, Fn&& fn) {
  try {
    return fn();
  } catch (const BadInput& e) {
    throw BadInput(cat(who, ": ", e.what()));
  }
}

void rank_models(const RankOptions& opts, const std::vector<std::string>& paths, const Task& target,
                 torch::Device device, Ranking& r) {
  const bool needs_head = std::any_of(r.metrics.begin(), r.metrics.end(), metric_needs_source_head);
  std::vector<Model> models;  // every model checked before the first forward pass
  for (const auto& path : paths) {
    Model m = rank_naming(cat("model ", path), [&] { return rank_load_model(path, target.train, device); });
    rank_naming(cat("model ", path),
                [&] { check_input_shape(m, target.train, cat("the target ", opts.target)); });
    XFER_CHECK(
        !needs_head || m->has_head(opts.head), "model ", path, " has no '", opts.head,
        "' head: LEEP and NCE read the source classifier's outputs (name its head with --head, or use ",
        "--metric logme,hscore)");
    models.push_back(m);
  }
  PredictOptions ask;
  ask.batch_size = opts.batch;
  if (needs_head) ask.heads = {opts.head};
  for (size_t i = 0; i < paths.size(); ++i) {
    RankedCandidate c;
    c.name = paths[i];
    double t = now_seconds();
    const Predictions p = predict(models[i], target.train, ask);
    c.forward_seconds = now_seconds() - t;
    t = now_seconds();
    const torch::Tensor probs =
        needs_head ? torch::softmax(p.logits.at(opts.head).to(torch::kFloat64), 1) : torch::Tensor();
    c.scores = transferability_scores(r.metrics, p.features, probs, target.train.labels, r.target_classes);
    c.metric_seconds = now_seconds() - t;
    c.feature_dim = p.features.size(1);
    const HeadInfo* head = models[i]->arch().head(opts.head);
    c.source_classes = head ? static_cast<int64_t>(head->class_names.size()) : 0;
    r.candidates.push_back(c);
  }
}

void rank_sources(const RankOptions& opts, const std::vector<std::string>& specs, const Task& target,
                  torch::Device device, Ranking& r) {
  Model model =
      rank_naming(cat("model ", r.model), [&] { return rank_load_model(r.model, target.train, device); });
  rank_naming(cat("model ", r.model),
              [&] { check_input_shape(model, target.train, cat("the target ", opts.target)); });
  std::vector<Task> sources;  // every source checked before the first forward pass
  for (const auto& spec : specs) {
    Task s =
        rank_naming(cat("source ", spec), [&] { return load_task(spec, static_cast<uint64_t>(opts.seed)); });
    XFER_CHECK(s.train.size() > 0, "source ", spec, " has no training images");
    for (const int64_t n : s.train.class_counts())
      XFER_CHECK(n > 0, "source ", spec, ": every class needs training images to be a class of the source");
    rank_naming(cat("model ", r.model), [&] { check_input_shape(model, s.train, cat("source ", spec)); });
    sources.push_back(std::move(s));
  }
  PredictOptions ask;
  ask.batch_size = opts.batch;
  const torch::Tensor target_features = predict(model, target.train, ask).features;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorDataset& s = sources[i].train;
    RankedCandidate c;
    c.name = specs[i];
    double t = now_seconds();
    const torch::Tensor f = predict(model, s, ask).features;
    c.forward_seconds = now_seconds() - t;
    t = now_seconds();
    const torch::Tensor theta =
        source_class_posteriors(fit_source_classes(f, s.labels, s.num_classes()), target_features);
    c.scores = transferability_scores(r.metrics, theta, theta, target.train.labels, r.target_classes);
    c.metric_seconds = now_seconds() - t;
    c.feature_dim = theta.size(1);
    c.source_classes = s.num_classes();
    c.source_examples = s.size();
    r.candidates.push_back(c);
  }
}

/// A model's name on the plot's axis: its file, or its run directory.
std::string rank_model_name(const std::string& name) {
  const size_t colon = name.find(':');
  const std::string prefix = is_external_init(name) ? name.substr(0, colon + 1) : "";
  fs::path p(prefix.empty() ? name : name.substr(colon + 1));
  if (!p.has_filename()) p = p.parent_path();  // "runs/a/"
  if (p.parent_path().filename() == "checkpoints")
    return prefix + (p.parent_path().parent_path().filename() / p.filename()).string();
  return prefix + p.filename().string();
}

/// The part of each name that differs from the others ("2,4,6" of "fmnist:classes=2,4,6:part=0/2"), cut
/// at ':', '=' or '/', and the names' common form with '*' for it. Unchanged when nothing is shared.
std::pair<std::vector<std::string>, std::string> rank_distinct_parts(const std::vector<std::string>& names) {
  if (names.size() < 2) return {names, ""};
  size_t pre = names[0].size(), post = names[0].size();
  for (const auto& n : names) {
    size_t i = 0, j = 0;
    while (i < std::min(pre, n.size()) && n[i] == names[0][i]) ++i;
    while (j < std::min(post, n.size()) && n[n.size() - 1 - j] == names[0][names[0].size() - 1 - j]) ++j;
    pre = i, post = j;
  }
  const std::string seps = ":=/";
  while (pre > 0 && seps.find(names[0][pre - 1]) == std::string::npos) --pre;
  while (post > 0 && seps.find(names[0][names[0].size() - post]) == std::string::npos) --post;
  std::vector<std::string> parts;
  for (const auto& n : names) {
    if (pre + post >= n.size()) return {names, ""};
    parts.push_back(n.substr(pre, n.size() - pre - post));
  }
  if (pre + post == 0) return {parts, ""};
  return {parts, names[0].substr(0, pre) + "*" + names[0].substr(names[0].size() - post)};
}

/// Text gnuplot shows as written: its enhanced mode would make "per_class" a subscript.
std::string rank_plain(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string("_^@&~{}").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

void RankOptions::fields(Fields& f) {
  f.add("target", target, "target dataset spec: its labelled training images are scored");
  f.add("models", models,
        "candidate models, comma-separated: run directories of `xfer pretrain`, checkpoints, "
        "state_dict:FILE or torchscript:FILE");
  f.add("sources", sources,
        "candidate source specs separated by ';', ranked for the one --models model: each "
        "source's classes, fitted on its images' features, against the target's");
  f.add("metric", metric,
        "logme, leep, nce, hscore, all, or a comma-separated list; the first orders the table");
  f.add("head", head, "the models' head over their source classes, read by LEEP and NCE");
  f.add("out", out, "directory for rank.json, rank.md and rank.png");
  f.add("batch", batch, "images per forward pass").at_least(1);
  f.add("seed", seed, "seed for specs without seed=").non_negative();
  f.add("threads", threads, "CPU threads (0 = all cores)").non_negative();
  f.add("device", device, "cpu, cuda or cuda:N");
}

std::vector<size_t> Ranking::order(const std::string& metric) const {
  std::vector<size_t> idx(candidates.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return candidates[a].scores.at(metric) > candidates[b].scores.at(metric);
  });
  return idx;
}

nlohmann::json Ranking::to_json() const {
  nlohmann::json cands = nlohmann::json::array(), ranking = nlohmann::json::object();
  for (const auto& c : candidates)
    cands.push_back({{"name", c.name},
                     {"feature_dim", c.feature_dim},
                     {"source_classes", c.source_classes},
                     {"source_examples", c.source_examples},
                     {"scores", c.scores},
                     {"ranks", c.ranks},
                     {"forward_seconds", c.forward_seconds},
                     {"metric_seconds", c.metric_seconds}});
  for (const auto& m : metrics) {
    nlohmann::json names = nlohmann::json::array();
    for (size_t i : order(m)) names.push_back(candidates[i].name);
    ranking[m] = names;
  }
  return {{"kind", "xfer rank"},
          {"mode", mode},
          {"target", target},
          {"model", model},
          {"metrics", metrics},
          {"target_examples", target_examples},
          {"target_classes", target_classes},
          {"seconds", seconds},
          {"candidates", cands},
          {"ranking", ranking}};
}

Ranking rank_candidates(const RankOptions& opts) {
  const double start = now_seconds();
  Fields f;
  RankOptions copy = opts;
  copy.fields(f);
  f.validate();
  XFER_CHECK(!opts.target.empty(), "xfer rank needs --target SPEC (the task to transfer to)");
  const std::vector<std::string> models = split_nonempty(opts.models, ',');
  XFER_CHECK(!models.empty(), "xfer rank needs --models: the candidate models, comma-separated");
  const std::vector<std::string> sources = split_nonempty(opts.sources, ';');
  const bool by_source = !opts.sources.empty();
  XFER_CHECK(!by_source || !sources.empty(), "--sources '", opts.sources, "' names no source spec");
  XFER_CHECK(!by_source || models.size() == 1,
             "--sources ranks sources for one model; give one --models entry, got ", models.size());
  const std::vector<std::string>& names = by_source ? sources : models;
  for (size_t i = 0; i < names.size(); ++i)
    XFER_CHECK(std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), names[i]) ==
                   names.begin() + static_cast<std::ptrdiff_t>(i),
               by_source ? "--sources" : "--models", " names '", names[i], "' twice");
  Ranking r;
  r.metrics = parse_transferability_metrics(opts.metric);
  r.mode = by_source ? "sources" : "models";
  r.target = opts.target;
  r.model = by_source ? models[0] : "";
  const torch::Device device = parse_device(opts.device);
  set_threads(static_cast<int>(opts.threads));
  const Task target = load_task(opts.target, static_cast<uint64_t>(opts.seed));
  r.target_classes = target.num_classes();
  r.target_examples = target.train.size();
  XFER_CHECK(r.target_classes >= 2, "the target ", opts.target, " has ", r.target_classes,
             " class; ranking needs ",
             "at least 2 (with one, every label is the same and no source can help tell them apart)");
  const std::vector<int64_t> counts = target.train.class_counts();
  for (size_t c = 0; c < counts.size(); ++c)
    XFER_CHECK(counts[c] > 0, "the target ", opts.target, " has no training images of class '",
               target.class_names()[c], "'");
  if (by_source)
    rank_sources(opts, sources, target, device, r);
  else
    rank_models(opts, models, target, device, r);

  for (auto& c : r.candidates)
    for (const auto& m : r.metrics) {
      if (!std::isfinite(c.scores.at(m)))
        throw NumericalError(cat(metric_label(m), " of ", c.name, " is not finite (", c.scores.at(m), ")"));
      int64_t higher = 0;
      for (const auto& o : r.candidates) higher += o.scores.at(m) > c.scores.at(m) ? 1 : 0;
      c.ranks[m] = higher + 1;
    }
  r.seconds = now_seconds() - start;
  return r;
}

Table rank_table(const Ranking& r) {
  std::vector<std::string> header = {"#", r.mode == "sources" ? "source" : "model"};
  for (const auto& m : r.metrics) header.push_back(metric_label(m));
  if (r.mode == "sources") {
    header.insert(header.end(), {"classes", "examples"});
  } else {
    header.insert(header.end(), {"features", "source classes"});
  }
  header.push_back("seconds");
  Table t(header);
  for (size_t c = 2; c < header.size(); ++c) t.align_right(c);
  t.align_right(0);
  const bool several = r.metrics.size() > 1;
  int64_t row = 0;
  for (size_t i : r.order(r.metrics.front())) {
    const RankedCandidate& c = r.candidates[i];
    std::vector<std::string> cells = {std::to_string(++row), c.name};
    for (const auto& m : r.metrics)
      cells.push_back(fixed(c.scores.at(m), 4) + (several ? cat(" (", c.ranks.at(m), ")") : std::string()));
    if (r.mode == "sources") {
      cells.insert(cells.end(), {std::to_string(c.source_classes), std::to_string(c.source_examples)});
    } else {
      cells.insert(cells.end(), {std::to_string(c.feature_dim),
                                 c.source_classes ? std::to_string(c.source_classes) : "-"});
    }
    cells.push_back(fixed(c.forward_seconds + c.metric_seconds, 2));
    t.add_row(cells);
  }
  return t;
}

Plot rank_plot(const Ranking& r) {
  Plot p;
  p.title = rank_plain(cat("Transferability to ", r.target, " (", r.target_examples, " images)"));
  p.ylabel = "score rescaled per metric: worst 0, best 1";
  p.style = "linespoints";
  const std::vector<size_t> order = r.order(r.metrics.front());
  std::vector<std::string> names;
  for (size_t i : order)
    names.push_back(r.mode == "models" ? rank_model_name(r.candidates[i].name) : r.candidates[i].name);
  const auto [parts, common] = rank_distinct_parts(names);
  constexpr size_t kMax = 36;
  for (const auto& part : parts)
    p.xtics.push_back(rank_plain(part.size() <= kMax ? part : "..." + part.substr(part.size() - (kMax - 3))));
  p.xlabel = rank_plain(cat(r.mode == "sources" ? "source" : "model", common.empty() ? "" : " " + common,
                            ", best first by ", metric_label(r.metrics.front())));
  for (const auto& m : r.metrics) {
    double lo = 0, hi = 0;
    for (size_t k = 0; k < order.size(); ++k) {
      const double v = r.candidates[order[k]].scores.at(m);
      lo = k == 0 ? v : std::min(lo, v);
      hi = k == 0 ? v : std::max(hi, v);
    }
    Series s;
    s.name = metric_label(m);
    for (size_t k = 0; k < order.size(); ++k) {
      s.x.push_back(static_cast<double>(k));
      s.y.push_back(hi > lo ? (r.candidates[order[k]].scores.at(m) - lo) / (hi - lo) : 1.0);
    }
    p.series.push_back(s);
  }
  return p;
}

std::string best_ranked_source(const nlohmann::json& rank, const std::string& metric,
                               const std::string& where) {
  auto text = [&](const char* key) {
    return rank.contains(key) && rank[key].is_string() ? rank[key].get<std::string>() : std::string();
  };
  XFER_CHECK(rank.is_object() && text("kind") == "xfer rank", where,
             ": not a rank.json of `xfer rank` (no \"kind\": \"xfer rank\")");
  XFER_CHECK(text("mode") == "sources", where, ": ranks models, not sources; run `xfer rank --sources ",
             "\"S1;S2\"` to rank candidate sources");
  XFER_CHECK(rank.contains("metrics") && rank["metrics"].is_array() && !rank["metrics"].empty() &&
                 rank["metrics"][0].is_string(),
             where, ": \"metrics\" must be a non-empty list of metric names");
  const std::string m = metric.empty() ? rank["metrics"][0].get<std::string>() : metric;
  bool held = false;
  for (const auto& name : rank["metrics"]) held = held || (name.is_string() && name.get<std::string>() == m);
  XFER_CHECK(held, where, " holds no '", m, "' scores (it has ", rank["metrics"].dump(), ")");
  XFER_CHECK(rank.contains("candidates") && rank["candidates"].is_array() && !rank["candidates"].empty(),
             where, ": \"candidates\" must be a non-empty list");
  std::string best;
  double best_score = 0;
  for (const auto& c : rank["candidates"]) {
    XFER_CHECK(c.is_object() && c.contains("name") && c["name"].is_string() &&
                   !c["name"].get<std::string>().empty() && c.contains("scores") && c["scores"].is_object() &&
                   c["scores"].contains(m) && c["scores"][m].is_number(),
               where, ": each candidate needs a \"name\" and a numeric \"scores\".", m, ", got ",
               c.dump().substr(0, 200));
    const double s = c["scores"][m].get<double>();
    XFER_CHECK(std::isfinite(s), where, ": the ", m, " score of '", c["name"].get<std::string>(),
               "' is not finite");
    if (best.empty() || s > best_score) best = c["name"].get<std::string>(), best_score = s;
  }
  return best;
}

}  // namespace xfer
