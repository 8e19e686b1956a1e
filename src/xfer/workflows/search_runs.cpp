#include "xfer/workflows/search_runs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/text.h"
#include "xfer/data/spec.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Run options a search sets for its trials, never from the user: the session's (each trial its own --out)
/// and the method.
std::vector<std::string> search_run_fixed(Fields& run_fields) {
  std::vector<std::string> names = run_fields.names_of({Fields::Role::session});
  names.push_back("method");
  return names;
}

/// Run options a resumed study may change: how trials execute and the session's.
bool search_run_ignored(Fields& run_fields, const std::string& key) {
  const auto names = run_fields.names_of({Fields::Role::execution, Fields::Role::session});
  return std::find(names.begin(), names.end(), key) != names.end();
}

/// The method's options with `values` of the search space set on them.
std::unique_ptr<MethodConfig> search_method_config(const std::string& method, const nlohmann::json& options) {
  auto config = methods().get(method).make_config();
  Fields f;
  config->fields(f);
  f.read_json(options, "method options");
  return config;
}

}  // namespace

RunObjective::RunObjective(RunOptions base, nlohmann::json method_options, SearchSpace space)
    : base_(std::move(base)), method_options_(std::move(method_options)), space_(std::move(space)) {}

void RunObjective::check() {
  XFER_CHECK(!base_.target.empty(), "xfer search needs --target SPEC (with a validation split, e.g. val=20)");
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  check_space(space_, {&rf, &mf}, search_run_fixed(rf));
  std::vector<std::string> targets = {base_.target};
  if (const ParamSpec* p = space_.find("target")) targets = p->choices;
  for (const auto& t : targets) {
    const DatasetSpec spec = DatasetSpec::parse(t);
    XFER_CHECK(spec.val_count > 0 || spec.val_fraction > 0,
               "xfer search maximises the best validation top-1, but ", "the target spec ", t,
               " has no validation split: add val=N (examples per class) or val=F");
  }
}

std::pair<RunOptions, std::unique_ptr<MethodConfig>> RunObjective::with_params(
    const ParamValues& params) const {
  RunOptions run = base_;
  auto config = search_method_config(run.method, method_options_);
  Fields rf, mf;
  run.fields(rf);
  config->fields(mf);
  apply_params(space_, params, {&rf, &mf});
  return {std::move(run), std::move(config)};
}

RunOptions RunObjective::run_options(const ParamValues& params) const {
  return with_params(params).first;
}

nlohmann::json RunObjective::method_options(const ParamValues& params) const {
  const auto config = with_params(params).second;
  Fields mf;
  config->fields(mf);
  return mf.to_json();
}

TrialOutcome RunObjective::operator()(const ParamValues& params, const TrialRecord& record,
                                      const ReportFn& report) const {
  auto [run, config] = with_params(params);
  run.out = record.run_dir;
  run.overwrite = true;
  run.resume = false;
  run.trainer.stop_after = 0;
  run.trainer.on_validation = [&report, &record](int64_t step, double value) {
    if (report && report(step, value))
      throw TrialPruned(cat("trial ", record.number, " pruned at step ", step));
  };
  const RunResult result = run_finetune(run, *config);
  XFER_CHECK(result.fit.best_val_top1.has_value(), "trial ", record.number,
             " reported no validation accuracy");
  return {*result.fit.best_val_top1, validation_curve(record.run_dir)};
}

nlohmann::json RunObjective::config() const {
  RunOptions run = base_;
  Fields rf;
  run.fields(rf);
  const nlohmann::json all = rf.to_json();
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, v] : all.items())
    if (!search_run_ignored(rf, k) && !space_.find(k)) out[k] = v;
  for (const auto& [k, v] : method_options_.items())
    if (!space_.find(k)) out["method." + k] = v;
  return out;
}

