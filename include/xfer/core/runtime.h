#pragma once
/// Process-wide runtime: threads, log lines, a progress bar, a monotonic clock.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace xfer {

/// Number of cores this process may use (affinity-aware).
int available_cores();
/// Sets LibTorch's intra-op threads; 0 means all available cores. Returns the number set.
int set_threads(int64_t threads);

/// Keeps freed tensor memory in the process instead of returning it to the OS after every step.
/// glibc serves allocations above 128 KiB (every activation of a batch) with fresh mmap pages, so each
/// training step page-faults its activations in again; a 32 MiB mmap threshold and a 256 MiB trim
/// threshold remove that (~15-20% of a small CNN's step on CPU). Idempotent.
void tune_allocator();

/// Verbosity of log lines on stderr: 0 quiet (errors only), 1 normal, 2 verbose.
void set_verbosity(int level);
int verbosity();
/// A log line on stderr (shown at verbosity >= 1).
void log_info(const std::string& line);
/// A warning on stderr, always shown.
void log_warn(const std::string& line);

/// Makes SIGINT and SIGTERM request a graceful stop instead of killing the process: long loops poll
/// `stop_signal()` at safe points (after a training step), save their state and throw `Interrupted`.
/// A second signal of the same kind kills the process at once. Installed by the command-line tool.
void install_stop_handlers();
/// The signal that requested a stop (SIGINT or SIGTERM), or 0.
int stop_signal();
/// Forgets a requested stop (for tests, and for loops that have handled it).
void clear_stop_signal();
/// "SIGINT", "SIGTERM", or the number.
std::string signal_name(int signal);
/// Throws `Interrupted` when a stop was requested, saying `what` was stopped and how to continue.
void throw_if_stop_requested(const std::string& what);

/// Seconds since an arbitrary fixed point (steady clock).
double now_seconds();

/// Seconds between progress lines when stderr is not a terminal (default 15; `xfer --log-interval`).
void set_progress_interval(double seconds);
double progress_interval();

/// A progress bar on a terminal (stderr), timestamped lines otherwise.
///
/// On a TTY it redraws one line: `label [#####-----] 120/300  loss 0.532  12.3 it/s  ETA 0:15`.
/// Piped, under nohup or in a batch job it prints the same fields as a line that starts with the local time,
/// every progress_interval() seconds and at the end, however long a step takes: a log shows a run's pace.
/// Call update() as often as is cheap (every step); it decides when to draw.
class Progress {
 public:
  /// `start`: items already done when it starts (a resumed run), so the rate counts only new work.
  Progress(std::string label, int64_t total, int64_t start = 0);
  ~Progress();
  /// Reports that `done` of `total` items are finished; `status` is shown after the bar.
  void update(int64_t done, const std::string& status);
  /// Prints a message above the bar (the bar is redrawn on the next update).
  void message(const std::string& line);
  void finish();

 private:
  std::string label_;
  int64_t total_, start_done_;
  double start_time_, last_draw_;
  bool tty_, open_ = false;
};

/// Waits up to `seconds`, checking `done` every `step` seconds; returns as soon as it holds (whether it did).
/// For workers that wait on others' trials or runs: a plain sleep kept them idle after the work had ended.
bool wait_until(double seconds, const std::function<bool()>& done, double step = 0.1);

/// Calls `fn` every `interval` seconds on a thread of its own until destroyed (heartbeats of a running trial
/// or run). The destructor wakes the thread and waits for a call in progress; `fn` handles its own errors.
class Periodic {
 public:
  Periodic(double interval, std::function<void()> fn);
  ~Periodic();
  Periodic(const Periodic&) = delete;
  Periodic& operator=(const Periodic&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace xfer
