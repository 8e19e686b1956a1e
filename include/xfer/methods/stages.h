#pragma once
/// Choosing backbone stages by name, for methods that read or change feature maps (DELTA reads them,
/// manifold mixup mixes there).
#include <string>
#include <vector>

#include "xfer/models/backbone.h"

namespace xfer {

/// Parses a comma-separated list of the backbone's stage names ("layer1,layer3"); "all" means every
/// stage, in order. With `allow_input`, the name "input" (the image itself, before any stage) is valid
/// too. BadInput naming `flag`, the bad name and the valid ones for an unknown or repeated name or an
/// empty list.
std::vector<std::string> parse_stages(const std::string& text, const BackboneImpl& backbone,
                                      const std::string& flag, bool allow_input = false);

}  // namespace xfer
