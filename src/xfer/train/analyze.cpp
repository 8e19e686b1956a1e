#include "xfer/train/analyze.h"

#include <filesystem>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/metrics/analysis.h"
#include "xfer/report/table.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

nlohmann::json analyze_stats_json(const MeanStd& m) { return {{"mean", m.mean}, {"std", m.std}, {"n", m.n}}; }

/// The checkpoint of the model the run tested: result.json's "selected" (best or last), else best.pt, else
/// last.pt.
std::string analyze_checkpoint_of(const std::string& run) {
  const fs::path result = fs::path(run) / "result.json";
  if (fs::exists(result)) {
    const nlohmann::json r = read_json_file(result.string());
    const fs::path chosen = fs::path(run) / "checkpoints" / (r.value("selected", "") == "last" ? "last.pt" : "best.pt");
    if (fs::exists(chosen)) return chosen.string();
  }
  return resolve_checkpoint(run);
}

/// Identifies a checkpoint file's content well enough to tell a re-trained run apart.
std::string analyze_file_stamp(const std::string& path) {
  const auto t = fs::last_write_time(path).time_since_epoch();
  return cat(fs::file_size(path), "@", std::chrono::duration_cast<std::chrono::nanoseconds>(t).count());
}

}  // namespace

void AnalyzeOptions::fields(Fields& f) {
  f.add("on", on, "the split of the target spec to analyse").choices({"train", "test"});
  f.add("data", data, "dataset spec to analyse (default: the run's --target)");
  f.add("init", init, "pretrained model for the parameter distance (default: the run's --init)");
  f.add("head", head, "the head whose softmax Label-IL measures");
  f.add("pairs", pairs, "random pairs of examples for the interpolation losses").at_least(1);
  f.add("alpha", alpha, "lambda ~ Beta(alpha, alpha) in the interpolation losses").positive();
  f.add("seed", seed, "seed of the pairs and mixing weights").non_negative();
  f.add("spectrum", spectrum, "how many of the smallest singular values of the feature matrix to report").at_least(1);
  f.add("batch", batch, "examples per forward pass").at_least(1);
  f.add("threads", threads, "CPU threads (0 = all cores)").non_negative();
  f.add("device", device, "cpu, cuda or cuda:N");
}

nlohmann::json analyze_run(const AnalyzeOptions& given) {
  AnalyzeOptions opts = given;
  check_options(opts);
  XFER_CHECK(!opts.run.empty(), "xfer analyze needs a run directory");
  XFER_CHECK(fs::is_directory(opts.run), "xfer analyze: ", opts.run, " is not a directory (give the --out of a "
                                                                     "finetune run)");
  const fs::path config_path = fs::path(opts.run) / "config.json";
  XFER_CHECK(fs::exists(config_path), "xfer analyze: ", opts.run, " holds no config.json; give the --out directory "
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
  const Task task = load_task(spec, config.value("seed", int64_t{0}));
  const TensorDataset& data = opts.on == "train" ? task.train : task.test;
  XFER_CHECK(data.size() >= 2, "xfer analyze: the ", opts.on, " split of '", spec, "' has ", data.size(),
             " examples; the analyses need at least 2");
  const Arch& arch = model->arch();
  XFER_CHECK(data.channels() == arch.in_channels && data.height() == arch.height && data.width() == arch.width,
             "xfer analyze: '", spec, "' has ", data.channels(), "x", data.height(), "x", data.width(),
             " images but the model takes ", arch.in_channels, "x", arch.height, "x", arch.width);
  const torch::Tensor inputs = InputTransform(arch.input).normalise(data.eval_images(0, data.size())).to(device);

  InterpolationOptions il;
  il.pairs = opts.pairs;
  il.alpha = opts.alpha;
  il.seed = static_cast<uint64_t>(opts.seed);
  il.batch = opts.batch;
  const ModelInterpolation interpolation = model_interpolation_loss(model, inputs, opts.head, il);
  const std::vector<double> spectrum = feature_spectrum(pooled_features(model, inputs, opts.batch), opts.spectrum);

  // Parameter distance to the pretrained model, when the run had one.
  const std::string init = !opts.init.empty() ? opts.init : config.value("init", "");
  nlohmann::json distance = nullptr;
  if (!init.empty()) {
    std::string init_checkpoint;
    try {
      init_checkpoint = resolve_checkpoint(init);
    } catch (const BadInput& e) {
      throw BadInput(cat("xfer analyze: the pretrained model (--init): ", e.what(), "; pass --init PATH"));
    }
    distance = parameter_distance(model, CheckpointReader(init_checkpoint, device).read_model());
  }

  // analysis.json keeps the other split's entry if it was computed on this same checkpoint.
  const fs::path out_path = fs::path(opts.run) / "analysis.json";
  const std::string stamp = analyze_file_stamp(checkpoint);
  nlohmann::json splits = nlohmann::json::object();
  if (fs::exists(out_path)) {
    const nlohmann::json before = read_json_file(out_path.string());
    if (before.value("checkpoint", "") == checkpoint && before.value("checkpoint_stamp", "") == stamp &&
        before.contains("splits") && before["splits"].is_object())
      splits = before["splits"];
  }
  splits[opts.on] = {{"data", spec},
                     {"examples", data.size()},
                     {"pairs", opts.pairs},
                     {"alpha", opts.alpha},
                     {"seed", opts.seed},
                     {"head", opts.head},
                     {"feature_il", analyze_stats_json(interpolation.feature)},
                     {"label_il", analyze_stats_json(interpolation.label)},
                     {"spectrum", spectrum}};
  const nlohmann::json analysis = {{"run", opts.run},
                                   {"checkpoint", checkpoint},
                                   {"checkpoint_stamp", stamp},
                                   {"step", reader.meta().value("step", int64_t{0})},
                                   {"method", config.value("method", "")},
                                   {"init", init.empty() ? nlohmann::json(nullptr) : nlohmann::json(init)},
                                   {"parameter_distance", distance},
                                   {"splits", splits}};
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
  row("Feature-IL (mean ± std over pairs)", [&](const nlohmann::json& c) { return stats(c.at("feature_il")); });
  row("Label-IL (mean ± std over pairs)", [&](const nlohmann::json& c) { return stats(c.at("label_il")); });
  size_t k = 0;
  for (const auto& c : columns) k = std::max(k, c.at("spectrum").size());
  for (size_t i = 0; i < k; ++i)
    row(i == 0 ? "sigma_min / sigma_max" : cat("sigma_min+", i, " / sigma_max"), [&](const nlohmann::json& c) {
      return i < c.at("spectrum").size() ? fixed(c["spectrum"][i].get<double>(), 5) : std::string("-");
    });
  const nlohmann::json& d = analysis.at("parameter_distance");
  std::vector<std::string> r = {"parameter distance to --init (backbone)"};
  for (size_t c = 0; c < columns.size(); ++c) r.push_back(d.is_number() ? fixed(d.get<double>(), 4) : "-");
  t.add_row(r);
  return t;
}

}  // namespace xfer
