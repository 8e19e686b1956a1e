#include <limits>

#include "support.h"
#include "xfer/core/text.h"

namespace xfer {
namespace {

using Strings = std::vector<std::string>;

TEST(Text, SplitKeepsEmptyFields) {
  EXPECT_EQ(split("a,,b", ','), (Strings{"a", "", "b"}));
  EXPECT_EQ(split("", ','), (Strings{""}));
  EXPECT_EQ(split("a:", ':'), (Strings{"a", ""}));
  EXPECT_EQ(split(":a", ':'), (Strings{"", "a"}));
  EXPECT_EQ(split(" a ", ','), (Strings{" a "}));  // position matters: nothing is trimmed
}

TEST(Text, SplitNonemptyTrimsAndDropsEmptyFields) {
  EXPECT_EQ(split_nonempty(" a; ;b\t;\n", ';'), (Strings{"a", "b"}));
  EXPECT_EQ(split_nonempty("", ','), Strings{});
  EXPECT_EQ(split_nonempty(",,", ','), Strings{});
  EXPECT_EQ(trim(" \t x y \r\n"), "x y");
  EXPECT_EQ(trim("   "), "");
}

TEST(Text, JoinIsSplitsInverse) {
  EXPECT_EQ(join({"a", "", "b"}, ","), "a,,b");
  EXPECT_EQ(join({}, ", "), "");
  EXPECT_EQ(join({"x"}, ", "), "x");
  const std::string text = "fmnist:classes=1,2::seed=3";
  EXPECT_EQ(join(split(text, ':'), ":"), text);
}

TEST(Text, ParseInt64AcceptsTheWholeTextOnly) {
  EXPECT_EQ(parse_int64("42"), 42);
  EXPECT_EQ(parse_int64("-7"), -7);
  EXPECT_EQ(parse_int64("+7"), 7);
  EXPECT_EQ(parse_int64("9223372036854775807"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(parse_int64("-9223372036854775808"), std::numeric_limits<int64_t>::min());
  for (const char* bad : {"", " 5", "5 ", "5x", "0x10", "1e3", "2.5", "-", "9223372036854775808",
                          "-9223372036854775809", "99999999999999999999999"})
    EXPECT_FALSE(parse_int64(bad)) << "'" << bad << "'";
}

TEST(Text, ParseDoubleAcceptsFiniteWholeNumbersOnly) {
  EXPECT_EQ(parse_double("0.25"), 0.25);
  EXPECT_EQ(parse_double("-1e-3"), -1e-3);
  EXPECT_EQ(parse_double("5"), 5.0);
  EXPECT_EQ(parse_double(".5"), 0.5);
  for (const char* bad : {"", " 1", "1 ", "1,5", "inf", "-inf", "nan", "1e400", "1e-400", "0.5.5", "e3"})
    EXPECT_FALSE(parse_double(bad)) << "'" << bad << "'";
}

TEST(Text, NumbersAsText) {
  EXPECT_EQ(fixed(3.14159, 2), "3.14");
  EXPECT_EQ(percent(0.1234), "12.3%");
  EXPECT_EQ(percent(0.5, 0), "50%");
  EXPECT_EQ(number_text(0.5), "0.5");
  EXPECT_EQ(number_text(1e-5), "1e-05");
  EXPECT_EQ(number_text(100), "100");
}

}  // namespace
}  // namespace xfer
