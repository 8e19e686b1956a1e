// `xfer analyze`: a run's interpolation losses, parameter distance and spectrum, in analysis.json.
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"
#include "xfer/report/table.h"
#include "xfer/workflows/analyze.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

class Analyze : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_ = test::write_tiny_idx(dir_.path(), 3, 12, 4);
    test::pretrain_tiny_source(spec_, dir_.file("source"));
    RunOptions o;
    o.threads = 1;
    o.loader.batch_size = 8;
    o.target = spec_;
    o.init = dir_.file("source");
    o.method = "l2";
    o.out = dir_.file("run");
    o.trainer.iterations = 6;
    run_finetune(o, *methods().get("l2").make_config());
  }
  AnalyzeOptions options(const std::string& on) {
    AnalyzeOptions a;
    a.run = dir_.file("run");
    Fields f;
    a.fields(f);
    f.set("on", on);
    a.pairs = 40;
    a.spectrum = 3;
    a.threads = 1;
    return a;
  }
  test::TempDir dir_;
  std::string spec_;
};

TEST_F(Analyze, WritesBothSplitsAndTheDistanceToInit) {
  const nlohmann::json train = analyze_run(options("train"));
  EXPECT_EQ(train["method"], "l2");
  EXPECT_EQ(train["step"], 6);
  EXPECT_GT(train["parameter_distance"].get<double>(), 0);
  const auto& s = train["splits"]["train"];
  EXPECT_EQ(s["examples"], 36);
  EXPECT_EQ(s["feature_il"]["n"], 40);
  EXPECT_GT(s["feature_il"]["mean"].get<double>(), 0);
  EXPECT_EQ(s["spectrum"].size(), 3u);
  EXPECT_FALSE(train["splits"].contains("test"));

  const nlohmann::json both = analyze_run(options("test"));
  EXPECT_EQ(both["splits"]["train"], s) << "the other split's entry is kept";
  EXPECT_EQ(both["splits"]["test"]["examples"], 12);
  EXPECT_EQ(both, read_json_file(dir_.file("run/analysis.json")));
  const std::string table = analysis_table(both).markdown();
  for (const char* piece :
       {" train |", " test |", "Feature-IL", "Label-IL", "sigma_min / sigma_max", "parameter distance"})
    EXPECT_NE(table.find(piece), std::string::npos) << piece << "\n" << table;

  // Against itself, the distance is 0.
  AnalyzeOptions self = options("test");
  self.init = dir_.file("run");
  EXPECT_EQ(analyze_run(self)["parameter_distance"].get<double>(), 0.0);
}

TEST_F(Analyze, ForgettingProbesTheRunAndThePretrainedModelOnTheSourceSubsets) {
  // A run on two of the three classes: one pairing round makes two source classes auxiliary, the third is
  // ABA.
  RunOptions o;
  o.threads = 1;
  o.loader.batch_size = 8;
  o.target = spec_ + ":classes=0,1";
  o.init = dir_.file("source");
  o.method = "l2";
  o.out = dir_.file("two");
  o.trainer.iterations = 4;
  run_finetune(o, *methods().get("l2").make_config());
  AnalyzeOptions a = options("test");
  a.run = dir_.file("two");
  a.forgetting = true;
  test::expect_bad_input([&] { analyze_run(a); },
                         {"--forgetting needs a source task", "--forgetting-source"});
  a.forgetting_source = spec_;
  a.forgetting_reference = true;
  a.probe_iterations = 30;
  const nlohmann::json r = analyze_run(a);
  const nlohmann::json& f = r["forgetting"];
  EXPECT_EQ(f["auxiliary_classes"].size(), 2u);
  for (const char* who : {"model", "pretrained"}) {
    const nlohmann::json& s = f[who];
    EXPECT_EQ(s["auxiliary_n"], 8) << who;
    EXPECT_EQ(s["aba_n"], 4) << who;
    EXPECT_EQ(s["all_n"], 12) << who;
    EXPECT_NEAR(s["all"].get<double>(), (8 * s["auxiliary"].get<double>() + 4 * s["aba"].get<double>()) / 12,
                1e-12);
  }
  EXPECT_EQ(analyze_run(a)["forgetting"], f) << "deterministic";
  // Another analysis of the same checkpoint keeps the entry.
  AnalyzeOptions plain = options("train");
  plain.run = dir_.file("two");
  EXPECT_EQ(analyze_run(plain)["forgetting"], f);
  const std::string table = forgetting_table(r).markdown();
  for (const char* piece : {"| this run ", "| pretrained (--init) ", "Auxiliary", "ABA", "All", "(n=8)"})
    EXPECT_NE(table.find(piece), std::string::npos) << piece << "\n" << table;
}

TEST_F(Analyze, BadInputIsNamed) {
  AnalyzeOptions a = options("test");
  a.run = dir_.file("missing");
  test::expect_bad_input([&] { analyze_run(a); }, {"missing is not a directory"});
  a.run = dir_.path();
  test::expect_bad_input([&] { analyze_run(a); }, {"holds no config.json"});
  fs::create_directories(dir_.file("empty"));
  fs::copy_file(dir_.file("run/config.json"), dir_.file("empty/config.json"));
  a.run = dir_.file("empty");
  test::expect_bad_input([&] { analyze_run(a); }, {"without checkpoints/best.pt or checkpoints/last.pt"});
  a = options("test");
  a.alpha = 0;
  test::expect_bad_input([&] { analyze_run(a); }, {"--alpha must be > 0, got 0"});
  a = options("test");
  a.pairs = 0;
  test::expect_bad_input([&] { analyze_run(a); }, {"--pairs must be >= 1, got 0"});
  test::expect_bad_input([&] { options("val"); }, {"--on must be one of train, test; got 'val'"});
  a = options("test");
  a.init = dir_.file("nowhere");
  test::expect_bad_input([&] { analyze_run(a); }, {"checkpoint not found", "nowhere", "pass --init"});
}

TEST_F(Analyze, CommandPrintsTheTableAndFailsWithOneLine) {
  std::ostringstream out, err;
  EXPECT_EQ(
      cli::run({"analyze", dir_.file("run"), "--on", "train", "--pairs", "20", "--threads", "1"}, out, err),
      0)
      << err.str();
  EXPECT_NE(out.str().find("Feature-IL"), std::string::npos) << out.str();
  EXPECT_TRUE(fs::exists(dir_.file("run/analysis.json")));
  std::ostringstream out2, err2;
  EXPECT_EQ(cli::run({"analyze", dir_.path()}, out2, err2), 2);
  EXPECT_EQ(err2.str().rfind("error: ", 0), 0u) << err2.str();
  EXPECT_NE(err2.str().find("config.json"), std::string::npos) << err2.str();
}

}  // namespace
}  // namespace xfer
