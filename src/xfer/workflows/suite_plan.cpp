#include "xfer/workflows/suite_plan.h"

#include <algorithm>
#include <filesystem>
#include <memory>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/methods/registry.h"
#include "xfer/workflows/pretrained.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Every combination of a "sweep"'s values, in key order: [{"alpha": -2}, {"alpha": 0}, ...]; or one empty
/// object when there is no sweep.
std::vector<nlohmann::json> sweep_points(const nlohmann::json& sweep) {
  std::vector<nlohmann::json> points = {nlohmann::json::object()};
  if (sweep.is_null()) return points;
  for (const auto& [key, values] : sweep.items()) {
    std::vector<nlohmann::json> next;
    for (const auto& p : points)
      for (const auto& v : values) {
        nlohmann::json q = p;
        q[key] = v;
        next.push_back(std::move(q));
      }
    points = std::move(next);
  }
  return points;
}

/// "alpha=-2,tau=3".
std::string sweep_point_text(const nlohmann::json& point) {
  std::string out;
  for (const auto& [key, value] : point.items())
    out +=
        (out.empty() ? "" : ",") + key + "=" + (value.is_string() ? value.get<std::string>() : value.dump());
  return out;
}

/// Resolves "weights_from": "@pretrain" and "weights_target": "@task" in a method's pre-training options
/// and appends the source models it needs to `order`, the suite's own first.
nlohmann::json resolve_pretrain_refs(nlohmann::json p, const Suite& s, const SuiteTask& t,
                                     const std::string& cache, const std::string& where,
                                     std::vector<nlohmann::json>& order) {
  if (p.contains("weights_from") && p["weights_from"] == "@pretrain") {
    XFER_CHECK(s.pretrain.is_object() && !(s.pretrain.contains("weights_from")), where,
               ": \"weights_from\": \"@pretrain\" needs the suite's own \"pretrain\" block, without weights");
    order.push_back(s.pretrain);
    p["weights_from"] =
        cached_pretrain_dir(PretrainPlan::from_json(s.pretrain, where + " (pretrain)"), cache);
  }
  if (p.contains("weights_target") && p["weights_target"] == "@task") p["weights_target"] = t.target;
  order.push_back(p);
  return p;
}

/// The run options of method entry `m` on task `t` with `seed`: the suite's, the task's and the entry's
/// "run" merged, the source data and the source model it needs (appended to `pretrains`, to train first).
RunOptions cell_options(const Suite& s, const SuiteTask& t, const SuiteMethod& m, int64_t seed,
                        const std::string& cache, const std::string& where,
                        std::vector<nlohmann::json>& pretrains) {
  const MethodInfo& info = methods().get(m.method);
  XFER_CHECK(info.finetunes, where, ": method ", m.method, " pre-trains a source model; fine-tune with a ",
             "method whose \"pretrain\" object has \"method\": \"", m.method, "\"");
  RunOptions r;
  Fields f;
  r.fields(f);
  f.read_json(suite_merged(suite_merged(s.run, t.run), m.run), where + " (run options)");
  r.method = m.method;
  r.target = t.target;
  r.seed = seed;
  const nlohmann::json base = t.pretrain.is_object() ? suite_merged(s.pretrain, t.pretrain) : s.pretrain;
  const nlohmann::json pretrain = m.pretrain.is_object() ? suite_merged(base, m.pretrain)
                                  : m.pretrain.is_null() ? base
                                                         : nlohmann::json();
  if (info.needs_source && r.source.empty()) {
    r.source = !t.source.empty()      ? t.source
               : pretrain.is_object() ? PretrainPlan::from_json(pretrain, where + " (pretrain)").opts.source
                                      : "";
    XFER_CHECK(!r.source.empty(), where, ": method ", m.method, " draws on source data; give the task a ",
               "\"source\" or the suite a \"pretrain\"");
  }
  if (info.allows_init && r.init.empty() && pretrain.is_object()) {
    const nlohmann::json resolved = resolve_pretrain_refs(pretrain, s, t, cache, where, pretrains);
    r.init = cached_pretrain_dir(PretrainPlan::from_json(resolved, where + " (pretrain)"), cache);
  }
  if (!info.allows_init && r.backbone.empty() && pretrain.is_object())
    r.backbone = PretrainPlan::from_json(pretrain, where + " (pretrain)").opts.backbone;
  XFER_CHECK(!(info.needs_init && r.init.empty()), where, ": method ", m.method,
             " fine-tunes a source model; give the suite a \"pretrain\" block or the run an \"init\"");
  return r;
}

