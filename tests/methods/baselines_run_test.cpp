// Every baseline end to end: registration and determinism per seed (bit-exact resume of every method:
// tests/methods/registry_test.cpp). What each step computes is checked against the test's own code in
// step_test.cpp (which replaced "it learns" thresholds that a model which learned nothing could pass).
#include <filesystem>

#include <nlohmann/json.hpp>

#include "method_harness.h"
#include "support.h"
#include "xfer/core/io.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

const std::vector<std::string>& baseline_names() {
  static const std::vector<std::string> names = {"l2sp",  "delta",          "bss",   "cotuning", "rifle",
                                                 "mixup", "manifold_mixup", "cutmix"};
  return names;
}

TEST(Baselines, AreRegisteredWithTheirNeeds) {
  for (const auto& name : baseline_names()) {
    const MethodInfo& info = methods().get(name);
    EXPECT_FALSE(info.paper.empty()) << name;
    EXPECT_TRUE(info.allows_init) << name;
    const bool source_model = name == "l2sp" || name == "delta" || name == "cotuning";
    EXPECT_EQ(info.needs_init, source_model) << name;
  }
}

TEST(Baselines, SameSeedSameLossesOtherSeedOtherLosses) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
  const Model source = test::harness_source_model(task, 4, 2);
  for (const auto& name : baseline_names()) {
    const std::vector<double> a = test::MethodHarness(name, task, source, 5, 6).losses(6);
    const std::vector<double> b = test::MethodHarness(name, task, source, 5, 6).losses(6);
    EXPECT_EQ(a, b) << name;
    const std::vector<double> c = test::MethodHarness(name, task, source, 6, 6).losses(6);
    EXPECT_NE(a, c) << name;
  }
}

}  // namespace
}  // namespace xfer
