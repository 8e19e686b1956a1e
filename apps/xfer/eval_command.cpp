/// `xfer eval`: test a trained model on a dataset spec.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/report/table.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/trainer.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer::cli {
namespace {

class EvalCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("eval",
                                "Evaluate a trained model on a dataset spec: top-1, mean per-class "
                                "accuracy, per-class accuracy and the confusion matrix");
    app->add_option("--model", model_, "a run directory or a checkpoint file")->required();
    app->add_option("--data", data_,
                    "dataset spec to evaluate on (default: the run's target spec, from the "
                    "config.json of the run the model belongs to, with its seed)");
    app->add_option("--split", split_, "which split of the spec: test, val or train")
        ->capture_default_str()
        ->check(CLI::IsMember({"test", "val", "train"}));
    app->add_option("--head", head_, "the head to evaluate (default: target if present, else the only head)");
    add_number(*app, "seed", seed_, "seed for specs without seed=", 0, 9.2233720368547758e18);
    add_number(*app, "threads", threads_, "CPU threads (0 = all cores)", 0, 1 << 20);
    app->add_option("--device", device_, "cpu, cuda or cuda:N")->capture_default_str();
    app->add_option("--script", script_,
                    "the TorchScript file of a model fine-tuned from --init torchscript:FILE: "
                    "a checkpoint alone never loads code, so name it here if you trust it "
                    "(loading it runs its code, as torch.jit.load does)");
    app->add_flag("--json", json_, "print the evaluation as JSON");
    app->footer(
        cat("Example:\n  xfer eval --model runs/ft --data fmnist:classes=2,4,6,7,9\n\n", spec_help()));
  }

  void run(std::ostream& out) override {
    set_threads(threads_);
    if (!script_.empty()) trust_script(script_);
    CheckpointReader ck(resolve_checkpoint(model_));
    Model model = ck.read_model();
    model->to(parse_device(device_));
    std::string head = head_;
    if (head.empty())
      head =
          model->has_head("target") || model->arch().heads.empty() ? "target" : model->arch().heads[0].name;
    if (data_.empty()) {
      // A run directory's checkpoints/NAME.pt: the run's config.json names the data it was trained on (with
      // absolute paths, so this works from any directory).
      const fs::path config = fs::path(ck.path()).parent_path().parent_path() / "config.json";
      XFER_CHECK(fs::exists(config), "pass --data SPEC: ", ck.path(),
                 " is not in a run directory with a config.json");
      const nlohmann::json run = read_json_file(config.string());
      data_ = run.value("command", "") == "pretrain" ? run.value("source", "") : run.value("target", "");
      XFER_CHECK(!data_.empty(), "pass --data SPEC: ", config.string(), " names no dataset");
      if (app->count("--seed") == 0) seed_ = run.value("seed", int64_t{0});
    }
    const Task task = load_task(data_, static_cast<uint64_t>(seed_));
    const TensorDataset& data = split_ == "test" ? task.test : split_ == "val" ? task.val : task.train;
    XFER_CHECK(data.size() > 0, "the ", split_, " split of '", data_, "' is empty");
    // `this` is the data's side, the argument the checkpoint's: the message says which takes what.
    const std::string why =
        Arch{model->arch().backbone, data.channels(), data.height(), data.width(), {}, {}}.mismatch(
            model->arch(), false);
    XFER_CHECK(why.empty(), model_, ": ", why);
    check_input_fits(*model, data.height(), data.width());
    const Evaluation ev = evaluate(model, data, head, 500, "eval");
    if (json_) {
      nlohmann::json j = ev.to_json();
      j["model"] = ck.path();
      j["data"] = data_;
      j["split"] = split_;
      j["head"] = head;
      out << j.dump(2) << "\n";
      return;
    }
    out << "Model " << ck.path() << ", head '" << head << "', " << data_ << " (" << split_ << ", " << ev.count
        << " examples)\n\n";
    out << "top-1 " << fixed(100 * ev.top1, 2) << "%, mean per-class accuracy "
        << fixed(100 * ev.mean_class, 2) << "%\n\n";
    std::vector<std::string> header = {"true \\ predicted"};
    for (const auto& n : data.class_names) header.push_back(n);
    header.push_back("accuracy");
    Table t(header);
    for (size_t c = 1; c < header.size(); ++c) t.align_right(c);
    for (size_t r = 0; r < ev.confusion.size(); ++r) {
      std::vector<std::string> row = {data.class_names[r]};
      for (int64_t v : ev.confusion[r]) row.push_back(std::to_string(v));
      row.push_back(std::isnan(ev.per_class[r]) ? "-" : fixed(100 * ev.per_class[r], 1) + "%");
      t.add_row(row);
    }
    out << t.markdown();
  }

 private:
  std::string model_, data_, split_ = "test", head_, device_ = "cpu";
  int64_t seed_ = 0, threads_ = 0;
  std::string script_;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_eval_command() {
  return std::make_unique<EvalCommand>();
}

}  // namespace xfer::cli
