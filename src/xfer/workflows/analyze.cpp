#include "xfer/workflows/analyze.h"

#include <algorithm>
#include <filesystem>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/metrics/analysis.h"
#include "xfer/report/table.h"
#include "xfer/source/pairing.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

nlohmann::json analyze_stats_json(const MeanStd& m) {
  return {{"mean", m.mean}, {"std", m.std}, {"n", m.n}};
}

/// The checkpoint of the model the run tested: result.json's "selected" (best or last), else best.pt, else
/// last.pt.
std::string analyze_checkpoint_of(const std::string& run) {
  const fs::path result = fs::path(run) / "result.json";
  if (fs::exists(result)) {
    const nlohmann::json r = read_json_file(result.string());
    const fs::path chosen =
        fs::path(run) / "checkpoints" / (r.value("selected", "") == "last" ? "last.pt" : "best.pt");
    if (fs::exists(chosen)) return chosen.string();
  }
  return resolve_checkpoint(run);
}

/// Identifies a checkpoint file's content well enough to tell a re-trained run apart.
std::string analyze_file_stamp(const std::string& path) {
  const auto t = fs::last_write_time(path).time_since_epoch();
  return cat(fs::file_size(path), "@", std::chrono::duration_cast<std::chrono::nanoseconds>(t).count());
}

nlohmann::json analyze_subsets_json(const SubsetAccuracy& a) {
  auto rate = [](double r, int64_t n) { return n > 0 ? nlohmann::json(r) : nlohmann::json(nullptr); };
  return {{"auxiliary", rate(a.auxiliary, a.auxiliary_n)},
          {"aba", rate(a.aba, a.aba_n)},
          {"all", rate(a.all, a.all_n)},
          {"auxiliary_n", a.auxiliary_n},
          {"aba_n", a.aba_n},
          {"all_n", a.all_n}};
}

/// The source classes of the auxiliary set XMixup's selection makes for the run: its --pairing file, else the
/// selection with its --aux-size (0 when it had none).
std::vector<int64_t> analyze_auxiliary_classes(const nlohmann::json& config, const Model& init,
                                               const TensorDataset& target, const TensorDataset& source) {
  nlohmann::json options = config.value("method_options", nlohmann::json::object());
  if (!options.is_object()) options = nlohmann::json::object();
  const nlohmann::json pairing_file = options.value("pairing", nlohmann::json(""));
  const nlohmann::json aux_size = options.value("aux_size", nlohmann::json(0));
  Pairing pairing;
  XFER_CHECK(pairing_file.is_string(),
             "xfer analyze: the run's pairing is not a path: ", pairing_file.dump());
  if (!pairing_file.get<std::string>().empty()) {
    const std::string where = "the run's --pairing " + pairing_file.get<std::string>();
    pairing = Pairing::from_json(read_json_file(pairing_file.get<std::string>()), where);
    pairing.check_matches(target, source, where);
  } else {
    XFER_CHECK(aux_size.is_number_integer(),
               "xfer analyze: the run's aux_size is not an integer: ", aux_size.dump());
    pairing = select_auxiliary(init, target, source, aux_size.get<int64_t>());
  }
  std::vector<int64_t> classes;
  for (const auto& p : pairing.pairs) classes.push_back(p.source);
  std::sort(classes.begin(), classes.end());
  return classes;
}

