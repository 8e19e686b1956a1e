#include "xfer/core/text.h"

#include <sstream>

namespace xfer {

std::string fixed(double value, int precision) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(precision);
  os << value;
  return os.str();
}

}  // namespace xfer
