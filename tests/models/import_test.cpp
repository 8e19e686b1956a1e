// --init state_dict: and torchscript: against Debian's python3-torchvision: a randomly initialised
// torchvision ResNet exported by scripts/export_torchvision.py must give Python's outputs within 1e-5.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "support.h"
#include "xfer/data/image_folder.h"
#include "xfer/models/import.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

std::string pre_python() {
  return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
}

bool pre_have_torchvision() {
  static const bool ok =
      std::system((pre_python() + " -c 'import torchvision' >/dev/null 2>&1").c_str()) == 0;
  return ok;
}

#define XFER_REQUIRE_TORCHVISION() \
  if (!pre_have_torchvision()) GTEST_SKIP() << "python3-torchvision is not installed (scripts/setup.sh)"

/// Runs scripts/export_torchvision.py with random weights; returns the output prefix.
std::string pre_export(const test::TempDir& dir, const std::string& arch, int classes, int example) {
  const std::string prefix = dir.file(arch);
  const std::string cmd =
      cat("OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 ", pre_python(), " ", XFER_SOURCE_DIR,
          "/scripts/export_torchvision.py --arch ", arch, " --weights none --num-classes ", classes,
          " --out ", prefix, " --example ", example, " >/dev/null");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  return prefix;
}

void pre_expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got - want).abs().max().item<double>();
  EXPECT_LE(err, 1e-5 * std::max(1.0, want.abs().max().item<double>())) << what << ": max abs error " << err;
}

void pre_check(const std::string& arch, int size) {
  test::TempDir dir;
  const std::string prefix = pre_export(dir, arch, 10, size);
  const auto example = read_state_dict(prefix + ".example.pt");
  const torch::Tensor x = example.at("x"), y = example.at("y"), f = example.at("f");
  for (const std::string& init :
       {"state_dict:" + prefix + ".state_dict.pt", "torchscript:" + prefix + ".script.pt"}) {
    Model m = load_external_model(init, "", 3, size, size, imagenet_normalization());
    ASSERT_TRUE(m->has_head("source")) << init;
    EXPECT_EQ(m->arch().head("source")->class_names.size(), 10u);
    m->eval();
    torch::NoGradGuard no_grad;
    pre_expect_close(m->backbone->forward(x), f, init + " features");
    pre_expect_close(m->forward(x, "source"), y, init + " logits");
  }
  // The state dict names torchvision's architecture: resnet18 or resnet50 at width 64.
  EXPECT_EQ(load_external_model("state_dict:" + prefix + ".state_dict.pt", "", 3, size, size,
                                imagenet_normalization())
                ->arch()
                .backbone,
            arch + ":width=64:stem=imagenet");
}

TEST(Pretrained, Resnet18MatchesTorchvision) {
  XFER_REQUIRE_TORCHVISION();
  pre_check("resnet18", 64);
}

TEST(Pretrained, Resnet50MatchesTorchvision) {
  XFER_REQUIRE_TORCHVISION();
  pre_check("resnet50", 64);
}

TEST(Pretrained, MismatchedNamesAreExplained) {
  XFER_REQUIRE_TORCHVISION();
  test::TempDir dir;
  const std::string py =
      cat("import torch, torchvision, collections\n"
          "m = torchvision.models.resnet18(weights=None)\n"
          "sd = dict(m.state_dict())\n"
          "sd['layer1.0.conv1.weight_renamed'] = sd.pop('layer1.0.conv1.weight')\n"
          "sd['fc.weight'] = torch.zeros(1000, 7)\n"
          "torch.save(sd, '",
          dir.file("bad.pt"), "')\n");
  std::ofstream(dir.file("make.py")) << py;
  ASSERT_EQ(std::system(cat("OMP_WAIT_POLICY=PASSIVE ", pre_python(), " ", dir.file("make.py")).c_str()), 0);
  test::expect_bad_input(
      [&] {
        load_external_model("state_dict:" + dir.file("bad.pt"), "", 3, 64, 64, imagenet_normalization());
      },
      {"fc.weight has shape [1000, 7]", "layer1.0.conv1.weight is missing", "layer1.0.conv1.weight_renamed"});
  test::expect_bad_input([&] { read_state_dict(dir.file("absent.pt")); }, {dir.file("absent.pt")});
}

