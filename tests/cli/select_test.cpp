// `xfer select` and `xfer finetune --method xmixup --pairing`, in-process.
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

TEST(SelectCommand, PrintsThePairingAndWritesPairingJsonThatFinetuneUses) {
  test::TempDir dir;
  const std::string idx = test::write_tiny_idx(dir.path(), 4, 10, 2);
  ASSERT_EQ(test::run_cli({"-q", "pretrain", "--source", idx, "--backbone", "cnn4:width=4", "--iterations",
                           "3", "--batch-size", "8", "--threads", "1", "--out", dir.file("src")})
                .code,
            0);
  const std::string target = idx + ":classes=3,1";
  const test::CliOutcome s =
      test::run_cli({"-q", "select", "--target", target, "--source", idx, "--init", dir.file("src"),
                     "--aux-size", "25", "--threads", "1", "--out", dir.file("pairing.json")});
  ASSERT_EQ(s.code, 0) << s.err;
  for (const char* piece : {"| target class |", "source class", "| cosine |", "auxiliary set", "|      40 |"})
    EXPECT_NE(s.out.find(piece), std::string::npos) << piece << " missing from\n" << s.out;
  const auto p = read_json_file(dir.file("pairing.json"));
  EXPECT_EQ(p["target_classes"], nlohmann::json({"3", "1"}));
  EXPECT_EQ(p["pairs"].size(), 4u) << "25 examples need a second round of 10-example classes";
  EXPECT_EQ(p["aux_samples"], 40);

  const std::vector<std::string> finetune = {"-q",           "finetune",
                                             "--method",     "xmixup",
                                             "--init",       dir.file("src"),
                                             "--source",     idx,
                                             "--iterations", "2",
                                             "--batch-size", "4",
                                             "--threads",    "1",
                                             "--pairing",    dir.file("pairing.json")};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = finetune;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const test::CliOutcome ok = test::run_cli(with({"--target", target, "--out", dir.file("ok"), "--json"}));
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(nlohmann::json::parse(ok.out)["method"], "xmixup");
  const test::CliOutcome bad =
      test::run_cli(with({"--target", idx + ":classes=0,1", "--out", dir.file("bad")}));
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("pairs the target classes [3, 1] but the task's are [0, 1]"), std::string::npos)
      << bad.err;
  const test::CliOutcome big =
      test::run_cli({"-q", "select", "--target", target, "--source", idx, "--init", dir.file("src"),
                     "--aux-size", "41", "--out", dir.file("p2.json")});
  EXPECT_EQ(big.code, 2);
  EXPECT_NE(big.err.find("--aux all would use all 40"), std::string::npos) << big.err;
  EXPECT_FALSE(fs::exists(dir.file("p2.json")));
}

}  // namespace
}  // namespace xfer
