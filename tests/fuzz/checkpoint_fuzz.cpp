// libFuzzer target: checkpoint files. The input is the payload; the target wraps it in a valid header
// and checksum (random bytes would only ever fail the checksum) and reads it as resuming and --init do.
#include <unistd.h>

#include <fstream>

#include "fuzz_support.h"
#include "xfer/core/io.h"
#include "xfer/train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/xfer_checkpoint_fuzz_" + std::to_string(::getpid()) + ".pt";
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& payload) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << xfer::checkpoint_header(payload) << payload;
    }
    xfer::CheckpointReader ck(path);
    const xfer::Model model = ck.read_model();
    if (ck.has("method")) {
      torch::serialize::InputArchive nested;
      ck.read("method", nested);
    }
    if (ck.has("rng")) (void)ck.read_tensor("rng");
  });
}
