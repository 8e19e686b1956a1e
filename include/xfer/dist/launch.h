#pragma once
/// `xfer launch`: starts the local processes of a data-parallel run, like torchrun.
///
/// Each process gets MASTER_ADDR, MASTER_PORT, RANK = node_rank * nproc + local rank, WORLD_SIZE =
/// nnodes * nproc, LOCAL_RANK, LOCAL_WORLD_SIZE and XFER_DIST_TIMEOUT. SIGINT and SIGTERM are forwarded to
/// them. If one exits with an error or a signal, the others are stopped (SIGTERM, then SIGKILL after a
/// grace period) and launch fails naming that rank.
#include <cstdint>
#include <string>
#include <vector>

namespace xfer {

class Fields;

struct LaunchOptions {
  int64_t nproc = 1;                      // processes on this machine
  int64_t nnodes = 1;                     // machines
  int64_t node_rank = 0;                  // this machine's index in [0, nnodes)
  std::string master_addr = "127.0.0.1";  // the machine of rank 0 (it serves the rendezvous store)
  int64_t master_port = 29500;
  int64_t timeout = 300;  // seconds a rank waits for the master or a collective
  double grace = 5;       // seconds between SIGTERM and SIGKILL when stopping the ranks

  void fields(Fields& f);
};

/// Runs `command` (program and arguments; a program named "xfer" means this executable) as
/// options.nproc processes and waits for them. Returns normally when all exit 0; BadInput if a rank
/// exited with code 2 (bad input), otherwise std::runtime_error naming the first rank that failed.
void launch(const LaunchOptions& options, const std::vector<std::string>& command);

}  // namespace xfer
