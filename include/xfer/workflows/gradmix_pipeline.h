#pragma once
/// `xfer gradmix-pseudo`: GradMix with ensemble pseudo-labels (Li et al. 2020, section 3.5), end to end.
///
///   stage 1  train one `gradmix` model per (beta, gamma) of --grid, without U OUT/stage1/b<beta>-g<gamma>/
///   stage 2  keep the --top R models by hyper-validation top-1 (the target spec's val split), label U
///            with their ensemble                                                    OUT/pseudo_labels.pt
///   stage 3  for each of --modes, train a fresh model with the best (beta, gamma) on the sources, the
///            pseudo-labelled S_u and V enlarged to --enlarge-v per class            OUT/final-<mode>/
/// A mode is `hard` or `soft`, optionally with a semi-supervised term: `hard+vat`, `hard+mixmatch`.
/// OUT/summary.json and OUT/table.md report every run, the pseudo-labels' counts and their accuracy on U
/// (U's true labels are used for this report only). With --resume, finished runs are reused.
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "xfer/methods/gradmix.h"
#include "xfer/workflows/run.h"

namespace xfer {

struct GradMixPseudoOptions {
  std::string grid = "5:0,5:0.3,5:0.6,10:0,10:0.3,10:0.6";  // beta:gamma pairs, inside Table 2's grid
  int64_t top = 3;                                          // R: models in the ensemble
  std::string modes = "hard,soft";                          // final models: hard | soft [+vat | +mixmatch]

  void fields(Fields& f);
};

/// The (beta, gamma) pairs of a --grid; BadInput naming the bad entry.
std::vector<std::pair<double, double>> parse_gradmix_grid(const std::string& grid);

/// Plots the per-layer weights of one source (`s0`, `s1`, ..., `pseudo`) that a gradmix run logged in
/// RUN_DIR/metrics.jsonl, one line per layer against the step, to `path` (.png or .svg). Returns false,
/// writing nothing, without gnuplot; BadInput if the run logged no weights for that source.
bool plot_gradmix_weights(const std::string& run_dir, const std::string& source, const std::string& path);

/// Runs the pipeline. `run` gives the target, seed, training options and --out (required); `method` the
/// gradmix options (sources, unlabelled set, thresholds); its beta, gamma, pseudo and ssl are set per stage.
/// Progress and the final table go to `out`. Returns summary.json's content.
nlohmann::json run_gradmix_pseudo(RunOptions run, GradMixMethod::Options method,
                                  const GradMixPseudoOptions& opts, std::ostream& out);

}  // namespace xfer
