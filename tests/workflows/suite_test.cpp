// Benchmark suites: parsing and its errors, the runs as processes, resume skips, failed-run marking.
#include <filesystem>
#include <sstream>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/workflows/suite.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A tiny suite on tiny IDX data `spec`: scratch and l2, 1 task, 2 seeds, a few steps.
nlohmann::json suite_with_spec(const std::string& spec) {
  std::string text = R"JSON({
    "description": "tiny",
    "pretrain": {"source": "SPEC", "backbone": "cnn4:width=4", "iterations": 6, "batch_size": 8},
    "run": {"iterations": 6, "batch_size": 8, "eval_every": 3},
    "seeds": 2,
    "tasks": [{"name": "tiny", "target": "SPEC:per_class=4"}],
    "methods": ["scratch", {"label": "l2 (ft)", "method": "l2"}],
    "timing": {"steps": 3}
  })JSON";
  for (size_t p; (p = text.find("SPEC")) != std::string::npos;) text.replace(p, 4, spec);
  return nlohmann::json::parse(text);
}

/// Options that run suite `j` (written to DIR/tiny.json) into DIR/bench with a cache in DIR/cache, 1 thread.
BenchOptions bench_options(const test::TempDir& dir, const nlohmann::json& j) {
  write_json_file(dir.file("tiny.json"), j);
  BenchOptions o;
  o.suite = dir.file("tiny.json");
  o.out = dir.file("bench");
  o.cache = dir.file("cache");
  o.threads = 1;
  o.executable = XFER_BINARY;
  return o;
}

