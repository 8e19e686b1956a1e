#pragma once
/// Fields: the named, typed, validated view of an options struct.
///
/// Options structs are the library API; each one lists its fields once, in a `fields(Fields&)` member:
///
///   void fields(Fields& f) {
///     f.add("alpha", alpha, "Beta(alpha, 1) shape of the mixing weight").positive();
///     f.add("label_space", label_space, "how labels are mixed");  // an enum: its names are the choices
///   }
///
/// From that one list, the CLI registers flags (`--alpha`, `--label-space`, `--no-flag` for booleans),
/// `--config file.json` and `config.json` read and write the values, the search sets any numeric field
/// by name, and `validate()` checks every constraint with a message that names the flag and echoes
/// the value. Field names are snake_case; the flag is the name with '-' for '_'.
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <ostream>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace xfer {

/// Declares the names of a closed choice's values once, next to its enum, in enumerator order (the
/// enumerators must be 0, 1, ...): an option of that enum type reads and writes these words on the command
/// line, in config.json and in messages (operator<< prints the name), and accepts nothing else.
///
///   enum class BnMode { shared, per_domain };
///   XFER_ENUM_NAMES(BnMode, "shared", "per-domain")
#define XFER_ENUM_NAMES(Enum, ...)                                     \
  inline const std::vector<std::string>& enum_names(Enum) {            \
    static const std::vector<std::string> enum_names_ = {__VA_ARGS__}; \
    return enum_names_;                                                \
  }                                                                    \
  inline std::ostream& operator<<(std::ostream& os, Enum value) {      \
    return os << enum_names(Enum{}).at(static_cast<size_t>(value));    \
  }

/// The name of a value of an enum declared with XFER_ENUM_NAMES: name_of(BnMode::per_domain) is "per-domain".
template <class Enum>
const std::string& name_of(Enum value) {
  return enum_names(Enum{}).at(static_cast<size_t>(value));
}

/// The value of an enum declared with XFER_ENUM_NAMES whose name is `name`; nullopt for any other text.
template <class Enum>
std::optional<Enum> enum_from_name(const std::string& name) {
  const std::vector<std::string>& names = enum_names(Enum{});
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<Enum>(i);
  return std::nullopt;
}

class Fields {
 public:
  /// A field of an enum type: the value behind a type-erased pointer, read and written by its index in
  /// `names`.
  struct EnumRef {
    void* value = nullptr;
    const std::vector<std::string>* names = nullptr;
    size_t (*get)(const void* value) = nullptr;
    void (*set)(void* value, size_t index) = nullptr;
    const std::string& text() const { return names->at(get(value)); }
  };
  using Target = std::variant<double*, int64_t*, bool*, std::string*, EnumRef>;

  /// What a string field names on disk, so that a run can store it absolute in its config.json and be
  /// evaluated, analysed and resumed from any directory.
  enum class PathKind {
    none,
    file,      // a file or directory
    model,     // a run directory or checkpoint, state_dict:FILE or torchscript:FILE
    spec,      // a dataset spec (its dir=, *_images=, *_list= ... paths); other words ("rest") stay
    specs,     // dataset specs separated by ';'
    backbone,  // a backbone spec (script:path=FILE)
  };

  /// What a field's value means for a run, declared with the field so that resume checks, data-parallel
  /// checks, searches and config files agree on which options they may ignore.
  enum class Role {
    result,     // changes what the run computes (the default)
    execution,  // how it runs, never what it computes: threads, device, prefetching
    session,  // what this invocation does with the run directory: --out, --resume, --overwrite, --stop-after
  };

  struct Field {
    std::string name;
    std::string help;
    Target target = static_cast<double*>(nullptr);
    std::optional<double> min, max;  // numeric bounds
    bool min_open = false, max_open = false;
    std::vector<std::string> choices;  // strings: the valid values, when non-empty
    std::string group;                 // heading in --help
    PathKind path = PathKind::none;
    Role role = Role::result;

    std::string flag() const;        // "--label-space"
    std::string type_name() const;   // "float", "int", "bool", "string" (enums too)
    std::string value_text() const;  // the current value as text
    bool is_numeric() const;
  };

  /// Returned by `add` to attach constraints.
  class Ref {
   public:
    Ref(Fields* owner, size_t index) : owner_(owner), index_(index) {}
    Ref& positive();                           // > 0
    Ref& non_negative();                       // >= 0
    Ref& at_least(double v);                   // >= v
    Ref& at_most(double v);                    // <= v
    Ref& in_range(double lo, double hi);       // lo <= x <= hi
    Ref& in_open_range(double lo, double hi);  // lo < x < hi
    Ref& choices(std::vector<std::string> valid);
    Ref& path(PathKind kind);  // names files: see PathKind
    Ref& execution();          // Role::execution
    Ref& session();            // Role::session

   private:
    Field& field();
    Fields* owner_;
    size_t index_;
  };

  Ref add(const std::string& name, double& v, const std::string& help);
  Ref add(const std::string& name, int64_t& v, const std::string& help);
  Ref add(const std::string& name, bool& v, const std::string& help);
  Ref add(const std::string& name, std::string& v, const std::string& help);
  /// A closed choice: an enum declared with XFER_ENUM_NAMES; its names are the field's choices.
  template <class Enum, std::enable_if_t<std::is_enum_v<Enum>, int> = 0>
  Ref add(const std::string& name, Enum& v, const std::string& help) {
    EnumRef ref{&v, &enum_names(Enum{}),
                [](const void* p) { return static_cast<size_t>(*static_cast<const Enum*>(p)); },
                [](void* p, size_t i) { *static_cast<Enum*>(p) = static_cast<Enum>(i); }};
    Ref r = push(name, help, ref);
    r.choices(*ref.names);
    return r;
  }

  /// Fields added from now on are listed under `heading` in --help.
  void group(const std::string& heading) { group_ = heading; }

  const std::vector<Field>& all() const { return fields_; }
  std::vector<Field>& all() { return fields_; }
  Field* find(const std::string& name);  // accepts "label-space" or "label_space"; nullptr if absent
  bool has(const std::string& name) { return find(name) != nullptr; }

  /// Parses `text` into the named field and validates it. Unknown names list the valid ones.
  void set(const std::string& name, const std::string& text);
  /// Reads every key of a JSON object into the fields; unknown keys are errors naming `where`.
  void read_json(const nlohmann::json& obj, const std::string& where);
  nlohmann::json to_json() const;
  /// Checks every constraint; throws BadInput naming the flag and value.
  void validate() const;
  /// Names of all fields, comma-separated, for error messages.
  std::string names() const;
  /// Names of the fields of these roles.
  std::vector<std::string> names_of(std::initializer_list<Role> roles) const;

 private:
  Ref push(const std::string& name, const std::string& help, Target target);
  std::vector<Field> fields_;
  std::string group_;
};

/// Checks one field's constraints (used by Fields::validate and by the CLI after parsing); string values
/// must be UTF-8 (they are written to JSON).
void validate_field(const Fields::Field& f);
/// Parses `text` into the field's target (integers and numbers strictly: base 10, the whole text, no
/// overflow: 18446744073709551616 is an error, not 2^63-1) and validates it. BadInput naming the flag.
void set_field_text(const Fields::Field& f, const std::string& text);

/// Collects an options struct's fields and validates them: `check_options(opts)`.
template <class Options>
void check_options(Options& opts) {
  Fields f;
  opts.fields(f);
  f.validate();
}

}  // namespace xfer
