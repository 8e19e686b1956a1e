// The documentation: the README stays a short first read and names every method; docs/ documents every flag
// the CLI generates from the options structs and every method option; no link leads nowhere or out of the
// repository.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/methods/registry.h"
#include "xfer/workflows/demo.h"
#include "xfer/workflows/run.h"

namespace xfer {
namespace {

namespace fs = std::filesystem;

const fs::path& source_dir() {
  static const fs::path dir = fs::canonical(XFER_SOURCE_DIR);
  return dir;
}

std::string doc(const std::string& relative) {
  return read_file((source_dir() / relative).string());
}

/// README.md and every Markdown file under docs/.
std::vector<fs::path> markdown_files() {
  std::vector<fs::path> files{source_dir() / "README.md"};
  for (const auto& e : fs::recursive_directory_iterator(source_dir() / "docs"))
    if (e.is_regular_file() && e.path().extension() == ".md") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

void expect_documented(Fields& fields, const std::string& text, const std::string& file,
                       const std::string& where) {
  for (const auto& f : fields.all())
    EXPECT_NE(text.find("`" + f.flag()), std::string::npos)
        << where << " flag " << f.flag() << " is not in " << file;
}

TEST(Readme, StaysAShortFirstRead) {
  const std::string text = doc("README.md");
  const auto lines = std::count(text.begin(), text.end(), '\n');
  EXPECT_LT(lines, 220) << "README.md has " << lines << " lines: move the detail into docs/";
  EXPECT_GT(lines, 50) << "README.md lost its content";
}

TEST(Readme, DocumentsEveryRunAndDemoFlag) {
  const std::string cli = doc("docs/cli.md");
  RunOptions run;
  Fields rf;
  run.fields(rf);
  expect_documented(rf, cli, "docs/cli.md", "finetune/pretrain");
  DemoOptions demo;
  Fields df;
  demo.fields(df);
  expect_documented(df, cli, "docs/cli.md", "demo");
  // The short forms and the global flag that the CLI adds outside the options structs.
  for (const char* flag : {"`-b`", "`-j`", "`--log-interval`", "`--epochs`"})
    EXPECT_NE(cli.find(flag), std::string::npos) << flag << " is not in docs/cli.md";
}

TEST(Readme, DocumentsEveryMethodAndItsOptions) {
  const std::string readme = doc("README.md");
  std::string pages;
  for (const auto& e : fs::directory_iterator(source_dir() / "docs" / "methods"))
    if (e.path().extension() == ".md") pages += read_file(e.path().string());
  for (const auto& m : methods().all()) {
    EXPECT_NE(readme.find("| `" + m.name + "` |"), std::string::npos)
        << "method " << m.name << " is not in README.md";
    EXPECT_NE(pages.find("`" + m.name + "`"), std::string::npos)
        << "method " << m.name << " is not in docs/methods/";
    auto config = m.make_config();
    Fields f;
    config->fields(f);
    expect_documented(f, pages, "docs/methods/*.md", "method " + m.name);
  }
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens.
std::string anchor_of(const std::string& heading) {
  std::string a;
  for (const unsigned char c : heading) {
    if (std::isalnum(c) || c == '-' || c == '_')
      a += static_cast<char>(std::tolower(c));
    else if (c == ' ')
      a += '-';
  }
  return a;
}

/// The anchors of a Markdown file's headings, outside fenced code blocks.
std::set<std::string> anchors(const fs::path& file) {
  std::set<std::string> out;
  std::istringstream in(read_file(file.string()));
  std::string line;
  bool fenced = false;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) fenced = !fenced;
    if (fenced || line.empty() || line[0] != '#') continue;
    const size_t text = line.find_first_not_of('#');
    if (text != std::string::npos && line[text] == ' ') out.insert(anchor_of(line.substr(text + 1)));
  }
  return out;
}

TEST(Docs, EveryLinkResolvesInsideTheRepository) {
  const std::regex link(R"(\]\(([^)\s]+)\))");
  const std::string root = source_dir().string() + "/";
  int checked = 0;
  for (const fs::path& file : markdown_files()) {
    const std::string text = read_file(file.string());
    const std::string name = fs::relative(file, source_dir()).string();
    // Nothing may lead out of the repository: the project's shared files are not part of it.
    EXPECT_EQ(text.find("../shared"), std::string::npos) << name << " refers to ../shared";
    for (auto it = std::sregex_iterator(text.begin(), text.end(), link); it != std::sregex_iterator(); ++it) {
      const std::string target = (*it)[1];
      EXPECT_EQ(target.find("://"), std::string::npos) << name << " links outside the repository: " << target;
      EXPECT_NE(target.rfind("mailto:", 0), 0u) << name << " links outside the repository: " << target;
      if (target.find("://") != std::string::npos || target.rfind("mailto:", 0) == 0) continue;
      const size_t hash = target.find('#');
      const std::string path = target.substr(0, hash),
                        anchor = hash == std::string::npos ? "" : target.substr(hash + 1);
      const fs::path resolved = path.empty() ? file : fs::weakly_canonical(file.parent_path() / path);
      ++checked;
      EXPECT_EQ((resolved.string() + "/").rfind(root, 0), 0u)
          << name << ": " << target << " leads out of the repository";
      if (!fs::exists(resolved)) {
        ADD_FAILURE() << name << ": " << target << " does not exist";
        continue;
      }
      if (!anchor.empty()) {
        ASSERT_TRUE(fs::is_regular_file(resolved))
            << name << ": " << target << ": an anchor into a directory";
        EXPECT_TRUE(anchors(resolved).count(anchor))
            << name << ": " << target << ": no heading with that anchor";
      }
    }
  }
  EXPECT_GT(checked, 30) << "the link pattern no longer matches the documentation's links";
}

TEST(Docs, AnchorsFollowGitHub) {
  EXPECT_EQ(anchor_of("`xfer demo`"), "xfer-demo");
  EXPECT_EQ(anchor_of("Evaluations: `result.json`'s `test` and `xfer eval --json`"),
            "evaluations-resultjsons-test-and-xfer-eval---json");
  EXPECT_EQ(anchor_of("Backbones and pretrained weights"), "backbones-and-pretrained-weights");
}

}  // namespace
}  // namespace xfer
