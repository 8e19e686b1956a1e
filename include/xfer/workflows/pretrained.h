#pragma once
/// Source models pre-trained once per configuration and kept in a cache, shared by `xfer demo` and
/// `xfer bench` suites. The cache key is a hash of the resolved pre-training configuration, so changing
/// any option trains a new model and never reuses a stale one.
#include <memory>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/workflows/run.h"

namespace xfer {

/// $XDG_CACHE_HOME/xfer, else ~/.cache/xfer.
std::string default_cache_dir();

/// A source model to pre-train: `xfer pretrain`'s options and its method (opts.method: scratch, or datl
/// with its options), as config.json records them.
struct PretrainPlan {
  RunOptions opts;
  nlohmann::json method_options = nlohmann::json::object();  // the method's options, by name

  /// Reads one flat object, as a suite's "pretrain" holds it: run options, "method" (default scratch) and
  /// that method's options side by side. BadInput naming `where` on an unknown key, a value out of range,
  /// or a method that does not pre-train.
  static PretrainPlan from_json(const nlohmann::json& json, const std::string& where);
  /// The method's config with method_options read (BadInput naming `where`).
  std::unique_ptr<MethodConfig> method_config(const std::string& where) const;
};

/// The recipe the demo pre-trains its source model with: SGD lr 0.05, cosine schedule with 2% warmup,
/// batch 128, on `source` with `backbone` for `iterations` steps, method scratch.
RunOptions source_pretrain_options(const std::string& source, const std::string& backbone,
                                   int64_t iterations);

/// Where the model of `plan` is (or would be) cached.
std::string cached_pretrain_dir(const PretrainPlan& plan, const std::string& cache_dir);

/// The run directory of the model of `plan` (its `out` is ignored), training it first when `cache_dir` (or
/// the default cache, when empty) does not hold it. Progress goes to `log`.
std::string cached_pretrain(const PretrainPlan& plan, const std::string& cache_dir, std::ostream& log);

}  // namespace xfer
