#pragma once
/// Summary statistics of plain numbers, shared by the metrics and the tables.
#include <cstddef>
#include <vector>

namespace xfer {

struct MeanStd {
  double mean = 0, std = 0;  // std: sample standard deviation (n-1), 0 for one value
  size_t n = 0;
};
MeanStd mean_std(const std::vector<double>& values);

}  // namespace xfer
