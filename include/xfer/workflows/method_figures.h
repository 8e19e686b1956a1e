#pragma once
/// Tables and plots of what a method or a source selection computed, for the commands that show them:
/// DATL's importance weights (`xfer weights`) and Smooth TL's lambda(t) schedules (`xfer search`).
#include <cstdint>
#include <string>
#include <vector>

#include "xfer/methods/smooth.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"
#include "xfer/source/importance.h"

namespace xfer {

/// The weights sorted by w, as `xfer weights` prints them: class, n_y, P_t, P_s, w, and the sample rate
/// (examples drawn / n_y, Table 5) of `same` and `elastic` for a set of `n` examples.
Table importance_table(const ImportanceWeights& w, int64_t n);
/// The sorted weights as bars (Fig. 1).
Plot importance_plot(const ImportanceWeights& w);

/// lambda(t) of each schedule over its run, with a vertical mark at its selected (early-stopped) step:
/// the paper's Fig. 2.
Plot smooth_schedule_plot(const std::vector<SmoothSchedule>& schedules, const std::string& title);

}  // namespace xfer
