#include "xfer/workflows/demo.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/core/version.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/models/backbone.h"
#include "xfer/report/table.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/suite.h"
#include "xfer/workflows/suite_plan.h"
#include "xfer/workflows/suite_runs.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> out;
  for (const auto& tok : split(text, ',')) {
    const std::optional<int64_t> v = parse_int64(tok);
    XFER_CHECK(v && *v >= 1, "--sizes expects positive integers like 10,50, got '", text, "'");
    out.push_back(*v);
  }
  XFER_CHECK(!out.empty(), "--sizes is empty");
  return out;
}

/// Which methods to run, which were left out for time, and which do not fit the demo's task (`elsewhere`:
/// another task shape: their `demo_command` is printed).
std::vector<const MethodInfo*> pick_methods(const DemoOptions& opts, double seconds_per_l2_run, int64_t runs,
                                            double seconds_left, std::vector<std::string>& skipped,
                                            std::vector<const MethodInfo*>& elsewhere) {
  std::vector<const MethodInfo*> all, core;
  elsewhere.clear();
  const bool listed = opts.methods != "all" && opts.methods != "core" && opts.methods != "auto";
  for (const auto& m : methods().all()) {
    if (!m.finetunes) continue;  // datl: it chooses the source model's data; the `datl` suite runs it
    if (m.task_shape != TaskShape::target_and_source) {
      if (!listed && (m.core || opts.methods != "core")) elsewhere.push_back(&m);
      continue;
    }
    all.push_back(&m);
    if (m.core) core.push_back(&m);
  }
  if (opts.methods == "all") return all;
  if (opts.methods == "core") return core;
  if (opts.methods == "auto") {
    double estimate = 0;
    for (const auto* m : all) estimate += m->relative_cost * seconds_per_l2_run * static_cast<double>(runs);
    if (estimate <= seconds_left) return all;
    for (const auto* m : all)
      if (!m->core) skipped.push_back(m->name);
    return core;
  }
  std::vector<const MethodInfo*> chosen;
  for (const auto& name : split_nonempty(opts.methods, ',')) {
    const MethodInfo& m = methods().get(name);
    if (m.task_shape == TaskShape::target_and_source)
      chosen.push_back(&m);
    else
      elsewhere.push_back(&m);
  }
  XFER_CHECK(!chosen.empty() || !elsewhere.empty(), "--methods is empty");
  return chosen;
}

/// The demo as a suite: the source model pre-trained on opts.source, one task per size (the target with
/// per_class=SIZE), `methods` x `seeds`, run one after another in this process.
Suite demo_suite(const DemoOptions& opts, const std::vector<int64_t>& sizes, int64_t seeds,
                 const std::vector<std::string>& methods) {
  nlohmann::json tasks = nlohmann::json::array();
  for (int64_t size : sizes)
    tasks.push_back({{"name", cat(size, "/class")},
                     {"target", cat(opts.target, ":per_class=", size)},
                     {"source", opts.source}});
  const nlohmann::json suite = {
      {"description", "the Fashion-MNIST transfer task of `xfer demo`"},
      {"pretrain",
       {{"source", opts.source}, {"backbone", opts.backbone}, {"iterations", opts.pretrain_iterations}}},
      {"run", {{"iterations", opts.iterations}}},
      {"seeds", seeds},
      {"tasks", tasks},
      {"methods", methods},
      {"timing", false}};
  return parse_suite(suite, "demo");
}

/// The size of a planned run's task ("10/class").
int64_t size_of(const RunRequest& q, const std::vector<int64_t>& sizes) {
  for (int64_t size : sizes)
    if (q.task == cat(size, "/class")) return size;
  throw std::logic_error("demo: no size for task " + q.task);
}

/// The demo's runs in the order they run: for each size and seed, the methods back to back, so drifts in
/// machine load hit them alike; each in OUT/METHOD/nSIZE-sSEED.
std::vector<RunRequest> demo_plan(const DemoOptions& opts, const std::vector<int64_t>& sizes, int64_t seeds,
                                  const std::vector<std::string>& methods) {
  std::vector<RunRequest> plan = plan_runs(demo_suite(opts, sizes, seeds, methods), opts.out, opts.cache);
  for (auto& q : plan)
    q.dir = (fs::path(opts.out) / q.label / cat("n", size_of(q, sizes), "-s", q.seed)).string();
  std::stable_sort(plan.begin(), plan.end(), [&](const RunRequest& a, const RunRequest& b) {
    const int64_t sa = size_of(a, sizes), sb = size_of(b, sizes);
    const size_t ia = std::find(sizes.begin(), sizes.end(), sa) - sizes.begin();
    const size_t ib = std::find(sizes.begin(), sizes.end(), sb) - sizes.begin();
    return std::tie(ia, a.seed) < std::tie(ib, b.seed);
  });
  return plan;
}

