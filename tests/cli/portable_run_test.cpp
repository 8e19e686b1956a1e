// Self-contained runs: a run started with relative paths stores them absolute in its config.json, so that
// `xfer eval`, `xfer analyze` and `--resume --out DIR` (nothing else) work from another directory.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Works in `dir` until destroyed.
struct PrtCwd {
  explicit PrtCwd(const std::string& dir) : before(fs::current_path()) { fs::current_path(dir); }
  ~PrtCwd() { fs::current_path(before); }
  fs::path before;
};

TEST(PortableRun, EvalAnalyzeAndResumeFromAnotherDirectory) {
  test::TempDir a, b;
  test::write_tiny_idx(a.file("data"), 4, 12, 3);
  const std::vector<std::string> common = {"--backbone", "cnn4:width=4", "--batch-size",
                                           "8",          "--threads",    "1"};
  const auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), common.begin(), common.end());
    return args;
  };
  {
    PrtCwd in(a.path());
    const auto pre = test::run_cli(with({"-q", "pretrain", "--source", "idx:dir=data:classes=0,1",
                                         "--iterations", "2", "--out", "runs/source"}));
    ASSERT_EQ(pre.code, 0) << pre.err;
    const auto ft = test::run_cli(with({"-q", "finetune", "--method", "l2", "--init", "runs/source",
                                        "--target", "idx:dir=./data:classes=2,3:val=2", "--iterations", "6",
                                        "--stop-after", "3", "--out", "runs/ft"}));
    ASSERT_EQ(ft.code, 0) << ft.err;
    EXPECT_NE(ft.out.find("Stopped at step 3"), std::string::npos) << ft.out;
  }
  const std::string root = fs::canonical(a.path()).string();
  const nlohmann::json config = read_json_file(a.file("runs/ft/config.json"));
  EXPECT_EQ(config["target"], "idx:dir=" + root + "/data:classes=2,3:val=2");
  EXPECT_EQ(config["init"], root + "/runs/source");

  PrtCwd in(b.path());
  // Resume with nothing but --out: the rest comes from the run's config.json.
  const auto resumed = test::run_cli({"-q", "finetune", "--resume", "--out", a.file("runs/ft"), "--json"});
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  const nlohmann::json result = nlohmann::json::parse(resumed.out);
  EXPECT_EQ(result["iterations"], 6);
  EXPECT_EQ(result["method"], "l2");
  EXPECT_EQ(read_json_file(a.file("runs/ft/config.json")), config);
  // Another run's config.json is not taken for this command's.
  const auto wrong = test::run_cli({"-q", "finetune", "--resume", "--out", a.file("runs/source")});
  EXPECT_EQ(wrong.code, 2);
  EXPECT_NE(wrong.err.find("xfer pretrain"), std::string::npos) << wrong.err;

  // eval takes the run's data (and seed) from its config.json; analyze its target and --init.
  const auto ev = test::run_cli({"eval", "--model", a.file("runs/ft"), "--json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  const nlohmann::json e = nlohmann::json::parse(ev.out);
  EXPECT_EQ(e["data"], config["target"]);
  EXPECT_EQ(e["count"], 6);
  const auto an = test::run_cli({"analyze", a.file("runs/ft"), "--pairs", "8", "--json"});
  ASSERT_EQ(an.code, 0) << an.err;
  EXPECT_TRUE(nlohmann::json::parse(an.out).contains("parameter_distance")) << an.out;
  EXPECT_FALSE(fs::exists(b.file("runs")));
}

}  // namespace
}  // namespace xfer
