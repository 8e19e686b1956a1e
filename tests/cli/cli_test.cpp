// The command line, driven in-process: exit codes, one-line errors, and what the commands print.
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Bad input: exit code 2 and a single line naming the problem.
void expect_bad(const std::vector<std::string>& args, const std::vector<std::string>& pieces) {
  const test::CliOutcome o = test::run_cli(args);
  EXPECT_EQ(o.code, 2) << o.err;
  const std::string first = o.err.substr(0, o.err.find('\n'));
  EXPECT_EQ(first.rfind("error: ", 0), 0u) << o.err;
  for (const auto& p : pieces) EXPECT_NE(first.find(p), std::string::npos) << "error: " << o.err << "missing: " << p;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override { spec_ = test::write_tiny_idx(dir_.path(), 3, 12, 3); }
  std::vector<std::string> finetune(std::vector<std::string> extra) {
    std::vector<std::string> args = {"-q", "finetune", "--method", "scratch", "--target", spec_, "--backbone",
                                     "cnn4:width=4", "--iterations", "6", "--batch-size", "8", "--threads", "1",
                                     "--out", dir_.file("run")};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  test::TempDir dir_;
  std::string spec_;
};

TEST_F(Cli, FinetunePrintsResultJson) {
  const test::CliOutcome o = test::run_cli(finetune({"--json"}));
  ASSERT_EQ(o.code, 0) << o.err;
  const auto r = nlohmann::json::parse(o.out);
  EXPECT_EQ(r["method"], "scratch");
  EXPECT_EQ(r["iterations"], 6);
  EXPECT_EQ(r, read_json_file(dir_.file("run/result.json")));
}

TEST_F(Cli, ConfigFileThenFlags) {
  write_json_file(dir_.file("cfg.json"), {{"lr", 0.05}, {"momentum", 0.5}, {"method_options", nlohmann::json::object()}});
  ASSERT_EQ(test::run_cli(finetune({"--config", dir_.file("cfg.json"), "--lr", "0.02"})).code, 0);
  const auto cfg = read_json_file(dir_.file("run/config.json"));
  EXPECT_EQ(cfg["lr"], 0.02);       // the flag wins
  EXPECT_EQ(cfg["momentum"], 0.5);  // the file beats the default
  // The written config.json re-runs the same thing.
  const test::CliOutcome again = test::run_cli({"-q", "finetune", "--config", dir_.file("run/config.json"), "--out", dir_.file("again")});
  ASSERT_EQ(again.code, 0) << again.err;
  auto a = read_json_file(dir_.file("run/result.json")), b = read_json_file(dir_.file("again/result.json"));
  EXPECT_EQ(a["test_top1"], b["test_top1"]);
  expect_bad({"finetune", "--config", dir_.file("nope.json")}, {"file not found", "nope.json"});
  write_json_file(dir_.file("bad.json"), {{"learning_rate", 1}});
  expect_bad({"finetune", "--config", dir_.file("bad.json")}, {"unknown key 'learning_rate'"});
}

TEST_F(Cli, BadValuesExitWithTwoAndOneLine) {
  expect_bad(finetune({"--lr", "-1"}), {"--lr must be > 0, got -1"});
  expect_bad(finetune({"--schedule", "linear"}), {"--schedule must be one of constant, step, cosine"});
  expect_bad(finetune({"--iterations", "many"}), {"--iterations"});
  expect_bad(finetune({"--bogus-flag"}), {"--bogus-flag"});
  expect_bad(finetune({"--backbone", "vgg"}), {"unknown backbone 'vgg'", "resnet18"});
  expect_bad({"finetune", "--method", "magic", "--target", spec_}, {"unknown method 'magic'", "scratch, l2"});
  expect_bad({"finetune", "--method", "l2", "--target", spec_}, {"pass --init"});
  expect_bad({"finetune", "--method", "scratch", "--target", spec_ + ":classes=0,5"}, {"unknown class 5"});
  expect_bad({"finetune", "--method", "scratch", "--target", spec_ + ":per_class=50"}, {"per_class=50"});
  expect_bad({"finetune", "--method", "scratch", "--target", "fmnist:dir=/nonexistent"}, {"dataset-fashion-mnist"});
  expect_bad({"finetune", "--method", "scratch", "--target", spec_, "--device", "tpu"}, {"--device must be cpu, cuda"});
  EXPECT_FALSE(fs::exists(dir_.file("run"))) << "a bad command writes nothing";
}

TEST_F(Cli, CorruptDataAndCheckpointsAreBadInput) {
  std::string bytes = read_file(dir_.file("train-images-idx3-ubyte"));
  write_file_atomic(dir_.file("train-images-idx3-ubyte"), bytes.substr(0, bytes.size() - 10));
  expect_bad({"data", spec_}, {"train-images-idx3-ubyte", "truncated IDX data"});
  write_file_atomic(dir_.file("junk.pt"), "junk");
  expect_bad({"eval", "--model", dir_.file("junk.pt"), "--data", spec_}, {"junk.pt", "not an xfer checkpoint"});
}

TEST_F(Cli, EvalPrintsAccuracyAndConfusion) {
  ASSERT_EQ(test::run_cli(finetune({})).code, 0);
  const test::CliOutcome o = test::run_cli({"eval", "--model", dir_.file("run"), "--data", spec_, "--json"});
  ASSERT_EQ(o.code, 0) << o.err;
  const auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["count"], 9);
  EXPECT_EQ(j["confusion"].size(), 3u);
  const auto r = read_json_file(dir_.file("run/result.json"));
  EXPECT_EQ(j["top1"], r["test_top1"]);  // the last model is the tested one without validation
  expect_bad({"eval", "--model", dir_.file("run"), "--data", spec_ + ":classes=0,1"}, {"has 3 classes, the data has 2"});
}

TEST_F(Cli, MethodsDataAndHelp) {
  const test::CliOutcome m = test::run_cli({"methods"});
  EXPECT_EQ(m.code, 0);
  EXPECT_NE(m.out.find("scratch"), std::string::npos);
  EXPECT_NE(m.out.find("l2 "), std::string::npos);
  EXPECT_NE(m.out.find("[needs --init]"), std::string::npos);

  const test::CliOutcome d = test::run_cli({"data", spec_ + ":per_class=4:val=2", "--json", "--png", dir_.file("g.png")});
  ASSERT_EQ(d.code, 0) << d.err;
  const auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["counts"]["train"], (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(j["counts"]["val"], (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(read_file(dir_.file("g.png")).substr(1, 3), "PNG");

  const test::CliOutcome h = test::run_cli({"finetune", "--help"});
  EXPECT_EQ(h.code, 0);
  for (const char* s : {"--weight-decay", "--head-lr-mult", "--crop-pad", "--no-flip", "per_class=N", "Training"})
    EXPECT_NE(h.out.find(s), std::string::npos) << s;
  EXPECT_EQ(test::run_cli({}).code, 2);  // a subcommand is required
  EXPECT_EQ(test::run_cli({"--version"}).code, 0);
}

}  // namespace
}  // namespace xfer
