// Hostile input (issue 21): files, flags and names an attacker chooses end in one line and exit code 2, never
// in a crash, a write outside the output directory or a quietly wrong run. Temporary files, gzip, UTF-8,
// flags, IDX labels and suites here; checkpoints, pickles, images, reports and the store have their own
// files.
#include <signal.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/io.h"
#include "xfer/data/idx.h"
#include "xfer/data/spec.h"
#include "xfer/workflows/suite.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Exit code 2 and exactly one line, "error: ...", holding every piece.
void hos_expect_refused(const std::vector<std::string>& args, const std::vector<std::string>& pieces) {
  const test::CliOutcome o = test::run_cli(args);
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_EQ(o.err.rfind("error: ", 0), 0u) << o.err;
  for (const auto& p : pieces) EXPECT_NE(o.err.find(p), std::string::npos) << o.err << "missing: " << p;
}

/// A process id that runs nothing now (for a temporary file "left by a kill").
pid_t hos_dead_pid() {
  for (pid_t p = 4000000; p > 1000; p -= 997)
    if (::kill(p, 0) != 0 && errno == ESRCH) return p;
  return 0;
}

std::string hos_read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(Hostile, TemporaryFilesCannotBeRedirectedAndStaleOnesAreRemoved) {
  test::TempDir dir;
  const std::string target = dir.file("out/result.json"), victim = dir.file("victim.txt");
  make_dirs(dir.file("out"));
  std::ofstream(victim) << "precious";
  // The old name, PATH.tmp.PID, planted as a link to another file: the write must not go through it.
  fs::create_symlink(victim, target + ".tmp." + std::to_string(::getpid()));
  // Files a killed writer left (its PID runs no more), one of them a link.
  const pid_t dead = hos_dead_pid();
  ASSERT_GT(dead, 0);
  std::ofstream(target + ".tmp." + std::to_string(dead) + ".0123456789abcdef") << "half";
  fs::create_symlink(victim, target + ".tmp." + std::to_string(dead));
  write_file_atomic(target, "{}\n");
  EXPECT_EQ(hos_read(target), "{}\n");
  EXPECT_EQ(hos_read(victim), "precious");
  EXPECT_FALSE(fs::exists(target + ".tmp." + std::to_string(dead) + ".0123456789abcdef"));
  EXPECT_FALSE(fs::is_symlink(target + ".tmp." + std::to_string(dead)));
  // Ours (a live PID) is not touched: it may be another write in progress.
  EXPECT_TRUE(fs::is_symlink(target + ".tmp." + std::to_string(::getpid())));
  int temporaries = 0;
  for (const auto& e : fs::directory_iterator(dir.file("out")))
    temporaries += e.path().filename().string().rfind("result.json.tmp.", 0) == 0;
  EXPECT_EQ(temporaries, 1);  // only the planted link of a live PID
}

/// A gzip file of `data`.
std::string hos_gzip(const std::string& data) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, data.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

TEST(Hostile, GzipBombIsStoppedAtTheSizeTheIdxHeaderDeclares) {
  // A header for 10 bytes, then 64 MiB of zeros (64 KiB compressed): inflating stops after 15 bytes.
  std::string idx = {0, 0, 8, 1, 0, 0, 0, 10};
  idx += std::string(10, '\x07') + std::string(64 << 20, '\0');
  const std::string bomb = hos_gzip(idx);
  EXPECT_LT(bomb.size(), 1u << 20);
  test::expect_bad_input([&] { parse_idx(bomb, "bomb.gz"); },
                         {"bomb.gz", "more than the 18 bytes its IDX header declares"});
  // gunzip itself refuses output past its bound.
  test::expect_bad_input([&] { gunzip(bomb, "bomb.gz", 1 << 20); }, {"bomb.gz", "more than 1048576 bytes"});
  // The same header with exactly its data reads back.
  const IdxArray ok = parse_idx(hos_gzip(idx.substr(0, 18)), "ok.gz");
  EXPECT_EQ(ok.data.sum().item<int64_t>(), 70);
}

TEST(Hostile, Utf8IsCheckedAndEchoedPrintably) {
  EXPECT_NO_THROW(check_utf8("caf\xc3\xa9 \xe2\x82\xac", "name"));
  test::expect_bad_input([] { check_utf8("bad\xff", "the name"); },
                         {"the name is not valid UTF-8 (byte 3", "bad\\xff"});
  test::expect_bad_input([] { check_utf8("\xc0\xaf", "x"); }, {"not valid UTF-8"});  // an overlong '/'
  EXPECT_EQ(printable("a\nb\x01"), "a\\nb\\x01");
}

/// Writes IDX images (n, 8, 8) and labels `labels` into `dir`; returns the spec's file part.
std::string hos_idx(const test::TempDir& dir, const std::string& stem, const std::vector<int64_t>& labels) {
  const auto n = static_cast<int64_t>(labels.size());
  std::ofstream(dir.file(stem + "-images"), std::ios::binary)
      << encode_idx(torch::arange(n * 64, torch::kInt64).remainder(255).to(torch::kUInt8).view({n, 8, 8}));
  std::ofstream(dir.file(stem + "-labels"), std::ios::binary)
      << encode_idx(torch::tensor(labels, torch::kInt64).to(torch::kInt32));
  return dir.file(stem + "-images");
}

