#include "xfer/workflows/pretrained.h"

#include <cstdlib>
#include <filesystem>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/methods/registry.h"
#include "xfer/report/table.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {

std::string default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return (fs::path(xdg) / "xfer").string();
  if (const char* home = std::getenv("HOME"); home && *home)
    return (fs::path(home) / ".cache" / "xfer").string();
  return ".cache/xfer";
}

RunOptions source_pretrain_options(const std::string& source, const std::string& backbone,
                                   int64_t iterations) {
  RunOptions p;
  p.source = source;
  p.backbone = backbone;
  p.method = kDefaultPretrainMethod;
  p.trainer.iterations = iterations;
  p.trainer.optim.lr = 0.05;
  p.trainer.schedule.schedule = ScheduleKind::cosine;
  p.trainer.schedule.warmup = 0.02;
  p.loader.batch_size = 128;
  return p;
}

PretrainPlan PretrainPlan::from_json(const nlohmann::json& json, const std::string& where) {
  XFER_CHECK(json.is_object(), where, " must be an object of `xfer pretrain` options, got ", json.dump());
  PretrainPlan plan;
  plan.opts = source_pretrain_options("", "cnn4", 2000);
  const nlohmann::json method = json.value("method", nlohmann::json(kDefaultPretrainMethod));
  XFER_CHECK(method.is_string(), where, ".method must be a string, got ", method.dump());
  const MethodInfo& info = methods().get(method.get<std::string>());
  XFER_CHECK(info.pretrains, where, ": method ", info.name, " does not pre-train (scratch or datl do)");
  auto config = info.make_config();
  Fields method_fields;
  config->fields(method_fields);
  nlohmann::json run = nlohmann::json::object();
  for (const auto& [key, value] : json.items())
    (method_fields.has(key) ? plan.method_options : run)[key] = value;
  Fields run_fields;
  plan.opts.fields(run_fields);
  for (const auto& [key, value] : run.items()) {
    if (run_fields.has(key)) continue;
    for (const auto& other : methods().all()) {
      if (!other.pretrains) continue;
      const auto config = other.make_config();
      Fields f;
      config->fields(f);
      XFER_CHECK(!f.has(key), where, ": \"", key, "\" is an option of method ", other.name,
                 ": add \"method\": \"", other.name, "\"");
    }
  }
  run_fields.read_json(run, where);
  XFER_CHECK(!plan.opts.source.empty(), where,
             " needs \"source\": the dataset spec the source model is trained on");
  try {
    plan.method_config(where)->check();
  } catch (const BadInput& e) {  // the method's checks name flags: say which source model
    throw BadInput(cat(where, ": ", e.what()));
  }
  return plan;
}

std::unique_ptr<MethodConfig> PretrainPlan::method_config(const std::string& where) const {
  auto config = methods().get(opts.method).make_config();
  Fields f;
  config->fields(f);
  f.read_json(method_options, where + " (method " + opts.method + ")");
  return config;
}

std::string cached_pretrain_dir(const PretrainPlan& plan, const std::string& cache_dir) {
  // Options that do not change the model stay out of the key.
  RunOptions p = plan.opts;
  p.threads = 0;
  p.out.clear();
  p.overwrite = false;
  p.resume = false;
  const nlohmann::json key = config_json("pretrain", p, plan.method_config("pretrain").get());
  const std::string hash = cat(std::hex, derive_seed(0, key.dump()));
  return (fs::path(cache_dir.empty() ? default_cache_dir() : cache_dir) / ("source-" + hash)).string();
}

std::string cached_pretrain(const PretrainPlan& plan, const std::string& cache_dir, std::ostream& log) {
  const std::string dir = cached_pretrain_dir(plan, cache_dir);
  // The model a run of it reads: best.pt, or last.pt when the source has no validation split.
  const fs::path checkpoints = fs::path(dir) / "checkpoints";
  const uint32_t format = checkpoint_format_of(
      (fs::exists(checkpoints / "best.pt") ? checkpoints / "best.pt" : checkpoints / "last.pt").string());
  if (format != 0 && format != kCheckpointFormat)
    log << "The cached source model in " << dir << " has checkpoint format " << format << "; this xfer reads "
        << kCheckpointFormat << ": pre-training it again\n";
  if (fs::exists(fs::path(dir) / "result.json") && format == kCheckpointFormat) {
    const auto r = read_json_file((fs::path(dir) / "result.json").string());
    log << "Source model: cached in " << dir << " (test top-1 " << fixed(100 * r.value("test_top1", 0.0), 1)
        << "%)\n";
    return dir;
  }
  RunOptions p = plan.opts;
  log << "Pre-training the source model on " << p.source << " (" << p.trainer.iterations
      << " steps, cached afterwards in " << dir << ") ..." << std::endl;
  p.out = dir;
  p.overwrite = true;
  p.resume = false;
  const double t0 = now_seconds();
  const auto config = plan.method_config("pretrain");
  const RunResult r = run_pretrain(p, *config);
  log << "Source model: test top-1 " << fixed(100 * (r.fit.test ? r.fit.test->top1 : 0.0), 1) << "% in "
      << fixed(now_seconds() - t0, 0) << " s\n";
  return dir;
}

}  // namespace xfer
