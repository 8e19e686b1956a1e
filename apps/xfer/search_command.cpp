/// `xfer search`: tunes options of a run against validation accuracy, in a study shared by workers.
#include <algorithm>
#include <filesystem>
#include <tuple>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"
#include "xfer/search/search.h"
#include "xfer/workflows/method_figures.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/search_runs.h"

namespace fs = std::filesystem;

namespace xfer::cli {
namespace {

/// The curve the method draws of its best trials' options (MethodInfo::search_curve; Smooth TL: lambda(t),
/// as the paper's Fig. 2), if it draws one.
void plot_search_curves(const MethodInfo& info, Study& study, const RunObjective& objective,
                        const SearchOptions& opts, std::ostream& out) {
  const OptionCurve& curve = info.search_curve;
  if (!curve.points) return;
  std::vector<TrialRecord> done;
  for (auto& t : study.trials())
    if (t.state == "COMPLETE" && t.value) done.push_back(t);
  if (done.empty()) return;
  std::stable_sort(done.begin(), done.end(),
                   [](const TrialRecord& a, const TrialRecord& b) { return *a.value > *b.value; });
  done.resize(std::min<size_t>(done.size(), static_cast<size_t>(opts.plot_top)));
  std::vector<TrialCurve> trials;
  for (const auto& t : done) {
    const RunOptions run = objective.run_options(t.params);
    TrialCurve c;
    std::tie(c.x, c.y) =
        curve.points(objective.method_options(t.params), run.trainer.iterations, !run.init.empty());
    const fs::path result = fs::path(t.run_dir) / "result.json";
    if (fs::exists(result))
      c.selected_step = json_int_or(read_json_file(result.string()), "selected_step", -1, result.string());
    c.label = cat("#", t.number, " val ", fixed(100 * *t.value, 1),
                  "%: ", study.info().space.values_text(t.params));
    trials.push_back(std::move(c));
  }
  const std::string path = (fs::path(opts.out) / curve.file).string();
  if (write_plot(path, option_curve_plot(curve, trials,
                                         cat(curve.title, " of the best ", trials.size(), " trials"))))
    out << curve.title << " of the best " << trials.size() << " trials: " << path << "\n";
  else
    out << curve.file << " skipped: install gnuplot-nox\n";
}

class SearchCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>& args) override {
    app = parent.add_subcommand("search",
                                "Tune any options of a run or its method against validation accuracy "
                                "(TPE or random search), in a crash-safe study shared by parallel workers");
    args_ = args;
    method_ = read_method_and_config(app->get_name(), args, run_, /*with_method=*/true);
    Fields rf;
    run_.fields(rf);
    add_fields(*app, rf, rf.names_of({Fields::Role::session}));  // each trial has its own
    Fields sf;
    search_.fields(sf);
    for (auto& f : sf.all()) f.group = "Search";
    add_fields(*app, sf);
    app->add_option("--param", params_,
                    "a parameter to search: NAME=lin:LO:HI, log:LO:HI, int:LO:HI, logint:LO:HI or cat:A,B,C "
                    "(repeat the flag for each parameter; NAME is any run or method option)")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->group("Search");
    app->add_option("--config", config_path_,
                    "read the fixed options from a JSON file (e.g. a run's config.json); "
                    "flags given on the command line win")
        ->group("Run");
    app->add_flag("--json", json_, "print best.json on stdout when done")->group("Run");
    // Internal: a worker process started by --workers N runs trials and leaves the report to its parent.
    app->add_flag("--worker", worker_)->group("");
    app->add_option("--worker-exe", exe_)->group("");
    Fields mf;
    method_->fields(mf);
    for (auto& f : mf.all()) f.group = cat("Method options (", run_.method, ")");
    add_fields(*app, mf);
    app->footer(
        "Each trial is a run of `xfer finetune` with the fixed options given here and the searched ones set "
        "on\n"
        "top; its objective is the run's best validation top-1, so --target needs a validation split "
        "(val=N).\n"
        "Re-running the same command resumes the study; --workers N runs N processes on the same study.\n\n"
        "Example (Smooth Transfer Learning's schedule, as in the paper):\n"
        "  xfer search --method smooth --source fmnist:classes=0,1,3,5,8 \\\n"
        "      --target fmnist:classes=2,4,6,7,9:per_class=50:val=20 --backbone cnn4 --iterations 600 \\\n"
        "      --schedule cosine --warmup 0.025 --lr 0.05 --select best \\\n"
        "      --param tau=log:1:1000 --param t0=lin:-300:300 --param alpha=lin:-6:6 --trials 16 --out "
        "runs/search");
  }

  void run(std::ostream& out) override {
    Fields rf, mf;
    run_.fields(rf);
    rf.validate();
    search_.validate();
    method_->fields(mf);
    mf.validate();
    XFER_CHECK(!search_.out.empty(),
               "xfer search needs --out DIR (the study, the trials' runs and the reports)");
    const SearchSpace space = SearchSpace::parse(params_);
    if (search_.workers > 1 && run_.threads == 0)
      run_.threads = std::max(1, available_cores() / static_cast<int>(search_.workers));
    RunObjective objective(run_, mf.to_json(), space);
    objective.check();
    make_dirs(search_.out);
    StudyInfo info;
    info.name = search_.study;
    info.space = space;
    info.sampler = name_of(search_.sampler);
    info.seed = static_cast<uint64_t>(run_.seed);
    info.config = objective.config();
    Study study(search_.storage_path(), info, search_.busy_timeout);
    auto sampler = make_param_sampler(search_.sampler, search_.tpe());
    const Objective fn = [&objective](const ParamValues& p, const TrialRecord& r, const ReportFn& report) {
      return objective(p, r, report);
    };
    if (worker_) {
      run_worker(study, search_, *sampler, fn, out);
      return;
    }
    out << "Searching " << space.params.size() << " parameters of " << run_.method << " with "
        << search_.sampler << ": " << search_.trials << " trials, " << search_.workers << " worker"
        << (search_.workers > 1 ? "s" : "") << "; study " << study.path() << std::endl;
    if (search_.workers == 1) {
      run_worker(study, search_, *sampler, fn, out);
    } else {
      std::vector<std::string> worker_args = args_;
      worker_args.push_back("--worker");
      const std::string exe = exe_.empty() ? fs::read_symlink("/proc/self/exe").string() : exe_;
      const int rc = run_workers(exe, worker_args, search_.workers);
      if (rc != 0) {
        report_search(study, search_, out);
        throw std::runtime_error(cat("a worker process failed (exit code ", rc,
                                     "; its error is above); re-run the "
                                     "same command to resume the study"));
      }
    }
    const nlohmann::json best = report_search(study, search_, out);
    plot_search_curves(methods().get(run_.method), study, objective, search_, out);
    if (json_) out << best.dump(2) << "\n";
  }

 private:
  std::vector<std::string> args_;
  RunOptions run_;
  SearchOptions search_;
  std::unique_ptr<MethodConfig> method_;
  std::vector<std::string> params_;
  std::string config_path_;
  std::string exe_;  // default: this executable
  bool json_ = false, worker_ = false;
};

}  // namespace

std::unique_ptr<Command> make_search_command() {
  return std::make_unique<SearchCommand>();
}

}  // namespace xfer::cli
