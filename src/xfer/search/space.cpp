#include "xfer/search/space.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <variant>

#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/text.h"

namespace xfer {
namespace {

const char* const kParamSyntax = "NAME=lin:LO:HI, log:LO:HI, int:LO:HI, logint:LO:HI or cat:A,B,C";

/// The shortest decimal text that reads back as exactly `v`.
std::string space_shortest(double v) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

const char* kind_word(ParamSpec::Kind k) {
  switch (k) {
    case ParamSpec::Kind::Linear:
      return "lin";
    case ParamSpec::Kind::Log:
      return "log";
    case ParamSpec::Kind::Int:
      return "int";
    case ParamSpec::Kind::LogInt:
      return "logint";
    default:
      return "cat";
  }
}

std::string space_snake(std::string s) {
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

/// A field's value, to put back after trying values on it.
using FieldValue = std::variant<double, int64_t, bool, std::string>;
FieldValue space_get(const Fields::Field& f) {
  return std::visit(
      [](const auto& p) -> FieldValue {
        if constexpr (std::is_same_v<std::decay_t<decltype(p)>, Fields::EnumRef>)
          return p.text();
        else
          return *p;
      },
      f.target);
}
void space_put(const Fields::Field& f, const FieldValue& v) {
  std::visit(
      [&](const auto& p) {
        using T = std::remove_pointer_t<std::decay_t<decltype(p)>>;
        if constexpr (std::is_same_v<T, Fields::EnumRef>)
          set_field_text(f, std::get<std::string>(v));
        else
          *p = std::get<T>(v);
      },
      f.target);
}

Fields::Field* space_field(const std::vector<Fields*>& fields_list, const std::string& name, Fields** owner) {
  for (Fields* f : fields_list)
    if (Fields::Field* field = f->find(name)) {
      if (owner) *owner = f;
      return field;
    }
  return nullptr;
}

}  // namespace

std::string ParamSpec::range_text() const {
  if (kind == Kind::Categorical) {
    std::string out = "cat:";
    for (size_t i = 0; i < choices.size(); ++i) out += (i ? "," : "") + choices[i];
    return out;
  }
  return cat(kind_word(kind), ":", space_shortest(low), ":", space_shortest(high));
}

std::string ParamSpec::value_text(double internal) const {
  if (kind == Kind::Categorical) {
    const auto i = static_cast<size_t>(std::llround(internal));
    XFER_CHECK(internal >= 0 && i < choices.size(), "parameter ", name, ": no choice number ", internal);
    return choices[i];
  }
  if (integer()) return std::to_string(std::llround(internal));
  return space_shortest(internal);
}

std::string ParamSpec::display_text(double internal) const {
  if (kind != Kind::Linear && kind != Kind::Log) return value_text(internal);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", internal);
  return buf;
}

double ParamSpec::internal(const std::string& text) const {
  if (kind == Kind::Categorical) {
    for (size_t i = 0; i < choices.size(); ++i)
      if (choices[i] == text) return static_cast<double>(i);
    throw BadInput(cat("parameter ", name, ": '", text, "' is not one of its choices ", range_text()));
  }
  double v = 0;
  const std::optional<double> number = parse_double(text);
  XFER_CHECK(number, "parameter ", name, ": '", text, "' is not a number");
  v = *number;
  XFER_CHECK(v >= low && v <= high, "parameter ", name, ": ", text, " is outside ", range_text());
  return v;
}

ParamSpec parse_param(const std::string& text) {
  const std::string where = cat("--param '", text, "'");
  const size_t eq = text.find('=');
  XFER_CHECK(eq != std::string::npos && eq > 0, where, ": expected ", kParamSyntax);
  ParamSpec p;
  p.name = space_snake(text.substr(0, eq));
  for (char c : p.name)
    XFER_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '_', where, ": '", text.substr(0, eq),
               "' is not an option name");
  const std::string rest = text.substr(eq + 1);
  const size_t colon = rest.find(':');
  XFER_CHECK(colon != std::string::npos, where, ": expected ", kParamSyntax);
  const std::string kind = rest.substr(0, colon), args = rest.substr(colon + 1);
  if (kind == "cat") {
    p.kind = ParamSpec::Kind::Categorical;
    XFER_CHECK(!args.empty(), where, ": no choices");
    p.choices = split(args, ',');
    std::set<std::string> seen;
    for (const auto& c : p.choices) {
      XFER_CHECK(!c.empty(), where, ": an empty choice");
      XFER_CHECK(seen.insert(c).second, where, ": the choice '", c, "' is listed twice");
    }
    return p;
  }
  if (kind == "lin")
    p.kind = ParamSpec::Kind::Linear;
  else if (kind == "log")
    p.kind = ParamSpec::Kind::Log;
  else if (kind == "int")
    p.kind = ParamSpec::Kind::Int;
  else if (kind == "logint")
    p.kind = ParamSpec::Kind::LogInt;
  else
    throw BadInput(cat(where, ": unknown kind '", kind, "'; expected ", kParamSyntax));
  const auto bounds = split(args, ':');
  XFER_CHECK(bounds.size() == 2, where, ": ", kind, " takes LO:HI, got '", args, "'");
  const std::optional<double> low = parse_double(bounds[0]), high = parse_double(bounds[1]);
  XFER_CHECK(low, where, ": LO '", bounds[0], "' is not a number");
  XFER_CHECK(high, where, ": HI '", bounds[1], "' is not a number");
  p.low = *low;
  p.high = *high;
  if (p.integer())
    XFER_CHECK(p.low == std::floor(p.low) && p.high == std::floor(p.high), where, ": ", kind,
               " bounds must be integers, got ", bounds[0], " and ", bounds[1]);
  XFER_CHECK(p.low < p.high, where, ": the range is empty (LO ", bounds[0], " must be below HI ", bounds[1],
             ")");
  if (p.kind == ParamSpec::Kind::Log)
    XFER_CHECK(p.low > 0, where, ": a log range needs LO > 0, got ", bounds[0]);
  if (p.kind == ParamSpec::Kind::LogInt)
    XFER_CHECK(p.low >= 1, where, ": a logint range needs LO >= 1, got ", bounds[0]);
  return p;
}

SearchSpace SearchSpace::parse(const std::vector<std::string>& texts) {
  XFER_CHECK(!texts.empty(), "a search needs at least one --param NAME=RANGE (", kParamSyntax, ")");
  SearchSpace s;
  for (const auto& t : texts) {
    ParamSpec p = parse_param(t);
    XFER_CHECK(s.find(p.name) == nullptr, "--param ", p.name, " is given twice");
    s.params.push_back(std::move(p));
  }
  return s;
}

const ParamSpec* SearchSpace::find(const std::string& name) const {
  for (const auto& p : params)
    if (p.name == name) return &p;
  return nullptr;
}

nlohmann::json SearchSpace::to_json() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : params) out.push_back({{"name", p.name}, {"range", p.range_text()}});
  return out;
}

