// `xfer rank` in-process: models and sources ranked, rank.json, the errors, and `xfer select --source-from`.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/workflows/rank.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Four 8x8 classes; two tiny source models, pre-trained on different class pairs.
struct RankFixture {
  test::TempDir dir;
  std::string idx = test::write_tiny_idx(dir.path(), 4, 10, 2);
  std::string a = test::pretrain_tiny_source(idx + ":classes=0,1", dir.file("a"));
  std::string b = test::pretrain_tiny_source(idx + ":classes=2,3", dir.file("b"));
};

TEST(RankCommand, RanksModelsByEveryMetricAndWritesRankJson) {
  RankFixture fx;
  const std::string target = fx.idx + ":classes=2,3";
  const std::vector<std::string> args = {
      "-q",       "rank", "--target",  target, "--models", fx.a + "," + fx.b,
      "--metric", "all",  "--threads", "1",    "--out",    fx.dir.file("r")};
  const test::CliOutcome r = test::run_cli(args);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* piece :
       {"| model ", "|   1 |", "LogME", "LEEP", "NCE", "H-score", "| features |", "Ranked 2 models in"})
    EXPECT_NE(r.out.find(piece), std::string::npos) << piece << " missing from\n" << r.out;
  const nlohmann::json j = read_json_file(fx.dir.file("r/rank.json"));
  EXPECT_EQ(j["kind"], "xfer rank");
  EXPECT_EQ(j["mode"], "models");
  EXPECT_EQ(j["target_examples"], 20);
  EXPECT_EQ(j["metrics"], nlohmann::json({"logme", "leep", "nce", "hscore"}));
  ASSERT_EQ(j["candidates"].size(), 2u);
  auto candidate = [&](const nlohmann::json& name) {
    return j["candidates"][j["candidates"][0]["name"] == name ? 0 : 1];
  };
  for (const char* m : {"logme", "leep", "nce", "hscore"}) {
    // Each ranking lists the candidates best first, consistently with their scores and ranks.
    const auto& order = j["ranking"][m];
    ASSERT_EQ(order.size(), 2u) << m;
    const auto best = candidate(order[0]), second = candidate(order[1]);
    EXPECT_GE(best["scores"][m].get<double>(), second["scores"][m].get<double>()) << m;
    EXPECT_EQ(best["ranks"][m], 1) << m;
    EXPECT_EQ(second["ranks"][m], best["scores"][m] == second["scores"][m] ? 1 : 2) << m;
  }
  for (const auto& c : j["candidates"]) {
    EXPECT_EQ(c["feature_dim"], 16);
    EXPECT_EQ(c["source_classes"], 2);
    // NCE <= 0 always; LEEP is a mean log-probability.
    EXPECT_LE(c["scores"]["nce"].get<double>(), 1e-12);
    EXPECT_LE(c["scores"]["leep"].get<double>(), 1e-12);
  }
  EXPECT_TRUE(fs::exists(fx.dir.file("r/rank.md")));
  // The same ranking again, to the bit.
  const test::CliOutcome again =
      test::run_cli({"-q", "rank", "--target", target, "--models", fx.a + "," + fx.b, "--metric", "all",
                     "--threads", "1", "--json", "--out", fx.dir.file("r2")});
  ASSERT_EQ(again.code, 0) << again.err;
  const nlohmann::json k = nlohmann::json::parse(again.out);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(k["candidates"][i]["scores"], j["candidates"][i]["scores"]);
}

