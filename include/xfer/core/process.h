#pragma once
/// Child processes: fresh processes of a binary (never fork() of a process whose torch thread pools are
/// running), with their output in files. Used by `xfer bench` (one process per run) and `xfer search`
/// (its worker processes).
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace xfer {

/// The path of the running executable.
std::string self_executable();

/// Starts `argv[0]` (a path; no shell is involved, so no argument is ever parsed as a command) with `argv`,
/// stdout and stderr appended to the given files ("" keeps the parent's), with `env` added to the parent's
/// environment, in directory `cwd` ("" keeps the parent's; relative output paths are then relative to it).
/// BadInput naming the program if it cannot start.
pid_t spawn_process(const std::vector<std::string>& argv, const std::string& stdout_path,
                    const std::string& stderr_path, const std::map<std::string, std::string>& env = {},
                    const std::string& cwd = "");

/// The path of executable `name` in a directory of $PATH, or "" if there is none (what `command -v`
/// finds, without a shell).
std::string find_program(const std::string& name);

struct ExitStatus {
  pid_t pid = -1;
  int code = 0;    // exit code, or 128 + signal for a killed process
  int signal = 0;  // the signal that killed it, 0 if it exited
  bool ok() const { return code == 0; }
};
/// Waits for any child (pid -1) or one child; retries on EINTR. With `interruptible`, a stop signal
/// (see install_stop_handlers) ends the wait instead, returning pid -1.
ExitStatus wait_process(pid_t pid = -1, bool interruptible = false);

/// Sends SIGTERM to each child and waits for those not yet reaped (they checkpoint and exit).
void stop_processes(const std::vector<pid_t>& pids);

}  // namespace xfer