namespace {

nlohmann::json trial_result(const TrialRecord& t) {
  const fs::path p = fs::path(t.run_dir) / "result.json";
  return !t.run_dir.empty() && fs::exists(p) ? read_json_file(p.string()) : nlohmann::json::object();
}

/// One row per trial: exact values for trials.csv (`exact`), readable ones for the printed table.
std::vector<std::string> trial_row(const TrialRecord& t, const SearchSpace& space, bool exact) {
  const nlohmann::json r = t.state == "COMPLETE" ? trial_result(t) : nlohmann::json::object();
  const std::string none = exact ? "" : "-";
  auto accuracy = [&](double v) { return exact ? fixed(v, 6) : percent(v, 2); };
  std::vector<std::string> row = {std::to_string(t.number), t.state, t.value ? accuracy(*t.value) : none};
  for (const auto& p : space.params)
    row.push_back(exact ? p.value_text(t.params.at(p.name)) : p.display_text(t.params.at(p.name)));
  row.push_back(r.contains("test_top1") ? accuracy(r["test_top1"].get<double>()) : none);
  row.push_back(r.contains("best_val_step") && r["best_val_step"].is_number() ? r["best_val_step"].dump()
                                                                              : none);
  row.push_back(t.finished > 0 && t.started > 0 ? fixed(t.finished - t.started, exact ? 2 : 1) : none);
  row.push_back(t.run_dir);
  return row;
}

/// What the study's trials cost, for the report and best.json.
struct SearchCompute {
  int64_t trials = 0, complete = 0, failed = 0, pruned = 0, steps = 0;
  double run_seconds = 0;
  explicit SearchCompute(const std::vector<TrialRecord>& all) : trials(static_cast<int64_t>(all.size())) {
    for (const auto& t : all) {
      complete += t.state == "COMPLETE";
      failed += t.state == "FAILED";
      pruned += t.state == "PRUNED";
      // Every run validates at its last step, so a trial's last intermediate step is the steps it trained.
      if (!t.intermediate.empty()) steps += t.intermediate.back().first;
      if (t.finished > 0 && t.started > 0) run_seconds += t.finished - t.started;
    }
  }
  nlohmann::json to_json() const {
    return {{"trials", trials}, {"complete", complete}, {"pruned", pruned},
            {"failed", failed}, {"steps", steps},       {"run_seconds", run_seconds}};
  }
};

/// trials.csv (every trial), and the best 20 trials printed as a table.
void write_trial_tables(const std::vector<TrialRecord>& trials, const SearchSpace& space,
                        const SearchOptions& opts, std::ostream& out) {
  std::vector<std::string> header = {"trial", "state", "val_top1"};
  for (const auto& p : space.params) header.push_back(p.name);
  for (const char* h : {"test_top1", "best_val_step", "seconds", "run_dir"}) header.push_back(h);
  Table csv(header), md(header);
  for (size_t i = 2; i < header.size() - 1; ++i) md.align_right(i);
  for (const auto& t : trials) csv.add_row(trial_row(t, space, true));
  write_file_atomic((fs::path(opts.out) / "trials.csv").string(), csv.csv());

  std::vector<const TrialRecord*> by_value;
  for (const auto& t : trials) by_value.push_back(&t);
  std::stable_sort(by_value.begin(), by_value.end(), [](const TrialRecord* a, const TrialRecord* b) {
    return a->value.value_or(-1) > b->value.value_or(-1);
  });
  const size_t shown = std::min<size_t>(by_value.size(), 20);
  for (size_t i = 0; i < shown; ++i) md.add_row(trial_row(*by_value[i], space, false));
  out << md.markdown();
  if (shown < by_value.size())
    out << "(the best " << shown << " of " << by_value.size() << " trials; all in trials.csv)\n";
}

/// The compute the trials took, and the sampler's and storage's time against it.
void print_compute(Study& study, const SearchCompute& c, std::ostream& out) {
  double sample_s = 0, storage_s = 0, run_s = 0;
  int64_t counted = 0;
  for (const auto& w : study.workers()) {
    sample_s += w.sample_seconds;
    storage_s += w.storage_seconds;
    run_s += w.run_seconds;
    counted += w.trials;
  }
  out << "\nCompute: " << c.trials << " trials (" << c.pruned << " pruned), " << c.steps
      << " training steps, " << fixed(c.run_seconds, 1) << " s of trial run time\n";
  if (counted > 0 && run_s > 0)
    out << "Search overhead per trial: sampler " << fixed(1000 * sample_s / counted, 2) << " ms + storage "
        << fixed(1000 * storage_s / counted, 2) << " ms = " << percent((sample_s + storage_s) / run_s, 3)
        << " of a trial's run time (" << fixed(run_s / counted, 1) << " s)\n";
}

/// history.png: every complete trial's value and the best so far.
void plot_history(const std::vector<TrialRecord>& trials, const std::string& study_name,
                  const SearchOptions& opts, std::ostream& out) {
  Plot history;
  history.title = cat("xfer search: ", study_name);
  history.xlabel = "trial";
  history.ylabel = "validation top-1 (%)";
  history.style = "linespoints";
  Series values, best_so_far;
  values.name = "trial";
  best_so_far.name = "best so far";
  double running_best = -1;
  for (const auto& t : trials) {
    if (t.state != "COMPLETE" || !t.value) continue;
    values.x.push_back(static_cast<double>(t.number));
    values.y.push_back(100 * *t.value);
    running_best = std::max(running_best, *t.value);
    best_so_far.x.push_back(static_cast<double>(t.number));
    best_so_far.y.push_back(100 * running_best);
  }
  if (values.x.empty()) return;
  history.series = {values, best_so_far};
  if (!write_plot((fs::path(opts.out) / "history.png").string(), history))
    out << "history.png skipped: install gnuplot-nox\n";
}

}  // namespace

