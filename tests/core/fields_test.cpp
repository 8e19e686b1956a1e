#include <sstream>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"

namespace xfer {
namespace {

struct Example {
  double alpha = 4.0;
  int64_t k = 1;
  bool flip = true;
  std::string mode = "joint";
  void fields(Fields& f) {
    f.add("alpha", alpha, "shape").positive();
    f.add("k", k, "count").in_range(1, 10);
    f.add("flip", flip, "flip");
    f.add("label_space", mode, "labels").choices({"joint", "two-heads"});
  }
};

TEST(Fields, SetParsesAndValidatesByName) {
  Example e;
  Fields f;
  e.fields(f);
  f.set("alpha", "2.5");
  f.set("label-space", "two-heads");  // the flag spelling works too
  f.set("flip", "off");
  f.set("k", "7");
  EXPECT_EQ(e.alpha, 2.5);
  EXPECT_EQ(e.mode, "two-heads");
  EXPECT_FALSE(e.flip);
  EXPECT_EQ(e.k, 7);
}

TEST(Fields, ErrorsNameTheFlagAndEchoTheValue) {
  Example e;
  Fields f;
  e.fields(f);
  test::expect_bad_input([&] { f.set("alpha", "-1"); }, {"--alpha must be > 0, got -1"});
  test::expect_bad_input([&] { f.set("alpha", "abc"); }, {"--alpha expects a number, got 'abc'"});
  test::expect_bad_input([&] { f.set("k", "11"); }, {"--k must be <= 10, got 11"});
  test::expect_bad_input([&] { f.set("k", "2.5"); }, {"--k expects an integer"});
  test::expect_bad_input([&] { f.set("label_space", "both"); },
                         {"--label-space must be one of joint, two-heads; got 'both'"});
  test::expect_bad_input([&] { f.set("beta", "1"); },
                         {"unknown option 'beta'", "alpha, k, flip, label_space"});
  test::expect_bad_input([&] { f.set("alpha", "nan"); }, {"--alpha"});
}

TEST(Fields, JsonRoundTripAndTypeErrors) {
  Example a;
  Fields fa;
  a.fields(fa);
  a.alpha = 0.125;
  a.k = 3;
  a.flip = false;
  const nlohmann::json j = fa.to_json();
  EXPECT_EQ(j["alpha"], 0.125);
  EXPECT_EQ(j["label_space"], "joint");

  Example b;
  Fields fb;
  b.fields(fb);
  fb.read_json(j, "config.json");
  EXPECT_EQ(b.alpha, 0.125);
  EXPECT_EQ(b.k, 3);
  EXPECT_FALSE(b.flip);
  test::expect_bad_input([&] { fb.read_json({{"alpha", "x"}}, "cfg"); }, {"cfg.alpha must be a number"});
  test::expect_bad_input([&] { fb.read_json({{"k", 1.5}}, "cfg"); }, {"cfg.k must be an integer"});
  test::expect_bad_input([&] { fb.read_json({{"zeta", 1}}, "cfg"); }, {"cfg: unknown key 'zeta'"});
  test::expect_bad_input([&] { fb.read_json({{"alpha", 0}}, "cfg"); }, {"--alpha must be > 0, got 0"});
}

}  // namespace
}  // namespace xfer

namespace xfer {
namespace {

enum class FieldsTestColour { red, light_blue };
XFER_ENUM_NAMES(FieldsTestColour, "red", "light-blue")

struct FieldsTestOptions {
  FieldsTestColour colour = FieldsTestColour::red;
  int64_t threads = 0;
  std::string out;
  double lr = 0.1;
  void fields(Fields& f) {
    f.add("colour", colour, "a closed choice");
    f.add("threads", threads, "threads").execution();
    f.add("out", out, "where").session();
    f.add("lr", lr, "changes the result");
  }
};

TEST(Fields, AnEnumReadsAndWritesItsNamesOnly) {
  FieldsTestOptions o;
  Fields f;
  o.fields(f);
  EXPECT_EQ(f.find("colour")->choices, (std::vector<std::string>{"red", "light-blue"}));
  EXPECT_EQ(f.find("colour")->value_text(), "red");
  f.set("colour", "light-blue");
  EXPECT_EQ(o.colour, FieldsTestColour::light_blue);
  EXPECT_EQ(f.to_json()["colour"], "light-blue");
  EXPECT_EQ(name_of(FieldsTestColour::light_blue), "light-blue");
  test::expect_bad_input([&] { f.set("colour", "blue"); },
                         {"--colour must be one of red, light-blue; got 'blue'"});
  EXPECT_EQ(o.colour, FieldsTestColour::light_blue) << "a refused value leaves the option as it was";
  f.read_json(nlohmann::json{{"colour", "red"}}, "config");
  EXPECT_EQ(o.colour, FieldsTestColour::red);
  test::expect_bad_input(
      [&] {
        f.read_json(nlohmann::json{{"colour", 1}}, "config");
      },
      {"config.colour must be a string"});
  std::ostringstream os;
  os << FieldsTestColour::light_blue;
  EXPECT_EQ(os.str(), "light-blue");
}

TEST(Fields, RolesAreDeclaredWithTheField) {
  FieldsTestOptions o;
  Fields f;
  o.fields(f);
  EXPECT_EQ(f.names_of({Fields::Role::execution}), (std::vector<std::string>{"threads"}));
  EXPECT_EQ(f.names_of({Fields::Role::execution, Fields::Role::session}),
            (std::vector<std::string>{"threads", "out"}));
  EXPECT_EQ(f.names_of({Fields::Role::result}), (std::vector<std::string>{"colour", "lr"}));
}

}  // namespace
}  // namespace xfer
