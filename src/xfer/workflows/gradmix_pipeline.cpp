#include "xfer/workflows/gradmix_pipeline.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/data/spec.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"
#include "xfer/source/pseudo_labels.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {

void GradMixPseudoOptions::fields(Fields& f) {
  f.add("grid", grid, "stage 1: the (beta, gamma) pairs to train, as beta:gamma,beta:gamma,...");
  f.add("top", top, "stage 2: the ensemble size R (the best models on hyper-validation)").at_least(1);
  f.add("modes", modes,
        "stage 3: the final models, comma-separated: hard or soft, optionally +vat or +mixmatch");
}

std::vector<std::pair<double, double>> parse_gradmix_grid(const std::string& grid) {
  std::vector<std::pair<double, double>> out;
  for (const auto& item : split(grid, ',')) {
    const std::vector<std::string> pair = split(item, ':');
    const std::optional<double> beta = pair.size() == 2 ? parse_double(pair[0]) : std::nullopt,
                                gamma = pair.size() == 2 ? parse_double(pair[1]) : std::nullopt;
    XFER_CHECK(beta && gamma, "--grid expects beta:gamma pairs like 10:0.5,5:2, got '", item, "' in '", grid,
               "'");
    XFER_CHECK(*beta > 0 && *gamma >= 0, "--grid: beta must be > 0 and gamma >= 0, got ", item);
    out.emplace_back(*beta, *gamma);
  }
  XFER_CHECK(!out.empty(), "--grid is empty");
  return out;
}

bool plot_gradmix_weights(const std::string& run_dir, const std::string& source, const std::string& path) {
  const std::string metrics = (fs::path(run_dir) / "metrics.jsonl").string();
  std::istringstream in(read_file(metrics));
  std::map<std::string, Series> layers;  // by layer name
  std::vector<std::string> order;
  const std::string suffix = "/" + source;
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;
    for (const auto& [key, value] : j.items()) {
      if (key.rfind("w/", 0) != 0 || key.size() <= suffix.size() ||
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const std::string layer = key.substr(2, key.size() - 2 - suffix.size());
      if (!layers.count(layer)) order.push_back(layer);
      Series& s = layers[layer];
      s.name = layer;
      s.x.push_back(j["step"].get<double>());
      s.y.push_back(value.get<double>());
    }
  }
  XFER_CHECK(!layers.empty(), metrics, " holds no mixing weights of source '", source, "' (w/LAYER/", source,
             "); is it a gradmix run, and does the source exist?");
  Plot plot;
  plot.title =
      cat("GradMix weight of source ", source, " per layer (", fs::path(run_dir).filename().string(), ")");
  plot.xlabel = "step";
  plot.ylabel = cat("weight of ", source, " (the sources' weights sum to 1)");
  for (const auto& name : order) plot.series.push_back(layers[name]);
  return write_plot(path, plot);
}

