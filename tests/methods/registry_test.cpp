// Every registered method, by name from the registry (a method added tomorrow is tested without editing
// this file): two runs with the same seed end with the same bits, and a run stopped part-way and resumed
// ends with the same bits as the run left alone (weights, optimizer, method state, RNG streams, best.pt).
#include <cctype>
#include <filesystem>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A 12-step run of `method` into `out` (validation every 4 steps, checkpoints every 4); the data, model and
/// run options tiny_method_run gives are set by registry_train.
RunOptions registry_run(const std::string& out) {
  RunOptions o;
  o.seed = 3;
  o.threads = 1;
  o.out = out;
  o.overwrite = true;
  o.trainer.iterations = 12;
  o.trainer.eval_every = 4;
  o.trainer.checkpoint_every = 4;
  o.trainer.log_every = 2;
  o.loader.batch_size = 8;
  return o;
}

/// Runs `info` with `o` and the options tiny_method_run gives it.
void registry_train(const MethodInfo& info, RunOptions o) {
  const test::TinyMethodRun run = test::tiny_method_run(info.name);
  auto config = info.make_config();
  Fields run_fields, method_fields;
  o.fields(run_fields);
  config->fields(method_fields);
  for (const auto& [name, value] : run.options)
    (run_fields.has(name) ? run_fields : method_fields).set(name, value);
  if (run.command == "pretrain")
    run_pretrain(o, *config);
  else
    run_finetune(o, *config);
}

int64_t registry_checkpoint_step(const std::string& out) {
  return CheckpointReader(out + "/checkpoints/last.pt").meta().at("step").get<int64_t>();
}

class EveryMethod : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryMethod, SameSeedSameBitsAndResumeIsBitExact) {
  const MethodInfo& info = methods().get(GetParam());
  const test::TempDir dir;
  const RunOptions first = registry_run(dir.file("first"));
  registry_train(info, first);

  RunOptions again = first;
  again.out = dir.file("again");
  registry_train(info, again);
  test::expect_same_checkpoint(first.out + "/checkpoints/last.pt", again.out + "/checkpoints/last.pt",
                               info.name + ": same seed, last.pt");

  RunOptions split = first;
  split.out = dir.file("split");
  split.trainer.stop_after = 6;  // between two checkpoints and two validations
  registry_train(info, split);
  EXPECT_FALSE(fs::exists(split.out + "/result.json")) << info.name << ": a stopped run has no result yet";
  EXPECT_EQ(registry_checkpoint_step(split.out), 6) << info.name;
  split.resume = true;
  split.overwrite = false;
  split.trainer.stop_after = 0;
  registry_train(info, split);
  test::expect_same_checkpoint(first.out + "/checkpoints/last.pt", split.out + "/checkpoints/last.pt",
                               info.name + ": resumed, last.pt");
  ASSERT_EQ(fs::exists(first.out + "/checkpoints/best.pt"), fs::exists(split.out + "/checkpoints/best.pt"));
  if (fs::exists(first.out + "/checkpoints/best.pt"))
    test::expect_same_checkpoint(first.out + "/checkpoints/best.pt", split.out + "/checkpoints/best.pt",
                                 info.name + ": resumed, best.pt");
  EXPECT_EQ(read_json_file(first.out + "/result.json").at("test_top1"),
            read_json_file(split.out + "/result.json").at("test_top1"))
      << info.name;
}

std::vector<std::string> registered_method_names() {
  std::vector<std::string> names;
  for (const auto& m : methods().all()) names.push_back(m.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Registry, EveryMethod, ::testing::ValuesIn(registered_method_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) {
                           std::string name = p.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(Registry, EveryMethodIsTestedByName) {
  // The parametrised test above reads the registry; this pins that the registry holds the paper methods.
  for (const char* name : {"scratch", "l2", "xmixup", "smile", "smooth", "gradmix"})
    EXPECT_TRUE(methods().has(name)) << name;
  EXPECT_GE(methods().all().size(), 15u);
}

}  // namespace
}  // namespace xfer