nlohmann::json report_search(Study& study, const SearchOptions& opts, std::ostream& out) {
  const auto trials = study.trials();
  const SearchSpace& space = study.info().space;
  const SearchCompute compute(trials);
  out << "Study '" << study.info().name << "' in " << study.path() << ": " << trials.size() << " trials ("
      << compute.complete << " complete, " << compute.pruned << " pruned, " << compute.failed
      << " failed), sampler " << study.info().sampler << "\n\n";
  write_trial_tables(trials, space, opts, out);
  print_compute(study, compute, out);
  plot_history(trials, study.info().name, opts, out);

  const TrialRecord* best = nullptr;
  for (const auto& t : trials)
    if (t.state == "COMPLETE" && t.value && (!best || *t.value > *best->value)) best = &t;
  if (!best) {
    out << "\nNo trial has completed yet.\n";
    return nlohmann::json();
  }
  const nlohmann::json best_result = trial_result(*best);
  nlohmann::json summary = {
      {"trial", best->number},        {"val_top1", *best->value}, {"params", space.values_json(best->params)},
      {"run_dir", best->run_dir},     {"study", study.path()},    {"trials", trials.size()},
      {"complete", compute.complete}, {"failed", compute.failed}, {"compute", compute.to_json()}};
  for (const char* k : {"test_top1", "test_mean_class", "best_val_step", "iterations"})
    if (best_result.contains(k)) summary[k] = best_result[k];
  write_json_file((fs::path(opts.out) / "best.json").string(), summary);
  out << "\nBest: trial " << best->number << ", validation top-1 " << percent(*best->value, 2);
  if (best_result.contains("test_top1"))
    out << " (test top-1 " << percent(best_result["test_top1"].get<double>(), 2) << " at step "
        << best_result.value("selected_step", nlohmann::json()).dump() << ")";
  out << "\n  " << space.values_text(best->params) << "\n  run directory: " << best->run_dir << "\n";
  return summary;
}

}  // namespace xfer
