#include "xfer/workflows/demo.h"

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/version.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/models/backbone.h"
#include "xfer/report/table.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    XFER_CHECK(used == tok.size() && !tok.empty() && v >= 1, "--sizes expects positive integers like 10,50, got '",
               text, "'");
    out.push_back(v);
  }
  XFER_CHECK(!out.empty(), "--sizes is empty");
  return out;
}

/// Which methods to run, which were left out for time, and which do not fit the demo's task (`elsewhere`:
/// they have a `demo_command`).
std::vector<const MethodInfo*> pick_methods(const DemoOptions& opts, double seconds_per_l2_run, int64_t runs,
                                            double seconds_left, std::vector<std::string>& skipped,
                                            std::vector<const MethodInfo*>& elsewhere) {
  std::vector<const MethodInfo*> all, core;
  elsewhere.clear();
  const bool listed = opts.methods != "all" && opts.methods != "core" && opts.methods != "auto";
  for (const auto& m : methods().all()) {
    if (!m.demo_command.empty()) {
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
  std::stringstream ss(opts.methods);
  std::string name;
  while (std::getline(ss, name, ',')) {
    const MethodInfo& m = methods().get(name);
    if (m.demo_command.empty())
      chosen.push_back(&m);
    else
      elsewhere.push_back(&m);
  }
  XFER_CHECK(!chosen.empty() || !elsewhere.empty(), "--methods is empty");
  return chosen;
}

}  // namespace

void DemoOptions::fields(Fields& f) {
  f.add("source", source, "source dataset spec to pre-train on");
  f.add("target", target, "target dataset spec (per_class= comes from --sizes)");
  f.add("sizes", sizes, "labelled examples per target class, comma-separated");
  f.add("seeds", seeds, "seeds per method and size").at_least(1);
  f.add("methods", methods, "auto (all registered methods if they fit in --budget, else scratch, l2 and each "
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

  RunOptions pretrain = source_pretrain_options(opts.source, opts.backbone, opts.pretrain_iterations);
  pretrain.threads = opts.threads;
  const std::string source_dir = cached_pretrain(pretrain, opts.cache, out);
  const int64_t runs_per_method = static_cast<int64_t>(sizes.size()) * opts.seeds;
  const int saved_verbosity = verbosity();

  struct Cell {
    std::vector<double> top1, mean_class, step_ms;
  };
  std::map<std::string, std::map<int64_t, Cell>> cells;
  Table runs_table({"method", "per_class", "seed", "test_top1", "test_mean_class", "step_ms", "out"});
  nlohmann::json runs_json = nlohmann::json::array();

  auto run_one = [&](const MethodInfo& info, int64_t size, int64_t seed, int64_t index, int64_t count) {
    RunOptions r;
    r.method = info.name;
    r.target = cat(opts.target, ":per_class=", size);
    if (info.needs_source) r.source = opts.source;
    if (info.allows_init) r.init = source_dir;
    if (!info.allows_init) r.backbone = opts.backbone;
    r.seed = seed;
    r.threads = opts.threads;
    r.trainer.iterations = opts.iterations;
    r.out = (fs::path(opts.out) / info.name / cat("n", size, "-s", seed)).string();
    r.overwrite = true;
    auto config = info.make_config();
    set_verbosity(0);
    const double t0 = now_seconds();
    nlohmann::json res;
    try {
      res = run_finetune(r, *config);
    } catch (...) {
      set_verbosity(saved_verbosity);
      throw;
    }
    set_verbosity(saved_verbosity);
    const double secs = now_seconds() - t0;
    Cell& c = cells[info.name][size];
    c.top1.push_back(res.value("test_top1", 0.0));
    c.mean_class.push_back(res.value("test_mean_class", 0.0));
    c.step_ms.push_back(res.value("step_ms_median", 0.0));
    runs_table.add_row({info.name, std::to_string(size), std::to_string(seed), fixed(res.value("test_top1", 0.0), 4),
                        fixed(res.value("test_mean_class", 0.0), 4), fixed(res.value("step_ms", 0.0), 2), r.out});
    runs_json.push_back(res);
    out << "[" << index << (count > 0 ? cat("/", count) : std::string()) << "] " << info.name << ", " << size << "/class, seed " << seed
        << ": test top-1 " << fixed(100 * res.value("test_top1", 0.0), 1) << "% (" << fixed(secs, 1) << " s)"
        << std::endl;
    return secs;
  };

  // l2 first: its time per run sizes the rest of the demo.
  const MethodInfo& l2 = methods().get("l2");
  out << "Fine-tuning; the first l2 run sizes the demo to --budget " << opts.budget << " min" << std::endl;
  const double first = run_one(l2, sizes[0], 0, 1, 0);
  const double left = opts.budget * 60 - (now_seconds() - start);
  const auto chosen = pick_methods(opts, first, runs_per_method, left, skipped, elsewhere);
  int64_t total = static_cast<int64_t>(chosen.size()) * runs_per_method, index = 1;
  if (std::find(chosen.begin(), chosen.end(), &l2) == chosen.end()) total += 1;
  out << "Running " << chosen.size() << " methods x " << sizes.size() << " sizes x " << opts.seeds << " seeds ("
      << total << " runs, " << opts.iterations << " steps each)" << std::endl;
  // Methods run back to back for each (size, seed), so drifts in machine load hit them alike.
  for (int64_t size : sizes)
    for (int64_t seed = 0; seed < opts.seeds; ++seed)
      for (const auto* m : chosen)
        if (!(m == &l2 && size == sizes[0] && seed == 0)) run_one(*m, size, seed, ++index, total);

  // The table: test top-1 per size, and time per step relative to l2.
  std::vector<std::string> header = {"method"};
  for (int64_t s : sizes) header.push_back(cat(s, "/class"));
  header.push_back("time/step vs l2");
  Table table(header);
  for (size_t c = 1; c < header.size(); ++c) table.align_right(c);
  auto mean_step = [&](const std::string& name) {
    std::vector<double> all;
    for (const auto& [size, cell] : cells[name]) all.insert(all.end(), cell.step_ms.begin(), cell.step_ms.end());
    return mean_std(all).mean;
  };
  const double l2_step = mean_step("l2");
  nlohmann::json summary = nlohmann::json::array();
  for (const auto* m : chosen) {
    std::vector<std::string> row = {m->name};
    nlohmann::json entry = {{"method", m->name}};
    for (int64_t s : sizes) {
      const MeanStd ms = mean_std(cells[m->name][s].top1);
      row.push_back(format_mean_std(ms));
      entry[cat("top1_", s)] = {{"mean", ms.mean}, {"std", ms.std}, {"n", ms.n}};
    }
    const double ratio = l2_step > 0 ? mean_step(m->name) / l2_step : 0;
    row.push_back(fixed(ratio, 2) + "x");
    entry["step_vs_l2"] = ratio;
    table.add_row(row);
    summary.push_back(entry);
  }

  std::ostringstream md;
  md << "Fashion-MNIST transfer: source " << opts.source << " -> target " << opts.target << "\n"
     << "Test top-1 (%), mean ± std over " << opts.seeds << " seeds; backbone "
     << normalise_backbone_spec(opts.backbone) << ", "
     << opts.iterations << " fine-tuning steps; time per step relative to l2 (same process)\n\n"
     << table.markdown();
  if (!skipped.empty()) {
    std::string names;
    for (const auto& s : skipped) names += (names.empty() ? "" : ",") + s;
    md << "\nNot run, to stay within --budget " << opts.budget << " min: " << names
       << ".\nRun them with: xfer demo --methods " << names << "   (or --methods all)\n";
  }
  if (!elsewhere.empty()) {
    md << "\nNot run: this task does not fit them. Run each on a task that does:\n";
    for (const auto* m : elsewhere) md << "  " << m->name << ": " << m->demo_command << "\n";
  }
  out << "\n" << md.str();
  const double elapsed = now_seconds() - start;
  out << "\nDone in " << fixed(elapsed / 60, 1) << " min. Tables and runs are in " << (fs::path(opts.out) / "").string() << "\n";

  write_file_atomic((fs::path(opts.out) / "table.md").string(), md.str());
  write_file_atomic((fs::path(opts.out) / "results.csv").string(), runs_table.csv());
  nlohmann::json demo = {{"xfer_version", kVersion}, {"source_model", source_dir}, {"summary", summary},
                         {"runs", runs_json},        {"skipped", skipped},        {"seconds", elapsed}};
  for (const auto* m : elsewhere) demo["not_fitting"].push_back(m->name);
  write_json_file((fs::path(opts.out) / "demo.json").string(), demo);
  return demo;
}

}  // namespace xfer