TEST(Suite, ParsesAndRefusesBadEntriesByName) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 3);
  const Suite s = parse_suite(suite_with_spec(spec), "tiny");
  EXPECT_EQ(s.seeds, (std::vector<int64_t>{0, 1}));
  ASSERT_EQ(s.methods.size(), 2u);
  EXPECT_EQ(s.methods[1].label, "l2 (ft)");
  EXPECT_EQ(s.methods[1].method, "l2");

  auto bad = [&](const std::function<void(nlohmann::json&)>& edit, const std::vector<std::string>& pieces) {
    nlohmann::json j = suite_with_spec(spec);
    edit(j);
    test::expect_bad_input([&] { parse_suite(j, "tiny"); }, pieces);
  };
  bad([](auto& j) { j["methods"].push_back("no_such_method"); },
      {"methods[2]", "unknown method 'no_such_method'"});
  bad([](auto& j) { j["tasks"][0]["target"] = "fmnist:clases=1"; }, {"tasks[0]", "clases"});
  bad(
      [](auto& j) {
        j["tasks"].push_back({{"name", "tiny"}, {"target", "fmnist"}});
      },
      {"two tasks are named 'tiny'"});
  bad(
      [](auto& j) {
        j["methods"][1]["options"] = {{"alpha", 1}};
      },
      {"method 'l2 (ft)'", "unknown key 'alpha'"});
  bad([](auto& j) { j["run"]["iterations"] = 0; }, {"--iterations must be >= 1, got 0"});
  bad([](auto& j) { j["seeds"] = 0; }, {"seeds must be >= 1"});
  bad([](auto& j) { j["colour"] = "red"; }, {"unknown key 'colour'"});
  // Each object's key table names the valid keys, in its order.
  bad([](auto& j) { j["tasks"][0]["colour"] = "red"; },
      {"suite tiny.tasks[0]: unknown key 'colour'; valid keys: name, target, source, run, options, "
       "pretrain"});
  bad(
      [](auto& j) {
        j["timing"] = {{"stpes", 3}};
      },
      {"suite tiny.timing: unknown key 'stpes'; valid keys: task, steps"});
  bad(
      [](auto& j) {
        j["tables"] = {{{"kind", "forgetting"}, {"task", "tiny"}, {"methods", {"scratch"}}, {"pairs", 3}}};
      },
      {"tables[0]: unknown key 'pairs'; valid keys: title, kind, task, methods, source, reference, "
       "probe_iterations"});
  bad([](auto& j) { j["tasks"][0].erase("target"); }, {"suite tiny.tasks[0] needs \"target\""});
  // Found by fuzzing: values of the wrong JSON type are refused by name, not thrown as json type errors.
  bad(
      [](auto& j) {
        j["description"] = {{"source", "fmnist"}};
      },
      {"suite tiny.description must be a non-empty string"});
  bad([](auto& j) { j["methods"][1]["optional"] = "yes"; }, {"methods[1].optional must be true or false"});
  bad([](auto& j) { j["timing"] = {{"steps", "40"}}; }, {"timing.steps must be an integer"});
  bad([](auto& j) { j.erase("pretrain"); }, {"method l2 fine-tunes a source model"});
  bad(
      [](auto& j) {
        j["methods"].push_back({{"method", "scratch"}});
      },
      {"the label 'scratch' is used twice"});
  bad([](auto& j) { j["timing"] = {{"task", "nope"}}; }, {"no task named 'nope'"});
  bad(
      [](auto& j) {
        j["tasks"][0]["options"] = {{"alhpa", 1}};
      },
      {"no method of the suite has the option 'alhpa'"});
  bad([](auto& j) { j["methods"][1]["search"] = {{"trials", 2}}; }, {"methods[1].search needs \"params\""});
  bad(
      [](auto& j) {
        j["methods"][1]["search"] = {{"params", {{"lr", "lin:1"}}}};
      },
      {"methods[1].search", "lr"});
  bad(
      [](auto& j) {
        j["methods"][1]["search"] = {{"params", {{"lr", "log:0.01:0.1"}}}, {"trails", 2}};
      },
      {"methods[1].search", "trails"});
  bad(
      [](auto& j) {
        j["methods"][1]["search"] = {{"params", {{"lr", "log:0.01:0.1"}}}, {"out", "x"}};
      },
      {"\"out\" is set by the suite"});
  bad(
      [](auto& j) {
        j["methods"][1]["sweep"] = {{"alpha", nlohmann::json::array()}};
      },
      {"methods[1].sweep.alpha must be a list of 1 to 100 values"});
  bad([](auto& j) { j["methods"][1]["sweep"] = {{"lr", {0.1}}}; }, {"method 'l2 (ft)'", "unknown key 'lr'"});
  bad(
      [](auto& j) {
        j["methods"].push_back({{"label", "mx"}, {"method", "mixup"}, {"sweep", {{"alpha", {0.2, 1}}}}});
      },
      {"method 'mx' sweeps", "task 'tiny'", "no validation split"});
  bad(
      [](auto& j) {
        j["methods"][1]["sweep"] = {{"a", {1}}};
        j["methods"][1]["search"] = {{"params", {{"lr", "log:0.01:0.1"}}}};
      },
      {"\"search\" and \"sweep\" cannot be combined"});
  bad(
      [](auto& j) {
        j["methods"][1]["pretrain"] = {
            {"method", "datl"}, {"weights_from", "@pretrain"}, {"weights_target", "@task"}};
      },
      {"method 'l2 (ft)'", "(pretrain)", "needs --matcher same|elastic"});
  bad(
      [](auto& j) {
        j["methods"][1]["pretrain"] = {{"weights_from", "@pretrain"}, {"weights_target", "@task"}};
      },
      {"method 'l2 (ft)'", "(pretrain)",
       "\"weights_from\" is an option of method datl: add \"method\": \"datl\""});
  bad(
      [](auto& j) {
        j["methods"][1]["pretrain"] = {{"method", "l2"}};
      },
      {"method 'l2 (ft)'", "(pretrain): method l2 does not pre-train (scratch or datl do)"});
  bad([](auto& j) { j["methods"][1]["tasks"] = {"elsewhere"}; },
      {"methods[1].tasks: no task named \"elsewhere\""});
  bad(
      [](auto& j) {
        j["tables"] = {{{"kind", "histogram"}, {"task", "tiny"}, {"methods", {"scratch"}}}};
      },
      {"tables[0].kind must be accuracy, forgetting or interpolation"});
  bad(
      [](auto& j) {
        j["tables"] = {{{"kind", "accuracy"}, {"task", "nope"}, {"methods", {"scratch"}}}};
      },
      {"tables[0].task: no task named 'nope'"});
  bad(
      [](auto& j) {
        j["tables"] = {{{"kind", "accuracy"}, {"task", "tiny"}, {"methods", {"l2"}}}};
      },
      {"tables[0].methods: no method labelled \"l2\""});
  bad(
      [](auto& j) {
        j["tables"] = {{{"kind", "accuracy"}, {"task", "tiny"}, {"methods", {"scratch"}}, {"pairs", 3}}};
      },
      {"tables[0]: unknown key 'pairs'"});
  bad(
      [](auto& j) {
        j["tables"] = {
            {{"kind", "interpolation"}, {"task", "tiny"}, {"methods", {"scratch"}}, {"splits", {"val"}}}};
      },
      {"tables[0].splits", "\"val\""});
  bad(
      [](auto& j) {
        j["tasks"].push_back({{"name", "other"}, {"target", j["tasks"][0]["target"]}});
        j["methods"][1]["tasks"] = {"other"};
        j["tables"] = {{{"kind", "forgetting"}, {"task", "tiny"}, {"methods", {"l2 (ft)"}}}};
      },
      {"tables[0].methods: \"l2 (ft)\" does not run on task 'tiny'"});
  // A task's method options reach only the methods that have them (checked by planning every run).
  nlohmann::json with_options = suite_with_spec(spec);
  with_options["methods"].push_back("mixup");
  with_options["tasks"][0]["options"] = {{"alpha", 0.4}};
  EXPECT_NO_THROW(parse_suite(with_options, "tiny"));
  with_options["tasks"][0]["options"] = {{"alpha", -1}};
  test::expect_bad_input([&] { parse_suite(with_options, "tiny"); }, {"mixup", "--alpha"});
  // An optional method that is not built is skipped with a note instead.
  nlohmann::json j = suite_with_spec(spec);
  j["methods"].push_back({{"method", "future_method"}, {"optional", true}});
  const Suite opt = parse_suite(j, "tiny");
  EXPECT_EQ(opt.methods.size(), 2u);
  ASSERT_EQ(opt.notes.size(), 1u);
  EXPECT_NE(opt.notes[0].find("future_method"), std::string::npos);
  // Files that are not JSON are refused with the parser's position.
  write_file_atomic(dir.file("broken.json"), "{\"tasks\": [");
  test::expect_bad_input([&] { load_suite(dir.file("broken.json")); }, {"broken.json"});
  test::expect_bad_input([&] { load_suite("no_such_suite"); }, {"no suite 'no_such_suite'", "quick"});
  // Every built-in suite parses: each method, option and spec in bench/suites is valid.
  for (const auto& [name, description] : builtin_suites()) EXPECT_NO_THROW(load_suite(name)) << name;
}

