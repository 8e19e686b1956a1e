#include "xfer/methods/stages.h"

#include <algorithm>
#include <sstream>

#include "xfer/core/error.h"

namespace xfer {

std::vector<std::string> parse_stages(const std::string& text, const BackboneImpl& backbone,
                                      const std::string& flag, bool allow_input) {
  const std::vector<std::string>& names = backbone.stage_names();
  if (text == "all") return names;
  std::string valid = allow_input ? "input" : "";
  for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string name;
  while (std::getline(ss, name, ',')) {
    const bool known =
        (allow_input && name == "input") || std::find(names.begin(), names.end(), name) != names.end();
    XFER_CHECK(known, flag, ": the backbone ", backbone.spec(), " has no stage '", name, "'; valid: ", valid,
               allow_input ? "" : " (or all)");
    XFER_CHECK(std::find(out.begin(), out.end(), name) == out.end(), flag, ": '", name,
               "' is listed twice in '", text, "'");
    out.push_back(name);
  }
  XFER_CHECK(!out.empty(), flag, " is empty; valid: ", valid);
  return out;
}

}  // namespace xfer
