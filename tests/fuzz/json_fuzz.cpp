// libFuzzer target: every JSON document xfer reads from users: run configs (with the options of the method
// they name), benchmark suites, XMixup pairings, DATL importance weights, search spaces, and model
// architectures (the `arch` of a checkpoint). The first byte picks the reader, the rest is the document.
#include "fuzz_support.h"
#include "xfer/methods/registry.h"
#include "xfer/models/model.h"
#include "xfer/search/space.h"
#include "xfer/source/importance.h"
#include "xfer/source/pairing.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/suite.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t which = data[0] % 6;
  return xfer::fuzz::expect_clean_errors(data + 1, size - 1, [which](const std::string& bytes) {
    const nlohmann::json j = xfer::fuzz::parse_json(bytes);
    if (j.is_discarded()) return;
    switch (which) {
      case 0: {
        xfer::RunOptions opts;
        std::unique_ptr<xfer::MethodConfig> method;
        if (j.is_object() && j.contains("method") && j["method"].is_string())
          method = xfer::methods().get(j["method"].get<std::string>()).make_config();
        xfer::read_config(j, opts, method.get(), "fuzz.json");
        break;
      }
      case 1:
        (void)xfer::parse_suite(j, "fuzz");
        break;
      case 2:
        (void)xfer::Pairing::from_json(j, "fuzz.json");
        break;
      case 3:
        (void)xfer::ImportanceWeights::from_json(j, "fuzz.json");
        break;
      case 4: {
        const xfer::SearchSpace space = xfer::SearchSpace::from_json(j);
        (void)space;
        break;
      }
      default:
        (void)xfer::Arch::from_json(j);
        break;
    }
  });
}
