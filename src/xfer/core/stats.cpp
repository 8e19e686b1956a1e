#include "xfer/core/stats.h"

#include <cmath>

namespace xfer {

MeanStd mean_std(const std::vector<double>& values) {
  MeanStd m;
  m.n = values.size();
  if (values.empty()) return m;
  for (double v : values) m.mean += v;
  m.mean /= static_cast<double>(values.size());
  if (values.size() > 1) {
    double ss = 0;
    for (double v : values) ss += (v - m.mean) * (v - m.mean);
    m.std = std::sqrt(ss / static_cast<double>(values.size() - 1));
  }
  return m;
}

}  // namespace xfer
