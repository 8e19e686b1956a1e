#pragma once
/// `xfer analyze RUN_DIR`: the analyses of metrics/analysis.h on a finished (or interrupted) run.
///
/// Reads the run's config.json (target spec, seed, --init) and the model it tested (checkpoints/best.pt
/// or last.pt, as its result.json says), then on the chosen split of the target spec computes Feature-IL and
/// Label-IL (SMILE Eq. 7) and the feature spectrum (XMixup Fig. 2), and the parameter distance of the
/// backbone to the --init model (SMILE Table 7). Results go to RUN_DIR/analysis.json, which keeps one entry
/// per split, so `--on train` then `--on test` fill both (entries of an older checkpoint are dropped).
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace xfer {

class Fields;
class Table;

struct AnalyzeOptions {
  std::string run;            // the run directory
  std::string on = "test";    // train | test: the split of the target spec
  std::string data;           // dataset spec; "" = the run's --target
  std::string init;           // pretrained model for the parameter distance; "" = the run's --init
  std::string head = "target";
  int64_t pairs = 1000;       // interpolation-loss pairs
  double alpha = 0.2;         // lambda ~ Beta(alpha, alpha)
  int64_t seed = 0;           // draws the pairs and mixing weights
  int64_t spectrum = 10;      // smallest singular values reported
  int64_t batch = 500;
  int64_t threads = 0;
  std::string device = "cpu";

  void fields(Fields& f);
};

/// Analyses the run, writes RUN_DIR/analysis.json and returns its content:
///   {"run", "checkpoint", "step", "method", "init", "parameter_distance" (null without an --init model),
///    "splits": {"train"|"test": {"data", "examples", "pairs", "alpha", "seed", "feature_il": {mean, std, n},
///                                "label_il": {...}, "spectrum": [k smallest sigma / sigma_max, ascending]}}}
/// BadInput for a directory that is not a run or holds no checkpoint.
nlohmann::json analyze_run(const AnalyzeOptions& opts);

/// analysis.json as a table: one row per metric, one column per analysed split.
Table analysis_table(const nlohmann::json& analysis);

}  // namespace xfer
