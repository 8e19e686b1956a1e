#include <filesystem>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/train/checkpoint.h"

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
  for (const auto& p : m->named_buffers()) EXPECT_TRUE(torch::equal(p.value(), back->named_buffers()[p.key()])) << p.key();
  EXPECT_EQ(back->arch().heads[0].name, "source");
}

TEST(Checkpoint, CorruptTruncatedAndForeignFilesAreRejected) {
  test::TempDir dir;
  const std::string path = write_checkpoint(dir.file("a.pt"), make_model("cnn4:width=4"));
  std::string bytes = read_file(path);
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  write_file_atomic(dir.file("flipped.pt"), flipped);
  test::expect_bad_input([&] { CheckpointReader(dir.file("flipped.pt")); }, {"flipped.pt", "checksum mismatch"});
  write_file_atomic(dir.file("short.pt"), bytes.substr(0, bytes.size() - 100));
  test::expect_bad_input([&] { CheckpointReader(dir.file("short.pt")); }, {"short.pt", "truncated checkpoint"});
  write_file_atomic(dir.file("other.pt"), "PK\x03\x04 a zip from somewhere else");
  test::expect_bad_input([&] { CheckpointReader(dir.file("other.pt")); }, {"not an xfer checkpoint"});
  std::string future = bytes;
  future[8] = 99;
  write_file_atomic(dir.file("future.pt"), future);
  test::expect_bad_input([&] { CheckpointReader(dir.file("future.pt")); }, {"checkpoint format 99"});
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
