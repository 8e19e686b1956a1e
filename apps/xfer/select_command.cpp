/// `xfer select`: XMixup's auxiliary sample selection, printed as a table and written to pairing.json.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/report/plot.h"
#include "xfer/report/table.h"
#include "xfer/source/pairing.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/rank.h"
#include "xfer/workflows/run.h"

namespace xfer::cli {
namespace {

class SelectCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("select",
                                "Pair each target class with the most similar source classes (XMixup's "
                                "auxiliary sample selection) and write pairing.json");
    app->add_option("--target", target_, "target dataset spec")->required();
    app->add_option("--source", source_,
                    "source dataset spec (the auxiliary examples come from its train split)");
    app->add_option("--source-from", source_from_,
                    "instead of --source: the best-ranked source of a rank.json "
                    "written by `xfer rank --sources` (by its first metric)");
    app->add_option("--init", init_,
                    "pretrained model whose pooled features define the class centroids: a run "
                    "directory of `xfer pretrain`, or a checkpoint file")
        ->required();
    add_number(*app, "aux_size", aux_size_,
               "repeat the pairing until the auxiliary set holds at least this many examples (0: one round)",
               0, 1 << 24);
    app->add_option("--out", out_, "the pairing file to write")->capture_default_str();
    app->add_option("--heatmap", heatmap_,
                    "also plot the cosine similarities to this PNG or SVG (needs gnuplot)");
    add_number(*app, "seed", seed_, "seed for specs without seed=", 0, 9.2233720368547758e18);
    add_number(*app, "threads", threads_, "CPU threads (0 = all cores)", 0, 1 << 20);
    app->add_option("--device", device_, "cpu, cuda or cuda:N")->capture_default_str();
    app->add_flag("--json", json_, "print pairing.json on stdout instead of the table");
    app->footer(
        cat("Example:\n  xfer select --init runs/source --source fmnist:classes=0,1,3,5,8 "
            "--target fmnist:classes=2,4,6,7,9:per_class=10 --out pairing.json\n"
            "  xfer finetune --method xmixup --pairing pairing.json --init runs/source ...\n\n",
            spec_help()));
  }

  void run(std::ostream& out) override {
    XFER_CHECK(aux_size_ >= 0, "--aux-size must be >= 0, got ", aux_size_);
    XFER_CHECK(source_.empty() != source_from_.empty(),
               "give --source SPEC or --source-from RANK_JSON (the "
               "best-ranked source of `xfer rank --sources`), one of the two");
    if (!source_from_.empty()) source_ = best_ranked_source(read_json_file(source_from_), "", source_from_);
    set_threads(threads_);
    const Task target = load_task(target_, static_cast<uint64_t>(seed_));
    const Task source = load_task(source_, static_cast<uint64_t>(seed_));
    Model model = CheckpointReader(resolve_checkpoint(init_)).read_model();
    model->to(parse_device(device_));
    const Pairing p = select_auxiliary(model, target.train, source.train, aux_size_);
    write_json_file(out_, p.to_json());
    bool plotted = false;
    if (!heatmap_.empty()) {
      Heatmap map;
      map.title = "cosine similarity of class centroids";
      map.xlabel = "source class";
      map.ylabel = "target class";
      map.values = p.similarity;
      map.row_labels = p.target_classes;
      map.column_labels = p.source_classes;
      plotted = write_heatmap(heatmap_, map);
    }
    if (json_) {
      out << p.to_json().dump(2) << "\n";
      return;
    }
    out << "Target " << target_ << " (" << target.train.size() << " training examples)\nSource " << source_
        << (source_from_.empty() ? "" : ", the best-ranked in " + source_from_) << " (" << source.train.size()
        << " training examples)\nFeatures of " << init_ << "\n\n";
    Table t({"target class", "source class", "round", "cosine", "samples"});
    t.align_right(2);
    t.align_right(3);
    t.align_right(4);
    for (const auto& pr : p.pairs)
      t.add_row({p.target_classes[pr.target], p.source_classes[pr.source], std::to_string(pr.round),
                 fixed(pr.similarity, 4), std::to_string(p.source_counts[pr.source])});
    t.add_row({"", "auxiliary set", "", "", std::to_string(p.samples())});
    out << t.markdown() << "\nWrote " << out_ << "\n";
    if (!heatmap_.empty())
      out << (plotted ? "Wrote " + heatmap_
                      : "Skipped " + heatmap_ + ": gnuplot is not installed (gnuplot-nox)")
          << "\n";
  }

 private:
  std::string target_, source_, source_from_, init_, out_ = "pairing.json", heatmap_, device_ = "cpu";
  int64_t aux_size_ = 0;
  int64_t seed_ = 0, threads_ = 0;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_select_command() {
  return std::make_unique<SelectCommand>();
}

}  // namespace xfer::cli
