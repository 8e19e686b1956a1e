// The command line, driven in-process: exit codes, one-line errors, and what the commands print.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"
#include "xfer/train/trainer.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Bad input: exit code 2 and a single line naming the problem.
void expect_bad(const std::vector<std::string>& args, const std::vector<std::string>& pieces) {
  const test::CliOutcome o = test::run_cli(args);
  EXPECT_EQ(o.code, 2) << o.err;
  const std::string first = o.err.substr(0, o.err.find('\n'));
  EXPECT_EQ(first.rfind("error: ", 0), 0u) << o.err;
  for (const auto& p : pieces)
    EXPECT_NE(first.find(p), std::string::npos) << "error: " << o.err << "missing: " << p;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override { spec_ = test::write_tiny_idx(dir_.path(), 3, 12, 3); }
  std::vector<std::string> finetune(std::vector<std::string> extra) {
    std::vector<std::string> args = {"-q",           "finetune", "--method",     "scratch",
                                     "--target",     spec_,      "--backbone",   "cnn4:width=4",
                                     "--iterations", "6",        "--batch-size", "8",
                                     "--threads",    "1",        "--out",        dir_.file("run")};
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
  write_json_file(dir_.file("cfg.json"),
                  {{"lr", 0.05}, {"momentum", 0.5}, {"method_options", nlohmann::json::object()}});
  ASSERT_EQ(test::run_cli(finetune({"--config", dir_.file("cfg.json"), "--lr", "0.02"})).code, 0);
  const auto cfg = read_json_file(dir_.file("run/config.json"));
  EXPECT_EQ(cfg["lr"], 0.02);       // the flag wins
  EXPECT_EQ(cfg["momentum"], 0.5);  // the file beats the default
  // The written config.json re-runs the same thing.
  const test::CliOutcome again = test::run_cli(
      {"-q", "finetune", "--config", dir_.file("run/config.json"), "--out", dir_.file("again")});
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
  expect_bad({"finetune", "--method", "scratch", "--target", "fmnist:dir=/nonexistent"},
             {"dataset-fashion-mnist"});
  expect_bad({"finetune", "--method", "scratch", "--target", spec_, "--device", "tpu"},
             {"--device must be cpu, cuda"});
  EXPECT_FALSE(fs::exists(dir_.file("run"))) << "a bad command writes nothing";
}

TEST_F(Cli, EpochsShortFlagsAndDidYouMean) {
  // 36 training images, 2 epochs at -b 8: ceil(72 / 8) = 9 steps; -j is --threads.
  const test::CliOutcome o =
      test::run_cli({"-q", "finetune", "--method", "scratch", "--target", spec_, "--backbone", "cnn4:width=4",
                     "--epochs", "2", "-b", "8", "-j", "1", "--out", dir_.file("run"), "--json"});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(nlohmann::json::parse(o.out)["iterations"], 9);
  const auto cfg = read_json_file(dir_.file("run/config.json"));
  EXPECT_EQ(cfg["batch_size"], 8);
  EXPECT_EQ(cfg["epochs"], 2.0);
  EXPECT_EQ(epochs_to_iterations(20, 1000, 64), 313);
  EXPECT_EQ(epochs_to_iterations(0.5, 10, 4), 2) << "half of 10 examples is 5: two batches of 4";
  EXPECT_THROW(epochs_to_iterations(1e6, int64_t{1} << 40, 1), BadInput);
  expect_bad(finetune({"--itrations", "5"}), {"did you mean --iterations?"});
  expect_bad(finetune({"--batchsize", "5"}), {"did you mean --batch-size?"});
  expect_bad(finetune({"--epochs", "-1"}), {"--epochs"});
  const test::CliOutcome far = test::run_cli(finetune({"--zzzzzzzz"}));
  EXPECT_EQ(far.err.find("did you mean"), std::string::npos) << "nothing close: no guess";
  // A flag of another method says which.
  expect_bad({"pretrain", "--source", spec_, "--weights", "w.json"},
             {"--weights is an option of method datl: add --method datl"});
  expect_bad(finetune({"--gamma-fe", "1"}), {"--gamma-fe is an option of method smile: add --method smile"});
}

TEST_F(Cli, MetricsCarryTrainAccuracyValidationLossAndACsvCopy) {
  ASSERT_EQ(test::run_cli({"-q",           "finetune",
                           "--method",     "scratch",
                           "--target",     spec_ + ":val=3",
                           "--backbone",   "cnn4:width=4",
                           "--iterations", "8",
                           "--batch-size", "8",
                           "--threads",    "1",
                           "--log-every",  "2",
                           "--eval-every", "4",
                           "--out",        dir_.file("run")})
                .code,
            0);
  std::istringstream jsonl(read_file(dir_.file("run/metrics.jsonl")));
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(jsonl, line);) lines.push_back(nlohmann::json::parse(line));
  int train_lines = 0, val_lines = 0;
  for (const auto& l : lines) {
    if (l.contains("train_top1")) {
      ++train_lines;
      const double a = l["train_top1"];
      EXPECT_TRUE(a >= 0 && a <= 1) << l;
    }
    if (l.contains("val_top1")) {
      ++val_lines;
      EXPECT_GT(l["val_loss"].get<double>(), 0.0) << l;
    }
  }
  EXPECT_EQ(train_lines, 4);
  EXPECT_EQ(val_lines, 2);
  // metrics.csv: "step" first, one row per line of metrics.jsonl, the same numbers.
  std::istringstream csv(read_file(dir_.file("run/metrics.csv")));
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header.rfind("\"step\",", 0), 0u) << header;
  std::vector<std::string> columns;
  for (std::istringstream h(header); std::getline(h, header, ',');)
    columns.push_back(header.substr(1, header.size() - 2));
  const auto column = std::find(columns.begin(), columns.end(), "val_loss");
  ASSERT_NE(column, columns.end()) << "columns: " << columns.size();
  size_t rows = 0;
  for (std::string row; std::getline(csv, row); ++rows) {
    std::vector<std::string> cells;
    std::istringstream r(row);
    for (std::string cell; std::getline(r, cell, ',');) cells.push_back(cell);
    cells.resize(columns.size());
    EXPECT_EQ(std::stoll(cells[0]), lines[rows]["step"].get<int64_t>());
    const std::string& v = cells[static_cast<size_t>(column - columns.begin())];
    if (lines[rows].contains("val_loss"))
      EXPECT_DOUBLE_EQ(std::stod(v), lines[rows]["val_loss"].get<double>());
    else
      EXPECT_EQ(v, "");
  }
  EXPECT_EQ(rows, lines.size());
}