TEST(RankCommand, RefusesOneClassTargetsModelsWithoutASourceHeadAndWrongShapes) {
  RankFixture fx;
  auto expect_error = [&](std::vector<std::string> args, const std::string& piece) {
    args.insert(args.begin(), {"-q", "rank", "--threads", "1", "--out", fx.dir.file("bad")});
    const test::CliOutcome r = test::run_cli(args);
    EXPECT_EQ(r.code, 2) << piece;
    EXPECT_NE(r.err.find(piece), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  };
  expect_error({"--target", fx.idx + ":classes=1", "--models", fx.a},
               "has 1 class; ranking needs at least 2");
  // A fine-tuned model has a target head only: LogME ranks it, LEEP and NCE cannot.
  ASSERT_EQ(
      test::run_cli({"-q", "finetune", "--init", fx.a, "--target", fx.idx + ":classes=2,3", "--iterations",
                     "2", "--batch-size", "4", "--threads", "1", "--out", fx.dir.file("ft")})
          .code,
      0);
  expect_error(
      {"--target", fx.idx + ":classes=2,3", "--models", fx.a + "," + fx.dir.file("ft"), "--metric", "leep"},
      "has no 'source' head: LEEP and NCE");
  EXPECT_EQ(test::run_cli({"-q", "rank", "--target", fx.idx + ":classes=2,3", "--models", fx.dir.file("ft"),
                           "--threads", "1", "--out", fx.dir.file("ok")})
                .code,
            0);
  // Colour images of another size against the 1x8x8 models.
  const std::string root = fx.dir.file("folder");
  for (const char* cls : {"u", "v"})
    for (int i = 0; i < 2; ++i)
      test::write_image(cat(root, "/", cls, "/", i, ".png"), test::ramp_image(8, 8));
  expect_error({"--target", "folder:dir=" + root + ":size=8:test=none", "--models", fx.a},
               "are 3x8x8 but the model takes 1x8x8");
  expect_error({"--target", fx.idx + ":classes=2,3", "--models", fx.a + "," + fx.b, "--sources", fx.idx},
               "--sources ranks sources for one model");
  expect_error({"--target", fx.idx + ":classes=2,3", "--models", fx.a, "--sources", " ; "},
               "names no source spec");
  expect_error({"--target", fx.idx + ":classes=2,3", "--models", fx.a, "--metric", "logme,best"},
               "unknown metric 'best'");
  expect_error({"--target", fx.idx + ":classes=2,3", "--models", fx.a + "," + fx.a},
               "names '" + fx.a + "' twice");
  EXPECT_FALSE(fs::exists(fx.dir.file("bad")));
}

TEST(RankCommand, RanksSourcesForOneModelAndSelectTakesTheBest) {
  RankFixture fx;
  const std::string target = fx.idx + ":classes=2,3";
  // The target's own classes as a source, one of them, and two unrelated ones.
  const std::string sources = fx.idx + ":classes=2,3;" + fx.idx + ":classes=3;" + fx.idx + ":classes=0,1";
  const test::CliOutcome r =
      test::run_cli({"-q", "rank", "--target", target, "--models", fx.a, "--sources", sources, "--metric",
                     "nce,leep,logme,hscore", "--threads", "1", "--out", fx.dir.file("s")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("of 3 sources through"), std::string::npos) << r.out;
  const nlohmann::json j = read_json_file(fx.dir.file("s/rank.json"));
  EXPECT_EQ(j["mode"], "sources");
  EXPECT_EQ(j["model"], fx.a);
  ASSERT_EQ(j["candidates"].size(), 3u);
  EXPECT_EQ(j["candidates"][0]["source_classes"], 2);
  EXPECT_EQ(j["candidates"][0]["source_examples"], 20);
  // The target's own classes separate it perfectly (the tiny images carry their class in their pixels):
  // NCE 0, the best LEEP. A one-class source tells nothing: NCE = -H(Y) = -log 2, H-score 0.
  const auto& own = j["candidates"][0]["scores"];
  const auto& one = j["candidates"][1]["scores"];
  EXPECT_NEAR(own["nce"].get<double>(), 0.0, 1e-12);
  EXPECT_NEAR(one["nce"].get<double>(), -std::log(2.0), 1e-12);
  EXPECT_NEAR(one["hscore"].get<double>(), 0.0, 1e-12);
  EXPECT_EQ(j["ranking"]["leep"][0], fx.idx + ":classes=2,3");
  EXPECT_EQ(j["ranking"]["nce"][0], fx.idx + ":classes=2,3");

  // xfer select pairs the target with the best-ranked source.
  const test::CliOutcome s =
      test::run_cli({"-q", "select", "--source-from", fx.dir.file("s/rank.json"), "--init", fx.a, "--target",
                     target, "--threads", "1", "--out", fx.dir.file("pairing.json")});
  ASSERT_EQ(s.code, 0) << s.err;
  EXPECT_NE(s.out.find("the best-ranked in"), std::string::npos) << s.out;
  EXPECT_EQ(read_json_file(fx.dir.file("pairing.json"))["source_classes"], nlohmann::json({"2", "3"}));
  // A rank.json of models is not a list of sources; neither --source nor --source-from is an error.
  ASSERT_EQ(test::run_cli({"-q", "rank", "--target", target, "--models", fx.a, "--threads", "1", "--out",
                           fx.dir.file("m")})
                .code,
            0);
  const test::CliOutcome bad =
      test::run_cli({"-q", "select", "--source-from", fx.dir.file("m/rank.json"), "--init", fx.a, "--target",
                     target, "--out", fx.dir.file("p2.json")});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("ranks models, not sources"), std::string::npos) << bad.err;
  const test::CliOutcome none = test::run_cli({"-q", "select", "--init", fx.a, "--target", target});
  EXPECT_EQ(none.code, 2);
  EXPECT_NE(none.err.find("--source-from"), std::string::npos) << none.err;
}

TEST(RankCommand, BestRankedSourceRefusesHostileRankFiles) {
  nlohmann::json ok = {{"kind", "xfer rank"},
                       {"mode", "sources"},
                       {"metrics", {"nce", "logme"}},
                       {"candidates",
                        {{{"name", "fmnist:classes=0,1"}, {"scores", {{"nce", -0.5}, {"logme", 0.2}}}},
                         {{"name", "fmnist:classes=3,5"}, {"scores", {{"nce", -0.1}, {"logme", 0.1}}}}}}};
  EXPECT_EQ(best_ranked_source(ok, "", "r.json"), "fmnist:classes=3,5");  // the first metric orders
  EXPECT_EQ(best_ranked_source(ok, "logme", "r.json"), "fmnist:classes=0,1");
  test::expect_bad_input([&] { best_ranked_source(ok, "hscore", "r.json"); },
                         {"r.json", "no 'hscore' scores"});
  for (const auto& [mutate, piece] :
       std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>>{
           {[](nlohmann::json& j) { j["kind"] = 7; }, "not a rank.json"},
           {[](nlohmann::json& j) { j["mode"] = "models"; }, "ranks models, not sources"},
           {[](nlohmann::json& j) { j["metrics"] = nlohmann::json::array(); }, "\"metrics\""},
           {[](nlohmann::json& j) { j["metrics"] = {3}; }, "\"metrics\""},
           {[](nlohmann::json& j) { j["candidates"] = "x"; }, "\"candidates\""},
           {[](nlohmann::json& j) { j["candidates"][1]["scores"]["nce"] = "high"; }, "numeric"},
           {[](nlohmann::json& j) { j["candidates"][0]["name"] = nlohmann::json::array(); }, "\"name\""},
           {[](nlohmann::json& j) { j["candidates"][0] = nullptr; }, "each candidate"}}) {
    nlohmann::json bad = ok;
    mutate(bad);
    test::expect_bad_input([&] { best_ranked_source(bad, "", "r.json"); }, {"r.json", piece});
  }
  test::expect_bad_input([&] { best_ranked_source(nlohmann::json::array(), "", "r.json"); },
                         {"not a rank.json"});
}

TEST(RankCommand, DocsListEveryOption) {
  const std::string docs = read_file(std::string(XFER_SOURCE_DIR) + "/docs/rank.md");
  RankOptions opts;
  Fields f;
  opts.fields(f);
  for (const auto& field : f.all())
    EXPECT_NE(docs.find("`" + field.flag() + "`"), std::string::npos)
        << field.flag() << " is not in docs/rank.md";
  const std::string cli = read_file(std::string(XFER_SOURCE_DIR) + "/docs/cli.md");
  EXPECT_NE(cli.find("| `rank` |"), std::string::npos);
  const std::string select = read_file(std::string(XFER_SOURCE_DIR) + "/docs/methods/xmixup.md");
  EXPECT_NE(select.find("`--source-from`"), std::string::npos);
}

}  // namespace
}  // namespace xfer
