#pragma once
/// The main job: the embedded Fashion-MNIST transfer task, every registered method, a results table.
///
/// Source: fmnist:classes=0,1,3,5,8 (T-shirt, Trouser, Dress, Sandal, Bag). Target:
/// fmnist:classes=2,4,6,7,9 (Pullover, Coat, Shirt, Sneaker, Ankle boot) with 10 and 50 labels per
/// class. The source model is pre-trained once and cached; each method then runs over 3 seeds per size.
/// The table gives test top-1 (mean ± std over seeds) and each method's time per step relative to l2.
/// If every registered method would not fit in the time budget, it runs scratch, l2 and each paper's
/// own method, and prints how to run the rest.
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

namespace xfer {

class Fields;

struct DemoOptions {
  std::string source = "fmnist:classes=0,1,3,5,8:val=200";
  std::string target = "fmnist:classes=2,4,6,7,9";  // per_class= is added from --sizes
  std::string sizes = "10,50";
  int64_t seeds = 3;
  std::string methods = "auto";  // auto | all | core | a comma-separated list
  std::string backbone = "cnn4";
  int64_t iterations = 300;
  int64_t pretrain_iterations = 2000;
  double budget = 10;  // minutes: "auto" runs every method only if they fit
  std::string out = "runs/demo";
  std::string cache;  // pre-trained source models; "" = $XDG_CACHE_HOME/xfer or ~/.cache/xfer
  int64_t threads = 0;

  void fields(Fields& f);
};

/// Runs the demo, prints progress and the table to `out`, writes table.md, results.csv and demo.json to
/// opts.out. Returns demo.json's content.
nlohmann::json run_demo(const DemoOptions& opts, std::ostream& out);

}  // namespace xfer
