#pragma once
/// The search over training runs: the objective that runs a trial as a fine-tuning run, and the report of a
/// study's trials (trials.csv, best.json, history.png).
#include <memory>
#include <ostream>
#include <utility>

#include <nlohmann/json.hpp>

#include "xfer/search/search.h"
#include "xfer/workflows/run.h"

namespace xfer {

/// The search over runs: fixed options `base` and `method_options` (the method's fields as JSON), with
/// the space's parameters set on top for each trial. `check` validates the space and the objective.
class RunObjective {
 public:
  RunObjective(RunOptions base, nlohmann::json method_options, SearchSpace space);
  /// BadInput if a parameter is not an option a search may set, or the target has no validation split.
  void check();
  TrialOutcome operator()(const ParamValues& params, const TrialRecord& record, const ReportFn& report) const;
  /// The fixed configuration, stored in the study (a resumed study must match it).
  nlohmann::json config() const;
  /// The method's options with a trial's parameters set (for reports: smooth's schedule).
  nlohmann::json method_options(const ParamValues& params) const;
  /// The run options with a trial's parameters set.
  RunOptions run_options(const ParamValues& params) const;

 private:
  /// The run options and the method's options with a trial's parameters set.
  std::pair<RunOptions, std::unique_ptr<MethodConfig>> with_params(const ParamValues& params) const;

  RunOptions base_;
  nlohmann::json method_options_;
  SearchSpace space_;
};

/// Writes trials.csv, best.json and history.png to opts.out, prints the best trial, a trial table, the
/// compute the search took (trials, pruned, training steps, run time) and its overhead, and returns
/// best.json's content (null when no trial completed); best.json holds the compute too.
nlohmann::json report_search(Study& study, const SearchOptions& opts, std::ostream& out);

}  // namespace xfer
