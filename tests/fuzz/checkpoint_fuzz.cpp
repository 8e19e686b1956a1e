// libFuzzer target: checkpoint files. The input is the payload; the target wraps it in a valid header
// and checksum (random bytes would only ever fail the checksum) and reads it as resuming and --init do:
// the model, the optimizer state (into an optimizer of the stored model's parameters) and the method section.
#include <unistd.h>

#include <fstream>

#include "fuzz_support.h"
#include "xfer/core/io.h"
#include "xfer/optim/optim.h"
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
    if (ck.has("optimizer")) {
      xfer::OptimizerOptions opts;
      const bool adam = ck.read("optimizer").has("kind") && ck.read("optimizer").read_text("kind") == "adam";
      opts.optimizer = adam ? xfer::OptimizerKind::adam : xfer::OptimizerKind::sgd;
      // Groups of the sizes the file states (as the Trainer's backbone/head groups), so that the
      // per-parameter entries are reached rather than refused at the first group.
      const xfer::Archive state = ck.read("optimizer");
      const auto params = model->parameters();
      std::vector<xfer::ParamGroup> groups;
      size_t next = 0;
      torch::Tensor n;
      for (int g = 0; next < params.size() && state.try_read("group" + std::to_string(g) + ".size", n); ++g) {
        if (n.numel() != 1 || n.scalar_type() != torch::kInt64) break;
        const size_t take = std::min<size_t>(std::max<int64_t>(n.item<int64_t>(), 1), params.size() - next);
        groups.emplace_back();
        groups.back().params.assign(params.begin() + next, params.begin() + next + take);
        next += take;
      }
      if (groups.empty()) {
        groups.emplace_back();
        groups.back().params = params;
      }
      auto optimizer = xfer::make_optimizer(opts, groups);
      xfer::load_optimizer(*optimizer, state);
    }
    if (ck.has("method")) (void)ck.read("method");
    if (ck.has("rng")) (void)ck.read_tensor("rng");
  });
}