TEST(Suite, SearchEntriesAndSourceModelsResampledForTheTaskRun) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 16, 3);
  nlohmann::json j = suite_with_spec(spec);
  j["seeds"] = 1;
  j["timing"] = false;
  j["tasks"][0]["target"] = spec + ":per_class=4:val=2";
  j["methods"] = {{{"label", "l2, tuned lr"},
                   {"method", "l2"},
                   {"search", {{"params", {{"lr", "log:0.001:0.1"}}}, {"trials", 2}}}},
                  {{"label", "l2, same"},
                   {"method", "l2"},
                   {"pretrain",
                    {{"method", "datl"},
                     {"weights_from", "@pretrain"},
                     {"weights_target", "@task"},
                     {"matcher", "same"},
                     {"size", 20}}}},
                  {{"label", "mixup, best alpha"}, {"method", "mixup"}, {"sweep", {{"alpha", {0.2, 1.5}}}}}};
  BenchOptions o = bench_options(dir, j);
  std::ostringstream log;
  const nlohmann::json b = run_bench(o, log);
  ASSERT_EQ(b["runs"].size(), 4u) << "the sweep's two points are two runs";
  for (const auto& r : b["runs"]) EXPECT_TRUE(r["ok"].get<bool>()) << r.dump() << log.str();
  // The search's cell is its best trial on validation.
  const nlohmann::json searched = read_json_file(dir.file("bench/runs/tiny/l2__tuned_lr/seed0/result.json"));
  ASSERT_TRUE(searched.contains("search")) << searched.dump();
  EXPECT_EQ(searched["search"]["trials"], 2);
  EXPECT_EQ(searched["best_val_top1"], searched["search"]["val_top1"]);
  EXPECT_EQ(searched["search"]["compute"]["trials"], 2);
  EXPECT_EQ(searched["search"]["compute"]["steps"], 2 * 6);
  const std::string table = read_file(dir.file("bench/table.md"));
  EXPECT_NE(table.find("compute: 'l2, tuned lr' searched 1 cells: 2 trials (0 pruned), 12 training steps"),
            std::string::npos)
      << table;
  // The sweep's cell is its point best on validation.
  double val[2];
  for (int i = 0; i < 2; ++i)
    val[i] = read_json_file(
        dir.file(i == 0 ? "bench/runs/tiny/mixup__best_alpha/seed0/alpha_0.2/result.json"
                        : "bench/runs/tiny/mixup__best_alpha/seed0/alpha_1.5/result.json"))["best_val_top1"];
  const std::string chosen = val[1] > val[0] ? "alpha=1.5" : "alpha=0.2";
  EXPECT_NE(
      table.find("'mixup, best alpha' reports per cell the sweep point best on validation: tiny seed 0: " +
                 chosen),
      std::string::npos)
      << table;
  EXPECT_NE(read_file(dir.file("bench/results.csv")).find("mixup, best alpha [alpha=1.5]"),
            std::string::npos);
  // The resampled source model was pre-trained after the suite's own, with that model's weights on the task.
  const nlohmann::json request = read_json_file(dir.file("bench/runs/tiny/l2__same/seed0/request.json"));
  const nlohmann::json source = read_json_file(request["init"].get<std::string>() + "/result.json");
  EXPECT_EQ(source["sampling"]["matcher"], "same");
  EXPECT_EQ(source["sampling"]["weights_target"], spec + ":per_class=4:val=2");
  EXPECT_TRUE(fs::exists(source["sampling"]["weights_from"].get<std::string>() + "/result.json"));
  EXPECT_EQ(source["train_size"], 20);
}

