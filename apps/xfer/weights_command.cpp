/// `xfer weights`: Domain Adaptive Transfer Learning's importance weights of the source classes for a
/// target (xfer/source/importance.h): a table sorted by weight, weights.json and a plot (Fig. 1).
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/source/importance.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/method_figures.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer::cli {
namespace {

class WeightsCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("weights",
                                "Importance weights of the source classes for a target (Domain Adaptive "
                                "Transfer Learning): w = P_t / P_s, from a source classifier's "
                                "predictions on the target images");
    app->add_option("--model", model_,
                    "the source classifier: a run directory of `xfer pretrain` on the whole "
                    "source label set, or a checkpoint")
        ->required();
    app->add_option("--source", source_, "the source dataset spec the classifier was trained on (P_s)")
        ->required();
    app->add_option("--target", target_,
                    "the target dataset spec: its training images are classified, its labels "
                    "are never used")
        ->required();
    app->add_option("--out", out_, "directory for weights.json, weights.md and weights.png")->required();
    add_number(*app, "temperature", temperature_, "softmax temperature T for P_t: softmax(logits / T)", 0,
               1e6);
    app->add_option("--head", head_,
                    "the classifier's head over the source classes (default: source, else the "
                    "only head)");
    add_number(*app, "size", size_, "N for the sample-rate columns (0: the source's size)", 0, 1e12);
    add_number(*app, "seed", seed_, "seed for specs without seed=", 0, 9.2233720368547758e18);
    add_number(*app, "threads", threads_, "CPU threads (0 = all cores)", 0, 1 << 20);
    app->add_option("--device", device_, "cpu, cuda or cuda:N")->capture_default_str();
    app->add_flag("--json", json_, "print weights.json on stdout instead of the table");
    app->footer(
        cat("Example:\n"
            "  xfer pretrain --source fmnist:part=0/2 --iterations 1500 --out runs/classifier\n"
            "  xfer weights --model runs/classifier --source fmnist:part=0/2 \\\n"
            "               --target fmnist:classes=0,2,4,6:part=1/2:per_class=10:shift=rot15 --out runs/w\n"
            "  xfer pretrain --source fmnist:part=0/2 --weights runs/w/weights.json --matcher same "
            "--size 12000 --out runs/same\n\n",
            spec_help()));
  }

  void run(std::ostream& out) override {
    XFER_CHECK(std::isfinite(temperature_) && temperature_ > 0, "--temperature must be > 0, got ",
               temperature_);
    XFER_CHECK(size_ >= 0, "--size must be > 0 (or left out for the source's size), got ", size_);
    set_threads(threads_);
    const Task source = load_task(source_, static_cast<uint64_t>(seed_));
    const ImportanceWeights w =
        importance_weights_by_model(model_, head_, source.train, source_, target_, temperature_,
                                    static_cast<uint64_t>(seed_), parse_device(device_));

    const int64_t n = size_ > 0 ? size_ : w.source_size();
    const Table table = importance_table(w, n);
    make_dirs(out_);
    write_json_file((fs::path(out_) / "weights.json").string(), w.to_json());
    write_file_atomic((fs::path(out_) / "weights.md").string(), table.markdown());
    const std::string png = (fs::path(out_) / "weights.png").string();
    const bool plotted = write_plot(png, importance_plot(w));
    if (json_) {
      out << w.to_json().dump(2) << "\n";
      return;
    }
    out << "Importance weights of " << w.num_classes() << " source classes (" << source_ << ", "
        << w.source_size() << " examples) for " << w.provenance.value("target_images", int64_t{0})
        << " target images (" << target_ << "), temperature " << temperature_
        << ". Sample rate: examples drawn / examples of the class, for a pre-training set of N = " << n
        << ".\n\n"
        << table.markdown() << "\nWrote " << out_ << "/weights.json, weights.md"
        << (plotted ? ", weights.png" : " (no plot: install gnuplot-nox)") << "\n";
  }

 private:
  std::string model_, source_, target_, out_, head_, device_ = "cpu";
  double temperature_ = 2.0;
  int64_t size_ = 0;
  int64_t seed_ = 0, threads_ = 0;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_weights_command() {
  return std::make_unique<WeightsCommand>();
}

}  // namespace xfer::cli