namespace {

/// One final model of stage 3: "hard+vat" is hard pseudo-labels with the VAT term.
struct PseudoMode {
  std::string name;
  PseudoLabels labels = PseudoLabels::hard;
  SslTerm ssl = SslTerm::none;
};

std::vector<PseudoMode> pseudo_parse_modes(const std::string& text) {
  std::vector<PseudoMode> out;
  for (const auto& item : split(text, ',')) {
    const std::vector<std::string> parts = split(item, '+');
    const std::optional<PseudoLabels> labels = enum_from_name<PseudoLabels>(parts[0]);
    const std::optional<SslTerm> ssl =
        parts.size() == 1 ? SslTerm::none : enum_from_name<SslTerm>(parts.size() == 2 ? parts[1] : "");
    XFER_CHECK(labels && ssl, "--modes: '", item,
               "' is not hard or soft, optionally followed by +vat or +mixmatch");
    out.push_back({item, *labels, *ssl});
  }
  return out;
}

/// One gradmix run with these options; with `reuse`, a finished run in the directory is read back.
nlohmann::json pseudo_train(RunOptions r, const GradMixMethod::Options& method, bool reuse, std::ostream& out,
                            const std::string& label) {
  const fs::path result_path = fs::path(r.out) / "result.json";
  if (reuse && fs::exists(result_path)) {
    out << label << ": reusing " << r.out << std::endl;
    return read_json_file(result_path.string());
  }
  r.method = "gradmix";
  r.resume = reuse && fs::exists(fs::path(r.out) / "checkpoints" / "last.pt");
  if (!r.resume && reuse) r.overwrite = true;
  auto config = methods().get("gradmix").make_config();
  GradMixMethod::Options copy = method;
  Fields from, to;
  copy.fields(from);
  config->fields(to);
  to.read_json(from.to_json(), "gradmix-pseudo");
  const double t0 = now_seconds();
  const int saved = verbosity();
  set_verbosity(std::min(saved, 0));
  RunResult result;
  try {
    result = run_finetune(r, *config);
  } catch (...) {
    set_verbosity(saved);
    throw;
  }
  set_verbosity(saved);
  plot_gradmix_weights(r.out, "s0", (fs::path(r.out) / "weights_s0.png").string());
  out << label << ": val " << fixed(100 * result.fit.best_val_top1.value_or(0.0), 1) << "%, test "
      << fixed(100 * (result.fit.test ? result.fit.test->top1 : 0.0), 1) << "% ("
      << fixed(now_seconds() - t0, 0) << " s)" << std::endl;
  return result.to_json();
}

struct Candidate {
  double beta, gamma, val;
  std::string dir;
};

/// Refuses what would make the pipeline fail later: more top models than grid points, no --out, no
/// hyper-validation split.
void check_pseudo_run(const RunOptions& run, const GradMixMethod::Options& method,
                      const GradMixPseudoOptions& opts, size_t grid_points) {
  XFER_CHECK(opts.top <= static_cast<int64_t>(grid_points), "--top ", opts.top,
             " needs at least as many --grid points, got ", grid_points);
  XFER_CHECK(!run.out.empty(), "gradmix-pseudo needs --out DIR");
  XFER_CHECK(!run.target.empty(),
             "gradmix-pseudo needs --target SPEC (V in its train split, the hyper-validation "
             "set in its val split)");
  const DatasetSpec spec = DatasetSpec::parse(run.target);
  XFER_CHECK(spec.val_count > 0 || spec.val_fraction > 0,
             "gradmix-pseudo picks models on the hyper-validation set: ", "add val=N to the --target spec '",
             run.target, "'");
  check_pseudo_threshold(method.pseudo_threshold);
}

/// Stage 2's labels and how good they are (the true labels of U are read only to report this).
struct PseudoLabelStats {
  int64_t unlabelled = 0, hard = 0;
  double hard_accuracy = 0, soft_accuracy = 0;
  nlohmann::json json;  // summary.json's "pseudo_labels"
};

/// Stage 2: the ensemble of `chosen_dirs`' models labels U; the labels go to `pseudo_path`.
PseudoLabelStats label_unlabelled(const RunOptions& run, const GradMixMethod::Options& method,
                                  const std::vector<std::string>& chosen_dirs, const nlohmann::json& chosen,
                                  const std::string& pseudo_path) {
  std::vector<Model> ensemble;
  for (const auto& dir : chosen_dirs)
    ensemble.push_back(CheckpointReader(resolve_checkpoint(dir)).read_model());
  const Task task = load_task(run.target, static_cast<uint64_t>(run.seed));
  EnsembleLabels labels;
  labels.images = unlabelled_target_images(method.unlabelled, task, static_cast<uint64_t>(run.seed));
  labels.probs = ensemble_probabilities(ensemble, labels.images, "target");
  save_ensemble_labels(pseudo_path, labels);
  const HardLabels hard = hard_pseudo_labels(labels.probs, method.pseudo_threshold);
  const torch::Tensor truth = labels.images.labels;
  const double hard_acc =
      hard.index.numel() > 0
          ? (truth.index_select(0, hard.index) == hard.labels).to(torch::kFloat64).mean().item<double>()
          : 0.0;
  const torch::Tensor counts =
      torch::bincount(hard.labels, {}, task.num_classes()).to(torch::kCPU).contiguous();
  const std::vector<int64_t> per_class(counts.data_ptr<int64_t>(),
                                       counts.data_ptr<int64_t>() + counts.numel());
  const double soft_acc =
      (soft_pseudo_labels(labels.probs).argmax(1) == truth).to(torch::kFloat64).mean().item<double>();
  const nlohmann::json pseudo = {{"file", pseudo_path},
                                 {"unlabelled", labels.images.size()},
                                 {"ensemble", chosen},
                                 {"threshold", method.pseudo_threshold},
                                 {"hard_labelled", hard.index.numel()},
                                 {"hard_accuracy", hard_acc},
                                 {"hard_per_class", per_class},
                                 {"soft_accuracy", soft_acc}};
  return {labels.images.size(), hard.index.numel(), hard_acc, soft_acc, pseudo};
}

}  // namespace

