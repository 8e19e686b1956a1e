/// `xfer report`: a Markdown report with plots of a run or a benchmark.
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/report/report.h"

namespace xfer::cli {
namespace {

class ReportCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("report",
                                "Write report.md with plots for a run, demo, bench or search directory");
    app->add_option("dir", dir_,
                    "a run directory (xfer finetune/pretrain --out), or the --out of xfer demo, xfer bench "
                    "or xfer search")
        ->required();
    app->footer(
        "Plots (PNG) are drawn with gnuplot (Debian package gnuplot-nox, installed by scripts/setup.sh).\n"
        "docs/report.md shows each plot and how to read it.\n"
        "Example: xfer report runs/demo");
  }
  void run(std::ostream& out) override {
    const auto r = write_report(dir_);
    out << "Wrote " << r["report"].get<std::string>() << " with " << r["plots"].size() << " plots\n";
    for (const auto& n : r["notes"]) out << n.get<std::string>() << "\n";
  }

 private:
  std::string dir_;
};

}  // namespace

std::unique_ptr<Command> make_report_command() {
  return std::make_unique<ReportCommand>();
}

}  // namespace xfer::cli