/// The forgetting probe of the run's model (and of the --init model with --forgetting-reference).
nlohmann::json analyze_forgetting(const AnalyzeOptions& opts, const nlohmann::json& config,
                                  const Model& model, const Model& init, const Task& target) {
  const std::string spec =
      !opts.forgetting_source.empty() ? opts.forgetting_source : config.value("source", "");
  XFER_CHECK(!spec.empty(), "xfer analyze --forgetting needs a source task: the run has no --source; pass ",
             "--forgetting-source SPEC");
  XFER_CHECK(static_cast<bool>(init),
             "xfer analyze --forgetting pairs the source classes with the pretrained ",
             "model, and the run has no --init; pass --init PATH");
  const uint64_t run_seed = config.value("seed", uint64_t{0});
  const Task source = load_task(spec, run_seed);
  XFER_CHECK(source.train.size() > 0 && source.test.size() > 0,
             "xfer analyze --forgetting: the source task '", spec,
             "' needs a training and a test split; it has ", source.train.size(), " and ", source.test.size(),
             " examples");
  const std::vector<int64_t> aux = analyze_auxiliary_classes(config, init, target.train, source.train);
  const uint64_t seed = derive_seed(derive_seed(run_seed, "forgetting"), static_cast<uint64_t>(opts.seed));
  auto probe = [&](const Model& m) {
    return analyze_subsets_json(
        forgetting_probe(extract_features(m, source.train, opts.batch), source.train.labels,
                         extract_features(m, source.test, opts.batch), source.test.labels,
                         source.train.num_classes(), aux, opts.probe_iterations, opts.probe_decay, seed));
  };
  std::vector<std::string> names;
  for (int64_t c : aux) names.push_back(source.train.class_names[c]);
  nlohmann::json out = {{"source", spec},
                        {"auxiliary_classes", names},
                        {"seed", opts.seed},
                        {"iterations", opts.probe_iterations},
                        {"decay", opts.probe_decay},
                        {"model", probe(model)}};
  if (opts.forgetting_reference) out["pretrained"] = probe(init);
  return out;
}

}  // namespace

void AnalyzeOptions::fields(Fields& f) {
  f.add("on", on, "the split of the target spec to analyse");
  f.add("data", data, "dataset spec to analyse (default: the run's --target)");
  f.add("init", init, "pretrained model for the parameter distance (default: the run's --init)");
  f.add("head", head, "the head whose outputs Label-IL measures");
  f.add("label_output", label_output,
        "Label-IL on the head's logits (as SMILE's Table 6, whose values exceed the "
        "sqrt(2) bound of probability vectors) or on its softmax");
  f.add("pairs", pairs, "random pairs of examples for the interpolation losses").at_least(1);
  f.add("alpha", alpha, "lambda ~ Beta(alpha, alpha) in the interpolation losses").positive();
  f.add("seed", seed, "seed of the pairs and mixing weights (and of the forgetting probe's head)")
      .non_negative();
  f.add("forgetting", forgetting,
        "XMixup's forgetting probe (Table 2): a fresh linear head on the frozen backbone, "
        "trained on a source task, top-1 on its auxiliary classes, the others and all");
  f.add("forgetting_source", forgetting_source, "the probe's source task spec (default: the run's --source)");
  f.add("forgetting_reference", forgetting_reference,
        "probe the --init model too (the table's reference row)");
  f.add("probe_iterations", probe_iterations, "L-BFGS iterations of the forgetting probe's head").at_least(1);
  f.add("probe_decay", probe_decay, "L2 weight of the forgetting probe's head").non_negative();
  f.add("spectrum", spectrum, "how many of the smallest singular values of the feature matrix to report")
      .at_least(1);
  f.add("batch", batch, "examples per forward pass").at_least(1);
  f.add("threads", threads, "CPU threads (0 = all cores)").non_negative();
  f.add("device", device, "cpu, cuda or cuda:N");
}

