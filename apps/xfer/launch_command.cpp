/// `xfer launch`: start the ranks of a data-parallel run on this machine, like torchrun.
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/dist/launch.h"

namespace xfer::cli {
namespace {

class LaunchCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("launch",
                                "Start the ranks of a data-parallel run on this machine (like torchrun)");
    app->description(
        "Starts --nproc copies of COMMAND with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK "
        "set;\n"
        "they train as one run on c10d/Gloo (every batch split between the ranks, gradients averaged; rank "
        "0\n"
        "writes the outputs). Signals are forwarded; if a rank fails, the others are stopped.");
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->add_option("command", command_, "the command every rank runs, after --")->expected(-1)->required();
    app->footer(
        "Examples:\n"
        "  xfer launch --nproc 2 -- xfer finetune --method l2 --init runs/source --target "
        "fmnist:classes=2,4,6,7,9 "
        "--batch-size 64 --threads 1 --out runs/ddp\n"
        "  machine 0: xfer launch --nnodes 2 --node-rank 0 --nproc 4 --master-addr 10.0.0.1 -- xfer finetune "
        "...\n"
        "  machine 1: xfer launch --nnodes 2 --node-rank 1 --nproc 4 --master-addr 10.0.0.1 -- xfer finetune "
        "...\n"
        "See docs/distributed.md.");
  }
  void run(std::ostream&) override { launch(opts_, command_); }

 private:
  LaunchOptions opts_;
  std::vector<std::string> command_;
};

}  // namespace

std::unique_ptr<Command> make_launch_command() {
  return std::make_unique<LaunchCommand>();
}

}  // namespace xfer::cli