/// The files people have, each written by python3-torch's torch.save: a plain torch.save(model.state_dict())
/// (an OrderedDict, as in the torch hub cache), timm's and the Transfer-Learning-Library's {'state_dict':
/// ...} training checkpoints (with an optimizer and argparse arguments beside it), a {'model': ...} wrapper,
/// DDP's "module." names and a LightningModule's "model." names. Each loads into the same weights as a plain
/// dict, through xfer's reader and through scripts/export_torchvision.py --from.
TEST(Pretrained, EveryStateDictShapeLoads) {
  XFER_REQUIRE_TORCHVISION();
  test::TempDir dir;
  std::ofstream(dir.file("make.py")) << cat(
      "import argparse, collections, torch, torchvision\n"
      "torch.manual_seed(3)\n"
      "m = torchvision.models.resnet18(weights=None, num_classes=6)\n"
      "with torch.no_grad():\n"
      "    for b in m.modules():\n"
      "        if isinstance(b, torch.nn.BatchNorm2d): b.running_mean.uniform_(-1, 1); "
      "b.running_var.uniform_(0.5, 2)\n"
      "opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)\n"
      "m(torch.randn(2, 3, 32, 32)).sum().backward(); opt.step()\n"
      "sd = m.state_dict()\n"
      "d = '",
      dir.path(),
      "/'\n"
      "torch.save(dict(sd), d + 'plain.pt')\n"
      "torch.save(sd, d + 'ordered.pth')\n"
      "torch.save({'epoch': 3, 'arch': 'resnet18', 'state_dict': sd, 'optimizer': opt.state_dict(),\n"
      "            'args': argparse.Namespace(lr=0.1, model='resnet18'), 'metric': 71.5}, d + "
      "'timm.pth.tar')\n"
      "torch.save({'model': sd, 'epoch': 1}, d + 'model.pth')\n"
      "torch.save({'model': collections.OrderedDict(('module.' + k, v) for k, v in sd.items())}, d + "
      "'ddp.pth')\n"
      "torch.save({'state_dict': {'model.' + k: v for k, v in sd.items()}, 'global_step': 10,\n"
      "            'pytorch-lightning_version': '1.9.0'}, d + 'lightning.ckpt')\n");
  ASSERT_EQ(
      std::system(
          cat("OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 ", pre_python(), " ", dir.file("make.py")).c_str()),
      0);
  const auto plain = read_state_dict(dir.file("plain.pt"));
  ASSERT_EQ(plain.count("fc.weight"), 1u);
  const Model want =
      load_external_model("state_dict:" + dir.file("plain.pt"), "", 3, 32, 32, imagenet_normalization());
  const auto same_model = [&](const Model& got, const std::string& what) {
    const auto a = want->named_parameters(), b = got->named_parameters();
    ASSERT_EQ(a.size(), b.size()) << what;
    for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << what << ": " << p.key();
    const auto ab = want->named_buffers(), bb = got->named_buffers();
    for (const auto& p : ab) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << what << ": " << p.key();
  };
  for (const char* file : {"ordered.pth", "timm.pth.tar", "model.pth", "ddp.pth", "lightning.ckpt"}) {
    if (std::string(file) != "lightning.ckpt") {  // its "model." prefix is taken off when a model is built
      const auto sd = read_state_dict(dir.file(file));
      ASSERT_EQ(sd.size(), plain.size()) << file;
      for (const auto& [name, t] : plain) {
        ASSERT_EQ(sd.count(name), 1u) << file << ": " << name;
        EXPECT_TRUE(torch::equal(sd.at(name), t)) << file << ": " << name;
      }
    }
    same_model(
        load_external_model(cat("state_dict:", dir.file(file)), "", 3, 32, 32, imagenet_normalization()),
        file);
    // The offline converter reads the same shapes with its own restricted unpickler.
    const std::string prefix = dir.file(cat("converted-", file));
    ASSERT_EQ(std::system(cat("OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 ", pre_python(), " ",
                              XFER_SOURCE_DIR, "/scripts/export_torchvision.py --from ", dir.file(file),
                              " --out ", prefix, " >/dev/null")
                              .c_str()),
              0)
        << file;
    same_model(load_external_model("state_dict:" + prefix + ".state_dict.pt", "", 3, 32, 32,
                                   imagenet_normalization()),
               cat(file, " converted"));
  }
}