nlohmann::json analyze_run(const AnalyzeOptions& given) {
  AnalyzeOptions opts = given;
  check_options(opts);
  XFER_CHECK(!opts.run.empty(), "xfer analyze needs a run directory");
  XFER_CHECK(fs::is_directory(opts.run), "xfer analyze: ", opts.run,
             " is not a directory (give the --out of a "
             "finetune run)");
  const fs::path config_path = fs::path(opts.run) / "config.json";
  XFER_CHECK(fs::exists(config_path), "xfer analyze: ", opts.run,
             " holds no config.json; give the --out directory "
             "of a finetune run");
  set_threads(opts.threads);
  const torch::Device device = parse_device(opts.device);
  const nlohmann::json config = read_json_file(config_path.string());
  std::string checkpoint;
  try {
    checkpoint = analyze_checkpoint_of(opts.run);
  } catch (const BadInput& e) {
    throw BadInput(cat("xfer analyze: ", e.what(), " (has the run written a checkpoint yet?)"));
  }
  CheckpointReader reader(checkpoint, device);
  Model model = reader.read_model();
  model->to(device);

  // The data: the run's target spec and seed, unless --data says otherwise.
  const std::string spec = !opts.data.empty() ? opts.data : config.value("target", "");
  XFER_CHECK(!spec.empty(), "xfer analyze: ", config_path.string(), " has no target spec; pass --data SPEC");
  const Task task = load_task(spec, json_int_or(config, "seed", 0, "config.json: seed"));
  const TensorDataset& data = opts.on == DataSplit::train ? task.train : task.test;
  XFER_CHECK(data.size() >= 2, "xfer analyze: the ", opts.on, " split of '", spec, "' has ", data.size(),
             " examples; the analyses need at least 2");
  const Arch& arch = model->arch();
  XFER_CHECK(
      data.channels() == arch.in_channels && data.height() == arch.height && data.width() == arch.width,
      "xfer analyze: '", spec, "' has ", data.channels(), "x", data.height(), "x", data.width(),
      " images but the model takes ", arch.in_channels, "x", arch.height, "x", arch.width);
  const torch::Tensor inputs =
      InputTransform(arch.input).normalise(data.eval_images(0, data.size())).to(device);

  InterpolationOptions il;
  il.pairs = opts.pairs;
  il.alpha = opts.alpha;
  il.seed = static_cast<uint64_t>(opts.seed);
  il.batch = opts.batch;
  const ModelInterpolation interpolation =
      model_interpolation_loss(model, inputs, opts.head, il, opts.label_output);
  const std::vector<double> spectrum =
      feature_spectrum(pooled_features(model, inputs, opts.batch), opts.spectrum);

  // Parameter distance to the pretrained model, when the run had one.
  const std::string init = !opts.init.empty() ? opts.init : config.value("init", "");
  nlohmann::json distance = nullptr;
  Model init_model{nullptr};
  if (!init.empty()) {
    std::string init_checkpoint;
    try {
      init_checkpoint = resolve_checkpoint(init);
    } catch (const BadInput& e) {
      throw BadInput(cat("xfer analyze: the pretrained model (--init): ", e.what(), "; pass --init PATH"));
    }
    init_model = CheckpointReader(init_checkpoint, device).read_model();
    init_model->to(device);
    distance = parameter_distance(model, init_model);
  }
  const nlohmann::json forgetting =
      opts.forgetting ? analyze_forgetting(opts, config, model, init_model, task) : nlohmann::json(nullptr);

  // analysis.json keeps the other split's entry if it was computed on this same checkpoint.
  const fs::path out_path = fs::path(opts.run) / "analysis.json";
  const std::string stamp = analyze_file_stamp(checkpoint);
  nlohmann::json splits = nlohmann::json::object(), kept_forgetting = nullptr;
  if (fs::exists(out_path)) {
    const nlohmann::json before = read_json_file(out_path.string());
    if (before.is_object() && before.value("checkpoint", "") == checkpoint &&
        before.value("checkpoint_stamp", "") == stamp) {
      if (before.contains("splits") && before["splits"].is_object()) splits = before["splits"];
      if (before.contains("forgetting")) kept_forgetting = before["forgetting"];
    }
  }
  splits[name_of(opts.on)] = {{"data", spec},
                              {"examples", data.size()},
                              {"pairs", opts.pairs},
                              {"alpha", opts.alpha},
                              {"seed", opts.seed},
                              {"head", opts.head},
                              {"label_output", name_of(opts.label_output)},
                              {"feature_il", analyze_stats_json(interpolation.feature)},
                              {"label_il", analyze_stats_json(interpolation.label)},
                              {"spectrum", spectrum}};
  nlohmann::json analysis = {{"run", opts.run},
                             {"checkpoint", checkpoint},
                             {"checkpoint_stamp", stamp},
                             {"step", json_int_or(reader.meta(), "step", 0, "checkpoint: step")},
                             {"method", config.value("method", "")},
                             {"init", init.empty() ? nlohmann::json(nullptr) : nlohmann::json(init)},
                             {"parameter_distance", distance},
                             {"splits", splits}};
  if (!forgetting.is_null())
    analysis["forgetting"] = forgetting;
  else if (!kept_forgetting.is_null())
    analysis["forgetting"] = kept_forgetting;
  write_json_file(out_path.string(), analysis);
  return analysis;
}

