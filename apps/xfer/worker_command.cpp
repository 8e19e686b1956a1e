/// `xfer worker`: drains a suite's run queue in a database (queued by `xfer bench --storage`).
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/workflows/suite_queue.h"

namespace xfer::cli {
namespace {

class WorkerCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("worker",
                                "Run a queued suite's runs, one at a time, on this machine (see xfer bench "
                                "--storage); start one on each machine");
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->footer(
        "Example (the database on host db; the same suite file on every machine):\n"
        "  xfer bench --suite quick --storage postgresql://me@db:5432/xfer           # once, anywhere\n"
        "  xfer worker --queue quick --storage postgresql://me@db:5432/xfer --out runs/q   # on each "
        "machine\n"
        "  xfer bench --suite quick --storage postgresql://me@db:5432/xfer --collect # when all are done\n"
        "The password, if any: PGPASSWORD or ~/.pgpass (never on the command line of a shared machine).");
  }
  void run(std::ostream& out) override { run_queue_worker(opts_, out); }

 private:
  QueueWorkerOptions opts_;
};

}  // namespace

std::unique_ptr<Command> make_worker_command() {
  return std::make_unique<WorkerCommand>();
}

}  // namespace xfer::cli
