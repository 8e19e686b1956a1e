#pragma once
/// Source models pre-trained once per configuration and kept in a cache, shared by `xfer demo` and
/// `xfer bench` suites. The cache key is a hash of the resolved pre-training configuration, so changing
/// any option trains a new model and never reuses a stale one.
#include <ostream>
#include <string>

#include "xfer/workflows/run.h"

namespace xfer {

/// $XDG_CACHE_HOME/xfer, else ~/.cache/xfer.
std::string default_cache_dir();

/// The recipe the demo pre-trains its source model with: SGD lr 0.05, cosine schedule with 2% warmup,
/// batch 128, on `source` with `backbone` for `iterations` steps.
RunOptions source_pretrain_options(const std::string& source, const std::string& backbone,
                                   int64_t iterations);

/// Where the model pre-trained with `opts` is (or would be) cached.
std::string cached_pretrain_dir(RunOptions opts, const std::string& cache_dir);

/// The run directory of a model pre-trained with `opts` (its `out` is ignored), training it first when
/// `cache_dir` (or the default cache, when empty) does not hold it. Progress goes to `log`.
std::string cached_pretrain(RunOptions opts, const std::string& cache_dir, std::ostream& log);

}  // namespace xfer