TEST_F(Cli, CorruptDataAndCheckpointsAreBadInput) {
  std::string bytes = read_file(dir_.file("train-images-idx3-ubyte"));
  write_file_atomic(dir_.file("train-images-idx3-ubyte"), bytes.substr(0, bytes.size() - 10));
  expect_bad({"data", spec_}, {"train-images-idx3-ubyte", "truncated IDX data"});
  write_file_atomic(dir_.file("junk.pt"), "junk");
  expect_bad({"eval", "--model", dir_.file("junk.pt"), "--data", spec_},
             {"junk.pt", "not an xfer checkpoint"});
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
  EXPECT_GT(j["loss"].get<double>(), 0.0) << "the mean cross-entropy is reported with the accuracy";
  EXPECT_FALSE(j.contains("top5")) << "three classes: top-5 says nothing";
  expect_bad({"eval", "--model", dir_.file("run"), "--data", spec_ + ":classes=0,1"},
             {"has 3 classes, the data has 2"});
}

TEST_F(Cli, MethodsDataAndHelp) {
  const test::CliOutcome m = test::run_cli({"methods"});
  EXPECT_EQ(m.code, 0);
  EXPECT_NE(m.out.find("scratch"), std::string::npos);
  EXPECT_NE(m.out.find("l2 "), std::string::npos);
  EXPECT_NE(m.out.find("[needs --init]"), std::string::npos);

  const test::CliOutcome d =
      test::run_cli({"data", spec_ + ":per_class=4:val=2", "--json", "--png", dir_.file("g.png")});
  ASSERT_EQ(d.code, 0) << d.err;
  const auto j = nlohmann::json::parse(d.out);
  EXPECT_EQ(j["counts"]["train"], (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(j["counts"]["val"], (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(read_file(dir_.file("g.png")).substr(1, 3), "PNG");

  const test::CliOutcome h = test::run_cli({"finetune", "--help"});
  EXPECT_EQ(h.code, 0);
  for (const char* s :
       {"--weight-decay", "--head-lr-mult", "--crop-pad", "--no-flip", "per_class=N", "Training"})
    EXPECT_NE(h.out.find(s), std::string::npos) << s;
  EXPECT_EQ(test::run_cli({}).code, 2);  // a subcommand is required
  EXPECT_EQ(test::run_cli({"--version"}).code, 0);
}

}  // namespace
}  // namespace xfer
