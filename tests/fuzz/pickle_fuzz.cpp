// libFuzzer target: --init state_dict:FILE and the pickle checks before --init torchscript:FILE. The first
// byte chooses what the rest is: 0, a whole file (the zip reader first); 1, a data.pkl wrapped in a
// well-formed archive beside a 64-byte storage record "0" (the pickle machine and the tensor records);
// 2, a pickle for check_pickle alone (what a TorchScript archive's pickles go through).
#include "fuzz_support.h"
#include "xfer/models/pickle.h"
#include "zip_writer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& bytes) {
    if (bytes.empty()) return;
    const std::string rest = bytes.substr(1);
    if (bytes[0] == 2) {
      xfer::check_pickle(rest, "fuzz");
      return;
    }
    const std::string file = bytes[0] == 1
                                 ? xfer::fuzz::stored_zip({{"archive/data.pkl", rest},
                                                           {"archive/data/0", std::string(64, '\x01')}})
                                 : rest;
    const auto tensors = xfer::read_torch_state_dict(file, "fuzz");
    for (const auto& [name, t] : tensors) (void)t.sum();  // every element is read: ASan sees any stray one
  });
}
