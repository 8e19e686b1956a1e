// `xfer export` against Debian's python3-torch: the state dict loads with strict=True into torchvision's
// ResNet-18/50 or scripts/xfer_models.py's cnn4/resnet20/ResNets and gives xfer's logits on fixed images
// within 1e-5; a model fine-tuned from a TorchScript file comes back as TorchScript with the same logits.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <torch/csrc/jit/serialization/pickle.h>
#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/image_folder.h"
#include "xfer/models/import.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

bool exp_have_torchvision() {
  static const bool ok = std::system("/usr/bin/python3 -c 'import torchvision' >/dev/null 2>&1") == 0;
  return ok;
}

#define XFER_REQUIRE_PYTHON_TORCH() \
  if (!exp_have_torchvision()) GTEST_SKIP() << "python3-torch / python3-torchvision are not installed"

/// Weights and batch-norm statistics away from their initial values, so that a wrong name or a skipped
/// buffer changes the logits.
void exp_perturb(Model& m, uint64_t seed) {
  torch::manual_seed(static_cast<int64_t>(seed));
  torch::NoGradGuard no_grad;
  for (auto& p : m->parameters()) p.add_(torch::randn_like(p).mul_(0.05));
  for (auto& b : m->named_buffers()) {
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.2, 0.2);
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
  }
  // Batch-norm scales below 1 keep a deep ResNet's logits near 1 (not 1e6), where 1e-5 is a real bound.
  for (auto& p : m->named_parameters())
    if (p.key().find("bn") != std::string::npos && p.key().size() > 7 &&
        p.key().compare(p.key().size() - 7, 7, ".weight") == 0)
      p.value().uniform_(0.3, 0.7);
}

std::string exp_checkpoint(const test::TempDir& dir, const Model& m) {
  CheckpointWriter w(nlohmann::json{{"step", 7}});
  w.write_model(m);
  w.commit(dir.file("model.ckpt"));
  return dir.file("model.ckpt");
}

/// Fixed images and xfer's eval-mode logits of head `head`, saved for Python as {x, y}.
void exp_write_example(Model& m, const std::string& head, const std::string& path) {
  const Arch& a = m->arch();
  const torch::Tensor x = torch::linspace(-2, 2, 2 * a.in_channels * a.height * a.width)
                              .view({2, a.in_channels, a.height, a.width})
                              .sin();
  m->eval();
  torch::NoGradGuard no_grad;
  c10::Dict<std::string, at::Tensor> d;
  d.insert("x", x);
  d.insert("y", m->forward(x, head));
  const std::vector<char> bytes = torch::jit::pickle_save(d);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// Runs `code` (Python, with `model` loaded and `ex` = {x, y}); it exits 0 when the logits match.
int exp_python(const test::TempDir& dir, const std::string& code) {
  std::ofstream(dir.file("check.py")) << cat(
      "import json, sys, torch, torchvision\n"
      "sys.path.insert(0, '",
      XFER_SOURCE_DIR,
      "/scripts')\n"
      "import xfer_models\n"
      "torch.set_num_threads(1)\n"
      "ex = torch.load('",
      dir.file("example.pt"), "')\n", code,
      "model.eval()\n"
      "with torch.no_grad():\n"
      "    y = model(ex['x'])\n"
      "err = (y - ex['y']).abs().max().item()\n"
      "print('max abs error', err, 'of logits up to', ex['y'].abs().max().item())\n"
      "sys.exit(0 if y.shape == ex['y'].shape and err <= 1e-5 and ex['y'].abs().max() > 0.01 else 1)\n");
  return std::system(cat("OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 ", dir.file("check.py")).c_str());
}

/// Builds `backbone` with a target and a source head, exports it, and checks it in PyTorch through the
/// constructor the export's .json names (torchvision or xfer_models) and through xfer_models.load.
void exp_state_dict_round_trip(const std::string& backbone, int64_t channels, int64_t side,
                               const std::string& constructor) {
  test::TempDir dir;
  Arch arch;
  arch.backbone = backbone;
  arch.in_channels = channels;
  arch.height = arch.width = side;
  arch.heads = {{"source", {"a", "b", "c", "d"}}, {"target", {"t0", "t1", "t2"}}};
  torch::manual_seed(1);
  Model m(arch);
  exp_perturb(m, 2);
  const std::string ckpt = exp_checkpoint(dir, m);
  exp_write_example(m, "target", dir.file("example.pt"));
  const test::CliOutcome o = test::run_cli({"export", ckpt, "--out", dir.file("out/model.pt")});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.out.find(constructor), std::string::npos) << o.out;
  const nlohmann::json info = read_json_file(dir.file("out/model.pt.json"));
  EXPECT_EQ(info["pytorch"], constructor);
  EXPECT_EQ(info["classes"], nlohmann::json({"t0", "t1", "t2"}));
  EXPECT_EQ(info["backbone"], m->arch().backbone);
  // The file's own names and strict=True: no xfer name, no source head, nothing missing.
  EXPECT_EQ(
      exp_python(dir,
                 cat("model = ", constructor,
                     "\n"
                     "sd = torch.load('",
                     dir.file("out/model.pt"),
                     "', weights_only=True)\n"
                     "assert type(sd) is dict and 'fc.weight' in sd and not any('heads' in k for k in sd)\n"
                     "model.load_state_dict(sd, strict=True)\n")),
      0)
      << backbone;
  EXPECT_EQ(exp_python(dir, cat("model = xfer_models.load('", dir.file("out/model.pt"), "')\n")), 0)
      << backbone;
  // What xfer wrote, xfer's own reader takes back: the same tensors under the same names.
  const auto back = read_state_dict(dir.file("out/model.pt"));
  const auto want = pytorch_state_dict(m, "target");
  ASSERT_EQ(back.size(), want.size());
  for (const auto& [name, t] : want) EXPECT_TRUE(torch::equal(back.at(name), t)) << name;
}

