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
  if (!stdout_path.empty()) posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path.c_str(), flags, 0644);
  if (!stderr_path.empty()) posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path.c_str(), flags, 0644);

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
    if (::access(candidate.c_str(), X_OK) == 0 && !std::filesystem::is_directory(candidate, ec)) return candidate;
    start = end + 1;
  }
  return "";
}

ExitStatus wait_process(pid_t pid, bool interruptible) {
  int status = 0;
  pid_t done;
  do {
    if (interruptible && stop_signal()) return ExitStatus{};
    done = ::waitpid(pid, &status, 0);
  } while (done < 0 && errno == EINTR);
  XFER_CHECK(done >= 0, "waitpid: ", std::strerror(errno));
  ExitStatus s;
  s.pid = done;
  if (WIFEXITED(status)) {
    s.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.signal = WTERMSIG(status);
    s.code = 128 + s.signal;
  }
  return s;
}

void stop_processes(const std::vector<pid_t>& pids) {
  for (const pid_t p : pids) ::kill(p, SIGTERM);
  for (const pid_t p : pids) {  // children already reaped fail with ECHILD: nothing to wait for
    int status = 0;
    while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

}  // namespace xfer