SearchSpace SearchSpace::from_json(const nlohmann::json& j) {
  XFER_CHECK(j.is_array(), "a stored search space must be a JSON array, got ", j.dump());
  std::vector<std::string> texts;
  for (const auto& p : j) {
    XFER_CHECK(p.is_object() && p.contains("name") && p["name"].is_string() && p.contains("range") &&
                   p["range"].is_string(),
               "malformed stored parameter ", p.dump());
    texts.push_back(p["name"].get<std::string>() + "=" + p["range"].get<std::string>());
  }
  return parse(texts);
}

std::string SearchSpace::difference(const SearchSpace& stored) const {
  std::vector<std::string> diffs;
  for (const auto& p : params) {
    const ParamSpec* s = stored.find(p.name);
    if (!s)
      diffs.push_back(cat("--param ", p.name, " is new (the study has no ", p.name, ")"));
    else if (s->range_text() != p.range_text())
      diffs.push_back(
          cat("--param ", p.name, " is ", p.range_text(), " now but ", s->range_text(), " in the study"));
  }
  for (const auto& s : stored.params)
    if (!find(s.name)) diffs.push_back(cat("the study also searches ", s.name, "=", s.range_text()));
  if (diffs.empty()) {
    for (size_t i = 0; i < params.size(); ++i)
      if (params[i].name != stored.params[i].name)
        return cat("the parameters are in another order (the study has ", stored.params[i].name, " where ",
                   params[i].name, " is now)");
    return "";
  }
  std::string out;
  for (const auto& d : diffs) out += (out.empty() ? "" : "; ") + d;
  return out;
}