TEST(Suite, TasksWithTheirOwnSourceModelMethodsOnSomeTasksAndAnalysisTables) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 3);
  nlohmann::json j = suite_with_spec(spec);
  j["seeds"] = 1;
  j["timing"] = false;
  j["tasks"] = {{{"name", "two"}, {"target", spec + ":classes=0,1:per_class=4"}},
                {{"name", "other source"},
                 {"target", spec + ":classes=0,1:per_class=4"},
                 {"pretrain", {{"iterations", 4}}}}};
  j["methods"] = {"l2", {{"label", "mixup, two only"}, {"method", "mixup"}, {"tasks", {"two"}}}};
  j["tables"] = {
      {{"title", "Forgetting"}, {"kind", "forgetting"}, {"task", "two"}, {"methods", {"l2"}}},
      {{"title", "IL"},
       {"kind", "interpolation"},
       {"task", "two"},
       {"methods", {"l2", "mixup, two only"}},
       {"splits", {"test"}},
       {"pairs", 20}},
      {{"title", "Sizes"}, {"kind", "accuracy"}, {"task", "two"}, {"methods", {"mixup, two only", "l2"}}}};
  BenchOptions o = bench_options(dir, j);
  std::ostringstream log;
  const nlohmann::json b = run_bench(o, log);
  ASSERT_EQ(b["runs"].size(), 3u) << "the restricted method runs on its task only";
  for (const auto& r : b["runs"]) EXPECT_TRUE(r["ok"].get<bool>()) << r.dump() << log.str();
  // The task's own "pretrain" (4 iterations, not 6) is another cached source model.
  const auto init_of = [&](const std::string& task) {
    return read_json_file(dir.file("bench/runs/" + task + "/l2/seed0/request.json"))["init"]
        .get<std::string>();
  };
  EXPECT_NE(init_of("two"), init_of("other_source"));
  EXPECT_EQ(read_json_file(init_of("other_source") + "/result.json")["iterations"], 4);

  const std::string table = read_file(dir.file("bench/table.md"));
  for (const char* piece : {"## Forgetting", "| pretrained (--init) ", "Auxiliary", "ABA", "## IL",
                            "Label-IL test", "Feature-IL test", "## Sizes", "| mixup, two only "})
    EXPECT_NE(table.find(piece), std::string::npos) << piece << "\n" << table;
  // The forgetting probe ran on the l2 run (with the reference), the interpolation losses on both runs.
  const nlohmann::json a = read_json_file(dir.file("bench/runs/two/l2/seed0/analysis.json"));
  ASSERT_TRUE(a.contains("forgetting")) << a.dump();
  EXPECT_TRUE(a["forgetting"].contains("pretrained"));
  EXPECT_EQ(a["forgetting"]["auxiliary_classes"].size(), 2u) << "two target classes pair with two of three";
  EXPECT_EQ(a["forgetting"]["model"]["aba_n"], 3) << "the third class's test examples";
  EXPECT_EQ(a["splits"]["test"]["label_output"], "logits");
  EXPECT_TRUE(fs::exists(dir.file("bench/runs/two/mixup__two_only/seed0/analysis.json")));
  // The restricted method's cell on the other task is empty: its row in the main table ends with "-".
  const size_t row = table.find("| mixup, two only");
  ASSERT_NE(row, std::string::npos);
  const std::string line = table.substr(row, table.find('\n', row) - row);
  EXPECT_NE(line.find("- |"), std::string::npos) << line;
}

