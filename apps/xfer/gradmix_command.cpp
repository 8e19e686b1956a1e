/// `xfer gradmix-pseudo` (GradMix's pseudo-label pipeline: train a grid, ensemble-label U, retrain) and
/// `xfer gradmix-weights` (plot a gradmix run's per-layer weights).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/data/spec.h"
#include "xfer/workflows/gradmix_pipeline.h"

namespace xfer::cli {
namespace {

class GradMixPseudoCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand(
        "gradmix-pseudo",
        "GradMix with ensemble pseudo-labels: a (beta, gamma) grid, the top models label "
        "the unlabelled target images, then fresh models train on sources + pseudo-labels + V");
    app->footer(
        cat("Stage 1 trains one gradmix model per --grid point, stage 2 labels U with the --top best on the "
            "target's\n"
            "val split (the hyper-validation set), stage 3 trains one fresh model per --modes entry. Outputs "
            "in --out:\n"
            "stage1/*/, pseudo_labels.pt, final-*/, summary.json, table.md.\n\n"
            "Example (the embedded task: S1 = shifted Fashion-MNIST 5-9, S2 = classes 0-4, V = 3 per class "
            "of 5-9):\n"
            "  xfer gradmix-pseudo --out runs/gm-pseudo --iterations 600 --lr 0.05 \\\n"
            "    --target fmnist:classes=5-9:part=1/2:per_class=3:val=200 \\\n"
            "    --sources \"fmnist:classes=5-9:part=0/2:shift=rot30+noise0.2;fmnist:classes=0-4\"\n\n",
            spec_help()));
    run_.method = "gradmix";
    Fields rf;
    run_.fields(rf);
    add_fields(*app, rf, {"method", "stop_after"});
    Fields mf;
    method_.fields(mf);
    for (auto& f : mf.all()) f.group = "GradMix options";
    add_fields(*app, mf, {"pseudo", "pseudo_mode", "ssl", "adalr_beta", "adalr_gamma"});
    Fields pf;
    pipeline_.fields(pf);
    for (auto& f : pf.all()) f.group = "Pipeline";
    add_fields(*app, pf);
    app->add_flag("--json", json_, "print summary.json on stdout when done")->group("Run");
  }

  void run(std::ostream& out) override {
    Fields rf;
    run_.fields(rf);
    rf.validate();
    const nlohmann::json summary = run_gradmix_pseudo(run_, method_, pipeline_, out);
    if (json_) out << summary.dump(2) << "\n";
  }

 private:
  RunOptions run_;
  GradMixMethod::Options method_;
  GradMixPseudoOptions pipeline_;
  bool json_ = false;
};

/// `xfer gradmix-weights RUN_DIR`: the per-layer mixing weights a gradmix run logged, as a plot.
class GradMixWeightsCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("gradmix-weights", "Plot the per-layer source weights a gradmix run logged");
    app->add_option("run", run_dir_, "a gradmix run directory (its metrics.jsonl)")->required();
    app->add_option("--source", source_, "the source whose weights to plot: s0, s1, ..., pseudo")
        ->capture_default_str();
    app->add_option("--png", png_, "output file, .png or .svg (default RUN/weights_SOURCE.png)");
    app->footer("Example:\n  xfer gradmix-weights runs/gradmix --source s1 --png weights.png");
  }

  void run(std::ostream& out) override {
    const std::string path = png_.empty() ? run_dir_ + "/weights_" + source_ + ".png" : png_;
    if (plot_gradmix_weights(run_dir_, source_, path))
      out << "Wrote " << path << "\n";
    else
      out << "Skipped " << path << ": gnuplot is not installed (apt-get install gnuplot-nox)\n";
  }

 private:
  std::string run_dir_, source_ = "s0", png_;
};

}  // namespace

std::unique_ptr<Command> make_gradmix_pseudo_command() {
  return std::make_unique<GradMixPseudoCommand>();
}
std::unique_ptr<Command> make_gradmix_weights_command() {
  return std::make_unique<GradMixWeightsCommand>();
}

}  // namespace xfer::cli
