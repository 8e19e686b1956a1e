// --init state_dict: and torchscript: against Debian's python3-torchvision: a randomly initialised
// torchvision ResNet exported by scripts/export_torchvision.py must give Python's outputs within 1e-5.
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

TEST(Pretrained, MismatchedNamesAndOrderedDictAreExplained) {
  XFER_REQUIRE_TORCHVISION();
  test::TempDir dir;
  const std::string py =
      cat("import torch, torchvision, collections\n"
          "m = torchvision.models.resnet18(weights=None)\n"
          "sd = dict(m.state_dict())\n"
          "sd['layer1.0.conv1.weight_renamed'] = sd.pop('layer1.0.conv1.weight')\n"
          "sd['fc.weight'] = torch.zeros(1000, 7)\n"
          "torch.save(sd, '",
          dir.file("bad.pt"),
          "')\n"
          "torch.save(m.state_dict(), '",
          dir.file("ordered.pt"), "')\n");
  std::ofstream(dir.file("make.py")) << py;
  ASSERT_EQ(std::system(cat("OMP_WAIT_POLICY=PASSIVE ", pre_python(), " ", dir.file("make.py")).c_str()), 0);
  test::expect_bad_input(
      [&] {
        load_external_model("state_dict:" + dir.file("bad.pt"), "", 3, 64, 64, imagenet_normalization());
      },
      {"fc.weight has shape [1000, 7]", "layer1.0.conv1.weight is missing", "layer1.0.conv1.weight_renamed"});
  test::expect_bad_input(
      [&] {
        load_external_model("state_dict:" + dir.file("ordered.pt"), "", 3, 64, 64, imagenet_normalization());
      },
      {"dict(model.state_dict())"});
  test::expect_bad_input([&] { read_state_dict(dir.file("absent.pt")); }, {dir.file("absent.pt")});
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
