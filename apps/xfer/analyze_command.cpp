/// `xfer analyze RUN_DIR`: interpolation losses, parameter distance and feature spectrum of a trained run.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/report/table.h"
#include "xfer/workflows/analyze.h"

namespace xfer::cli {
namespace {

class AnalyzeCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("analyze",
                                "Analyse a trained run: Feature-IL and Label-IL (SMILE Eq. 7), the "
                                "backbone's parameter distance to --init, the feature spectrum, and "
                                "with --forgetting XMixup's forgetting probe (Table 2)");
    app->add_option("run", opts_.run, "the run directory (the --out of xfer finetune)")->required();
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->add_flag("--json", json_, "print analysis.json on stdout");
    app->footer(
        "Writes RUN_DIR/analysis.json; its entry for each split is kept, so --on train then --on test fill "
        "both.\n\n"
        "Feature-IL / Label-IL: for random pairs (x, x') of the split, delta1, delta2 ~ U(0,1) and\n"
        "lambda ~ Beta(alpha, alpha), the Euclidean distance between f(Mix_{lambda d1 + (1-lambda) d2}(x, "
        "x'))\n"
        "and lambda f(Mix_d1) + (1-lambda) f(Mix_d2), with f the pooled features (Feature-IL) or the head's\n"
        "logits (Label-IL; --label-output softmax for probabilities).\n"
        "Parameter distance: sum over the backbone's tensors of ||w - w0||_2 (heads excluded).\n"
        "Spectrum: the smallest singular values of the pooled-feature matrix, over the largest.\n"
        "Forgetting probe: a fresh linear head on the frozen backbone, trained on the source task's "
        "training\n"
        "split; its test top-1 over the auxiliary set's source classes, the others (ABA) and all.\n\n"
        "Example:\n  xfer analyze runs/smile --on test\n  xfer analyze runs/smile --on train --pairs 2000 "
        "--json\n"
        "  xfer analyze runs/xmixup --forgetting --forgetting-reference");
  }

  void run(std::ostream& out) override {
    Fields f;
    opts_.fields(f);
    f.validate();
    const nlohmann::json analysis = analyze_run(opts_);
    if (json_) {
      out << analysis.dump(2) << "\n";
      return;
    }
    out << "Run " << analysis["run"].get<std::string>() << " (" << analysis["method"].get<std::string>()
        << "), model " << analysis["checkpoint"].get<std::string>() << " at step " << analysis["step"]
        << "\n\n"
        << analysis_table(analysis).markdown();
    if (analysis.contains("forgetting"))
      out << "\nForgetting probe on " << analysis["forgetting"]["source"].get<std::string>()
          << " (test top-1 %)\n\n"
          << forgetting_table(analysis).markdown();
    out << "\nWritten to " << opts_.run << "/analysis.json\n";
  }

 private:
  AnalyzeOptions opts_;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_analyze_command() {
  return std::make_unique<AnalyzeCommand>();
}

}  // namespace xfer::cli
