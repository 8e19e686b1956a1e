#include "xfer/core/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "xfer/core/error.h"
#include "xfer/core/runtime.h"

extern char** environ;

namespace xfer {

std::string self_executable() {
  std::error_code ec;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  XFER_CHECK(!ec, "cannot find the running executable: ", ec.message());
  return path.string();
}

pid_t spawn_process(const std::vector<std::string>& argv, const std::string& stdout_path,
                    const std::string& stderr_path, const std::map<std::string, std::string>& env,
                    const std::string& cwd) {
  XFER_CHECK(!argv.empty(), "spawn_process: no program given");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  // No O_CLOEXEC: the file is opened straight onto fd 1 or 2, which must survive the exec.
  const int flags = O_WRONLY | O_CREAT | O_APPEND;
  if (!stdout_path.empty())
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path.c_str(), flags, 0644);
  if (!stderr_path.empty())
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(), flags, 0644);

  std::vector<std::string> env_text;
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    const std::string key = entry.substr(0, entry.find('='));
    if (!env.count(key)) env_text.push_back(entry);
  }
  for (const auto& [k, v] : env) env_text.push_back(k + "=" + v);
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const auto& e : env_text) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  XFER_CHECK(rc == 0, "cannot start ", argv[0], ": ", std::strerror(rc));
  return pid;
}

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (name.empty() || name.find('/') != std::string::npos || !path) return "";
  const std::string dirs(path);
  for (size_t start = 0; start <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = end > start ? dirs.substr(start, end - start) : ".";
    const std::string candidate = dir + "/" + name;
    std::error_code ec;
    if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate, ec))
      return candidate;
    start = end + 1;
  }
  return "";
}

namespace {

ExitStatus exit_status(pid_t pid, int status) {
  ExitStatus s;
  s.pid = pid;
  if (WIFEXITED(status)) {
    s.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.signal = WTERMSIG(status);
    s.code = 128 + s.signal;
  }
  return s;
}

// The children of the group that forwards SIGINT/SIGTERM, for the handler (which may only call
// async-signal-safe functions: kill).
volatile sig_atomic_t forwarded_count = 0;
pid_t forwarded_pids[ProcessGroup::kMaxForwarded];
volatile sig_atomic_t last_forwarded = 0;
const ProcessGroup* forwarding_group = nullptr;
struct sigaction saved_int {
}, saved_term{};

extern "C" void xfer_forward_signal(int sig) {
  last_forwarded = sig;
  for (int i = 0; i < forwarded_count; ++i)
    if (forwarded_pids[i] > 0) ::kill(forwarded_pids[i], sig);
}

}  // namespace

ExitStatus wait_process(pid_t pid, bool interruptible) {
  int status = 0;
  pid_t done;
  do {
    if (interruptible && stop_signal()) return ExitStatus{};
    done = ::waitpid(pid, &status, 0);
  } while (done < 0 && errno == EINTR);
  XFER_CHECK(done >= 0, "waitpid: ", std::strerror(errno));
  return exit_status(done, status);
}

