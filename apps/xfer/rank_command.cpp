/// `xfer rank`: transferability of candidate models, or of candidate sources for one model, to a target
/// (LogME, LEEP, NCE, H-score; xfer/workflows/rank.h): a table ranked by score, rank.json, rank.md, rank.png.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/data/spec.h"
#include "xfer/report/plot.h"
#include "xfer/workflows/rank.h"

namespace fs = std::filesystem;

namespace xfer::cli {
namespace {

class RankCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("rank",
                                "Which source to transfer from: score candidate models (or candidate source "
                                "datasets for one model) on a target's labelled training images, before "
                                "any fine-tuning (LogME, LEEP, NCE, H-score)");
    Fields f;
    opts_.fields(f);
    add_fields(*app, f);
    app->add_flag("--json", json_, "print rank.json on stdout instead of the table");
    app->footer(
        cat("Higher scores predict higher accuracy after fine-tuning. LogME and H-score read each model's "
            "pooled features;\nLEEP and NCE its --head's softmax. With --sources, every metric reads the "
            "target's images seen\nthrough each source's classes (docs/rank.md).\n\n"
            "Examples:\n"
            "  xfer rank --target fmnist:classes=2,4,6,7,9:per_class=20 --models runs/a,runs/b,runs/c "
            "--metric all --out runs/rank\n"
            "  xfer rank --target fmnist:classes=2,4,6,7,9:per_class=20 --models runs/a \\\n"
            "            --sources \"fmnist:classes=0,1;fmnist:classes=3,5,8\" --out runs/rank-sources\n"
            "  xfer select --source-from runs/rank-sources/rank.json --init runs/a --target ...\n\n",
            spec_help()));
  }

  void run(std::ostream& out) override {
    const Ranking r = rank_candidates(opts_);
    const nlohmann::json j = r.to_json();
    const Table table = rank_table(r);
    bool plotted = false;
    if (!opts_.out.empty()) {
      make_dirs(opts_.out);
      write_json_file((fs::path(opts_.out) / "rank.json").string(), j);
      write_file_atomic((fs::path(opts_.out) / "rank.md").string(), table.markdown());
      plotted = write_plot((fs::path(opts_.out) / "rank.png").string(), rank_plot(r));
    }
    if (json_) {
      out << j.dump(2) << "\n";
      return;
    }
    double forward = 0, metrics = 0;
    for (const auto& c : r.candidates) forward += c.forward_seconds, metrics += c.metric_seconds;
    out << "Transferability to " << r.target << " (" << r.target_examples << " training images, "
        << r.target_classes << " classes)";
    if (r.mode == "sources") out << " of " << r.candidates.size() << " sources through " << r.model;
    out << ", best first:\n\n"
        << table.markdown() << "\nRanked " << r.candidates.size() << " " << r.mode << " in "
        << fixed(r.seconds, 2) << " s (forward passes " << fixed(forward, 2) << " s, metrics "
        << fixed(metrics, 2) << " s)\n";
    if (!opts_.out.empty())
      out << "Wrote " << opts_.out << "/rank.json, rank.md"
          << (plotted ? ", rank.png" : " (no plot: install gnuplot-nox)") << "\n";
  }

 private:
  RankOptions opts_;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_rank_command() {
  return std::make_unique<RankCommand>();
}

}  // namespace xfer::cli
