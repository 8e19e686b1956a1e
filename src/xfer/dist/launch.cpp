#include "xfer/dist/launch.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/process.h"
#include "xfer/core/runtime.h"

namespace xfer {
namespace {

constexpr int kMaxLocalRanks = static_cast<int>(ProcessGroup::kMaxForwarded);

/// `program` as a path posix_spawn can start: this executable for "xfer", else a PATH lookup.
std::string resolve_program(const std::string& program) {
  if (program == "xfer") return self_executable();
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = dirs.find(':', start);
    const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const std::filesystem::path candidate = std::filesystem::path(dir.empty() ? "." : dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    if (end == std::string::npos) break;
    start = end + 1;
  }
  throw BadInput(cat("xfer launch: cannot find the program '", program, "' on the PATH"));
}

std::string describe(const ExitStatus& s) {
  return s.signal ? cat("was killed by signal ", s.signal, " (", strsignal(s.signal), ")")
                  : cat("exited with code ", s.code);
}

}  // namespace

void LaunchOptions::fields(Fields& f) {
  f.add("nproc", nproc, "processes (ranks) to start on this machine").in_range(1, kMaxLocalRanks);
  f.add("nnodes", nnodes, "machines taking part; run one `xfer launch` on each").at_least(1);
  f.add("node_rank", node_rank, "this machine's index, 0 .. nnodes-1 (machine 0 hosts rank 0)")
      .non_negative();
  f.add("master_addr", master_addr,
        "address of machine 0, where rank 0 serves the rendezvous store (bound to this address only; it must "
        "be reachable by the job's machines alone: docs/security.md)");
  f.add("master_port", master_port, "TCP port of the rendezvous store on machine 0").in_range(1, 65535);
  f.add("timeout", timeout, "seconds a rank waits for the master or for a collective before failing")
      .at_least(1);
  f.add("grace", grace, "seconds between SIGTERM and SIGKILL when stopping the other ranks").non_negative();
}

void launch(const LaunchOptions& opts, const std::vector<std::string>& command) {
  LaunchOptions o = opts;
  check_options(o);
  XFER_CHECK(o.node_rank < o.nnodes, "--node-rank must be < --nnodes ", o.nnodes, ", got ", o.node_rank);
  XFER_CHECK(!command.empty(),
             "xfer launch: give the command after --, e.g. xfer launch --nproc 2 -- xfer finetune ...");
  std::vector<std::string> argv = command;
  argv[0] = resolve_program(command[0]);
  const int64_t world = o.nproc * o.nnodes;

  // SIGINT/SIGTERM go on to the ranks, which stop together at a step they agree on.
  ProcessGroup ranks;
  int sig = 0;
  int64_t failed_rank = -1, stopped_rank = -1;
  ExitStatus failure, stopped;
  {
    const auto forwarding = ranks.forward_stop_signals();
    try {
      for (int64_t local = 0; local < o.nproc; ++local) {
        const int64_t rank = o.node_rank * o.nproc + local;
        const std::map<std::string, std::string> env = {{"MASTER_ADDR", o.master_addr},
                                                        {"MASTER_PORT", cat(o.master_port)},
                                                        {"RANK", cat(rank)},
                                                        {"WORLD_SIZE", cat(world)},
                                                        {"LOCAL_RANK", cat(local)},
                                                        {"LOCAL_WORLD_SIZE", cat(o.nproc)},
                                                        {"GROUP_RANK", cat(o.node_rank)},
                                                        {"XFER_DIST_TIMEOUT", cat(o.timeout)}};
        ranks.start(argv, "", "", env);
      }
    } catch (...) {
      ranks.kill();
      throw;
    }
    log_info(cat("xfer launch: started ranks ", o.node_rank * o.nproc, "..",
                 o.node_rank * o.nproc + o.nproc - 1, " of ", world, " (master ", o.master_addr, ":",
                 o.master_port, ")"));

    // Poll the ranks; the first failure stops the others.
    double stop_deadline = -1;
    while (ranks.running() > 0) {
      const std::vector<ProcessGroup::Ended> ended = ranks.poll();
      // This round's failures; a rank killed by a signal is named before one that exited with an error,
      // which is usually a partner noticing the first one's death.
      int64_t round_rank = -1;
      ExitStatus round_status;
      for (const auto& [i, s] : ended) {
        // Exited 130/143: it checkpointed and stopped on SIGINT/SIGTERM, at a step all ranks agreed on, so
        // the others are stopping too and are left to finish.
        const bool clean_stop = s.signal == 0 && (s.code == 128 + SIGINT || s.code == 128 + SIGTERM);
        if (clean_stop && stopped_rank < 0) {
          stopped_rank = o.node_rank * o.nproc + static_cast<int64_t>(i);
          stopped = s;
        }
        if (!s.ok() && !clean_stop && (round_rank < 0 || (s.signal != 0 && round_status.signal == 0))) {
          round_rank = o.node_rank * o.nproc + static_cast<int64_t>(i);
          round_status = s;
        }
      }
      if (round_rank >= 0 && failed_rank < 0 && ProcessGroup::forwarded_signal() == 0) {
        failed_rank = round_rank;
        failure = round_status;
        log_warn(cat("xfer launch: rank ", failed_rank, " (pid ", failure.pid, ") ", describe(failure),
                     "; stopping the other ranks"));
        ranks.signal(SIGTERM);
        stop_deadline = now_seconds() + o.grace;
      }
      if (stop_deadline >= 0 && now_seconds() > stop_deadline) {
        ranks.signal(SIGKILL);
        stop_deadline = -1;
      }
      if (ended.empty() && ranks.running() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    sig = ProcessGroup::forwarded_signal();
  }
  if (sig != 0)
    throw Interrupted(cat("xfer launch: interrupted by ", strsignal(sig), "; the ranks were stopped"), sig);
  if (failed_rank < 0 && stopped_rank >= 0)
    throw Interrupted(cat("xfer launch: the ranks stopped together on ", strsignal(stopped.code - 128),
                          " (rank ", stopped_rank, " exited with code ", stopped.code,
                          "); run the same command with --resume ", "to continue"),
                      stopped.code - 128);
  if (failed_rank < 0) return;
  const std::string what = cat("xfer launch: rank ", failed_rank, " of ", world, " (pid ", failure.pid, ") ",
                               describe(failure), "; the other ranks were stopped");
  if (failure.code == 2) throw BadInput(what);
  throw std::runtime_error(what);
}

}  // namespace xfer
