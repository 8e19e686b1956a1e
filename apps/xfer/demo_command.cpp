/// `xfer demo`: the main job on the embedded Fashion-MNIST transfer task.
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/workflows/demo.h"

namespace xfer::cli {
namespace {

class DemoCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("demo",
                                "Run every method on the embedded Fashion-MNIST transfer task and "
                                "print a results table");
    app->description(
        "Pre-train on Fashion-MNIST's T-shirt/Trouser/Dress/Sandal/Bag (cached), then fine-tune every "
        "method\n"
        "on Pullover/Coat/Shirt/Sneaker/Ankle boot with 10 and 50 labels per class over 3 seeds, and print\n"
        "a mean ± std table of test top-1 with each method's time per step relative to l2.");
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->footer(
        "The source model is cached, so a second demo starts fine-tuning at once.\n"
        "Example: xfer demo --methods scratch,l2 --seeds 2 --sizes 10");
  }
  void run(std::ostream& out) override { run_demo(opts_, out); }

 private:
  DemoOptions opts_;
};

}  // namespace

std::unique_ptr<Command> make_demo_command() {
  return std::make_unique<DemoCommand>();
}

}  // namespace xfer::cli