nlohmann::json run_gradmix_pseudo(RunOptions run, GradMixMethod::Options method,
                                  const GradMixPseudoOptions& opts, std::ostream& out) {
  GradMixPseudoOptions checked = opts;
  check_options(checked);
  method.mode = GradMixMethod::Mode::gradmix;
  const auto grid = parse_gradmix_grid(opts.grid);
  const auto modes = pseudo_parse_modes(opts.modes);
  check_pseudo_run(run, method, opts, grid.size());
  const fs::path root(run.out);
  XFER_CHECK(
      run.resume || run.overwrite || !fs::exists(root / "summary.json"), run.out,
      " already holds a gradmix-pseudo run; pass --resume to reuse its finished runs, --overwrite to replace "
      "it, or choose another --out");
  make_dirs(run.out);
  const bool reuse = run.resume;
  if (!reuse && run.overwrite && fs::exists(root / "summary.json")) fs::remove(root / "summary.json");
  run.resume = false;

  // Stage 1: a gradmix model per (beta, gamma), without U.
  GradMixMethod::Options stage1 = method;
  stage1.pseudo.clear();
  stage1.ssl = SslTerm::none;
  Table table({"stage", "model", "beta", "gamma", "val top-1", "test top-1", "out"});
  for (size_t c = 4; c <= 5; ++c) table.align_right(c);
  nlohmann::json runs = nlohmann::json::array();
  std::vector<Candidate> candidates;
  out << "Stage 1: " << grid.size() << " gradmix models, one per (beta, gamma)" << std::endl;
  for (const auto& [beta, gamma] : grid) {
    RunOptions r = run;
    r.out = (root / "stage1" / cat("b", number_text(beta), "-g", number_text(gamma))).string();
    stage1.beta = beta;
    stage1.gamma = gamma;
    const nlohmann::json res = pseudo_train(r, stage1, reuse, out, cat("  beta ", beta, ", gamma ", gamma));
    candidates.push_back({beta, gamma, res.value("best_val_top1", 0.0), r.out});
    table.add_row({"1", "gradmix", number_text(beta), number_text(gamma),
                   fixed(100 * res.value("best_val_top1", 0.0), 2),
                   fixed(100 * res.value("test_top1", 0.0), 2), r.out});
    runs.push_back({{"stage", 1}, {"beta", beta}, {"gamma", gamma}, {"result", res}});
  }

  // Stage 2: the top R on hyper-validation label U.
  std::vector<size_t> order(candidates.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return candidates[a].val > candidates[b].val; });
  order.resize(static_cast<size_t>(opts.top));
  std::vector<std::string> chosen_dirs;
  nlohmann::json chosen = nlohmann::json::array();
  for (size_t i : order) {
    chosen_dirs.push_back(candidates[i].dir);
    chosen.push_back(
        {{"beta", candidates[i].beta}, {"gamma", candidates[i].gamma}, {"val_top1", candidates[i].val}});
  }
  const std::string pseudo_path = (root / "pseudo_labels.pt").string();
  const PseudoLabelStats stats = label_unlabelled(run, method, chosen_dirs, chosen, pseudo_path);
  out << "Stage 2: ensemble of the top " << opts.top << " labels " << stats.unlabelled
      << " unlabelled images: " << stats.hard << " hard labels (" << fixed(100 * stats.hard_accuracy, 1)
      << "% correct), soft labels " << fixed(100 * stats.soft_accuracy, 1) << "% correct by argmax"
      << std::endl;

  // Stage 3: fresh models on the sources, S_u and the enlarged V, with the best (beta, gamma).
  const Candidate& best = candidates[order.front()];
  out << "Stage 3: " << modes.size() << " final models with beta " << best.beta << ", gamma " << best.gamma
      << std::endl;
  for (const auto& m : modes) {
    GradMixMethod::Options final_opts = method;
    final_opts.beta = best.beta;
    final_opts.gamma = best.gamma;
    final_opts.pseudo = pseudo_path;
    final_opts.pseudo_mode = m.labels;
    final_opts.ssl = m.ssl;
    RunOptions r = run;
    r.out = (root / cat("final-", m.name)).string();
    const nlohmann::json res = pseudo_train(r, final_opts, reuse, out, cat("  ", m.name));
    table.add_row({"3", "gradmix w/ " + m.name, number_text(best.beta), number_text(best.gamma),
                   fixed(100 * res.value("best_val_top1", 0.0), 2),
                   fixed(100 * res.value("test_top1", 0.0), 2), r.out});
    runs.push_back({{"stage", 3}, {"mode", m.name}, {"result", res}});
  }

  const nlohmann::json summary = {{"target", run.target},
                                  {"sources", method.sources},
                                  {"seed", run.seed},
                                  {"pseudo_labels", stats.json},
                                  {"runs", runs}};
  write_json_file((root / "summary.json").string(), summary);
  std::ostringstream md;
  md << "GradMix with ensemble pseudo-labels on " << run.target << "\n\n"
     << table.markdown() << "\nPseudo-labels: " << stats.hard << " of " << stats.unlabelled
     << " unlabelled images hard-labelled at threshold " << method.pseudo_threshold << " ("
     << fixed(100 * stats.hard_accuracy, 1) << "% correct); soft labels "
     << fixed(100 * stats.soft_accuracy, 1) << "% correct by argmax.\n";
  write_file_atomic((root / "table.md").string(), md.str());
  out << "\n" << md.str();
  return summary;
}

}  // namespace xfer
