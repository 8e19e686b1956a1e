// libFuzzer target: MAT v5 files (Flowers-102's and Stanford Cars' annotations) through parse_mat.
#include "fuzz_support.h"
#include "xfer/data/mat.h"

namespace {
/// Touches everything parsed, so a wrong length shows up under ASan here rather than in a reader later.
size_t walk(const xfer::MatArray& a) {
  size_t n = a.values.size() + a.text.size() + a.fields.size() + static_cast<size_t>(a.numel() > 0);
  for (const auto& e : a.elements) n += walk(e);
  return n;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& bytes) {
    size_t n = 0;
    for (const auto& [name, array] : xfer::parse_mat(bytes, "fuzz.mat")) n += name.size() + walk(array);
    (void)n;
  });
}
