#pragma once
/// Tables people can paste into a paper: GitHub Markdown (aligned for terminals too) and CSV.
#include <string>
#include <vector>

#include "xfer/core/stats.h"
#include "xfer/core/text.h"

namespace xfer {

class Table {
 public:
  explicit Table(std::vector<std::string> header);
  void add_row(std::vector<std::string> row);
  /// Right-aligns a column (numbers).
  void align_right(size_t column);
  std::string markdown() const;
  std::string csv() const;
  size_t rows() const { return rows_.size(); }

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<bool> right_;
};

/// "72.3 ± 1.1" for fractions scaled by `scale` (100: percentages), or "72.3" for a single value.
std::string format_mean_std(const MeanStd& m, double scale = 100.0, int precision = 1);

}  // namespace xfer
