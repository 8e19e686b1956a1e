#pragma once
/// Time per training step of several runs, measured in one process, so that ratios between methods are
/// not skewed by the machine's load drifting between processes (shared machines differ by ±10%).
#include <cstdint>
#include <vector>

#include "xfer/workflows/run.h"

namespace xfer {

struct StepTimingOptions {
  int64_t steps = 60;  // timed steps per run
  int64_t block = 10;  // steps of one run before moving to the next
  int64_t warmup = 5;  // untimed steps per run first (allocator, caches, prefetch)
};

/// Trains every run for `warmup` steps, then in turn for blocks of `block` steps until each has `steps`
/// timed steps, exactly as the Trainer steps (training_step). Returns each run's median step time in ms.
/// The runs' models and optimizers advance: use fresh runs for anything else.
std::vector<double> interleaved_step_ms(const std::vector<PreparedRun*>& runs,
                                        const StepTimingOptions& opts = {});

}  // namespace xfer
