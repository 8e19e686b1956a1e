#pragma once
/// Child processes: fresh processes of a binary (never fork() of a process whose torch thread pools are
/// running), with their output in files. Used by `xfer bench` (one process per run), `xfer search`
/// (its worker processes) and `xfer launch` (its ranks), through ProcessGroup.
#include <sys/types.h>

#include <map>
#include <optional>
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

/// Child processes started together and waited for together: `xfer bench`'s runs (a pool, `jobs` at a
/// time), `xfer search`'s workers and `xfer launch`'s ranks. Each child is spawn_process()ed (never forked:
/// the parent has threads) into this process's process group, so a Ctrl-C at the terminal reaches the
/// children too. A group destroyed with children still running (an exception) kills and reaps them.
class ProcessGroup {
 public:
  /// At most this many children of a group that forwards signals.
  static constexpr size_t kMaxForwarded = 1024;

  /// One child that ended: its index in start order and how it ended.
  struct Ended {
    size_t index = 0;
    ExitStatus status;
  };

  ProcessGroup() = default;
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;
  ~ProcessGroup();

  /// Starts a child (see spawn_process); returns its index. BadInput if it cannot start.
  size_t start(const std::vector<std::string>& argv, const std::string& stdout_path = "",
               const std::string& stderr_path = "", const std::map<std::string, std::string>& env = {},
               const std::string& cwd = "");
  size_t size() const { return pids_.size(); }
  size_t running() const { return running_; }
  bool is_running(size_t index) const { return pids_[index] > 0; }

  /// Blocks until one of the group's children ends (children of other origins are left alone). With
  /// `interruptible`, a stop signal (see install_stop_handlers) ends the wait instead: returns nothing.
  /// Nothing either when no child is running.
  std::optional<Ended> wait_any(bool interruptible = false);
  /// The children that have ended since the last look, in start order, without blocking.
  std::vector<Ended> poll();
  /// Waits for every child; returns the exit code of the first in start order that failed (128 + signal
  /// for a killed one), or 0. With `interruptible`, a stop signal ends the wait: the children are
  /// stopped (stop()) and throw_if_stop_requested(`what`) throws.
  int wait_all(bool interruptible = false, const std::string& what = "");

  /// Sends `sig` to every running child.
  void signal(int sig);
  /// SIGTERM to every running child, then waits for them (they checkpoint and exit).
  void stop();
  /// SIGKILL to every running child, then reaps them.
  void kill();

  /// While the returned guard lives, SIGINT and SIGTERM sent to this process are passed on to the group's
  /// running children instead (the caller's handlers are restored after); forwarded_signal() tells which
  /// came. One group at a time may forward.
  class Forwarding {
   public:
    explicit Forwarding(ProcessGroup& group);
    Forwarding(const Forwarding&) = delete;
    Forwarding& operator=(const Forwarding&) = delete;
    ~Forwarding();
  };
  Forwarding forward_stop_signals() { return Forwarding(*this); }
  /// The last signal forwarded (0: none).
  static int forwarded_signal();

 private:
  ExitStatus reap(size_t index, int status);
  /// Sends `sig` to the running children and waits for each.
  void signal_and_reap(int sig);

  std::vector<pid_t> pids_;  // -1 once reaped
  size_t running_ = 0;
};

}  // namespace xfer
