// Search spaces: --param parsing, bad input, differences between spaces, and setting options by name.
#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/methods/smooth.h"
#include "xfer/search/space.h"
#include "xfer/workflows/run.h"

namespace xfer {
namespace {

TEST(SearchSpace, ParsesEveryKind) {
  const SearchSpace s = SearchSpace::parse({"tau=log:1:100000", "t0=lin:-5000:5000", "batch-size=int:8:64",
                                            "width=logint:4:64", "bn=cat:shared,per-domain"});
  ASSERT_EQ(s.params.size(), 5u);
  EXPECT_EQ(s.params[0].kind, ParamSpec::Kind::Log);
  EXPECT_EQ(s.params[0].low, 1);
  EXPECT_EQ(s.params[0].high, 100000);
  EXPECT_EQ(s.params[1].kind, ParamSpec::Kind::Linear);
  EXPECT_EQ(s.params[1].low, -5000);
  EXPECT_EQ(s.params[2].name, "batch_size");  // flags' dashes become field names' underscores
  EXPECT_EQ(s.params[2].kind, ParamSpec::Kind::Int);
  EXPECT_EQ(s.params[3].kind, ParamSpec::Kind::LogInt);
  EXPECT_EQ(s.params[4].choices, (std::vector<std::string>{"shared", "per-domain"}));
  EXPECT_EQ(s.params[0].range_text(), "log:1:100000");
  EXPECT_EQ(s.params[4].range_text(), "cat:shared,per-domain");
  // Round trip through the study's JSON.
  EXPECT_EQ(SearchSpace::from_json(s.to_json()).difference(s), "");
  // Option texts of internal values.
  EXPECT_EQ(s.params[2].value_text(17.0), "17");
  EXPECT_EQ(s.params[4].value_text(1.0), "per-domain");
  EXPECT_EQ(s.params[1].value_text(0.1), "0.1");
  EXPECT_EQ(s.params[4].internal("per-domain"), 1.0);
  const ParamValues v = {{"tau", 12.5}, {"t0", -3}, {"batch_size", 16}, {"width", 8}, {"bn", 1}};
  EXPECT_EQ(s.values_text(v), "tau=12.5 t0=-3 batch_size=16 width=8 bn=per-domain");
  EXPECT_EQ(s.values_from_json(s.values_json(v)), v);
}

TEST(SearchSpace, StoredSpacesOfTheWrongTypesAreBadInput) {
  // A study file may come from anyone: a range or name that is not a string (found by json_fuzz) is a
  // BadInput naming the parameter, not nlohmann's type_error.
  for (const char* text : {R"([{"name": "lr", "range": false}])", R"([{"name": 3, "range": "log:1:10"}])",
                           R"([{"name": "lr"}])", R"({"name": "lr", "range": "log:1:10"})"})
    test::expect_bad_input(
        [&] { (void)SearchSpace::from_json(nlohmann::json::parse(text)); },
        {nlohmann::json::parse(text).is_array() ? "malformed stored parameter" : "must be a JSON array"});
}

TEST(SearchSpace, BadParamTextsSayWhatIsWrong) {
  test::expect_bad_input([] { parse_param("tau"); }, {"'tau'", "NAME=lin:LO:HI"});
  test::expect_bad_input([] { parse_param("tau="); }, {"tau="});
  test::expect_bad_input([] { parse_param("=lin:1:2"); }, {"=lin:1:2"});
  test::expect_bad_input([] { parse_param("tau=lin:1"); }, {"LO:HI", "'1'"});
  test::expect_bad_input([] { parse_param("tau=lin:1:2:3"); }, {"LO:HI"});
  test::expect_bad_input([] { parse_param("tau=lin:a:2"); }, {"LO 'a'", "not a number"});
  test::expect_bad_input([] { parse_param("tau=lin:1:nan"); }, {"HI 'nan'"});
  test::expect_bad_input([] { parse_param("tau=uniform:1:2"); }, {"unknown kind 'uniform'"});
  test::expect_bad_input([] { parse_param("ta u=lin:1:2"); }, {"not an option name"});
  // Empty ranges.
  test::expect_bad_input([] { parse_param("tau=lin:5:5"); }, {"range is empty", "5"});
  test::expect_bad_input([] { parse_param("tau=lin:6:5"); }, {"range is empty"});
  test::expect_bad_input([] { parse_param("n=int:3:3"); }, {"range is empty"});
  // Log ranges need positive bounds.
  test::expect_bad_input([] { parse_param("tau=log:0:10"); }, {"log range needs LO > 0", "0"});
  test::expect_bad_input([] { parse_param("tau=log:-1:10"); }, {"LO > 0", "-1"});
  test::expect_bad_input([] { parse_param("n=logint:0:10"); }, {"LO >= 1"});
  test::expect_bad_input([] { parse_param("n=int:1.5:4"); }, {"integers", "1.5"});
  // Choices.
  test::expect_bad_input([] { parse_param("bn=cat:"); }, {"no choices"});
  test::expect_bad_input([] { parse_param("bn=cat:a,,b"); }, {"empty choice"});
  test::expect_bad_input([] { parse_param("bn=cat:a,b,a"); }, {"'a'", "twice"});
  test::expect_bad_input([] { SearchSpace::parse({}); }, {"at least one --param"});
  test::expect_bad_input([] { SearchSpace::parse({"tau=log:1:2", "tau=lin:1:2"}); }, {"tau", "twice"});
}

TEST(SearchSpace, DifferenceNamesWhatChanged) {
  const SearchSpace stored = SearchSpace::parse({"tau=log:1:1000", "alpha=lin:-6:6"});
  EXPECT_EQ(SearchSpace::parse({"tau=log:1:1000", "alpha=lin:-6:6"}).difference(stored), "");
  const std::string wider = SearchSpace::parse({"tau=log:1:100000", "alpha=lin:-6:6"}).difference(stored);
  EXPECT_NE(wider.find("tau is log:1:100000 now but log:1:1000 in the study"), std::string::npos) << wider;
  const std::string fewer = SearchSpace::parse({"tau=log:1:1000"}).difference(stored);
  EXPECT_NE(fewer.find("also searches alpha=lin:-6:6"), std::string::npos) << fewer;
  const std::string more =
      SearchSpace::parse({"tau=log:1:1000", "alpha=lin:-6:6", "t0=lin:-1:1"}).difference(stored);
  EXPECT_NE(more.find("t0 is new"), std::string::npos) << more;
  const std::string kind = SearchSpace::parse({"tau=lin:1:1000", "alpha=lin:-6:6"}).difference(stored);
  EXPECT_NE(kind.find("lin:1:1000"), std::string::npos) << kind;
}

TEST(SearchSpace, ChecksAndSetsOptionsOfARunAndItsMethod) {
  RunOptions run;
  SmoothOptions smooth;
  Fields rf, mf;
  run.fields(rf);
  smooth.fields(mf);
  const std::vector<Fields*> both = {&rf, &mf};
  const std::vector<std::string> fixed = {"out", "method"};
  const SearchSpace s = SearchSpace::parse({"tau=log:1:1000", "lr=log:0.001:0.1", "batch_size=int:8:64",
                                            "bn=cat:shared,per-domain", "flip=cat:true,false"});
  check_space(s, both, fixed);
  EXPECT_EQ(smooth.tau, 30) << "checking tries values but puts the option back";
  EXPECT_EQ(run.loader.batch_size, 64);
  apply_params(s, {{"tau", 123.25}, {"lr", 0.0125}, {"batch_size", 24}, {"bn", 1}, {"flip", 1}}, both);
  EXPECT_EQ(smooth.tau, 123.25);
  EXPECT_EQ(run.trainer.optim.lr, 0.0125);
  EXPECT_EQ(run.loader.batch_size, 24);
  EXPECT_EQ(smooth.bn, SmoothBatchNorm::per_domain);
  EXPECT_FALSE(run.loader.flip);

  test::expect_bad_input([&] { check_space(SearchSpace::parse({"gamma2=lin:0:1"}), both, fixed); },
                         {"no option named 'gamma2'", "tau"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"batch_size=lin:8:64"}), both, fixed); },
                         {"--batch-size is an integer", "int:"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"tau=int:1:5"}), both, fixed); },
                         {"--tau is a float"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"bn=lin:0:1"}), both, fixed); },
                         {"--bn is a text option", "cat:"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"tau=lin:-5:5"}), both, fixed); },
                         {"tau=lin:-5:5", "--tau must be >= 0", "-5"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"bn=cat:shared,split"}), both, fixed); },
                         {"--bn must be one of", "split"});
  test::expect_bad_input([&] { check_space(SearchSpace::parse({"out=cat:a,b"}), both, fixed); },
                         {"cannot set --out"});
  EXPECT_EQ(smooth.bn, SmoothBatchNorm::per_domain) << "a failed check puts the option back";
}

}  // namespace
}  // namespace xfer
