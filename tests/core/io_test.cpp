#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"

namespace xfer {
namespace {

TEST(Io, AtomicWriteReplacesWholeFilesAndLeavesNoTemporaries) {
  test::TempDir dir;
  const std::string path = dir.file("sub/a.txt");
  write_file_atomic(path, "first");
  write_file_atomic(path, "second, longer");
  EXPECT_EQ(read_file(path), "second, longer");
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.file("sub"))) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(Io, FailedWriteKeepsThePreviousFile) {
  // A file-size limit makes write() fail as a full disk would, whoever runs the test.
  test::TempDir dir;
  const std::string path = dir.file("a.txt");
  write_file_atomic(path, "good");
  struct rlimit old_limit;
  getrlimit(RLIMIT_FSIZE, &old_limit);
  struct rlimit small = old_limit;
  small.rlim_cur = 4096;
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &small);
  bool threw = false;
  try {
    write_file_atomic(path, std::string(100000, 'x'));
  } catch (const BadInput& e) {
    threw = std::string(e.what()).find("the previous file is kept") != std::string::npos;
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_file(path), "good");
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1) << "the temporary file is removed";
}

TEST(Io, ReadErrorsNameThePath) {
  test::expect_bad_input([] { read_file("/nonexistent/x.bin"); }, {"file not found: /nonexistent/x.bin"});
  test::TempDir dir;
  write_file_atomic(dir.file("bad.json"), "{\"a\": ");
  test::expect_bad_input([&] { read_json_file(dir.file("bad.json")); },
                         {dir.file("bad.json"), "not valid JSON"});
}

TEST(Io, Crc32MatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32_of("123456789"), 0xCBF43926u);
}

TEST(Io, JsonIntegersFromOutsideAreWholeNumbersThatFit) {
  EXPECT_EQ(json_int(nlohmann::json(42), "n"), 42);
  EXPECT_EQ(json_int(nlohmann::json(-7), "n"), -7);
  EXPECT_EQ(json_int(nlohmann::json::parse("9223372036854775807"), "n"), INT64_MAX);
  test::expect_bad_input([] { json_int(nlohmann::json::parse("9223372036854775808"), "n"); },
                         {"n must be an integer, got 9223372036854775808"});
  test::expect_bad_input([] { json_int(nlohmann::json(1e300), "n"); }, {"n must be an integer"});
  test::expect_bad_input([] { json_int(nlohmann::json(2.0), "n"); }, {"n must be an integer, got 2.0"});
  test::expect_bad_input([] { json_int(nlohmann::json("3"), "n"); }, {"n must be an integer, got \"3\""});
  EXPECT_EQ(json_ints(nlohmann::json::parse("[1, 2, 3]"), "v"), (std::vector<int64_t>{1, 2, 3}));
  test::expect_bad_input([] { json_ints(nlohmann::json(1), "v"); }, {"v must be a list of integers"});
  test::expect_bad_input([] { json_ints(nlohmann::json::parse("[1, -1e30]"), "v"); },
                         {"v must be an integer"});
  const nlohmann::json object = {{"a", 5}, {"b", 0.5}};
  EXPECT_EQ(json_int_or(object, "a", 1, "a"), 5);
  EXPECT_EQ(json_int_or(object, "missing", 1, "m"), 1);
  test::expect_bad_input([&] { json_int_or(object, "b", 1, "b"); }, {"b must be an integer"});
}

}  // namespace
}  // namespace xfer
