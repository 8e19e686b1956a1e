/// `xfer export`: a trained model back to PyTorch, as a state dict torch.load reads or a TorchScript file.
#include <filesystem>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/models/import.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer::cli {
namespace {

class ExportCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("export",
                                "Export a trained model to PyTorch: a state dict that torch.load reads "
                                "and torchvision's ResNet-18/50 (or scripts/xfer_models.py) loads with "
                                "strict=True, or a TorchScript file");
    app->add_option("model", model_,
                    "a run directory (its best checkpoint, else its last) or a checkpoint file")
        ->required();
    app->add_option("--format", format_,
                    "state_dict (torchvision names, the head as fc) or torchscript (models "
                    "fine-tuned from --init torchscript:FILE: the script with the trained "
                    "weights and head)")
        ->capture_default_str()
        ->check(CLI::IsMember({"state_dict", "torchscript"}));
    app->add_option("--out", out_,
                    "the file to write; OUT.json beside it describes the model (classes, input "
                    "size and normalisation, how to build it in PyTorch)")
        ->required();
    app->add_option("--head", head_,
                    "the head to export as the classifier (default: target if present, else the "
                    "only head)");
    app->add_option("--script", script_,
                    "the TorchScript file the model was fine-tuned from (--init "
                    "torchscript:FILE): a checkpoint alone never loads code, so name it here "
                    "if you trust it");
    app->add_flag("--json", json_, "print OUT.json on stdout");
    app->footer(
        "Examples:\n"
        "  xfer export runs/ft --out ft.pt\n"
        "  python3 -c \"import torch, torchvision; m = torchvision.models.resnet50(num_classes=5); "
        "m.load_state_dict(torch.load('ft.pt'))\"\n"
        "  xfer export runs/ft-script --format torchscript --script weights/r50.script.pt --out "
        "ft.script.pt\n"
        "docs/models.md shows how to load both in PyTorch.");
  }

  void run(std::ostream& out) override {
    if (!script_.empty()) trust_script(script_);
    CheckpointReader ck(resolve_checkpoint(model_));
    Model model = ck.read_model();
    model->to(torch::kCPU);
    model->eval();
    std::string head = head_;
    if (head.empty())
      head =
          model->has_head("target") || model->arch().heads.empty() ? "target" : model->arch().heads[0].name;
    XFER_CHECK(model->has_head(head), ck.path(), ": the model has no '", head, "' head to export");
    if (fs::path(out_).has_parent_path()) make_dirs(fs::path(out_).parent_path().string());
    if (format_ == "state_dict")
      save_pytorch_state_dict(model, head, out_);
    else
      save_torchscript(model, head, out_);

    const Arch& a = model->arch();
    const HeadInfo& h = *a.head(head);
    nlohmann::json info = {{"format", format_},
                           {"file", fs::path(out_).filename().string()},
                           {"checkpoint", fs::absolute(ck.path()).lexically_normal().string()},
                           {"step", ck.meta().value("step", nlohmann::json())},
                           {"backbone", a.backbone},
                           {"in_channels", a.in_channels},
                           {"height", a.height},
                           {"width", a.width},
                           {"input_mean", a.input.mean},
                           {"input_std", a.input.std},
                           {"head", head},
                           {"classifier", pytorch_classifier(model)},
                           {"classes", h.class_names},
                           {"predict_classes", h.predicted()},
                           {"pytorch", format_ == "state_dict" ? pytorch_constructor(model, head)
                                                               : std::string("torch.jit.load(FILE)")}};
    write_json_file(out_ + ".json", info);
    if (json_) {
      out << info.dump(2) << "\n";
      return;
    }
    out << "Wrote " << out_ << " (" << format_ << ", head '" << head << "' of " << h.class_names.size()
        << " classes) and " << out_ << ".json\n";
    if (format_ == "state_dict")
      out << "Load it in PyTorch:\n  model = " << info["pytorch"].get<std::string>() << "\n"
          << "  model.load_state_dict(torch.load('" << out_ << "'), strict=True)\n  model.eval()\n";
    else
      out << "Load it in PyTorch:\n  model = torch.jit.load('" << out_ << "').eval()\n";
    out << "Inputs: " << a.in_channels << "x" << a.height << "x" << a.width
        << " images scaled to [0, 1], normalised with the mean and std in " << out_ << ".json\n";
  }

 private:
  std::string model_, format_ = "state_dict", out_, head_, script_;
  bool json_ = false;
};

}  // namespace

std::unique_ptr<Command> make_export_command() {
  return std::make_unique<ExportCommand>();
}

}  // namespace xfer::cli