/// A wrapper that names a global outside the allowlist is refused where the global is named, by xfer (exit
/// code 2, one line, from the command line too) and by export_torchvision.py --from; neither runs it.
TEST(Pretrained, HostileWrapperIsRefusedWithoutRunningIt) {
  XFER_REQUIRE_TORCHVISION();
  test::TempDir dir;
  const std::string marker = dir.file("ran");
  std::ofstream(dir.file("make.py")) << cat(
      "import torch, torchvision\n"
      "class Payload:\n"
      "    def __reduce__(self): return (open, ('",
      marker,
      "', 'w'))\n"
      "sd = torchvision.models.resnet18(weights=None).state_dict()\n"
      "torch.save({'state_dict': sd, 'hook': Payload()}, '",
      dir.file("hostile.pth"),
      "')\n"
      "torch.save({'model': {'conv1.weight': sd['conv1.weight'], 'x': Payload()}}, '",
      dir.file("inner.pth"), "')\n");
  ASSERT_EQ(std::system(cat("OMP_WAIT_POLICY=PASSIVE ", pre_python(), " ", dir.file("make.py")).c_str()), 0);
  ASSERT_FALSE(fs::exists(marker));
  const std::string spec = test::write_tiny_idx(dir.path(), 2, 4, 2);
  for (const char* file : {"hostile.pth", "inner.pth"}) {
    test::expect_bad_input([&] { read_state_dict(dir.file(file)); },
                           {file, "open", "not one of the globals"});
    const test::CliOutcome o =
        test::run_cli({"-q", "finetune", "--init", cat("state_dict:", dir.file(file)), "--target", spec,
                       "--iterations", "1", "--out", dir.file("run")});
    EXPECT_EQ(o.code, 2) << o.err;
    EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
    EXPECT_NE(o.err.find("open"), std::string::npos) << o.err;
    const int rc =
        std::system(cat(pre_python(), " ", XFER_SOURCE_DIR, "/scripts/export_torchvision.py --from ",
                        dir.file(file), " --out ", dir.file("converted"), " 2>/dev/null")
                        .c_str());
    EXPECT_EQ(rc, 256 * 2) << file;
  }
  EXPECT_FALSE(fs::exists(marker)) << "the payload ran";
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(Pretrained, TracedModelWarnsThatBatchNormCannotTrain) {
  XFER_REQUIRE_TORCHVISION();
  test::TempDir dir;
  std::ofstream(dir.file("make.py")) << cat(
      "import torch, torchvision\n"
      "m = torchvision.models.resnet18(weights=None, num_classes=4).eval()\n"
      "torch.jit.trace(m, torch.randn(1, 3, 64, 64)).save('",
      dir.file("traced.pt"), "')\n");
  ASSERT_EQ(std::system(cat("OMP_WAIT_POLICY=PASSIVE ", pre_python(), " ", dir.file("make.py")).c_str()), 0);
  testing::internal::CaptureStderr();
  Model m =
      load_external_model("torchscript:" + dir.file("traced.pt"), "", 3, 64, 64, imagenet_normalization());
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("looks traced, not scripted"), std::string::npos) << err;
  EXPECT_EQ(m->backbone->feature_dim(), 512);
}

}  // namespace
}  // namespace xfer
