// Hostile input (issue 21): checkpoints, state dicts and TorchScript archives an attacker wrote. A checkpoint
// never makes xfer load code, never sizes an allocation beyond what it holds, and a malformed pickle is a
// BadInput before LibTorch's unpickler (which crashed on four bytes) sees it.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "../fuzz/zip_writer.h"
#include "support.h"
#include "xfer/cli.h"
#include "xfer/core/archive.h"
#include "xfer/core/io.h"
#include "xfer/data/idx.h"
#include "xfer/models/import.h"
#include "xfer/models/pickle.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

using namespace std::string_literals;

Arch hck_arch(const std::string& backbone) {
  Arch a;
  a.backbone = backbone;
  a.height = a.width = 8;
  a.input = {{0.5}, {0.25}};
  a.heads = {{"target", {"a", "b"}}};
  return a;
}

/// A checkpoint holding `stored`'s weights whose metadata declares `declared` instead.
std::string hck_forged(const std::string& path, const Model& stored, const nlohmann::json& declared) {
  Archive model, payload;
  model.write_module(*stored);
  payload.write("model", model);
  payload.write_text("meta", nlohmann::json{{"format", kCheckpointFormat}, {"arch", declared}}.dump());
  const std::string bytes = payload.encode();
  std::ofstream(path, std::ios::binary) << checkpoint_header(bytes) << bytes;
  return path;
}

TEST(HostileCheckpoint, ScriptBackboneNamedByACheckpointIsNeverLoaded) {
  test::TempDir dir;
  const Model tiny(hck_arch("cnn4:width=4"));
  // The script file exists and is a readable archive; loading it would run its code. It is refused on the
  // checkpoint's word alone, before the file is opened: the message is the refusal, not a parse error.
  const std::string script = dir.file("payload.pt");
  std::ofstream(script, std::ios::binary) << fuzz::stored_zip({{"archive/data.pkl", "\x80\x02N."}});
  nlohmann::json declared = tiny->arch().to_json();
  declared["backbone"] = "script:path=" + script;
  const std::string ck = hck_forged(dir.file("evil.pt"), tiny, declared);
  ASSERT_FALSE(is_trusted_script(script));
  test::expect_bad_input([&] { CheckpointReader(ck).read_model(); },
                         {"evil.pt", "loads one only when you name it", "never because a checkpoint"});
  // Through the command line: --init of a run directory whose checkpoint names the script.
  make_dirs(dir.file("run/checkpoints"));
  fs::copy_file(ck, dir.file("run/checkpoints/last.pt"));
  std::ostringstream out, err;
  const std::string spec = test::write_tiny_idx(dir.path(), 2, 4, 1);
  const int code = cli::run({"-q", "finetune", "--method", "l2", "--init", dir.file("run"), "--target", spec,
                             "--iterations", "1", "--threads", "1", "--out", dir.file("ft")},
                            out, err);
  EXPECT_EQ(code, 2) << err.str();
  EXPECT_NE(err.str().find("never because a checkpoint"), std::string::npos) << err.str();
  EXPECT_FALSE(is_trusted_script(script));
}

TEST(HostileCheckpoint, DeclaredArchitectureMustFitTheTensorsHeld) {
  test::TempDir dir;
  const Model tiny(hck_arch("cnn4:width=4"));
  nlohmann::json declared = tiny->arch().to_json();
  declared["backbone"] = "cnn4:width=4096";  // 2.4e9 parameters for a file of a few kB
  test::expect_bad_input(
      [&] { CheckpointReader(hck_forged(dir.file("wide.pt"), tiny, declared)).read_model(); },
      {"wide.pt", "declares cnn4:width=4096", "values) but holds"});
  declared = tiny->arch().to_json();
  declared["heads"] =
      nlohmann::json::array({{{"name", "target"}, {"classes", std::vector<std::string>(100000, "c")}}});
  test::expect_bad_input(
      [&] { CheckpointReader(hck_forged(dir.file("heads.pt"), tiny, declared)).read_model(); },
      {"heads.pt", "declares"});
  for (const auto& bad : {nlohmann::json{{"in_channels", 1000000}}, nlohmann::json{{"height", -1}},
                          nlohmann::json{{"input_std", {0.0}}}}) {
    declared = tiny->arch().to_json();
    declared.update(bad);
    test::expect_bad_input(
        [&] { CheckpointReader(hck_forged(dir.file("bounds.pt"), tiny, declared)).read_model(); },
        {"bounds.pt"});
  }
}

TEST(HostileCheckpoint, HeadNamesLibTorchCannotRegisterAreBadInput) {
  test::TempDir dir;
  const Model tiny(hck_arch("cnn4:width=4"));
  for (const std::string name : {"a.b", "", "x\ny"}) {
    nlohmann::json declared = tiny->arch().to_json();
    declared["heads"][0]["name"] = name;
    test::expect_bad_input(
        [&] { CheckpointReader(hck_forged(dir.file("h.pt"), tiny, declared)).read_model(); },
        {"h.pt", "a head name must be 1-64 letters"});
  }
}