TEST(Suite, RunsEachRunAsAProcessSkipsFinishedRunsAndMarksFailures) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 12, 3);
  nlohmann::json j = suite_with_spec(spec);
  // A third method whose runs fail: its --init does not exist.
  j["methods"].push_back({{"label", "broken"}, {"method", "l2"}, {"run", {{"init", dir.file("missing")}}}});
  BenchOptions o = bench_options(dir, j);
  o.jobs = 2;
  std::ostringstream log;
  const nlohmann::json b = run_bench(o, log);
  EXPECT_EQ(b["runs"].size(), 6u);
  EXPECT_EQ(b["failed"], 2);
  for (const auto& r : b["runs"]) {
    if (r["method"] == "broken") {
      EXPECT_FALSE(r["ok"].get<bool>());
      EXPECT_NE(r["error"].get<std::string>().find("missing"), std::string::npos) << r.dump();
    } else {
      EXPECT_TRUE(r["ok"].get<bool>()) << r.dump() << log.str();
      EXPECT_TRUE(fs::exists(fs::path(r["dir"].get<std::string>()) / "result.json"));
    }
  }
  const std::string table = read_file(dir.file("bench/table.md"));
  EXPECT_NE(table.find("| broken "), std::string::npos);
  EXPECT_NE(table.find("failed: "), std::string::npos) << table;
  EXPECT_NE(read_file(dir.file("bench/timing.md")).find("| l2 (ft) "), std::string::npos);
  EXPECT_EQ(read_file(dir.file("bench/results.csv")).find("task,method,seed,status"), 0u);

  // Re-running skips the finished runs (their results stay as they were) and retries the failed ones.
  const std::string stamp = test::mark_file(dir.file("bench/runs/tiny/scratch/seed1/result.json"));
  std::ostringstream again;
  o.timing = false;
  const nlohmann::json b2 = run_bench(o, again);
  EXPECT_NE(again.str().find("4 runs already finished"), std::string::npos) << again.str();
  EXPECT_EQ(test::file_stamp(dir.file("bench/runs/tiny/scratch/seed1/result.json")), stamp) << "rewritten";
  EXPECT_EQ(b2["failed"], 2);
  // A changed option re-runs what it changes.
  j["run"]["iterations"] = 4;
  write_json_file(dir.file("tiny.json"), j);
  std::ostringstream changed;
  run_bench(o, changed);
  EXPECT_EQ(changed.str().find("already finished"), std::string::npos) << changed.str();
}

}  // namespace
}  // namespace xfer
