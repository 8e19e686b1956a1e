#include "xfer/workflows/suite_runs.h"

#include <deque>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/core/runtime.h"
#include "xfer/methods/registry.h"
#include "xfer/workflows/pretrained.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// The first line starting with "error: " in a run's log, or its last line.
std::string run_error(const std::string& log_path, const ExitStatus& status) {
  if (status.signal) return cat("killed by signal ", status.signal);
  std::string last;
  if (fs::exists(log_path)) {
    std::istringstream in(read_file(log_path));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("error: ", 0) == 0) return line.substr(7);
      if (!line.empty()) last = line;
    }
  }
  return last.empty() ? cat("exit code ", status.code) : last;
}

/// A finished search's result: its best trial's result.json with "search" (best.json) added, written
/// as the suite run's own result.json.
void adopt_best_trial(const std::string& dir) {
  const fs::path best_path = fs::path(dir) / "best.json";
  if (!fs::exists(best_path)) return;  // no trial completed: the run is marked failed
  const nlohmann::json best = read_json_file(best_path.string());
  const fs::path trial = fs::path(best.value("run_dir", "")) / "result.json";
  if (!fs::exists(trial)) return;
  nlohmann::json result = read_json_file(trial.string());
  result["search"] = best;
  write_json_file((fs::path(dir) / "result.json").string(), result);
}

/// Prepares q.dir for a fresh start of its run and returns the run's command line.
std::vector<std::string> run_command(const RunRequest& q, const RunProcesses& how) {
  const fs::path request = fs::path(q.dir) / "request.json";
  // A search resumes its study when re-run with the same request; another request starts afresh.
  if (!q.search.is_null() && fs::exists(request) && read_json_file(request.string()) != q.config)
    fs::remove_all(q.dir);
  make_dirs(q.dir);
  fs::remove(fs::path(q.dir) / "result.json");
  write_json_file(request.string(), q.config);
  fs::remove(fs::path(q.dir) / "run.log");
  std::vector<std::string> args = {how.executable, q.search.is_null() ? "finetune" : "search",
                                   "--config",     request.string(),
                                   "--out",        q.dir,
                                   "--threads",    std::to_string(how.threads)};
  if (q.search.is_null())
    args.push_back("--overwrite");
  else
    for (const auto& a : search_arguments(q.search)) args.push_back(a);
  return args;
}

}  // namespace

void pretrain_sources(const std::vector<RunRequest>& plan, const std::string& cache, int64_t threads,
                      std::ostream& out) {
  std::set<std::string> pretrained;
  for (const auto& q : plan)
    for (const auto& recipe : q.pretrains)
      if (pretrained.insert(recipe.dump()).second) {
        PretrainPlan p = PretrainPlan::from_json(recipe, "pretrain");
        p.opts.threads = threads;
        cached_pretrain(p, cache, out);
      }
}

/// Whether the run in q.dir finished with exactly this request.
bool already_done(const RunRequest& q) {
  const fs::path dir(q.dir);
  if (!fs::exists(dir / "result.json") || !fs::exists(dir / "request.json")) return false;
  try {
    return read_json_file((dir / "request.json").string()) == q.config;
  } catch (const BadInput&) {
    return false;
  }
}

RunRecord record_of(const RunRequest& q) {
  const fs::path result = fs::path(q.dir) / "result.json";
  if (!fs::exists(result)) {
    RunRecord rec;
    rec.task = q.task;
    rec.method = q.label;
    rec.seed = q.seed;
    rec.dir = q.dir;
    return rec;
  }
  return record_from_result(q, read_json_file(result.string()));
}

RunRecord record_from_result(const RunRequest& q, const nlohmann::json& r) {
  RunRecord rec;
  rec.task = q.task;
  rec.method = q.label;
  rec.seed = q.seed;
  rec.dir = q.dir;
  rec.ok = true;
  rec.test_top1 = r.value("test_top1", 0.0);
  rec.test_mean_class = r.value("test_mean_class", 0.0);
  rec.best_val_top1 =
      r.value("best_val_top1", nlohmann::json()).is_number() ? r["best_val_top1"].get<double>() : -1;
  rec.step_ms = r.value("step_ms_median", 0.0);
  return rec;
}

void run_processes(const std::vector<RunRequest>& plan, const std::vector<size_t>& todo,
                   const RunProcesses& how, std::vector<RunRecord>& records,
                   const std::function<void(size_t)>& finished, int64_t done_before) {
  std::deque<size_t> pending(todo.begin(), todo.end());
  ProcessGroup pool;
  std::map<size_t, size_t> run_of;  // the pool's index of a process -> its run
  int64_t done = done_before;
  while (!pending.empty() || pool.running() > 0) {
    while (!pending.empty() && static_cast<int64_t>(pool.running()) < how.jobs) {
      const size_t i = pending.front();
      pending.pop_front();
      const std::string log = (fs::path(plan[i].dir) / "run.log").string();
      const std::vector<std::string> args = run_command(plan[i], how);
      run_of[pool.start(args, log, log)] = i;
    }
    const auto ended = pool.wait_any(/*interruptible=*/true);
    if (!ended) {  // SIGINT/SIGTERM: the runs in flight checkpoint and stop; a re-run redoes them
      pool.stop();
      throw_if_stop_requested(cat("the suite, with ", done, " of ", plan.size(),
                                  " runs finished (run the same command to continue),"));
      continue;
    }
    const size_t i = run_of.at(ended->index);
    const ExitStatus& st = ended->status;
    if (st.ok() && !plan[i].search.is_null()) adopt_best_trial(plan[i].dir);
    records[i] = record_of(plan[i]);
    if (!st.ok() || !records[i].ok) {
      records[i].ok = false;
      records[i].error = run_error((fs::path(plan[i].dir) / "run.log").string(), st);
    }
    ++done;
    finished(i);
  }
}

nlohmann::json run_in_process(const RunRequest& q, int64_t threads) {
  const MethodInfo& info = methods().get(q.config.at("method").get<std::string>());
  RunOptions r;
  auto config = info.make_config();
  read_config(q.config, r, config.get(), "run request");
  r.out = q.dir;
  r.threads = threads;
  r.overwrite = true;
  return run_finetune(r, *config);
}

}  // namespace xfer
