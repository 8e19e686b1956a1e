#include "xfer/core/fields.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/text.h"

namespace xfer {
namespace {

std::string snake(std::string s) {
  for (char& c : s)
    if (c == '-') c = '_';
  return s;
}

double parse_double(const std::string& flag, const std::string& text) {
  const std::optional<double> v = xfer::parse_double(text);
  XFER_CHECK(v, flag, " expects a number, got '", printable(text), "'");
  return *v;
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  const std::optional<int64_t> v = parse_int64(text);
  if (v) return *v;
  const size_t digits = text.find_first_not_of("+-") == 1 ? 1 : 0;
  const bool integer =
      text.size() > digits && text.find_first_not_of("0123456789", digits) == std::string::npos;
  throw BadInput(integer ? cat(flag, " is out of range for a 64-bit integer: '", text, "'")
                         : cat(flag, " expects an integer, got '", printable(text), "'"));
}

bool parse_bool(const std::string& flag, const std::string& text) {
  if (text == "true" || text == "1" || text == "on" || text == "yes") return true;
  if (text == "false" || text == "0" || text == "off" || text == "no") return false;
  throw BadInput(cat(flag, " expects true or false, got '", text, "'"));
}

}  // namespace

std::string Fields::Field::flag() const {
  std::string f = "--" + name;
  for (char& c : f)
    if (c == '_') c = '-';
  return f;
}

std::string Fields::Field::type_name() const {
  switch (target.index()) {
    case 0:
      return "float";
    case 1:
      return "int";
    case 2:
      return "bool";
    default:
      return "string";
  }
}

bool Fields::Field::is_numeric() const {
  return target.index() <= 1;
}

std::string Fields::Field::value_text() const {
  return std::visit(
      [](const auto& p) -> std::string {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Fields::EnumRef>)
          return p.text();
        else if constexpr (std::is_same_v<T, double*>)
          return number_text(*p);
        else if constexpr (std::is_same_v<T, int64_t*>)
          return std::to_string(*p);
        else if constexpr (std::is_same_v<T, bool*>)
          return *p ? "true" : "false";
        else
          return *p;
      },
      target);
}

Fields::Field& Fields::Ref::field() {
  return owner_->fields_[index_];
}

Fields::Ref& Fields::Ref::positive() {
  field().min = 0;
  field().min_open = true;
  return *this;
}
Fields::Ref& Fields::Ref::non_negative() {
  return at_least(0);
}
Fields::Ref& Fields::Ref::at_least(double v) {
  field().min = v;
  field().min_open = false;
  return *this;
}
Fields::Ref& Fields::Ref::at_most(double v) {
  field().max = v;
  field().max_open = false;
  return *this;
}
Fields::Ref& Fields::Ref::in_range(double lo, double hi) {
  field().min = lo;
  field().max = hi;
  field().min_open = field().max_open = false;
  return *this;
}
Fields::Ref& Fields::Ref::in_open_range(double lo, double hi) {
  in_range(lo, hi);
  field().min_open = field().max_open = true;
  return *this;
}
Fields::Ref& Fields::Ref::choices(std::vector<std::string> valid) {
  field().choices = std::move(valid);
  return *this;
}

Fields::Ref& Fields::Ref::path(PathKind kind) {
  field().path = kind;
  return *this;
}

Fields::Ref& Fields::Ref::execution() {
  field().role = Role::execution;
  return *this;
}

Fields::Ref& Fields::Ref::session() {
  field().role = Role::session;
  return *this;
}

Fields::Ref Fields::push(const std::string& name, const std::string& help, Target target) {
  Field f;
  f.name = name;
  f.help = help;
  f.target = target;
  f.group = group_;
  fields_.push_back(std::move(f));
  return Ref(this, fields_.size() - 1);
}

Fields::Ref Fields::add(const std::string& name, double& v, const std::string& help) {
  return push(name, help, &v);
}
Fields::Ref Fields::add(const std::string& name, int64_t& v, const std::string& help) {
  return push(name, help, &v);
}
Fields::Ref Fields::add(const std::string& name, bool& v, const std::string& help) {
  return push(name, help, &v);
}
Fields::Ref Fields::add(const std::string& name, std::string& v, const std::string& help) {
  return push(name, help, &v);
}

Fields::Field* Fields::find(const std::string& name) {
  const std::string key = snake(name);
  for (auto& f : fields_)
    if (f.name == key) return &f;
  return nullptr;
}

std::string Fields::names() const {
  std::string out;
  for (const auto& f : fields_) out += (out.empty() ? "" : ", ") + f.name;
  return out.empty() ? "(none)" : out;
}

