#include "xfer/optim/schedule.h"

#include <cmath>

#include "xfer/core/fields.h"

namespace xfer {

void ScheduleOptions::fields(Fields& f) {
  f.add("schedule", schedule, "learning-rate schedule: constant, step (x gamma at the milestone) or cosine");
  f.add("milestone", milestone, "step schedule: fraction of the iterations where the lr drops")
      .in_open_range(0, 1);
  f.add("gamma", gamma, "step schedule: lr factor after the milestone").in_range(0, 1);
  f.add("warmup", warmup, "fraction of the iterations with a linear lr warmup").in_range(0, 0.999);
  f.add("final_lr_scale", final_lr_scale, "cosine schedule: the floor it decays to, as a fraction of --lr")
      .in_range(0, 1);
}

double lr_factor(const ScheduleOptions& opts, int64_t step, int64_t total) {
  const int64_t warm = static_cast<int64_t>(std::llround(opts.warmup * static_cast<double>(total)));
  if (step < warm) return static_cast<double>(step + 1) / static_cast<double>(warm);
  if (opts.schedule == ScheduleKind::step)
    return step < static_cast<int64_t>(std::llround(opts.milestone * static_cast<double>(total)))
               ? 1.0
               : opts.gamma;
  if (opts.schedule == ScheduleKind::cosine) {
    const double span = static_cast<double>(std::max<int64_t>(total - warm, 1));
    const double cosine = 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(step - warm) / span));
    return opts.final_lr_scale + (1.0 - opts.final_lr_scale) * cosine;
  }
  return 1.0;
}

}  // namespace xfer
