#pragma once
/// Text helpers every layer shares: number formatting.
#include <string>

namespace xfer {

/// A fixed-point number: fixed(3.14159, 2) is "3.14".
std::string fixed(double value, int precision);

}  // namespace xfer
