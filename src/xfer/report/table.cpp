#include "xfer/report/table.h"

#include <cmath>
#include <sstream>

#include "xfer/core/error.h"

namespace xfer {
namespace {
/// Display width of UTF-8 text (counts code points, not bytes: "±" is one column).
size_t width_of(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}
}  // namespace

Table::Table(std::vector<std::string> header) : header_(std::move(header)), right_(header_.size(), false) {}

void Table::add_row(std::vector<std::string> row) {
  XFER_CHECK(row.size() == header_.size(), "internal: table row has ", row.size(), " cells, header has ",
             header_.size());
  rows_.push_back(std::move(row));
}

void Table::align_right(size_t column) {
  right_.at(column) = true;
}

std::string Table::markdown() const {
  std::vector<size_t> widths(header_.size(), 3);
  for (size_t c = 0; c < header_.size(); ++c) {
    widths[c] = std::max(widths[c], width_of(header_[c]));
    for (const auto& r : rows_) widths[c] = std::max(widths[c], width_of(r[c]));
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out = "|";
    for (size_t c = 0; c < cells.size(); ++c) {
      const std::string pad(widths[c] - width_of(cells[c]), ' ');
      out += " " + (right_[c] ? pad + cells[c] : cells[c] + pad) + " |";
    }
    return out + "\n";
  };
  std::string out = line(header_) + "|";
  for (size_t c = 0; c < header_.size(); ++c)
    out += (right_[c] ? std::string(widths[c] + 1, '-') + ":" : ":" + std::string(widths[c] + 1, '-')) + "|";
  out += "\n";
  for (const auto& r : rows_) out += line(r);
  return out;
}

std::string Table::csv() const {
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) out += (c ? "," : "") + csv_field(cells[c]);
    out += "\n";
  };
  line(header_);
  for (const auto& r : rows_) line(r);
  return out;
}

std::string format_mean_std(const MeanStd& m, double scale, int precision) {
  if (m.n == 0) return "-";
  if (m.n == 1) return fixed(m.mean * scale, precision);
  return fixed(m.mean * scale, precision) + " ± " + fixed(m.std * scale, precision);
}

}  // namespace xfer