TEST(HostileCheckpoint, ComputedSizesEqualTheModelsBuilt) {
  for (const std::string spec : {"cnn4:width=3", "resnet20:width=2", "resnet18:width=2:stem=cifar",
                                 "resnet18:width=3:stem=imagenet", "resnet50:width=2"})
    for (const int64_t channels : {1, 3}) {
      Arch a = hck_arch(spec);
      a.in_channels = channels;
      a.input = {};
      a.heads = {{"target", {"a", "b", "c"}}, {"source", {"x"}}};
      const Model m(a);
      int64_t n = 0;
      for (const auto& p : m->parameters()) n += p.numel();
      for (const auto& b : m->buffers()) n += b.numel();
      EXPECT_EQ(a.numel(), n) << spec << " with " << channels << " channels";
      EXPECT_EQ(backbone_size(spec, channels).feature_dim, m->backbone->feature_dim()) << spec;
    }
}

std::string hck_state_dict_file(const test::TempDir& dir, const std::string& name, const std::string& pickle,
                                const std::string& record = std::string(64, '\0')) {
  std::ofstream(dir.file(name), std::ios::binary)
      << fuzz::stored_zip({{"archive/data.pkl", pickle}, {"archive/data/0", record}});
  return dir.file(name);
}

TEST(HostileCheckpoint, MalformedPicklesAreBadInputNotCrashes) {
  test::TempDir dir;
  // The crash: TUPLE1 on an empty stack.
  test::expect_bad_input([&] { read_state_dict(hck_state_dict_file(dir, "t.pt", "\x80\x02\x85.")); },
                         {"t.pt", "malformed pickle at byte 2", "needs 1 values, 0 there"});
  // A memo index never stored, a huge string length, SETITEMS on a list, trailing bytes, no STOP.
  for (const std::string& p :
       {std::string("\x80\x02h\x05."), std::string("\x80\x02X\xff\xff\xff\x7f"),
        std::string("\x80\x02](NNu."), std::string("\x80\x02}.junk"), std::string("\x80\x02}")})
    test::expect_bad_input([&] { read_state_dict(hck_state_dict_file(dir, "p.pt", p)); },
                           {"p.pt", "malformed pickle"});
  // Not a zip, and a raw pickle: refused with the hint.
  std::ofstream(dir.file("raw.pt"), std::ios::binary) << "\x80\x02}q\x00.";
  test::expect_bad_input([&] { read_state_dict(dir.file("raw.pt")); }, {"raw.pt", "not the zip archive"});
  // A tensor record whose sizes reach past its 16-float storage.
  // {'w': _rebuild_tensor_v2(storage '0' of 16 floats, offset 0, sizes (5, 4), strides (4, 1), False, ())}
  const std::string tensor = "\x80\x02}(X\x01\x00\x00\x00w"s +
                             "ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00"s +
                             "storagectorch\nFloatStorage\nX\x01\x00\x00\x00"s + "0X\x03\x00\x00\x00"s +
                             "cpuK\x10tQK\x00K\x05K\x04\x86K\x04K\x01\x86\x89)tRu."s;
  test::expect_bad_input([&] { read_state_dict(hck_state_dict_file(dir, "far.pt", tensor)); },
                         {"entry 'w'", "reach past its storage of 16 elements"});
  // The same record with sizes (4, 4) reads back, the 16 floats of the record.
  std::string fits = tensor;
  fits[fits.find("K\x05K\x04") + 1] = '\x04';
  std::string floats(64, '\0');
  for (int i = 0; i < 16; ++i) reinterpret_cast<float*>(floats.data())[i] = static_cast<float>(i);
  const auto sd = read_state_dict(hck_state_dict_file(dir, "fits.pt", fits, floats));
  EXPECT_TRUE(torch::equal(sd.at("w"), torch::arange(16, torch::kFloat32).view({4, 4})));
}

TEST(HostileCheckpoint, TorchScriptArchiveWithAOneOpcodePickleIsRefusedBeforeLibTorch) {
  test::TempDir dir;
  std::ofstream(dir.file("s.pt"), std::ios::binary)
      << fuzz::stored_zip({{"archive/data.pkl", "\x80\x02\x85."}, {"archive/version", "3\n"}});
  test::expect_bad_input([&] { load_external_model("torchscript:" + dir.file("s.pt"), "", 3, 8, 8, {}); },
                         {"s.pt", "data.pkl", "malformed pickle"});
  std::ofstream(dir.file("packed.pt"), std::ios::binary) << "PK\x03\x04 and nothing else";
  test::expect_bad_input(
      [&] { load_external_model("torchscript:" + dir.file("packed.pt"), "", 3, 8, 8, {}); },
      {"packed.pt", "zip"});
}