TEST(Export, Cnn4LoadsIntoXferModels) {
  XFER_REQUIRE_PYTHON_TORCH();
  exp_state_dict_round_trip("cnn4:width=4", 1, 16,
                            "xfer_models.build('cnn4:width=4', in_channels=1, num_classes=3)");
}

TEST(Export, Resnet20LoadsIntoXferModels) {
  XFER_REQUIRE_PYTHON_TORCH();
  exp_state_dict_round_trip("resnet20:width=4", 3, 16,
                            "xfer_models.build('resnet20:width=4', in_channels=3, num_classes=3)");
}

TEST(Export, NarrowCifarResnet18LoadsIntoXferModels) {
  XFER_REQUIRE_PYTHON_TORCH();
  exp_state_dict_round_trip("resnet18:width=8:stem=cifar", 3, 16,
                            "xfer_models.build('resnet18:width=8:stem=cifar', in_channels=3, num_classes=3)");
}

TEST(Export, Resnet18LoadsIntoTorchvision) {
  XFER_REQUIRE_PYTHON_TORCH();
  exp_state_dict_round_trip("resnet18", 3, 32, "torchvision.models.resnet18(num_classes=3)");
}

TEST(Export, Resnet50LoadsIntoTorchvision) {
  XFER_REQUIRE_PYTHON_TORCH();
  exp_state_dict_round_trip("resnet50", 3, 32, "torchvision.models.resnet50(num_classes=3)");
}

/// A model fine-tuned from --init torchscript:FILE comes back as that script with the trained weights and
/// the target head in its classifier's place.
TEST(Export, ScriptBackboneComesBackAsTorchScript) {
  XFER_REQUIRE_PYTHON_TORCH();
  test::TempDir dir;
  const std::string prefix = dir.file("r18");
  ASSERT_EQ(
      std::system(cat("OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 /usr/bin/python3 ", XFER_SOURCE_DIR,
                      "/scripts/export_torchvision.py --arch resnet18 --weights none --num-classes 10 --out ",
                      prefix, " >/dev/null")
                      .c_str()),
      0);
  const std::string script = prefix + ".script.pt";
  Model m = load_external_model("torchscript:" + script, "", 3, 32, 32, imagenet_normalization());
  m->add_head({"target", {"t0", "t1", "t2"}});
  exp_perturb(m, 4);  // as if fine-tuned: the backbone's weights are the script's own tensors
  const std::string ckpt = exp_checkpoint(dir, m);
  exp_write_example(m, "target", dir.file("example.pt"));
  const test::CliOutcome o = test::run_cli(
      {"export", ckpt, "--format", "torchscript", "--script", script, "--out", dir.file("ft.script.pt")});
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(exp_python(dir, cat("model = torch.jit.load('", dir.file("ft.script.pt"), "')\n")), 0);
  // A built-in backbone has no script to come back as.
  Arch arch;
  arch.backbone = "cnn4:width=2";
  arch.height = arch.width = 8;
  arch.heads = {{"target", {"a", "b"}}};
  test::TempDir other;
  const test::CliOutcome no = test::run_cli(
      {"export", exp_checkpoint(other, Model(arch)), "--format", "torchscript", "--out", other.file("x.pt")});
  EXPECT_EQ(no.code, 2);
  EXPECT_NE(no.err.find("--format state_dict"), std::string::npos) << no.err;
}

}  // namespace
}  // namespace xfer
