#include "xfer/core/runtime.h"

#include <malloc.h>
#include <sched.h>
#include <unistd.h>
#include <csignal>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <thread>

#include <ATen/Parallel.h>

#include "xfer/core/error.h"

namespace xfer {
namespace {
std::atomic<int> g_verbosity{1};
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void xfer_on_stop_signal(int sig) {
  if (g_stop_signal == sig) {  // the second one: stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

std::string clock_text(double seconds) {
  if (!(seconds >= 0) || seconds > 360000) return "--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buf;
}
}  // namespace

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

int set_threads(int64_t threads) {
  XFER_CHECK(threads >= 0, "--threads must be >= 0 (0 = all cores), got ", threads);
  // Thousands of OpenMP threads on a few cores do not finish: at most 4 per core (and 64 on small machines).
  const int most = std::max(64, 4 * available_cores());
  XFER_CHECK(threads <= most, "--threads must be at most ", most, " on this machine (", available_cores(),
             " cores), got ", threads);
  const int n = threads == 0 ? available_cores() : static_cast<int>(threads);
  at::set_num_threads(n);
  return n;
}

void tune_allocator() {
  static const bool done = [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // the largest glibc accepts on 64-bit
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    return true;
  }();
  (void)done;
}

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = xfer_on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a parent blocked in waitpid wakes up to stop its children
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int stop_signal() {
  return g_stop_signal;
}
void clear_stop_signal() {
  g_stop_signal = 0;
}

std::string signal_name(int signal) {
  if (signal == SIGINT) return "SIGINT";
  if (signal == SIGTERM) return "SIGTERM";
  return cat("signal ", signal);
}

void throw_if_stop_requested(const std::string& what) {
  if (const int sig = stop_signal()) throw Interrupted(cat(what, " stopped by ", signal_name(sig)), sig);
}

void set_verbosity(int level) {
  g_verbosity = level;
}
int verbosity() {
  return g_verbosity;
}

void log_info(const std::string& line) {
  if (g_verbosity >= 1) std::cerr << line << std::endl;
}

void log_warn(const std::string& line) {
  std::cerr << "warning: " << line << std::endl;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

namespace {
std::atomic<double> g_progress_interval{15.0};

/// The local time as "2026-12-04 20:41:05", the start of a progress line in a log.
std::string local_time_text() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  localtime_r(&now, &parts);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &parts);
  return buf;
}
}  // namespace

void set_progress_interval(double seconds) {
  XFER_CHECK(seconds > 0 && seconds <= 86400, "--log-interval must be in (0, 86400] seconds, got ", seconds);
  g_progress_interval = seconds;
}
double progress_interval() {
  return g_progress_interval;
}

Progress::Progress(std::string label, int64_t total, int64_t start)
    : label_(std::move(label)),
      total_(total),
      start_done_(start),
      start_time_(now_seconds()),
      last_draw_(start_time_),
      tty_(::isatty(STDERR_FILENO) == 1) {}

Progress::~Progress() {
  finish();
}

void Progress::update(int64_t done, const std::string& status) {
  if (g_verbosity < 1) return;
  const double t = now_seconds();
  const bool last = done >= total_;
  if (!last && t - last_draw_ < (tty_ ? 0.1 : progress_interval()))
    return;  // a TTY redraws 10 times a second
  last_draw_ = t;
  const double elapsed = t - start_time_;
  const double rate = elapsed > 0 ? static_cast<double>(done - start_done_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
  char rate_buf[32];
  if (rate > 0)
    std::snprintf(rate_buf, sizeof rate_buf, rate >= 1 ? "%.1f it/s" : "%.2f s/it",
                  rate >= 1 ? rate : 1 / rate);
  else
    std::snprintf(rate_buf, sizeof rate_buf, "-- it/s");
  const std::string tail = cat(done, "/", total_, status.empty() ? "" : "  ", status, "  ", rate_buf,
                               last ? cat("  in ", clock_text(elapsed)) : cat("  ETA ", clock_text(eta)));
  if (tty_) {
    const int width = 24;
    const int filled = total_ > 0 ? static_cast<int>(width * std::min(done, total_) / total_) : width;
    std::string bar(filled, '#');
    bar.resize(width, '-');
    std::cerr << "\r\033[K" << label_ << " [" << bar << "] " << tail << std::flush;
    open_ = true;
  } else {
    std::cerr << local_time_text() << " " << label_ << " " << tail << std::endl;
  }
}

void Progress::message(const std::string& line) {
  if (g_verbosity < 1) return;
  if (tty_ && open_) std::cerr << "\r\033[K";
  std::cerr << line << std::endl;
  open_ = false;
}

void Progress::finish() {
  if (tty_ && open_) std::cerr << std::endl;
  open_ = false;
}

bool wait_until(double seconds, const std::function<bool()>& done, double step) {
  const auto start = std::chrono::steady_clock::now();
  while (!done()) {
    const double left =
        seconds - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (left <= 0) return false;
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(step, left)));
  }
  return true;
}

Periodic::Periodic(double interval, std::function<void()> fn) {
  thread_ = std::thread([this, interval, fn = std::move(fn)] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!cv_.wait_for(lock, std::chrono::duration<double>(interval), [this] { return stop_; })) fn();
  });
}

Periodic::~Periodic() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

}  // namespace xfer
