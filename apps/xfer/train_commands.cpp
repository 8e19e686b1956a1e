/// `xfer pretrain` and `xfer finetune`: the two training subcommands, which share their options.
#include <optional>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/data/spec.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/registry.h"
#include "xfer/report/table.h"
#include "xfer/workflows/run.h"

namespace xfer::cli {
namespace {

/// A short human summary of a finished run.
void print_summary(std::ostream& out, const FitResult& r) {
  Table t({"metric", "value"});
  t.align_right(1);
  auto pct = [](std::optional<double> v) { return v ? fixed(100 * *v, 2) + "%" : "-"; };
  std::optional<double> test_top1, test_mean_class;  // none without a test split
  if (r.test) {
    test_top1 = r.test->top1;
    test_mean_class = r.test->mean_class;
  }
  t.add_row({"test top-1", pct(test_top1)});
  t.add_row({"test mean per-class accuracy", pct(test_mean_class)});
  t.add_row({"best validation top-1", pct(r.best_val_top1)});
  t.add_row({"tested model", cat(r.selected_best ? "best" : "last", " (step ", r.selected_step, ")")});
  t.add_row({"time per step", fixed(r.step_ms, 2) + " ms"});
  t.add_row({"samples/s", fixed(r.samples_per_s, 0)});
  out << t.markdown();
}

class TrainCommand : public Command {
 public:
  explicit TrainCommand(bool pretrain) : pretrain_(pretrain) {}

  void add(CLI::App& parent, const std::vector<std::string>& args) override {
    if (pretrain_) {
      app = parent.add_subcommand("pretrain", "Train a backbone and a source head on a source dataset spec");
      app->footer(cat(
          "Examples:\n  xfer pretrain --source fmnist:classes=0,1,3,5,8:val=200 --iterations 2000 "
          "--schedule cosine --lr 0.05 --out runs/source\n"
          "  xfer pretrain --method datl --weights runs/w/weights.json --matcher elastic --size 12000 "
          "--source fmnist:part=0/2 --out runs/elastic\n"
          "--method scratch (the default) trains on the source labels; --method datl on the source "
          "resampled by importance weights (Domain Adaptive Transfer Learning; `xfer pretrain --method datl "
          "--help` shows its options).\n\n",
          spec_help()));
      opts_.method = kDefaultPretrainMethod;
    } else {
      app = parent.add_subcommand("finetune", "Fine-tune on a target dataset spec with a transfer method");
      app->footer(cat(
          "Examples:\n"
          "  xfer finetune --method l2 --init runs/source --target fmnist:classes=2,4,6,7,9:per_class=10\n"
          "  xfer finetune --method scratch --target fmnist:classes=2,4,6,7,9:per_class=10:val=20 --json\n"
          "Run `xfer methods` for the methods; `xfer finetune --method NAME --help` shows NAME's "
          "options.\n\n",
          spec_help()));
    }
    method_ = read_method_and_config(app->get_name(), args, opts_, /*with_method=*/true);

    Fields fields;
    opts_.fields(fields);
    add_fields(*app, fields,
               pretrain_ ? std::vector<std::string>{"target", "init"} : std::vector<std::string>{});
    app->add_option("--config", config_path_,
                    "read options from a JSON file (e.g. a run's config.json); flags "
                    "given on the command line win")
        ->group("Run");
    app->add_flag("--json", json_, "print result.json on stdout when done")->group("Run");
    if (method_) {
      Fields mf;
      method_->fields(mf);
      for (auto& f : mf.all()) f.group = cat("Method options (", opts_.method, ")");
      add_fields(*app, mf);
    }
  }

  void run(std::ostream& out) override {
    Fields fields;
    opts_.fields(fields);
    fields.validate();
    const RunResult result = pretrain_ ? run_pretrain(opts_, *method_) : run_finetune(opts_, *method_);
    if (!dist::is_main()) return;  // data-parallel: rank 0 reports for all
    if (result.stopped()) {
      out << "Stopped at step " << *result.fit.stopped_at
          << "; continue with the same command and --resume\n";
      return;
    }
    if (json_) {
      out << result.to_json().dump(2) << "\n";
    } else {
      print_summary(out, result.fit);
      out << "Outputs in " << result.out << "/\n";
    }
  }

 private:
  bool pretrain_;
  RunOptions opts_;
  std::unique_ptr<MethodConfig> method_;
  std::string config_path_;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_pretrain_command() {
  return std::make_unique<TrainCommand>(true);
}
std::unique_ptr<Command> make_finetune_command() {
  return std::make_unique<TrainCommand>(false);
}

}  // namespace xfer::cli
