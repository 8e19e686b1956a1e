#pragma once
// What the study tests share on every storage (SQLite, PostgreSQL): a two-parameter space, a sampler whose
// values say what it saw, and run directories by number.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xfer/search/study.h"

namespace xfer::test {

inline StudyInfo study_info(const std::string& name = "test") {
  StudyInfo info;
  info.name = name;
  info.space = SearchSpace::parse({"x=lin:-1:1", "c=cat:a,b"});
  info.seed = 3;
  info.config = {{"iterations", 10}, {"method.tau", 5.0}};
  return info;
}

/// x = (complete trials seen) / 100, c = the trial number's parity.
inline Study::SampleFn study_sampler() {
  return [](const std::vector<Observation>& complete, int64_t number) {
    return ParamValues{{"x", static_cast<double>(complete.size()) / 100},
                       {"c", static_cast<double>(number % 2)}};
  };
}

inline Study::RunDirFn study_dirs() {
  return [](int64_t n) { return "runs/" + std::to_string(n); };
}

/// Starts `argv` (a search worker: argv[0] is the binary) and kills it (SIGKILL) in the middle of a trial:
/// once the study, read through `open`, has a RUNNING trial after a COMPLETE one, the worker is stopped
/// (SIGSTOP, so it cannot finish the trial between that look and the kill) and killed. Returns the killed
/// trial's number
/// (-1 if the worker never ran one in time) and the values of the trials complete by then in `completed`.
inline int64_t kill_worker_mid_trial(std::vector<std::string> argv_text,
                                     const std::function<std::unique_ptr<Study>()>& open,
                                     std::map<int64_t, double>& completed) {
  std::vector<char*> argv;
  for (auto& s : argv_text) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  auto running_trial = [&]() -> int64_t {
    try {
      const std::unique_ptr<Study> s = open();
      if (!s) return -1;
      const auto trials = s->trials();
      completed.clear();
      for (const auto& t : trials)
        if (t.state == "COMPLETE") completed[t.number] = *t.value;
      if (completed.empty()) return -1;
      for (const auto& t : trials)
        if (t.state == "RUNNING") return t.number;
    } catch (const std::exception&) {
      // the worker may be creating the study right now
    }
    return -1;
  };
  int64_t killed = -1;
  for (int i = 0; i < 3000 && killed < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (running_trial() < 0) continue;
    kill(pid, SIGSTOP);
    killed = running_trial();
    if (killed < 0) kill(pid, SIGCONT);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return killed;
}

}  // namespace xfer::test
