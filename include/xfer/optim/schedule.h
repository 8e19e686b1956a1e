#pragma once
/// Learning-rate schedules: pure functions of the step (as timm's schedulers), so resume is exact.
#include <cstdint>
#include <string>

#include "xfer/core/fields.h"

namespace xfer {

class Fields;

enum class ScheduleKind { constant, step, cosine };
XFER_ENUM_NAMES(ScheduleKind, "constant", "step", "cosine")

struct ScheduleOptions {
  /// constant | step (x gamma at the milestone, the papers' default) | cosine (to final_lr_scale after
  /// warmup)
  ScheduleKind schedule = ScheduleKind::step;
  double milestone = 2.0 / 3.0;  // step: fraction of the iterations where the lr drops
  double gamma = 0.1;            // step: the factor applied at the milestone
  double warmup = 0.0;           // fraction of the iterations with a linear warmup from 0 (all schedules)
  double final_lr_scale =
      0.0;  // cosine: the last step's lr as a fraction of the peak (Smooth TL: 1e-3 / 0.1)

  void fields(Fields& f);
};

/// The factor by which the base learning rate is multiplied at `step` (0-based) of `total` steps.
///   warmup:  (step + 1) / W for step < W = round(warmup * total)
///   step:    1 before round(milestone * total), gamma from there on
///   cosine:  f + (1 - f) * 0.5 * (1 + cos(pi * (step - W) / (total - W))),  f = final_lr_scale
///   constant: 1
double lr_factor(const ScheduleOptions& opts, int64_t step, int64_t total);

}  // namespace xfer