namespace {

/// "a, b, c": the valid values of a closed choice, for its error message.
std::string choice_list(const std::vector<std::string>& choices) {
  std::string valid;
  for (const auto& c : choices) valid += (valid.empty() ? "" : ", ") + c;
  return valid;
}

void set_enum(const Fields::Field& f, const Fields::EnumRef& e, const std::string& text) {
  const auto& names = *e.names;
  const auto it = std::find(names.begin(), names.end(), text);
  XFER_CHECK(it != names.end(), f.flag(), " must be one of ", choice_list(names), "; got '", printable(text),
             "'");
  e.set(e.value, static_cast<size_t>(it - names.begin()));
}

}  // namespace

std::vector<std::string> Fields::names_of(std::initializer_list<Role> roles) const {
  std::vector<std::string> out;
  for (const auto& f : fields_)
    if (std::find(roles.begin(), roles.end(), f.role) != roles.end()) out.push_back(f.name);
  return out;
}

void set_field_text(const Fields::Field& f, const std::string& text) {
  const std::string flag = f.flag();
  std::visit(
      [&](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Fields::EnumRef>)
          set_enum(f, p, text);
        else if constexpr (std::is_same_v<T, double*>)
          *p = parse_double(flag, text);
        else if constexpr (std::is_same_v<T, int64_t*>)
          *p = parse_int(flag, text);
        else if constexpr (std::is_same_v<T, bool*>)
          *p = parse_bool(flag, text);
        else
          *p = text;
      },
      f.target);
  validate_field(f);
}

void Fields::set(const std::string& name, const std::string& text) {
  Field* f = find(name);
  XFER_CHECK(f != nullptr, "unknown option '", name, "'; valid options: ", names());
  set_field_text(*f, text);
}

void Fields::read_json(const nlohmann::json& obj, const std::string& where) {
  XFER_CHECK(obj.is_object(), where, " must be a JSON object, got ", obj.type_name());
  for (const auto& item : obj.items()) {
    const std::string& key = item.key();
    const nlohmann::json& value = item.value();  // named, not a structured binding: lambdas capture it
    Field* f = find(key);
    XFER_CHECK(f != nullptr, where, ": unknown key '", key, "'; valid keys: ", names());
    const std::string label = cat(where, ".", key);
    std::visit(
        [&](const auto& p) {
          using T = std::remove_pointer_t<std::decay_t<decltype(p)>>;
          if constexpr (std::is_same_v<T, Fields::EnumRef>) {
            XFER_CHECK(value.is_string(), label, " must be a string, got ", value.dump());
            set_enum(*f, p, value.get<std::string>());
          } else if constexpr (std::is_same_v<T, double>) {
            XFER_CHECK(value.is_number(), label, " must be a number, got ", value.dump());
            *p = value.get<double>();
          } else if constexpr (std::is_same_v<T, int64_t>) {
            XFER_CHECK(value.is_number_integer(), label, " must be an integer, got ", value.dump());
            *p = value.get<int64_t>();
          } else if constexpr (std::is_same_v<T, bool>) {
            XFER_CHECK(value.is_boolean(), label, " must be true or false, got ", value.dump());
            *p = value.get<bool>();
          } else {
            XFER_CHECK(value.is_string(), label, " must be a string, got ", value.dump());
            *p = value.get<std::string>();
          }
        },
        f->target);
    validate_field(*f);
  }
}

nlohmann::json Fields::to_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& f : fields_)
    std::visit(
        [&](const auto& p) {
          if constexpr (std::is_same_v<std::decay_t<decltype(p)>, EnumRef>)
            out[f.name] = p.text();
          else
            out[f.name] = *p;
        },
        f.target);
  return out;
}

void Fields::validate() const {
  for (const auto& f : fields_) validate_field(f);
}

void validate_field(const Fields::Field& f) {
  if (f.is_numeric()) {
    const double v = f.target.index() == 0 ? *std::get<double*>(f.target)
                                           : static_cast<double>(*std::get<int64_t*>(f.target));
    XFER_CHECK(std::isfinite(v), f.flag(), " must be finite, got ", f.value_text());
    if (f.min) {
      const bool ok = f.min_open ? v > *f.min : v >= *f.min;
      XFER_CHECK(ok, f.flag(), " must be ", f.min_open ? "> " : ">= ", number_text(*f.min), ", got ",
                 f.value_text());
    }
    if (f.max) {
      const bool ok = f.max_open ? v < *f.max : v <= *f.max;
      XFER_CHECK(ok, f.flag(), " must be ", f.max_open ? "< " : "<= ", number_text(*f.max), ", got ",
                 f.value_text());
    }
  }
  if (f.target.index() == 3) check_utf8(*std::get<std::string*>(f.target), f.flag());
  if (!f.choices.empty() && f.target.index() == 3) {  // an enum holds one of its names by construction
    const std::string& v = *std::get<std::string*>(f.target);
    XFER_CHECK(std::find(f.choices.begin(), f.choices.end(), v) != f.choices.end(), f.flag(),
               " must be one of ", choice_list(f.choices), "; got '", v, "'");
  }
}

}  // namespace xfer
