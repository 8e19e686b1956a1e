// The README documents every flag the CLI generates from the options structs, and every method.
#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/methods/registry.h"
#include "xfer/train/demo.h"
#include "xfer/train/run.h"

namespace xfer {
namespace {

const std::string& readme() {
  static const std::string text = read_file(std::string(XFER_SOURCE_DIR) + "/README.md");
  return text;
}

void expect_documented(Fields& fields, const std::string& where) {
  for (const auto& f : fields.all())
    EXPECT_NE(readme().find("`" + f.flag()), std::string::npos) << where << " flag " << f.flag() << " is not in README.md";
}

TEST(Readme, DocumentsEveryRunAndDemoFlag) {
  RunOptions run;
  Fields rf;
  run.fields(rf);
  expect_documented(rf, "finetune/pretrain");
  DemoOptions demo;
  Fields df;
  demo.fields(df);
  expect_documented(df, "demo");
}

TEST(Readme, DocumentsEveryMethodAndItsOptions) {
  for (const auto& m : methods().all()) {
    EXPECT_NE(readme().find("| `" + m.name + "` |"), std::string::npos) << "method " << m.name << " is not in README.md";
    auto config = m.make_config();
    Fields f;
    config->fields(f);
    expect_documented(f, "method " + m.name);
  }
}

}  // namespace
}  // namespace xfer
