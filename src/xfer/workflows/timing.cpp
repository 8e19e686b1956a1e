#include "xfer/workflows/timing.h"

#include <algorithm>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/optim/schedule.h"

namespace xfer {

std::vector<double> interleaved_step_ms(const std::vector<PreparedRun*>& runs,
                                        const StepTimingOptions& opts) {
  XFER_CHECK(opts.steps >= 1 && opts.block >= 1 && opts.warmup >= 0,
             "step timing needs steps >= 1 and block >= 1, got ", opts.steps, " and ", opts.block);
  struct Timed {
    PreparedRun* run;
    std::vector<ParamGroup> groups;
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    at::Generator rng;
    int64_t step = 0;
    std::vector<double> ms;
  };
  std::vector<Timed> timed;
  for (PreparedRun* r : runs) {
    auto groups = trainable_param_groups(*r->method, r->model, r->opts.trainer.head_lr_mult);
    auto optimizer = make_optimizer(r->opts.trainer.optim, groups);
    Timed t{
        r, std::move(groups), std::move(optimizer), make_generator(derive_seed(r->opts.seed, "method")), 0,
        {}};
    timed.push_back(std::move(t));
    r->model->train();
  }
  auto advance = [&](Timed& t, int64_t n, bool record) {
    const int64_t total = t.run->opts.trainer.iterations;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t step = std::min(t.step, total - 1);  // schedules stay within the run's own range
      const double lr = t.run->opts.trainer.optim.lr * lr_factor(t.run->opts.trainer.schedule, step, total);
      StepContext ctx{t.run->batches, t.run->model, step, total, t.rng, t.run->head};
      const double t0 = now_seconds();
      training_step(*t.run->method, *t.optimizer, t.groups, lr, ctx);
      if (record) t.ms.push_back(1000.0 * (now_seconds() - t0));
      ++t.step;
    }
  };
  for (auto& t : timed) advance(t, opts.warmup, false);
  for (int64_t done = 0; done < opts.steps; done += opts.block)
    for (auto& t : timed) advance(t, std::min(opts.block, opts.steps - done), true);
  std::vector<double> medians;
  for (auto& t : timed) {
    std::sort(t.ms.begin(), t.ms.end());
    const size_t n = t.ms.size();
    medians.push_back(n % 2 ? t.ms[n / 2] : 0.5 * (t.ms[n / 2 - 1] + t.ms[n / 2]));
  }
  return medians;
}

}  // namespace xfer