void stop_processes(const std::vector<pid_t>& pids) {
  for (const pid_t p : pids) ::kill(p, SIGTERM);
  for (const pid_t p : pids) {  // children already reaped fail with ECHILD: nothing to wait for
    int status = 0;
    while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

ProcessGroup::~ProcessGroup() {
  if (running_ > 0) kill();
}

size_t ProcessGroup::start(const std::vector<std::string>& argv, const std::string& stdout_path,
                           const std::string& stderr_path, const std::map<std::string, std::string>& env,
                           const std::string& cwd) {
  const bool forwarding = forwarding_group == this;
  XFER_CHECK(!forwarding || pids_.size() < kMaxForwarded, "at most ", kMaxForwarded, " processes at a time");
  const pid_t pid = spawn_process(argv, stdout_path, stderr_path, env, cwd);
  pids_.push_back(pid);
  ++running_;
  if (forwarding) {
    forwarded_pids[pids_.size() - 1] = pid;
    forwarded_count = static_cast<sig_atomic_t>(pids_.size());
  }
  return pids_.size() - 1;
}

ExitStatus ProcessGroup::reap(size_t index, int status) {
  const ExitStatus s = exit_status(pids_[index], status);
  pids_[index] = -1;
  --running_;
  if (forwarding_group == this) forwarded_pids[index] = -1;
  return s;
}

std::optional<ProcessGroup::Ended> ProcessGroup::wait_any(bool interruptible) {
  while (running_ > 0) {
    if (interruptible && stop_signal()) return std::nullopt;
    // Wait for any child to end without reaping it: a child that is not the group's stays for its owner.
    siginfo_t info{};
    if (::waitid(P_ALL, 0, &info, WEXITED | WNOWAIT) < 0) {
      XFER_CHECK(errno == EINTR, "waitid: ", std::strerror(errno));
      continue;
    }
    const auto own = std::find(pids_.begin(), pids_.end(), info.si_pid);
    if (own == pids_.end()) {  // another's child: look at the group's own now and then
      for (size_t i = 0; i < pids_.size(); ++i) {
        int status = 0;
        if (pids_[i] > 0 && ::waitpid(pids_[i], &status, WNOHANG) > 0) return Ended{i, reap(i, status)};
      }
      ::usleep(20000);
      continue;
    }
    int status = 0;
    pid_t done;
    while ((done = ::waitpid(info.si_pid, &status, 0)) < 0 && errno == EINTR) {
    }
    XFER_CHECK(done >= 0, "waitpid: ", std::strerror(errno));
    const size_t index = static_cast<size_t>(own - pids_.begin());
    return Ended{index, reap(index, status)};
  }
  return std::nullopt;
}

std::vector<ProcessGroup::Ended> ProcessGroup::poll() {
  std::vector<Ended> ended;
  for (size_t i = 0; i < pids_.size(); ++i) {
    if (pids_[i] <= 0) continue;
    int status = 0;
    const pid_t done = ::waitpid(pids_[i], &status, WNOHANG);
    if (done == 0 || (done < 0 && errno == EINTR)) continue;
    // done < 0 otherwise (ECHILD): reaped elsewhere; it counts as ended, with status 0.
    ended.push_back(Ended{i, reap(i, done > 0 ? status : 0)});
  }
  return ended;
}

int ProcessGroup::wait_all(bool interruptible, const std::string& what) {
  std::vector<int> codes(pids_.size(), 0);
  while (running_ > 0) {
    const std::optional<Ended> e = wait_any(interruptible);
    if (!e) {  // SIGINT/SIGTERM: the children stop too
      stop();
      throw_if_stop_requested(what);
    }
    if (e) codes[e->index] = e->status.code;
  }
  for (const int code : codes)
    if (code != 0) return code;
  return 0;
}

void ProcessGroup::signal(int sig) {
  for (const pid_t p : pids_)
    if (p > 0) ::kill(p, sig);
}

void ProcessGroup::signal_and_reap(int sig) {
  signal(sig);
  for (size_t i = 0; i < pids_.size(); ++i) {
    if (pids_[i] <= 0) continue;
    int status = 0;
    pid_t done;
    while ((done = ::waitpid(pids_[i], &status, 0)) < 0 && errno == EINTR) {
    }
    reap(i, done > 0 ? status : 0);
  }
}

void ProcessGroup::stop() {
  signal_and_reap(SIGTERM);
}

void ProcessGroup::kill() {
  signal_and_reap(SIGKILL);
}

ProcessGroup::Forwarding::Forwarding(ProcessGroup& group) {
  XFER_CHECK(forwarding_group == nullptr, "only one process group at a time can forward signals");
  last_forwarded = 0;
  forwarded_count = 0;
  for (size_t i = 0; i < group.pids_.size() && i < kMaxForwarded; ++i) forwarded_pids[i] = group.pids_[i];
  forwarded_count = static_cast<sig_atomic_t>(std::min(group.pids_.size(), kMaxForwarded));
  forwarding_group = &group;
  struct sigaction action {};
  action.sa_handler = xfer_forward_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &saved_int);
  sigaction(SIGTERM, &action, &saved_term);
}

ProcessGroup::Forwarding::~Forwarding() {
  forwarded_count = 0;
  forwarding_group = nullptr;
  sigaction(SIGINT, &saved_int, nullptr);
  sigaction(SIGTERM, &saved_term, nullptr);
}

int ProcessGroup::forwarded_signal() {
  return last_forwarded;
}

}  // namespace xfer
