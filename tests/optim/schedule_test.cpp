#include "xfer/optim/schedule.h"
#include "support.h"
#include "xfer/core/fields.h"

namespace xfer {
namespace {

TEST(Schedule, StepDropsByGammaAtTwoThirds) {
  ScheduleOptions s;  // step, milestone 2/3, gamma 0.1
  EXPECT_EQ(lr_factor(s, 0, 300), 1.0);
  EXPECT_EQ(lr_factor(s, 199, 300), 1.0);
  EXPECT_DOUBLE_EQ(lr_factor(s, 200, 300), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 299, 300), 0.1);
}

TEST(Schedule, CosineWithLinearWarmup) {
  ScheduleOptions s;
  s.schedule = ScheduleKind::cosine;
  s.warmup = 0.1;  // 10 of 100 steps
  EXPECT_DOUBLE_EQ(lr_factor(s, 0, 100), 0.1);
  EXPECT_DOUBLE_EQ(lr_factor(s, 4, 100), 0.5);
  EXPECT_DOUBLE_EQ(lr_factor(s, 10, 100), 1.0);
  EXPECT_NEAR(lr_factor(s, 55, 100), 0.5, 1e-12);  // halfway through the 90 cosine steps
  EXPECT_NEAR(lr_factor(s, 99, 100), 0.5 * (1 + std::cos(M_PI * 89.0 / 90.0)), 1e-12);
}

TEST(Schedule, CosineDecaysToTheFinalLrFloor) {
  // Smooth Transfer Learning's peak 0.1 and final 1e-3: a floor of 0.01 of the peak. No warmup here, so
  // step s of 101 is at angle pi * s / 101.
  ScheduleOptions s;
  s.schedule = ScheduleKind::cosine;
  s.final_lr_scale = 0.01;
  EXPECT_DOUBLE_EQ(lr_factor(s, 0, 101), 1.0);
  const double half = 0.01 + 0.99 * 0.5 * (1 + std::cos(M_PI * 50.0 / 101.0));
  EXPECT_NEAR(lr_factor(s, 50, 101), half, 1e-15);
  EXPECT_NEAR(lr_factor(s, 100, 101), 0.01 + 0.99 * 0.5 * (1 + std::cos(M_PI * 100.0 / 101.0)), 1e-15);
  EXPECT_GT(lr_factor(s, 100, 101), 0.01);    // never below the floor ...
  EXPECT_LT(lr_factor(s, 100, 101), 0.0103);  // ... and within 3% of it at the last step
  // The floor does not touch the other schedules.
  s.schedule = ScheduleKind::step;
  EXPECT_DOUBLE_EQ(lr_factor(s, 100, 101), 0.1);
  s.final_lr_scale = 1.5;
  test::expect_bad_input([&] { check_options(s); }, {"--final-lr-scale must be <= 1, got 1.5"});
}

TEST(Schedule, ConstantAndValidation) {
  ScheduleOptions s;
  s.schedule = ScheduleKind::constant;
  EXPECT_EQ(lr_factor(s, 77, 100), 1.0);
  test::expect_bad_input(
      [&] {
        Fields f;
        s.fields(f);
        f.set("schedule", "linear");
      },
      {"--schedule must be one of constant, step, cosine; got 'linear'"});
  s.schedule = ScheduleKind::step;
  s.milestone = 1.0;
  test::expect_bad_input([&] { check_options(s); }, {"--milestone must be < 1, got 1"});
}

}  // namespace
}  // namespace xfer
