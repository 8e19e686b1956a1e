#pragma once
/// `xfer analyze RUN_DIR`: the analyses of metrics/analysis.h on a finished (or interrupted) run.
///
/// Reads the run's config.json (target spec, seed, --init) and the model it tested (checkpoints/best.pt
/// or last.pt, as its result.json says), then on the chosen split of the target spec computes Feature-IL and
/// Label-IL (SMILE Eq. 7) and the feature spectrum (XMixup Fig. 2), and the parameter distance of the
/// backbone to the --init model (SMILE Table 7). Results go to RUN_DIR/analysis.json, which keeps one entry
/// per split, so `--on train` then `--on test` fill both (entries of an older checkpoint are dropped).
///
/// --forgetting adds XMixup's forgetting probe (Table 2, metrics/analysis.h): the run's backbone, frozen,
/// with a fresh linear head trained on a source task's training split (--forgetting-source, default the
/// run's --source), tested on that task's test split over the auxiliary set's source classes, the others
/// (ABA) and all. The auxiliary classes are those XMixup's selection pairs for the run's target with the
/// --init model (the run's --pairing file or --aux-size if it had them), whatever the run's method, so
/// every method of a table is probed on the same subsets. --forgetting-reference probes the --init model
/// too (the table's "pretrained" row). The probe's head starts from a random init seeded by the run's seed
/// and --seed; everything else is deterministic.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/core/fields.h"
#include "xfer/metrics/analysis.h"

namespace xfer {

class Fields;
class Table;

/// The split of a target spec an analysis reads.
enum class DataSplit { train, test };
XFER_ENUM_NAMES(DataSplit, "train", "test")

struct AnalyzeOptions {
  std::string run;                 // the run directory
  DataSplit on = DataSplit::test;  // the split of the target spec
  std::string data;                // dataset spec; "" = the run's --target
  std::string init;                // pretrained model for the parameter distance; "" = the run's --init
  std::string head = "target";
  LabelOutput label_output = LabelOutput::logits;  // what Label-IL measures
  bool forgetting = false;                         // XMixup's forgetting probe
  std::string forgetting_source;                   // its source task; "" = the run's --source
  bool forgetting_reference = false;               // probe the --init model too
  int64_t probe_iterations = 100;                  // L-BFGS iterations of the probe's linear head
  double probe_decay = 1e-4;                       // its L2 weight
  int64_t pairs = 1000;                            // interpolation-loss pairs
  double alpha = 0.2;                              // lambda ~ Beta(alpha, alpha)
  int64_t seed = 0;                                // draws the pairs and mixing weights
  int64_t spectrum = 10;                           // smallest singular values reported
  int64_t batch = 500;
  int64_t threads = 0;
  std::string device = "cpu";

  void fields(Fields& f);
};

/// Analyses the run, writes RUN_DIR/analysis.json and returns its content:
///   {"run", "checkpoint", "step", "method", "init", "parameter_distance" (null without an --init model),
///    "splits": {"train"|"test": {"data", "examples", "pairs", "alpha", "seed", "feature_il": {mean, std, n},
///                                "label_il": {...}, "spectrum": [k smallest sigma / sigma_max, ascending]}},
///    "forgetting" (with --forgetting): {"source", "auxiliary_classes", "seed", "model": {"auxiliary", "aba",
///                  "all" (top-1 in [0, 1]; null for an empty subset), "auxiliary_n", "aba_n", "all_n"},
///                  "pretrained": {...} (with --forgetting-reference)}}
/// BadInput for a directory that is not a run or holds no checkpoint.
nlohmann::json analyze_run(const AnalyzeOptions& opts);

/// analysis.json as a table: one row per metric, one column per analysed split.
Table analysis_table(const nlohmann::json& analysis);
/// analysis.json's forgetting probe as a table: the run (and the pretrained model) x Auxiliary, ABA, All
/// (top-1 %); no rows without one.
Table forgetting_table(const nlohmann::json& analysis);

}  // namespace xfer
