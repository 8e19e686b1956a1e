// Tests run one LibTorch thread each: ctest runs them in parallel, and results must not depend on it.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "xfer/core/runtime.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  at::set_num_threads(1);
  xfer::set_verbosity(0);
  return RUN_ALL_TESTS();
}