nlohmann::json SearchSpace::values_json(const ParamValues& values) const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& p : params) {
    auto it = values.find(p.name);
    if (it == values.end()) continue;
    if (p.kind == ParamSpec::Kind::Categorical)
      out[p.name] = p.value_text(it->second);
    else if (p.integer())
      out[p.name] = std::llround(it->second);
    else
      out[p.name] = it->second;
  }
  return out;
}

ParamValues SearchSpace::values_from_json(const nlohmann::json& j) const {
  XFER_CHECK(j.is_object(), "malformed stored parameter values ", j.dump());
  ParamValues out;
  for (const auto& p : params) {
    XFER_CHECK(j.contains(p.name), "stored parameter values ", j.dump(), " lack ", p.name);
    const auto& v = j[p.name];
    if (p.kind == ParamSpec::Kind::Categorical)
      out[p.name] = p.internal(v.get<std::string>());
    else
      out[p.name] = v.get<double>();
  }
  return out;
}

std::string SearchSpace::values_text(const ParamValues& values) const {
  std::string out;
  for (const auto& p : params) {
    auto it = values.find(p.name);
    if (it == values.end()) continue;
    const std::string v = p.display_text(it->second);
    out += (out.empty() ? "" : " ") + p.name + "=" + v;
  }
  return out;
}

void apply_params(const SearchSpace& space, const ParamValues& values,
                  const std::vector<Fields*>& fields_list) {
  for (const auto& p : space.params) {
    auto it = values.find(p.name);
    XFER_CHECK(it != values.end(), "no value for parameter ", p.name);
    Fields* owner = nullptr;
    XFER_CHECK(space_field(fields_list, p.name, &owner) != nullptr, "--param ", p.name, ": no such option");
    owner->set(p.name, p.value_text(it->second));
  }
}

void check_space(const SearchSpace& space, const std::vector<Fields*>& fields_list,
                 const std::vector<std::string>& fixed) {
  for (const auto& p : space.params) {
    const std::string where = cat("--param ", p.name, "=", p.range_text());
    for (const auto& f : fixed) XFER_CHECK(space_snake(f) != p.name, where, ": a search cannot set --", f);
    Fields* owner = nullptr;
    Fields::Field* field = space_field(fields_list, p.name, &owner);
    if (!field) {
      std::string names;
      for (Fields* f : fields_list) names += (names.empty() ? "" : ", ") + f->names();
      throw BadInput(cat(where, ": no option named '", p.name, "'; options: ", names));
    }
    const std::string type = field->type_name();
    if (type == "float")
      XFER_CHECK(p.kind == ParamSpec::Kind::Linear || p.kind == ParamSpec::Kind::Log || !p.numeric(), where,
                 ": ", field->flag(), " is a float: use lin:, log: or cat:");
    else if (type == "int")
      XFER_CHECK(p.integer() || !p.numeric(), where, ": ", field->flag(),
                 " is an integer: use int:, logint: or cat:");
    else
      XFER_CHECK(!p.numeric(), where, ": ", field->flag(), " is a ", type == "bool" ? "switch" : "text",
                 " option: use cat:");
    // Try the ends of the range, or every choice, on the option itself, then put its value back.
    const FieldValue saved = space_get(*field);
    try {
      std::vector<std::string> tries = p.choices;
      if (p.numeric()) tries = {p.value_text(p.low), p.value_text(p.high)};
      for (const auto& t : tries) owner->set(p.name, t);
    } catch (const BadInput& e) {
      space_put(*field, saved);
      throw BadInput(cat(where, ": ", e.what()));
    }
    space_put(*field, saved);
  }
}

}  // namespace xfer
