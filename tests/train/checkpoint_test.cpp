#include <filesystem>
#include <sstream>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/optim/optim.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/pretrained.h"

namespace xfer {
namespace {

Model make_model(const std::string& backbone) {
  Arch a;
  a.backbone = backbone;
  a.height = a.width = 28;
  a.input = {{0.3}, {0.3}};
  a.heads = {{"source", {"a", "b"}}};
  return Model(a);
}

ParamGroup group(const std::string& name, std::vector<torch::Tensor> params) {
  ParamGroup g;
  g.name = name;
  g.params = std::move(params);
  return g;
}

std::string write_checkpoint(const std::string& path, const Model& m) {
  CheckpointWriter w({{"step", 12}, {"note", "hello"}});
  w.write_model(m);
  w.write("extra", torch::arange(5));
  w.commit(path);
  return path;
}

TEST(Checkpoint, RoundTripIsBitExact) {
  test::TempDir dir;
  Model m = make_model("cnn4:width=4");
  {  // non-default buffers too
    torch::NoGradGuard g;
    m->backbone->named_buffers()["layer1.1.running_mean"].add_(0.25);
  }
  CheckpointReader r(write_checkpoint(dir.file("a.pt"), m));
  EXPECT_EQ(r.meta()["step"], 12);
  EXPECT_EQ(r.meta()["note"], "hello");
  EXPECT_EQ(r.meta()["format"], kCheckpointFormat);
  EXPECT_TRUE(torch::equal(r.read_tensor("extra"), torch::arange(5)));
  const Model back = r.read_model();
  const auto a = m->named_parameters(), b = back->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  for (const auto& p : m->named_buffers())
    EXPECT_TRUE(torch::equal(p.value(), back->named_buffers()[p.key()])) << p.key();
  EXPECT_EQ(back->arch().heads[0].name, "source");
}

TEST(Checkpoint, CorruptTruncatedAndForeignFilesAreRejected) {
  test::TempDir dir;
  const std::string path = write_checkpoint(dir.file("a.pt"), make_model("cnn4:width=4"));
  std::string bytes = read_file(path);
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  write_file_atomic(dir.file("flipped.pt"), flipped);
  test::expect_bad_input([&] { CheckpointReader(dir.file("flipped.pt")); },
                         {"flipped.pt", "checksum mismatch"});
  write_file_atomic(dir.file("short.pt"), bytes.substr(0, bytes.size() - 100));
  test::expect_bad_input([&] { CheckpointReader(dir.file("short.pt")); },
                         {"short.pt", "truncated checkpoint"});
  write_file_atomic(dir.file("other.pt"), "PK\x03\x04 a zip from somewhere else");
  test::expect_bad_input([&] { CheckpointReader(dir.file("other.pt")); },
                         {"not an xfer checkpoint but a zip archive", "state_dict:FILE or torchscript:FILE"});
  std::string future = bytes;
  future[8] = 99;
  write_file_atomic(dir.file("future.pt"), future);
  test::expect_bad_input([&] { CheckpointReader(dir.file("future.pt")); }, {"checkpoint format 99"});
  EXPECT_EQ(checkpoint_format_of(path), kCheckpointFormat);
  EXPECT_EQ(checkpoint_format_of(dir.file("future.pt")), 99u);
  EXPECT_EQ(checkpoint_format_of(dir.file("other.pt")), 0u);
  EXPECT_EQ(checkpoint_format_of(dir.file("missing.pt")), 0u);
}

TEST(Checkpoint, CachedSourceModelsOfAnotherFormatAreTrainedAgain) {
  test::TempDir dir;
  RunOptions p = source_pretrain_options(test::write_tiny_idx(dir.path(), 3, 12, 3), "cnn4:width=4", 4);
  p.loader.batch_size = 8;
  p.threads = 1;
  std::ostringstream first, again, reused;
  const std::string cached = cached_pretrain({p}, dir.file("cache"), first);
  // No validation split: the run keeps last.pt only (which a cache that looked for best.pt retrained each
  // time).
  const std::string best = resolve_checkpoint(cached);
  EXPECT_EQ(best, cached + "/checkpoints/last.pt");
  ASSERT_EQ(checkpoint_format_of(best), kCheckpointFormat) << first.str();
  std::string bytes = read_file(best);
  bytes[8] = 1;  // as written before format 2
  write_file_atomic(best, bytes);
  EXPECT_EQ(cached_pretrain({p}, dir.file("cache"), again), cached);
  EXPECT_NE(again.str().find("has checkpoint format 1"), std::string::npos) << again.str();
  EXPECT_EQ(checkpoint_format_of(best), kCheckpointFormat);
  cached_pretrain({p}, dir.file("cache"), reused);
  EXPECT_NE(reused.str().find("cached in"), std::string::npos) << reused.str();
}

TEST(Checkpoint, MalformedPayloadsWithAValidChecksumAreBadInput) {
  // The header and CRC are right; what they guard is not. Format 1's TorchScript archives crashed LibTorch's
  // parser on payloads like these.
  test::TempDir dir;
  const std::string path = write_checkpoint(dir.file("a.pt"), make_model("cnn4:width=4"));
  const std::string payload = read_file(path).substr(24);
  auto reject = [&](const std::string& bad, std::vector<std::string> expect) {
    write_file_atomic(dir.file("bad.pt"), checkpoint_header(bad) + bad);
    test::expect_bad_input([&] { CheckpointReader(dir.file("bad.pt")).read_model(); }, expect);
  };
  reject("PK\x03\x04", {"bad.pt", "not an xfer archive"});
  reject(payload.substr(0, payload.size() / 2), {"bad.pt", "archive ("});
  Archive no_meta = Archive::decode(payload, "payload");
  Archive rebuilt;
  rebuilt.write("model", no_meta.nested("model"));
  reject(rebuilt.encode(), {"bad.pt: checkpoint has no metadata"});
  rebuilt.write_text("meta", "{\"arch\": {\"backbone\": 3}}");
  reject(rebuilt.encode(), {"bad.pt", "malformed model architecture"});
  Archive wrong_model;
  wrong_model.write_text("meta", no_meta.read_text("meta"));
  Archive weights = no_meta.nested("model");
  weights.write("zzz.extra", torch::zeros({3, 3}));
  wrong_model.write("model", weights);
  reject(wrong_model.encode(), {"bad.pt: the stored model has 'zzz.extra', which the model does not"});
}

TEST(Checkpoint, OptimizerStateRoundTripsExactly) {
  for (const OptimizerKind kind : {OptimizerKind::sgd, OptimizerKind::adam}) {
    torch::manual_seed(0);
    torch::nn::Linear a(4, 3), b(4, 3);
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
    }
    OptimizerOptions opts;
    opts.optimizer = kind;
    opts.lr = 0.1;
    auto opt_a = make_optimizer(opts, {group("all", a->parameters())});
    auto opt_b = make_optimizer(opts, {group("all", b->parameters())});
    const torch::Tensor x = torch::randn({8, 4});
    auto step = [&](torch::nn::Linear& m, torch::optim::Optimizer& o) {
      o.zero_grad();
      m(x).pow(2).sum().backward();
      o.step();
    };
    step(a, *opt_a);
    step(a, *opt_a);
    step(b, *opt_b);
    step(b, *opt_b);
    // b's optimizer forgets its state and takes a's: the next steps must still agree bit for bit.
    opt_b->state().clear();
    load_optimizer(*opt_b, Archive::decode(save_optimizer(*opt_a).encode(), "optimizer"));
    step(a, *opt_a);
    step(b, *opt_b);
    for (size_t i = 0; i < a->parameters().size(); ++i)
      EXPECT_TRUE(torch::equal(a->parameters()[i], b->parameters()[i])) << kind;
  }
  torch::nn::Linear m(4, 3);
  OptimizerOptions sgd;
  auto opt = make_optimizer(sgd, {group("all", m->parameters())});
  OptimizerOptions adam_opts;
  adam_opts.optimizer = OptimizerKind::adam;
  auto adam = make_optimizer(adam_opts, {group("all", m->parameters())});
  test::expect_bad_input([&] { load_optimizer(*adam, save_optimizer(*opt)); },
                         {"optimizer is 'sgd'", "adam"});
  auto two = make_optimizer(sgd, {group("w", {m->weight}), group("b", {m->bias})});
  test::expect_bad_input([&] { load_optimizer(*two, save_optimizer(*opt)); }, {"parameter groups (group 0)"});
}

TEST(Checkpoint, ResolvesRunDirectories) {
  test::TempDir dir;
  make_dirs(dir.file("run/checkpoints"));
  test::expect_bad_input([&] { resolve_checkpoint(dir.file("run")); }, {"without checkpoints/best.pt"});
  write_checkpoint(dir.file("run/checkpoints/last.pt"), make_model("cnn4:width=4"));
  EXPECT_EQ(resolve_checkpoint(dir.file("run")), dir.file("run/checkpoints/last.pt"));
  write_checkpoint(dir.file("run/checkpoints/best.pt"), make_model("cnn4:width=4"));
  EXPECT_EQ(resolve_checkpoint(dir.file("run")), dir.file("run/checkpoints/best.pt"));
  test::expect_bad_input([&] { resolve_checkpoint(dir.file("nope.pt")); }, {"checkpoint not found"});
}

}  // namespace
}  // namespace xfer
