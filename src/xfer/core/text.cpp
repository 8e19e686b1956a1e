#include "xfer/core/text.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace xfer {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t pos = text.find(sep, start);
    out.push_back(text.substr(start, pos - start));
    if (pos == std::string::npos) return out;
    start = pos + 1;
  }
}

std::string trim(const std::string& text) {
  const char* const space = " \t\r\n";
  const size_t a = text.find_first_not_of(space);
  if (a == std::string::npos) return "";
  return text.substr(a, text.find_last_not_of(space) - a + 1);
}

std::vector<std::string> split_nonempty(const std::string& text, char sep) {
  std::vector<std::string> out;
  for (const auto& field : split(text, sep))
    if (std::string t = trim(field); !t.empty()) out.push_back(std::move(t));
  return out;
}

// strtoll/strtod skip leading whitespace; a number must start where the text starts.
static bool starts_number(const std::string& text) {
  return !text.empty() && !std::isspace(static_cast<unsigned char>(text[0]));
}

std::optional<int64_t> parse_int64(const std::string& text) {
  if (!starts_number(text)) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (end != text.c_str() + text.size() || errno == ERANGE) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::optional<double> parse_double(const std::string& text) {
  if (!starts_number(text)) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  // ERANGE on underflow too: a denormal or zero from "1e-400" is a typo, not a value anyone means.
  if (end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i == 0 ? "" : sep) + parts[i];
  return out;
}

std::string fixed(double value, int precision) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(precision);
  os << value;
  return os.str();
}

std::string percent(double fraction, int precision) {
  return fixed(100 * fraction, precision) + "%";
}

std::string number_text(double value) {
  std::ostringstream os;
  os << value;
  return os.str();
}

}  // namespace xfer
