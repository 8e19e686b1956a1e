/// `xfer data`: describe a dataset spec: counts per class and split, shapes, a PNG grid of examples.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/data/spec.h"
#include "xfer/report/image.h"
#include "xfer/report/table.h"

namespace xfer::cli {
namespace {

class DataCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("data",
                                "Describe a dataset spec: counts per class and split, shapes, and a "
                                "PNG grid of training images");
    app->add_option("spec", spec_, "dataset spec, e.g. fmnist:classes=2,4,6,7,9:per_class=10")->required();
    add_number(*app, "seed", seed_, "seed for specs without seed=", 0, 9.2233720368547758e18);
    app->add_option("--png", png_, "write a grid of training images (one row per class) to this PNG file");
    add_number(*app, "per_class", per_class_, "images per class in the grid", 1, 1024);
    app->add_flag("--json", json_, "print the description as JSON");
    app->footer(cat("Example:\n  xfer data fmnist:classes=2,4,6,7,9:per_class=10:val=5 --png target.png\n\n",
                    spec_help()));
  }

  void run(std::ostream& out) override {
    const Task task = load_task(spec_, static_cast<uint64_t>(seed_));
    const std::vector<std::pair<std::string, const TensorDataset*>> splits = {
        {"train", &task.train}, {"val", &task.val}, {"test", &task.test}};
    if (!png_.empty()) write_png(png_, image_grid(task.train, per_class_));
    if (json_) {
      nlohmann::json j = {{"spec", spec_},
                          {"classes", task.class_names()},
                          {"shape", {task.train.channels(), task.train.height(), task.train.width()}}};
      for (const auto& [name, d] : splits) j["counts"][name] = d->class_counts();
      out << j.dump(2) << "\n";
      return;
    }
    out << spec_ << "\n"
        << task.num_classes() << " classes, images " << task.train.channels() << "x" << task.train.height()
        << "x" << task.train.width() << " (uint8)\n\n";
    Table t({"label", "class", "train", "val", "test"});
    for (size_t c = 2; c < 5; ++c) t.align_right(c);
    std::vector<std::vector<int64_t>> counts;
    for (const auto& [name, d] : splits) counts.push_back(d->class_counts());
    for (int64_t c = 0; c < task.num_classes(); ++c)
      t.add_row({std::to_string(c), task.class_names()[c], std::to_string(counts[0][c]),
                 std::to_string(counts[1][c]), std::to_string(counts[2][c])});
    t.add_row({"", "total", std::to_string(task.train.size()), std::to_string(task.val.size()),
               std::to_string(task.test.size())});
    out << t.markdown();
    if (!png_.empty())
      out << "\nWrote " << png_ << " (" << per_class_ << " training images per class, one row each)\n";
  }

 private:
  std::string spec_, png_;
  int64_t seed_ = 0;
  int64_t per_class_ = 8;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_data_command() {
  return std::make_unique<DataCommand>();
}

}  // namespace xfer::cli