/// Runs the demo's runs in this process, quietly, one line each, and keeps what they gave.
class DemoRuns {
 public:
  DemoRuns(const DemoOptions& opts, std::ostream& out)
      : opts_(opts),
        out_(out),
        table_({"method", "per_class", "seed", "test_top1", "test_mean_class", "step_ms", "out"}) {}

  /// Runs `q` (`index` of `count`; count 0: not known yet); returns its seconds.
  double run(const RunRequest& q, int64_t size, int64_t index, int64_t count) {
    const int saved_verbosity = verbosity();
    set_verbosity(0);
    const double t0 = now_seconds();
    nlohmann::json res;
    try {
      res = run_in_process(q, opts_.threads);
    } catch (...) {
      set_verbosity(saved_verbosity);
      throw;
    }
    set_verbosity(saved_verbosity);
    const double secs = now_seconds() - t0;
    RunRecord r;
    r.task = q.task;
    r.method = q.label;
    r.seed = q.seed;
    r.ok = true;
    r.test_top1 = res.value("test_top1", 0.0);
    r.test_mean_class = res.value("test_mean_class", 0.0);
    r.step_ms = res.value("step_ms_median", 0.0);
    r.dir = q.dir;
    records_.push_back(r);
    table_.add_row({q.label, std::to_string(size), std::to_string(q.seed), fixed(r.test_top1, 4),
                    fixed(r.test_mean_class, 4), fixed(res.value("step_ms", 0.0), 2), q.dir});
    results_.push_back(res);
    out_ << "[" << index << (count > 0 ? cat("/", count) : std::string()) << "] " << q.label << ", " << size
         << "/class, seed " << q.seed << ": test top-1 " << fixed(100 * r.test_top1, 1) << "% ("
         << fixed(secs, 1) << " s)" << std::endl;
    return secs;
  }
  const std::vector<RunRecord>& records() const { return records_; }
  nlohmann::json results() const { return results_; }
  std::string csv() const { return table_.csv(); }

 private:
  const DemoOptions& opts_;
  std::ostream& out_;
  Table table_;
  std::vector<RunRecord> records_;
  nlohmann::json results_ = nlohmann::json::array();
};

struct DemoTable {
  std::string markdown;
  nlohmann::json summary;  // per method: top-1 per size, time per step vs l2
};

/// Test top-1 per size (mean ± std over the seeds), and time per step relative to l2.
DemoTable demo_table(const std::vector<RunRecord>& records, const std::vector<std::string>& methods,
                     const std::vector<int64_t>& sizes) {
  std::vector<std::string> header = {"method"};
  for (int64_t s : sizes) header.push_back(cat(s, "/class"));
  header.push_back("time/step vs l2");
  Table table(header);
  for (size_t c = 1; c < header.size(); ++c) table.align_right(c);
  auto values = [&](const std::string& method, const std::string& task, double RunRecord::*field) {
    std::vector<double> v;
    for (const auto& r : records)
      if (r.method == method && (task.empty() || r.task == task)) v.push_back(r.*field);
    return v;
  };
  auto mean_step = [&](const std::string& method) {
    std::vector<double> all;  // by size, then seed
    for (int64_t s : std::set<int64_t>(sizes.begin(), sizes.end())) {
      const std::vector<double> v = values(method, cat(s, "/class"), &RunRecord::step_ms);
      all.insert(all.end(), v.begin(), v.end());
    }
    return mean_std(all).mean;
  };
  const double l2_step = mean_step("l2");
  DemoTable out;
  out.summary = nlohmann::json::array();
  for (const auto& m : methods) {
    std::vector<std::string> row = {m};
    nlohmann::json entry = {{"method", m}};
    for (int64_t s : sizes) {
      const MeanStd ms = mean_std(values(m, cat(s, "/class"), &RunRecord::test_top1));
      row.push_back(format_mean_std(ms));
      entry[cat("top1_", s)] = {{"mean", ms.mean}, {"std", ms.std}, {"n", ms.n}};
    }
    const double ratio = l2_step > 0 ? mean_step(m) / l2_step : 0;
    row.push_back(fixed(ratio, 2) + "x");
    entry["step_vs_l2"] = ratio;
    table.add_row(row);
    out.summary.push_back(entry);
  }
  out.markdown = table.markdown();
  return out;
}

}  // namespace