Table analysis_table(const nlohmann::json& analysis) {
  std::vector<std::string> header = {"metric"};
  std::vector<nlohmann::json> columns;
  for (const char* split : {"train", "test"}) {
    if (!analysis.contains("splits") || !analysis["splits"].contains(split)) continue;
    header.push_back(split);
    columns.push_back(analysis["splits"][split]);
  }
  Table t(header);
  for (size_t c = 1; c < header.size(); ++c) t.align_right(c);
  auto stats = [](const nlohmann::json& s) {
    return cat(fixed(s.at("mean").get<double>(), 4), " ± ", fixed(s.at("std").get<double>(), 4));
  };
  auto row = [&](const std::string& name, const std::function<std::string(const nlohmann::json&)>& cell) {
    std::vector<std::string> r = {name};
    for (const auto& c : columns) r.push_back(cell(c));
    t.add_row(r);
  };
  row("examples", [](const nlohmann::json& c) { return std::to_string(c.at("examples").get<int64_t>()); });
  row("Feature-IL (mean ± std over pairs)",
      [&](const nlohmann::json& c) { return stats(c.at("feature_il")); });
  row("Label-IL (mean ± std over pairs)", [&](const nlohmann::json& c) {
    return cat(stats(c.at("label_il")), " (", c.value("label_output", "softmax"), ")");
  });
  size_t k = 0;
  for (const auto& c : columns) k = std::max(k, c.at("spectrum").size());
  for (size_t i = 0; i < k; ++i)
    row(i == 0 ? "sigma_min / sigma_max" : cat("sigma_min+", i, " / sigma_max"),
        [&](const nlohmann::json& c) {
          return i < c.at("spectrum").size() ? fixed(c["spectrum"][i].get<double>(), 5) : std::string("-");
        });
  const nlohmann::json& d = analysis.at("parameter_distance");
  std::vector<std::string> r = {"parameter distance to --init (backbone)"};
  for (size_t c = 0; c < columns.size(); ++c) r.push_back(d.is_number() ? fixed(d.get<double>(), 4) : "-");
  t.add_row(r);
  return t;
}

Table forgetting_table(const nlohmann::json& analysis) {
  Table t({"model", "Auxiliary", "ABA", "All"});
  for (size_t c = 1; c < 4; ++c) t.align_right(c);
  if (!analysis.contains("forgetting")) return t;
  const nlohmann::json& f = analysis["forgetting"];
  auto cell = [](const nlohmann::json& s, const char* key) {
    return s.at(key).is_number()
               ? cat(fixed(100 * s[key].get<double>(), 2), " (n=", s.at(cat(key, "_n")), ")")
               : std::string("-");
  };
  for (const char* who : {"pretrained", "model"})
    if (f.contains(who))
      t.add_row({who == std::string("model") ? "this run" : "pretrained (--init)", cell(f[who], "auxiliary"),
                 cell(f[who], "aba"), cell(f[who], "all")});
  return t;
}

}  // namespace xfer
