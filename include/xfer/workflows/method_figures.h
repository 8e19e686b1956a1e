#pragma once
/// Tables and plots of what a method or a source selection computed, for the commands that show them:
/// DATL's importance weights (`xfer weights`) and Smooth TL's lambda(t) schedules (`xfer search`).
#include <cstdint>
#include <string>
#include <vector>

#include "xfer/methods/registry.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"
#include "xfer/source/importance.h"

namespace xfer {

/// The weights sorted by w, as `xfer weights` prints them: class, n_y, P_t, P_s, w, and the sample rate
/// (examples drawn / n_y, Table 5) of `same` and `elastic` for a set of `n` examples.
Table importance_table(const ImportanceWeights& w, int64_t n);
/// The sorted weights as bars (Fig. 1).
Plot importance_plot(const ImportanceWeights& w);

/// One trial's curve of a method's options (OptionCurve), with the step early stopping selected (-1: none).
struct TrialCurve {
  std::string label;
  std::vector<double> x, y;
  int64_t selected_step = -1;
};
/// The curves of `trials` on one plot with `curve`'s labels, each with a vertical mark at its selected
/// step spanning the curves' range (Smooth TL: lambda(t) of the best trials, as the paper's Fig. 2).
Plot option_curve_plot(const OptionCurve& curve, const std::vector<TrialCurve>& trials,
                       const std::string& title);

}  // namespace xfer
