/// `xfer bench`: run a benchmark suite (methods x tasks x seeds) and write paper-style tables.
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/report/table.h"
#include "xfer/workflows/suite.h"
#include "xfer/workflows/suite_queue.h"

namespace xfer::cli {
namespace {

class BenchCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("bench",
                                "Run a benchmark suite: methods x tasks x seeds, each run its own "
                                "process, gathered into paper-style tables");
    app->description(
        "Writes results.csv (one row per run), table.md (mean ± std of test top-1 and of mean per-class\n"
        "accuracy, best per column in bold) and timing.md (each method's time per step relative to l2,\n"
        "measured in one process). Re-running the same command skips the runs already finished.");
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->add_flag("--list", list_, "list the built-in suites and exit");
    app->footer(
        "Examples:\n"
        "  xfer bench --list\n"
        "  xfer bench --suite quick --jobs 2\n"
        "  xfer bench --suite my_suite.json --out runs/mine\n"
        "  xfer bench --suite quick --storage postgresql://me@db:5432/xfer     (then xfer worker on each "
        "machine)\n"
        "  xfer bench --suite quick --storage postgresql://me@db:5432/xfer --collect\n"
        "Suites are JSON files (bench/suites/*.json): see docs/bench.md.");
  }
  void run(std::ostream& out) override {
    if (list_) {
      Table t({"suite", "description"});
      for (const auto& [name, description] : builtin_suites()) t.add_row({name, description});
      out << t.markdown();
      return;
    }
    if (opts_.storage.empty())
      run_bench(opts_, out);
    else if (opts_.collect)
      collect_suite(opts_, out);
    else
      enqueue_suite(opts_, out);
  }

 private:
  BenchOptions opts_;
  bool list_ = false;
};

}  // namespace

std::unique_ptr<Command> make_bench_command() {
  return std::make_unique<BenchCommand>();
}

}  // namespace xfer::cli