void DemoOptions::fields(Fields& f) {
  f.add("source", source, "source dataset spec to pre-train on");
  f.add("target", target, "target dataset spec (per_class= comes from --sizes)");
  f.add("sizes", sizes, "labelled examples per target class, comma-separated");
  f.add("seeds", seeds, "seeds per method and size").at_least(1);
  f.add("methods", methods,
        "auto (all registered methods if they fit in --budget, else scratch, l2 and each "
        "paper's method), all, core, or a comma-separated list");
  f.add("backbone", backbone, "backbone of the source model");
  f.add("iterations", iterations, "fine-tuning steps per run").at_least(1);
  f.add("pretrain_iterations", pretrain_iterations, "source pre-training steps").at_least(1);
  f.add("budget", budget, "minutes the demo aims to finish in (decides what --methods auto runs)").positive();
  f.add("out", out, "output directory");
  f.add("cache", cache, "cache of pre-trained source models (default $XDG_CACHE_HOME/xfer or ~/.cache/xfer)");
  f.add("threads", threads, "CPU threads (0 = all cores)").non_negative();
}

nlohmann::json run_demo(const DemoOptions& opts, std::ostream& out) {
  check_options(const_cast<DemoOptions&>(opts));
  const double start = now_seconds();
  const std::vector<int64_t> sizes = parse_sizes(opts.sizes);
  DatasetSpec::parse(opts.source);
  DatasetSpec::parse(opts.target);
  std::vector<std::string> skipped;
  std::vector<const MethodInfo*> elsewhere;
  pick_methods(opts, 0, 0, 0, skipped, elsewhere);  // an unknown method name fails here, before any training
  skipped.clear();
  make_dirs(opts.out);

  // l2 first, on the first size and seed 0: its time per run sizes the rest of the demo.
  const std::vector<RunRequest> first = demo_plan(opts, {sizes[0]}, 1, {"l2"});
  pretrain_sources(first, opts.cache, opts.threads, out);
  const std::string source_dir = first.front().config.at("init").get<std::string>();
  DemoRuns runs(opts, out);
  out << "Fine-tuning; the first l2 run sizes the demo to --budget " << opts.budget << " min" << std::endl;
  const double first_seconds = runs.run(first.front(), sizes[0], 1, 0);
  const int64_t runs_per_method = static_cast<int64_t>(sizes.size()) * opts.seeds;
  const double left = opts.budget * 60 - (now_seconds() - start);
  const auto chosen = pick_methods(opts, first_seconds, runs_per_method, left, skipped, elsewhere);
  std::vector<std::string> names;
  for (const auto* m : chosen) names.push_back(m->name);
  int64_t total = static_cast<int64_t>(chosen.size()) * runs_per_method, index = 1;
  if (std::find(names.begin(), names.end(), "l2") == names.end()) total += 1;
  out << "Running " << chosen.size() << " methods x " << sizes.size() << " sizes x " << opts.seeds
      << " seeds (" << total << " runs, " << opts.iterations << " steps each)" << std::endl;
  if (!names.empty())
    for (const RunRequest& q : demo_plan(opts, sizes, opts.seeds, names))
      if (!(q.label == "l2" && q.task == first.front().task && q.seed == 0))
        runs.run(q, size_of(q, sizes), ++index, total);

  const DemoTable table = demo_table(runs.records(), names, sizes);
  std::ostringstream md;
  md << "Fashion-MNIST transfer: source " << opts.source << " -> target " << opts.target << "\n"
     << "Test top-1 (%), mean ± std over " << opts.seeds << " seeds; backbone "
     << normalise_backbone_spec(opts.backbone) << ", " << opts.iterations
     << " fine-tuning steps; time per step relative to l2 (same process)\n\n"
     << table.markdown;
  if (!skipped.empty()) {
    std::string list;
    for (const auto& s : skipped) list += (list.empty() ? "" : ",") + s;
    md << "\nNot run, to stay within --budget " << opts.budget << " min: " << list
       << ".\nRun them with: xfer demo --methods " << list << "   (or --methods all)\n";
  }
  if (!elsewhere.empty()) {
    md << "\nNot run: this task does not fit them. Run each on a task that does:\n";
    for (const auto* m : elsewhere) md << "  " << m->name << ": " << m->demo_command << "\n";
  }
  out << "\n" << md.str();
  const double elapsed = now_seconds() - start;
  out << "\nDone in " << fixed(elapsed / 60, 1) << " min. Tables and runs are in "
      << (fs::path(opts.out) / "").string() << "\n";

  write_file_atomic((fs::path(opts.out) / "table.md").string(), md.str());
  write_file_atomic((fs::path(opts.out) / "results.csv").string(), runs.csv());
  nlohmann::json demo = {{"xfer_version", kVersion}, {"source_model", source_dir}, {"summary", table.summary},
                         {"runs", runs.results()},   {"skipped", skipped},         {"seconds", elapsed}};
  for (const auto* m : elsewhere) demo["not_fitting"].push_back(m->name);
  write_json_file((fs::path(opts.out) / "demo.json").string(), demo);
  return demo;
}

}  // namespace xfer
