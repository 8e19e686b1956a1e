// libFuzzer target: IDX files (raw or gzip) through parse_idx.
#include "fuzz_support.h"
#include "xfer/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& bytes) {
    const xfer::IdxArray a = xfer::parse_idx(bytes, "fuzz.idx");
    if (a.data.numel() > 0) (void)a.data.flatten()[0].item<double>();  // the tensor must be readable
  });
}
