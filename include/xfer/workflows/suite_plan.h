#pragma once
/// The plan of a suite: every run (task x method x seed, and a sweep's points) resolved to the request
/// `xfer finetune --config` reads, before anything runs. Shared by the suite file's checks (a plan that
/// cannot be made is a bad suite), `xfer bench` and `xfer demo`.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/workflows/run.h"
#include "xfer/workflows/suite.h"

namespace xfer {

/// One run of a suite, fully resolved before anything starts.
struct RunRequest {
  std::string task, label, dir;
  int64_t seed = 0;
  nlohmann::json config;                  // what `xfer finetune --config` reads
  std::vector<nlohmann::json> pretrains;  // source models to train first, in order (one may need another)
  nlohmann::json search;                  // null, or the method entry's "search"
  std::string point;                      // a sweep's point, "alpha=0,tau=3" ("" for a plain run)
};

/// Every run of suite `s`, in order task, method, seed (and sweep point), each in OUT/runs/TASK/LABEL/seedN
/// (/POINT); source models in `cache` ("" = the default cache). BadInput, naming the run, for options that
/// do not fit.
std::vector<RunRequest> plan_runs(const Suite& s, const std::string& out, const std::string& cache);

/// `a` with `b`'s keys laid over it.
nlohmann::json suite_merged(nlohmann::json a, const nlohmann::json& b);

/// A file-system-friendly name: letters, digits, '-', '_' and '.'; the rest becomes '_'.
std::string suite_slug(const std::string& s);

/// Whether method entry `m` runs on task `task` (its "tasks", or every task).
bool suite_runs_on(const SuiteMethod& m, const std::string& task);

/// The option names (as in JSON) of method `name`.
std::set<std::string> method_option_names(const std::string& name);

/// `xfer search` arguments of a method entry's "search": --param NAME=SPEC for each of "params", then
/// --KEY VALUE for the search options.
std::vector<std::string> search_arguments(const nlohmann::json& search);

}  // namespace xfer
