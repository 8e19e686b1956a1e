// The library's layers (README, "The source tree"): an #include "xfer/DIR/..." may point only to the same
// directory or one lower in this order, and only workflows/ and the apps draw tables and plots.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

// Lowest first. A directory may include itself and anything before it.
const std::vector<std::string> kLayers = {"core",    "data",      "dist",    "models", "optim",
                                          "metrics", "source",    "methods", "train",  "search",
                                          "report",  "workflows", "apps"};

int layer_of(const std::string& dir) {
  for (size_t i = 0; i < kLayers.size(); ++i)
    if (kLayers[i] == dir) return static_cast<int>(i);
  return -1;
}

// report/ draws from plain data: it knows core/ and data/ only, and only workflows/ and apps/ use it.
bool allowed(const std::string& from, const std::string& to) {
  if (to == "report" && from != "report" && from != "workflows" && from != "apps") return false;
  if (from == "report" && to != "report" && to != "core" && to != "data") return false;
  return layer_of(to) <= layer_of(from);
}

struct Include {
  std::string file, target;
  int line;
};

// Every #include "xfer/DIR/..." in the library's and the CLI's sources, with the directory it sits in.
std::map<std::string, std::vector<Include>> includes_by_directory() {
  const fs::path root = XFER_SOURCE_DIR;
  const std::regex include_line(R"(^\s*#\s*include\s+"xfer/([a-z_]+)/)");
  std::map<std::string, std::vector<Include>> by_dir;
  const std::vector<std::pair<fs::path, bool>> roots = {
      {root / "include" / "xfer", false}, {root / "src" / "xfer", false}, {root / "apps" / "xfer", true}};
  for (const auto& [base, is_app] : roots)
    for (const auto& entry : fs::recursive_directory_iterator(base)) {
      if (!entry.is_regular_file()) continue;
      const std::string ext = entry.path().extension().string();
      if (ext != ".h" && ext != ".cpp") continue;
      const std::string dir = is_app ? "apps" : fs::relative(entry.path(), base).begin()->string();
      std::ifstream in(entry.path());
      std::string text;
      int line = 0;
      while (std::getline(in, text)) {
        ++line;
        std::smatch m;
        if (std::regex_search(text, m, include_line))
          by_dir[dir].push_back({fs::relative(entry.path(), root).string(), m[1].str(), line});
      }
    }
  return by_dir;
}

}  // namespace

TEST(Layers, EveryDirectoryIsALayer) {
  const auto by_dir = includes_by_directory();
  ASSERT_GE(by_dir.size(), 10u);  // the walk found the tree
  for (const auto& [dir, includes] : by_dir) {
    EXPECT_GE(layer_of(dir), 0) << dir
                                << "/ is not in the layer list: add it to kLayers and the README's tree";
    for (const auto& inc : includes)
      EXPECT_GE(layer_of(inc.target), 0)
          << inc.file << ":" << inc.line << " includes xfer/" << inc.target << "/, which is not a layer";
  }
}

TEST(Layers, IncludesPointOnlyDownward) {
  int checked = 0;
  for (const auto& [dir, includes] : includes_by_directory())
    for (const auto& inc : includes) {
      ++checked;
      EXPECT_TRUE(allowed(dir, inc.target))
          << inc.file << ":" << inc.line << ": " << dir << "/ includes xfer/" << inc.target << "/";
    }
  EXPECT_GT(checked, 300);
}

TEST(Layers, TheRuleRefusesWhatItShould) {
  EXPECT_FALSE(allowed("methods", "train"));  // the cycle the first layout had
  EXPECT_FALSE(allowed("search", "workflows"));
  EXPECT_FALSE(allowed("source", "report"));   // tables belong to the workflows
  EXPECT_FALSE(allowed("report", "methods"));  // report knows no method
  EXPECT_TRUE(allowed("workflows", "report"));
  EXPECT_TRUE(allowed("methods", "optim"));
  EXPECT_TRUE(allowed("train", "methods"));
}