TEST(Hostile, IdxLabelsCannotNameBillionsOfClassesOrIndexPastThem) {
  test::TempDir dir;
  hos_idx(dir, "huge", {0, 0x7fffffff});
  test::expect_bad_input(
      [&] {
        load_task(cat("idx:train_images=", dir.file("huge-images"), ":train_labels=", dir.file("huge-labels"),
                      ":test=none"),
                  0);
      },
      {"label 2147483647", "at most 1048576"});
  // A test label past the training labels' classes was an out-of-bounds write.
  hos_idx(dir, "train", {0, 1, 0, 1});
  hos_idx(dir, "test", {0, 5});
  test::expect_bad_input(
      [&] {
        load_task(
            cat("idx:train_images=", dir.file("train-images"), ":train_labels=", dir.file("train-labels"),
                ":test_images=", dir.file("test-images"), ":test_labels=", dir.file("test-labels")),
            0);
      },
      {"label 5", "out of range for 2 classes"});
}

class HostileFlags : public ::testing::Test {
 protected:
  void SetUp() override { spec_ = test::write_tiny_idx(dir_.path(), 3, 8, 2); }
  std::vector<std::string> finetune(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"-q",           "finetune", "--method",     "scratch",
                                     "--target",     spec_,      "--backbone",   "cnn4:width=4",
                                     "--iterations", "2",        "--batch-size", "8",
                                     "--threads",    "1",        "--out",        dir_.file("run")};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
  test::TempDir dir_;
  std::string spec_;
};

TEST_F(HostileFlags, NumbersOutOfRangeAreRefusedNotClamped) {
  hos_expect_refused(finetune({"--seed", "18446744073709551616"}), {"--seed", "out of range"});
  hos_expect_refused(finetune({"--batch-size", "99999999999999999999"}), {"--batch-size", "out of range"});
  hos_expect_refused(finetune({"--batch-size", "1000000000"}), {"--batch-size must be <= 65536"});
  hos_expect_refused(finetune({"--threads", "100000"}), {"--threads must be at most"});
  hos_expect_refused(finetune({"--threads", "4294967297"}),
                     {"--threads must be at most"});  // not 1 after a cast
  hos_expect_refused(finetune({"--lr", "1e308"}), {"--lr must be <= 1e+10"});
  hos_expect_refused(finetune({"--lr", "1e999"}), {"--lr expects a number"});
  hos_expect_refused(finetune({"--seed", "-1"}), {"--seed must be >= 0"});
  hos_expect_refused(finetune({"--crop-pad", "1000"}),
                     {"--crop-pad 1000 must be less than the image side (8)"});
  hos_expect_refused({"eval", "--model", dir_.path(), "--data", spec_, "--seed", "18446744073709551616"},
                     {"--seed", "out of range"});
  hos_expect_refused({"eval", "--model", dir_.path(), "--data", spec_, "--threads", "-3"},
                     {"--threads must be >= 0"});
  // Base 10 only: CLI11 read "010" as octal 8.
  const test::CliOutcome o = test::run_cli(finetune({"--seed", "010", "--json"}));
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(nlohmann::json::parse(o.out)["seed"], 10);
}

TEST_F(HostileFlags, TextThatIsNotUtf8IsRefusedBeforeItReachesJson) {
  hos_expect_refused(finetune({"--out", dir_.file("run\xff")}), {"--out is not valid UTF-8", "\\xff"});
  hos_expect_refused(
      {"-q", "finetune", "--method", "scratch", "--target", spec_ + ":names=a,b,\xfe", "--backbone",
       "cnn4:width=4", "--iterations", "2", "--threads", "1", "--out", dir_.file("names")},
      {"not valid UTF-8"});
  EXPECT_FALSE(fs::exists(dir_.file("names")));
}

/// A suite of method scratch on tasks named `names`, all with target `spec`.
nlohmann::json hos_suite(const std::string& spec, const std::vector<std::string>& names,
                         const nlohmann::json& seeds) {
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& n : names) tasks.push_back(nlohmann::json{{"name", n}, {"target", spec}});
  return nlohmann::json{{"tasks", tasks}, {"methods", nlohmann::json::array({"scratch"})}, {"seeds", seeds}};
}

TEST(Hostile, SuiteNamesStayInsideOutAndCountsAreBounded) {
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 2, 4, 1);
  test::expect_bad_input([&] { parse_suite(hos_suite(spec, {".."}, 1), "s"); },
                         {"task name '..' cannot name a folder"});
  test::expect_bad_input(
      [&] {
        parse_suite(hos_suite(spec, {"a b", "a_b"}, 1), "s");
      },
      {"'a b' and 'a_b' would share the folder a_b"});
  test::expect_bad_input([&] { parse_suite(hos_suite(spec, {"t"}, 1000000000000LL), "s"); },
                         {".seeds must be at most 1000"});
  test::expect_bad_input(
      [&] {
        parse_suite(hos_suite(spec, {"t"}, nlohmann::json::array({3, 3})), "s");
      },
      {"lists 3 twice"});
  nlohmann::json labels = hos_suite(spec, {"t"}, 1);
  labels["methods"] = nlohmann::json::array({nlohmann::json{{"method", "scratch"}, {"label", "x/../../y"}},
                                             nlohmann::json{{"method", "scratch"}, {"label", "x_.._.._y"}}});
  test::expect_bad_input([&] { parse_suite(labels, "s"); }, {"would share the folder x_.._.._y"});
  EXPECT_NO_THROW(parse_suite(hos_suite(spec, {"t.1", "t-2"}, nlohmann::json::array({0, 7})), "s"));
}

}  // namespace
}  // namespace xfer
