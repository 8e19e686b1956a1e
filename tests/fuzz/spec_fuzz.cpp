// libFuzzer target: dataset spec strings through DatasetSpec::parse (no data is loaded).
#include "fuzz_support.h"
#include "xfer/data/spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& text) {
    const xfer::DatasetSpec spec = xfer::DatasetSpec::parse(text);
    (void)xfer::DatasetSpec::parse(spec.text);
  });
}