/// Real files from torch.save (Debian's python3-torch), read without LibTorch's unpickler: values, views
/// (a transpose, a row of a shared storage), half, bool and 0-d tensors.
TEST(HostileCheckpoint, StateDictsFromTorchSaveReadBackExactly) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3-torch is not installed";
  test::TempDir dir;
  std::ofstream(dir.file("make.py")) << cat(
      "import torch, collections\n"
      "w = torch.arange(6, dtype=torch.float32).reshape(2, 3)\n"
      "torch.save({'t': w.t(), 'row': w[1], 'half': torch.full((3,), 1.5, dtype=torch.float16),\n"
      "            'mask': torch.tensor([True, False]), 'scalar': torch.tensor(7.0), 'n': torch.arange(3)}, "
      "'",
      dir.file("sd.pt"), "')\n", "torch.save(torch.nn.Linear(2, 2).state_dict(), '", dir.file("od.pt"),
      "')\n");
  ASSERT_EQ(std::system(cat("OMP_NUM_THREADS=1 /usr/bin/python3 ", dir.file("make.py")).c_str()), 0);
  const auto sd = read_state_dict(dir.file("sd.pt"));
  const torch::Tensor w = torch::arange(6, torch::kFloat32).view({2, 3});
  EXPECT_TRUE(torch::equal(sd.at("t"), w.t()));
  EXPECT_TRUE(torch::equal(sd.at("row"), w[1]));
  EXPECT_TRUE(torch::equal(sd.at("half"), torch::full({3}, 1.5, torch::kFloat16)));
  EXPECT_TRUE(torch::equal(sd.at("mask"), torch::tensor({true, false})));
  EXPECT_EQ(sd.at("scalar").dim(), 0);
  EXPECT_EQ(sd.at("scalar").item<float>(), 7.0f);
  EXPECT_TRUE(torch::equal(sd.at("n"), torch::arange(3)));
  // torch.save(module.state_dict()): an OrderedDict with _metadata set by BUILD, read the same way.
  const auto od = read_state_dict(dir.file("od.pt"));
  EXPECT_EQ(od.size(), 2u);
  EXPECT_EQ(od.at("weight").sizes(), torch::IntArrayRef({2, 2}));
  EXPECT_EQ(od.at("bias").sizes(), torch::IntArrayRef({2}));
}

/// `images` (n, h, w) or (n, h, w, 3) as IDX files with labels 0, 1, 0, 1, ...; returns the spec.
std::string hck_idx_spec(const test::TempDir& dir, const std::string& stem, const torch::Tensor& images) {
  const int64_t n = images.size(0);
  std::ofstream(dir.file(stem + "-i"), std::ios::binary) << encode_idx(images.to(torch::kUInt8));
  std::ofstream(dir.file(stem + "-l"), std::ios::binary)
      << encode_idx(torch::arange(n, torch::kInt64).remainder(2).to(torch::kUInt8));
  return cat("idx:train_images=", dir.file(stem + "-i"), ":train_labels=", dir.file(stem + "-l"),
             ":test=none");
}

TEST(HostileCheckpoint, TinyImagesAndTheOtherChannelCountAreOneLineErrors) {
  test::TempDir dir;
  std::ostringstream out, err;
  // 3x3 images: cnn4's second 2x2 pooling has nothing left ("Output size is too small" from LibTorch).
  const std::string tiny = hck_idx_spec(dir, "tiny", torch::zeros({8, 3, 3}));
  EXPECT_EQ(cli::run({"-q", "finetune", "--method", "scratch", "--target", tiny, "--iterations", "1",
                      "--threads", "1", "--out", dir.file("tiny-run")},
                     out, err),
            2)
      << err.str();
  EXPECT_NE(err.str().find("3x3 images are too small for backbone cnn4:width=16"), std::string::npos)
      << err.str();
  // A 1-channel model evaluated on 3-channel images: the message says which side takes what.
  const std::string gray = hck_idx_spec(dir, "gray", torch::zeros({8, 8, 8}));
  ASSERT_EQ(cli::run({"-q", "pretrain", "--source", gray, "--backbone", "cnn4:width=2", "--iterations", "1",
                      "--batch-size", "4", "--threads", "1", "--out", dir.file("gray-run")},
                     out, err),
            0)
      << err.str();
  std::ostringstream out2, err2;
  EXPECT_EQ(
      cli::run({"eval", "--model", dir.file("gray-run"), "--data",
                hck_idx_spec(dir, "rgb", torch::zeros({4, 8, 8, 3})), "--split", "train", "--threads", "1"},
               out2, err2),
      2);
  EXPECT_NE(err2.str().find("the checkpoint takes 1-channel images, this data has 3"), std::string::npos)
      << err2.str();
}

}  // namespace
}  // namespace xfer
