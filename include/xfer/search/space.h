#pragma once
/// Search spaces: named parameters, each a numeric range or a list of choices, parsed from `--param`.
///
///   NAME=lin:LO:HI       a float, uniform on [LO, HI]
///   NAME=log:LO:HI       a float, uniform in log space on [LO, HI] (0 < LO)
///   NAME=int:LO:HI       an integer in [LO, HI]
///   NAME=logint:LO:HI    an integer, uniform in log space (1 <= LO)
///   NAME=cat:A,B,C       one of the listed values (numbers, words, true/false)
///
/// NAME is any option of a run or of its method, as on the command line (`tau`, `lr`, `weight-decay`).
/// Samplers work on an internal value per parameter: the number itself, or the index of a choice.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace xfer {

class Fields;

struct ParamSpec {
  enum class Kind { Linear, Log, Int, LogInt, Categorical };
  std::string name;  // snake_case, as Fields names it
  Kind kind = Kind::Linear;
  double low = 0, high = 0;          // numeric kinds
  std::vector<std::string> choices;  // categorical

  bool numeric() const { return kind != Kind::Categorical; }
  bool log() const { return kind == Kind::Log || kind == Kind::LogInt; }
  bool integer() const { return kind == Kind::Int || kind == Kind::LogInt; }
  /// "lin:1:5", "cat:a,b": the text after `NAME=`, normalised.
  std::string range_text() const;
  /// The option text for an internal value: a number (integers without a fraction) or a choice.
  std::string value_text(double internal) const;
  /// The same for people: floats with 4 significant digits.
  std::string display_text(double internal) const;
  /// The internal value of an option text (for categoricals, the index of the choice). BadInput if the
  /// text is not in the space.
  double internal(const std::string& text) const;
};

/// Parses one `--param NAME=KIND:...` text; BadInput naming the text and what is wrong.
ParamSpec parse_param(const std::string& text);

/// Internal values of one trial, by parameter name.
using ParamValues = std::map<std::string, double>;

struct SearchSpace {
  std::vector<ParamSpec> params;

  /// Parses `--param` texts; BadInput for a malformed one, a repeated name or none at all.
  static SearchSpace parse(const std::vector<std::string>& texts);
  const ParamSpec* find(const std::string& name) const;
  nlohmann::json to_json() const;
  static SearchSpace from_json(const nlohmann::json& j);
  /// What differs from `stored` (the space a study was created with), in words; "" when equal.
  std::string difference(const SearchSpace& stored) const;
  /// {"tau": 12.5, "bn": "per-domain"}: option values of a trial, as JSON.
  nlohmann::json values_json(const ParamValues& values) const;
  ParamValues values_from_json(const nlohmann::json& j) const;
  /// "tau=12.5 t0=-300": option values of a trial, as text.
  std::string values_text(const ParamValues& values) const;
};

/// Sets every parameter's option in whichever of `fields_list` has it. BadInput if an option rejects the
/// value.
void apply_params(const SearchSpace& space, const ParamValues& values,
                  const std::vector<Fields*>& fields_list);

/// Checks that every parameter names an option of one of `fields_list` that a search may set, of a
/// matching type (floats: lin/log/cat, integers: int/logint/cat, text and switches: cat), and that the
/// option accepts both ends of its range and every choice. `fixed` lists options a search may not set.
void check_space(const SearchSpace& space, const std::vector<Fields*>& fields_list,
                 const std::vector<std::string>& fixed);

}  // namespace xfer
