#include "xfer/workflows/pretrained.h"

#include <cstdlib>
#include <filesystem>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/report/table.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {

std::string default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return (fs::path(xdg) / "xfer").string();
  if (const char* home = std::getenv("HOME"); home && *home)
    return (fs::path(home) / ".cache" / "xfer").string();
  return ".cache/xfer";
}

RunOptions source_pretrain_options(const std::string& source, const std::string& backbone,
                                   int64_t iterations) {
  RunOptions p;
  p.source = source;
  p.backbone = backbone;
  p.trainer.iterations = iterations;
  p.trainer.optim.lr = 0.05;
  p.trainer.schedule.schedule = ScheduleKind::cosine;
  p.trainer.schedule.warmup = 0.02;
  p.loader.batch_size = 128;
  return p;
}

std::string cached_pretrain_dir(RunOptions p, const std::string& cache_dir) {
  // Options that do not change the model stay out of the key.
  p.threads = 0;
  p.out.clear();
  p.overwrite = false;
  p.resume = false;
  const nlohmann::json key = config_json("pretrain", p, nullptr);
  const std::string hash = cat(std::hex, derive_seed(0, key.dump()));
  return (fs::path(cache_dir.empty() ? default_cache_dir() : cache_dir) / ("source-" + hash)).string();
}

std::string cached_pretrain(RunOptions p, const std::string& cache_dir, std::ostream& log) {
  const std::string dir = cached_pretrain_dir(p, cache_dir);
  // The model a run of it reads: best.pt, or last.pt when the source has no validation split.
  const fs::path checkpoints = fs::path(dir) / "checkpoints";
  const uint32_t format = checkpoint_format_of(
      (fs::exists(checkpoints / "best.pt") ? checkpoints / "best.pt" : checkpoints / "last.pt").string());
  if (format != 0 && format != kCheckpointFormat)
    log << "The cached source model in " << dir << " has checkpoint format " << format << "; this xfer reads "
        << kCheckpointFormat << ": pre-training it again\n";
  if (fs::exists(fs::path(dir) / "result.json") && format == kCheckpointFormat) {
    const auto r = read_json_file((fs::path(dir) / "result.json").string());
    log << "Source model: cached in " << dir << " (test top-1 " << fixed(100 * r.value("test_top1", 0.0), 1)
        << "%)\n";
    return dir;
  }
  log << "Pre-training the source model on " << p.source << " (" << p.trainer.iterations
      << " steps, cached afterwards in " << dir << ") ..." << std::endl;
  p.out = dir;
  p.overwrite = true;
  p.resume = false;
  const double t0 = now_seconds();
  const RunResult r = run_pretrain(p);
  log << "Source model: test top-1 " << fixed(100 * (r.fit.test ? r.fit.test->top1 : 0.0), 1) << "% in "
      << fixed(now_seconds() - t0, 0) << " s\n";
  return dir;
}

}  // namespace xfer