/// The method options of one run: the task's options this method has, then the entry's own, then the
/// sweep's point.
std::unique_ptr<MethodConfig> point_config(const SuiteTask& t, const SuiteMethod& m,
                                           const nlohmann::json& point, const std::string& where) {
  auto config = methods().get(m.method).make_config();
  Fields mf;
  config->fields(mf);
  nlohmann::json options = nlohmann::json::object();
  const std::set<std::string> known = method_option_names(m.method);
  for (const auto& [key, value] : t.options.items())
    if (known.count(key)) options[key] = value;
  if (m.options.is_object()) options.update(m.options);
  options.update(point);
  try {
    mf.read_json(options, where + " (method options)");
  } catch (const BadInput& e) {  // a value out of range names only the flag: say which run
    const std::string what = e.what();
    if (what.find(where) != std::string::npos) throw;
    throw BadInput(cat(where, ": ", what));
  }
  return config;
}

}  // namespace

nlohmann::json suite_merged(nlohmann::json a, const nlohmann::json& b) {
  if (a.is_null()) a = nlohmann::json::object();
  if (!b.is_null()) a.update(b);
  return a;
}

std::string suite_slug(const std::string& s) {
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return out;
}

bool suite_runs_on(const SuiteMethod& m, const std::string& task) {
  return m.tasks.empty() || std::find(m.tasks.begin(), m.tasks.end(), task) != m.tasks.end();
}

std::set<std::string> method_option_names(const std::string& name) {
  auto config = methods().get(name).make_config();
  Fields f;
  config->fields(f);
  std::set<std::string> out;
  const nlohmann::json options = f.to_json();  // named: items() of a temporary would dangle
  for (const auto& [key, value] : options.items()) out.insert(key);
  return out;
}

std::vector<std::string> search_arguments(const nlohmann::json& search) {
  std::vector<std::string> args;
  for (const auto& [name, spec] : search.at("params").items())
    args.insert(args.end(), {"--param", name + "=" + spec.get<std::string>()});
  for (const auto& [key, value] : search.items()) {
    if (key == "params") continue;
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    args.insert(args.end(), {flag, value.is_string() ? value.get<std::string>() : value.dump()});
  }
  return args;
}

std::vector<RunRequest> plan_runs(const Suite& s, const std::string& out, const std::string& cache) {
  std::vector<RunRequest> plan;
  for (const auto& t : s.tasks)
    for (const auto& m : s.methods)
      for (int64_t seed : s.seeds) {
        if (!suite_runs_on(m, t.name)) continue;
        const std::string where = cat("suite ", s.name, ", method '", m.label, "' on task '", t.name, "'");
        RunRequest q;
        RunOptions r = cell_options(s, t, m, seed, cache, where, q.pretrains);
        q.task = t.name;
        q.label = m.label;
        q.search = m.search;
        q.seed = seed;
        for (const nlohmann::json& point : sweep_points(m.sweep)) {
          RunRequest p = q;
          p.point = m.sweep.is_null() ? "" : sweep_point_text(point);
          fs::path dir =
              fs::path(out) / "runs" / suite_slug(t.name) / suite_slug(m.label) / cat("seed", seed);
          if (!p.point.empty()) dir /= suite_slug(p.point);
          p.dir = dir.string();
          r.out = p.dir;
          auto config = point_config(t, m, point, where);
          p.config = config_json("finetune", r, config.get());
          p.config.erase("out");
          p.config.erase("threads");
          p.config.erase("overwrite");
          p.config.erase("resume");
          plan.push_back(std::move(p));
        }
      }
  return plan;
}

}  // namespace xfer
