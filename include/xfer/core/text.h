#pragma once
/// Text helpers every layer shares: splitting and joining lists, strict number parsing, number formatting.
///
/// The parsers accept the whole string or nothing: no leading or trailing whitespace, no trailing
/// characters, nothing out of range. Callers turn nullopt into their own one-line error, which names the
/// flag, key or file the text came from.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace xfer {

/// Every field between separators, empty ones included: split("a,,b", ',') is {"a", "", "b"}, split("", ',')
/// is {""}. For formats where position matters (KEY=A:B:C).
std::vector<std::string> split(const std::string& text, char sep);
/// The fields with surrounding whitespace removed, empty ones dropped: " a, ,b " is {"a", "b"}. For lists a
/// user types (--sources "a; b").
std::vector<std::string> split_nonempty(const std::string& text, char sep);
/// `text` without leading and trailing spaces, tabs and line ends.
std::string trim(const std::string& text);

/// A base-10 integer that is the whole of `text` and fits 64 bits.
std::optional<int64_t> parse_int64(const std::string& text);
/// A finite number (strtod's syntax) that is the whole of `text` and does not overflow.
std::optional<double> parse_double(const std::string& text);

/// The parts with `sep` between them: join({"a", "b"}, ", ") is "a, b".
std::string join(const std::vector<std::string>& parts, const std::string& sep);

/// A fixed-point number: fixed(3.14159, 2) is "3.14".
std::string fixed(double value, int precision);
/// A fraction as a percentage: percent(0.1234) is "12.3%".
std::string percent(double fraction, int precision = 1);
/// A number as a stream prints it (6 significant digits, no trailing zeros): 0.5, 1e-05, 100.
std::string number_text(double value);

}  // namespace xfer
