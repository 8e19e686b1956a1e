#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "xfer/cli.h"
#include "xfer/core/runtime.h"

namespace {

/// Idle OpenMP threads spin before they sleep; libgomp's default spin (300,000 iterations when threads fit
/// the cores) made three 2-thread runs on 2 cores 8-13x slower each instead of 3x. xfer's default is a
/// bounded spin of 10,000 iterations: as fast as the full spin alone, far better shared (docs/performance.md
/// has the measurements). libgomp reads the setting once, when it loads, so xfer sets it and starts itself
/// again. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.
void default_openmp_spin(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  setenv("GOMP_SPINCOUNT", "10000", 1);
  execv("/proc/self/exe", argv);  // only returns on failure: go on with libgomp's default
}

}  // namespace

int main(int argc, char** argv) {
  default_openmp_spin(argv);
  xfer::install_stop_handlers();
  return xfer::cli::run(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}
