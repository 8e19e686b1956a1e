// Data-parallel training on c10d/Gloo: real ranks on loopback, started by `xfer launch`, against one process.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <csignal>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/core/process.h"
#include "xfer/data/loader.h"
#include "xfer/data/spec.h"
#include "xfer/dist/dist.h"
#include "xfer/dist/launch.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

#define XFER_REQUIRE_GLOO() \
  if (!dist::gloo_available()) GTEST_SKIP() << "built without Gloo (libgloo-dev, -DXFER_WITH_GLOO=ON)"

/// A TCP port nobody listens on right now.
int dist_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

/// Two ranks and one process sum in another order; measured differences are about 1e-8.
constexpr double kDistTolerance = 1e-6;

struct DistRun {
  int code = 0;
  std::string err;
};

/// Runs the xfer binary with `args` (and `env` added), waits, returns its exit code and stderr.
DistRun dist_xfer(const test::TempDir& dir, const std::string& name, std::vector<std::string> args,
                  const std::map<std::string, std::string>& env = {}) {
  args.insert(args.begin(), XFER_BINARY);
  const std::string err_path = dir.file(name + ".err");
  const ExitStatus s = wait_process(spawn_process(args, dir.file(name + ".out"), err_path, env));
  return {s.code, fs::exists(err_path) ? read_file(err_path) : ""};
}

/// Pre-trains a tiny source model and writes a tiny target; returns the finetune arguments shared by
/// every run of a test (without --out). --bn-stats frozen by default: batch-norm statistics of each rank's
/// half-batch differ from the whole batch's; with running statistics the runs compute the same function.
std::vector<std::string> dist_tiny_finetune(const test::TempDir& dir, const std::string& method,
                                            const std::string& bn_stats = "frozen") {
  fs::create_directories(dir.path() + "/src");
  test::pretrain_tiny_source(test::write_tiny_idx(dir.path() + "/src", 4, 10, 2), dir.file("source"));
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 16, 4) + ":val=2";
  return {"finetune",
          "--method",
          method,
          "--init",
          dir.file("source"),
          "--target",
          spec,
          "--iterations",
          "6",
          "--batch-size",
          "8",
          "--threads",
          "1",
          "--bn-stats",
          bn_stats,
          "--eval-every",
          "3",
          "--log-every",
          "1",
          "--lr",
          "0.05"};
}

std::vector<std::string> dist_with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

/// How many times `needle` occurs in `text`.
int dist_count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size()))
    ++n;
  return n;
}

std::vector<std::string> dist_launch(int nproc, int port, const std::vector<std::string>& command) {
  std::vector<std::string> args = {
      "launch", "--nproc", std::to_string(nproc), "--master-port", std::to_string(port), "--timeout", "60",
      "--",     "xfer"};
  args.insert(args.end(), command.begin(), command.end());
  return args;
}

/// The largest absolute difference between two checkpoints' parameters and buffers (those both have: a
/// source model and a fine-tuned one share the backbone, not the head).
double dist_max_difference(const std::string& a, const std::string& b) {
  const Model ma = CheckpointReader(a).read_model(), mb = CheckpointReader(b).read_model();
  double worst = 0;
  int64_t compared = 0;
  auto compare = [&](const torch::OrderedDict<std::string, torch::Tensor>& x,
                     const torch::OrderedDict<std::string, torch::Tensor>& y) {
    for (const auto& p : x) {
      if (!y.contains(p.key())) continue;
      ++compared;
      worst = std::max(
          worst, (p.value().to(torch::kDouble) - y[p.key()].to(torch::kDouble)).abs().max().item<double>());
    }
  };
  compare(ma->named_parameters(), mb->named_parameters());
  compare(ma->named_buffers(), mb->named_buffers());
  EXPECT_GT(compared, 0);
  return worst;
}

/// One process runs `base`, two ranks `base` + `two_only`: the weights must agree.
void dist_expect_same_weights(const test::TempDir& dir, const std::vector<std::string>& base,
                              const std::string& method, const std::vector<std::string>& two_only = {}) {
  const DistRun one = dist_xfer(dir, "one", dist_with(base, {"--out", dir.file("one")}));
  ASSERT_EQ(one.code, 0) << one.err;
  const DistRun two = dist_xfer(
      dir, "two",
      dist_launch(2, dist_free_port(), dist_with(base, dist_with(two_only, {"--out", dir.file("two")}))));
  ASSERT_EQ(two.code, 0) << two.err;
  // Same global batch, each rank half of it, gradients averaged: the same checkpoint up to float rounding
  // (the sums run in another order): weights, batch-norm statistics, optimizer momentum, method state,
  // generator and stream positions.
  test::expect_same_checkpoint(dir.file("one/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt"),
                               method, kDistTolerance);
  const double diff =
      dist_max_difference(dir.file("one/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt"));
  std::cerr << method << ": largest weight difference, 2 ranks vs 1 process: " << diff << "\n";
  // Moved at all: the runs are not trivially equal.
  if (fs::exists(dir.file("source"))) {
    EXPECT_GT(
        dist_max_difference(dir.file("source/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt")),
        1e-3);
  }
  const auto r1 = read_json_file(dir.file("one/result.json")),
             r2 = read_json_file(dir.file("two/result.json"));
  EXPECT_EQ(r1["world_size"], 1);
  EXPECT_EQ(r2["world_size"], 2);
  EXPECT_TRUE(r2.contains("allreduce_share"));
  // Evaluation counts are summed over the ranks: the whole test split is counted once.
  EXPECT_EQ(r2["test"]["count"], r1["test"]["count"]);
  EXPECT_NEAR(r2["test_top1"].get<double>(), r1["test_top1"].get<double>(), 1e-9);
}

TEST(Distributed, SingleProcessByDefault) {
  EXPECT_FALSE(dist::init_from_env());
  EXPECT_EQ(dist::world_size(), 1);
  EXPECT_EQ(dist::rank(), 0);
  EXPECT_TRUE(dist::is_main());
  torch::Tensor w = torch::ones({3}, torch::requires_grad());
  (w * 2).sum().backward();
  EXPECT_EQ(dist::all_reduce_gradients({w}), 0.0);
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({3}, 2.0)));
}

TEST(Distributed, ShardsAreSlicesOfTheWholeBatchAugmentedAlike) {
  test::TempDir dir;
  const Task task = load_task(test::write_tiny_idx(dir.path(), 3, 12, 2), 0);
  LoaderOptions o;
  o.batch_size = 8;
  o.prefetch = false;
  const Normalization norm{{0.5}, {0.25}};
  BatchStream whole(task.train, norm, o, 7);
  const Batch w0 = whole.next(), w1 = whole.next();
  for (int64_t r = 0; r < 2; ++r) {
    set_batch_shard({r, 2});
    BatchStream part(task.train, norm, o, 7);
    const Batch p0 = part.next(), p1 = part.next();
    EXPECT_EQ(p0.offset, 4 * r);
    EXPECT_TRUE(torch::equal(p0.x, w0.x.slice(0, 4 * r, 4 * r + 4)));
    EXPECT_TRUE(torch::equal(p1.x, w1.x.slice(0, 4 * r, 4 * r + 4)));
    EXPECT_TRUE(torch::equal(p1.y, w1.y.slice(0, 4 * r, 4 * r + 4)));
    // Any row of the global batch, rebuilt by the rank that does not hold it (mixup partners).
    const torch::Tensor rows = torch::tensor({7, 0, 5}, torch::kInt64);
    const Batch q = part.rows(p1, rows);
    EXPECT_TRUE(torch::equal(q.x, w1.x.index_select(0, rows)));
    EXPECT_TRUE(torch::equal(q.y, w1.y.index_select(0, rows)));
  }
  set_batch_shard({1, 3});
  test::expect_bad_input([&] { BatchStream odd(task.train, norm, o, 7); }, {"multiple", "3"});
  set_batch_shard({0, 1});
}

TEST(Distributed, ShardsOfAnImageFolderAreCroppedAsInTheWholeBatch) {
  // Each example's RandomResizedCrop and flip are seeded by its position in the global batch, so a shard,
  // and a partner row rebuilt by another rank, are the whole batch's rows.
  test::TempDir dir;
  for (int c = 0; c < 2; ++c)
    for (int i = 0; i < 6; ++i)
      test::write_image(cat(dir.path(), "/c", c, "/", i, ".png"), test::ramp_image(20 + 3 * i, 30 - i));
  const Task task = load_task("folder:dir=" + dir.path() + ":size=12:test=none", 0);
  LoaderOptions o;
  o.batch_size = 8;
  o.prefetch = false;
  const Normalization norm = imagenet_normalization();
  BatchStream whole(task.train, norm, o, 7);
  const Batch w0 = whole.next(), w1 = whole.next();
  EXPECT_FALSE(torch::equal(w0.x.slice(0, 0, 4), w0.x.slice(0, 4, 8)));
  for (int64_t r = 0; r < 2; ++r) {
    set_batch_shard({r, 2});
    BatchStream part(task.train, norm, o, 7);
    const Batch p0 = part.next(), p1 = part.next();
    EXPECT_TRUE(torch::equal(p0.x, w0.x.slice(0, 4 * r, 4 * r + 4))) << "rank " << r;
    EXPECT_TRUE(torch::equal(p1.x, w1.x.slice(0, 4 * r, 4 * r + 4))) << "rank " << r;
    const torch::Tensor rows = torch::tensor({7, 0, 5}, torch::kInt64);
    const Batch q = part.rows(p1, rows);
    EXPECT_TRUE(torch::equal(q.x, w1.x.index_select(0, rows)));
    EXPECT_TRUE(torch::equal(q.y, w1.y.index_select(0, rows)));
  }
  set_batch_shard({0, 1});
}

TEST(Distributed, LaunchSetsTheVariablesAndNamesAFailingRank) {
  LaunchOptions o;
  o.nproc = 2;
  o.master_port = dist_free_port();
  launch(o, {"sh", "-c",
             "test \"$WORLD_SIZE\" = 2 && test \"$LOCAL_RANK\" = \"$RANK\" && test -n \"$MASTER_PORT\""});
  try {
    launch(o, {"sh", "-c", "if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 30"});
    ADD_FAILURE() << "launch should fail";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 of 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("code 3"), std::string::npos) << e.what();
  }
  test::expect_bad_input([&] { launch(o, {"sh", "-c", "exit $((RANK * 2))"}); }, {"rank 1", "code 2"});
}

TEST(Distributed, TwoRanksMatchOneProcessForL2) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  dist_expect_same_weights(dir, dist_tiny_finetune(dir, "l2"), "l2");
}

TEST(Distributed, TwoRanksMatchOneProcessForMixup) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  dist_expect_same_weights(dir, dist_tiny_finetune(dir, "mixup"), "mixup");
}

TEST(Distributed, SyncBatchNormMatchesOneProcessBatchNormForL2) {
  XFER_REQUIRE_GLOO();
  // Two ranks normalising with the global batch's statistics (and updating the running statistics with
  // them) train the same weights and buffers as one process with ordinary batch norm on the whole batch.
  test::TempDir dir;
  const auto base = dist_tiny_finetune(dir, "l2", "batch");
  dist_expect_same_weights(dir, base, "l2 --bn-stats sync", {"--bn-stats", "sync"});
  // Not trivially so: with each rank's own statistics the weights drift apart.
  const DistRun per_rank = dist_xfer(
      dir, "per-rank", dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("per-rank")})));
  ASSERT_EQ(per_rank.code, 0) << per_rank.err;
  EXPECT_GT(
      dist_max_difference(dir.file("one/checkpoints/last.pt"), dir.file("per-rank/checkpoints/last.pt")),
      1e-3);
}

TEST(Distributed, SyncBatchNormMatchesOneProcessBatchNormForMixup) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  dist_expect_same_weights(dir, dist_tiny_finetune(dir, "mixup", "batch"), "mixup --bn-stats sync",
                           {"--bn-stats", "sync"});
}

// Methods that pair or pool examples across the batch: the pairs (and the spectrum) are those of the global
// batch, so two ranks still train what one process does.
TEST(Distributed, TwoRanksMatchOneProcessForManifoldMixupAtAHiddenLayer) {
  XFER_REQUIRE_GLOO();
  // Mixing layer1's maps: a partner's features live on the other rank and are gathered, with their gradient
  // sent back; sync batch norm so that the layers before the mix see the global batch too.
  test::TempDir dir;
  dist_expect_same_weights(
      dir, dist_with(dist_tiny_finetune(dir, "manifold_mixup", "batch"), {"--layers", "layer1"}),
      "manifold_mixup --layers layer1", {"--bn-stats", "sync"});
}

TEST(Distributed, TwoRanksMatchOneProcessForSmile) {
  XFER_REQUIRE_GLOO();
  // The mean teacher's maps and probabilities of the partners are gathered; L_FE's norm is the global
  // batch's.
  test::TempDir dir;
  dist_expect_same_weights(
      dir, dist_with(dist_tiny_finetune(dir, "smile"), {"--gamma-fe", "1", "--gamma-fc", "1"}), "smile");
}

TEST(Distributed, TwoRanksMatchOneProcessForBss) {
  XFER_REQUIRE_GLOO();
  // The singular values of the whole batch's features, not of each rank's half.
  test::TempDir dir;
  dist_expect_same_weights(dir, dist_with(dist_tiny_finetune(dir, "bss"), {"--k", "2", "--eta", "1"}), "bss");
}

TEST(Distributed, TwoRanksMatchOneProcessForXMixup) {
  XFER_REQUIRE_GLOO();
  // Per-example mixing weights drawn over the global batch, with auxiliary source examples.
  test::TempDir dir;
  const auto base =
      dist_with(dist_tiny_finetune(dir, "xmixup"), {"--source", "idx:dir=" + dir.path() + "/src"});
  dist_expect_same_weights(dir, base, "xmixup");
}

std::vector<std::string> dist_tiny_gradmix(const std::string& data) {
  return {"finetune",
          "--method",
          "gradmix",
          "--target",
          data + ":classes=0-2:per_class=4:val=3",
          "--sources",
          data + ":classes=0-2:shift=noise0.1;" + data + ":classes=3-4",
          "--backbone",
          "cnn4:width=4",
          "--iterations",
          "6",
          "--batch-size",
          "8",
          "--threads",
          "1",
          "--bn-stats",
          "frozen",
          "--eval-every",
          "3",
          "--log-every",
          "1",
          "--lr",
          "0.05"};
}

TEST(Distributed, TwoRanksMatchOneProcessForGradMix) {
  XFER_REQUIRE_GLOO();
  // Per-source gradients and V's are averaged before the SLSQP solve: both runs solve the same problems.
  test::TempDir dir;
  dist_expect_same_weights(dir, dist_tiny_gradmix(test::write_tiny_idx(dir.path(), 5, 20, 4)), "gradmix");
}

TEST(Distributed, TwoRanksMatchOneProcessForGradMixWithMixMatch) {
  XFER_REQUIRE_GLOO();
  // MixMatch's mixup over the global labelled and unlabelled batches: images and guessed labels gathered,
  // extra augmentations seeded by global position.
  test::TempDir dir;
  dist_expect_same_weights(dir,
                           dist_with(dist_tiny_gradmix(test::write_tiny_idx(dir.path(), 5, 20, 4)),
                                     {"--ssl", "mixmatch", "--mixmatch-k", "2", "--mixmatch-weight", "10"}),
                           "gradmix --ssl mixmatch");
}

TEST(Distributed, MismatchedConfigIsRefused) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  const auto base = dist_tiny_finetune(dir, "l2");
  const std::string port = std::to_string(dist_free_port());
  auto env = [&](int rank) {
    return std::map<std::string, std::string>{{"MASTER_ADDR", "127.0.0.1"},
                                              {"MASTER_PORT", port},
                                              {"RANK", std::to_string(rank)},
                                              {"WORLD_SIZE", "2"},
                                              {"XFER_DIST_TIMEOUT", "60"}};
  };
  // Two ranks started by hand, the second with another learning rate.
  const pid_t r0 = spawn_process(dist_with({XFER_BINARY}, dist_with(base, {"--out", dir.file("run")})),
                                 dir.file("r0.out"), dir.file("r0.err"), env(0));
  const pid_t r1 =
      spawn_process(dist_with({XFER_BINARY}, dist_with(base, {"--out", dir.file("run"), "--lr", "0.1"})),
                    dir.file("r1.out"), dir.file("r1.err"), env(1));
  const ExitStatus s0 = wait_process(r0), s1 = wait_process(r1);
  EXPECT_EQ(s0.code, 2);
  EXPECT_EQ(s1.code, 2);
  for (const char* f : {"r0.err", "r1.err"}) {
    const std::string err = read_file(dir.file(f));
    EXPECT_NE(err.find("differs between ranks: rank(s) 1"), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(dir.file("run/checkpoints/last.pt")));
}

TEST(Distributed, UnreachableMasterFailsAfterTheTimeout) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  const std::string spec = test::write_tiny_idx(dir.path(), 3, 4, 1);
  const std::string port = std::to_string(dist_free_port());
  const DistRun r =
      dist_xfer(dir, "lonely",
                {"finetune", "--method", "scratch", "--target", spec, "--backbone", "cnn4:width=4",
                 "--iterations", "2", "--batch-size", "4", "--threads", "1", "--out", dir.file("run")},
                {{"MASTER_ADDR", "127.0.0.1"},
                 {"MASTER_PORT", port},
                 {"RANK", "1"},
                 {"WORLD_SIZE", "2"},
                 {"XFER_DIST_TIMEOUT", "2"}});
  EXPECT_EQ(r.code, 2);  // a one-line BadInput, no backtrace
  EXPECT_NE(r.err.find("cannot join the process group at 127.0.0.1:" + port), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("frame #"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos) << r.err;
}

TEST(Distributed, ResumesAtAnotherWorldSizeAfterARankIsKilled) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  const auto base = dist_with(dist_tiny_finetune(dir, "l2"), {"--checkpoint-every", "2"});
  const DistRun one = dist_xfer(dir, "one", dist_with(base, {"--out", dir.file("one")}));
  ASSERT_EQ(one.code, 0) << one.err;
  // Rank 1 dies at step 5: the launcher stops rank 0 and names rank 1; checkpoints/last.pt holds step 4.
  const DistRun killed =
      dist_xfer(dir, "killed", dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("two")})),
                {{"XFER_DIST_KILL_AT", "1:5"}});
  EXPECT_NE(killed.code, 0);
  EXPECT_NE(killed.err.find("rank 1 of 2"), std::string::npos) << killed.err;
  EXPECT_NE(killed.err.find("signal 9"), std::string::npos) << killed.err;
  EXPECT_FALSE(fs::exists(dir.file("two/result.json")));
  EXPECT_EQ(CheckpointReader(dir.file("two/checkpoints/last.pt")).meta()["step"], 4);
  // Resumed by one process: the same weights as the run that was never interrupted.
  const DistRun resumed = dist_xfer(dir, "resumed", dist_with(base, {"--out", dir.file("two"), "--resume"}));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  test::expect_same_checkpoint(dir.file("one/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt"),
                               "resumed by one process", kDistTolerance);
}

TEST(Distributed, ASignalToOneRankStopsEveryRankAtTheSameStep) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  const auto base = dist_tiny_finetune(dir, "l2");
  const DistRun whole = dist_xfer(
      dir, "whole", dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("whole")})));
  ASSERT_EQ(whole.code, 0) << whole.err;
  // Only rank 1 gets SIGTERM, after step 3 was agreed: both ranks learn of it when they agree on step 4, and
  // both checkpoint and stop there (rank 1 alone would stop, and rank 0 wait in step 5's all-reduce).
  const DistRun stopped =
      dist_xfer(dir, "stopped", dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("two")})),
                {{"XFER_DIST_TERM_AT", "1:3"}});
  EXPECT_EQ(stopped.code, 128 + SIGTERM) << stopped.err;
  EXPECT_NE(stopped.err.find("the ranks stopped together"), std::string::npos) << stopped.err;
  EXPECT_EQ(dist_count(stopped.err, "interrupted: training at step 4 of 6"), 2) << stopped.err;
  EXPECT_EQ(CheckpointReader(dir.file("two/checkpoints/last.pt")).meta()["step"], 4);
  EXPECT_FALSE(fs::exists(dir.file("two/result.json")));
  // Resumed by both ranks: bit for bit the run that was never interrupted.
  const DistRun resumed =
      dist_xfer(dir, "resumed",
                dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("two"), "--resume"})));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  test::expect_same_checkpoint(dir.file("whole/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt"),
                               "stopped by a signal and resumed");
}

TEST(Distributed, ANonFiniteLossOnOneRankIsSkippedByEveryRank) {
  XFER_REQUIRE_GLOO();
  test::TempDir dir;
  const auto base = dist_with(dist_tiny_finetune(dir, "l2"), {"--on-nan", "skip"});
  // The same batch goes bad: in one process, and in rank 1's half of it.
  const DistRun one =
      dist_xfer(dir, "one", dist_with(base, {"--out", dir.file("one")}), {{"XFER_DIST_NAN_AT", "0:2"}});
  ASSERT_EQ(one.code, 0) << one.err;
  const DistRun two =
      dist_xfer(dir, "two", dist_launch(2, dist_free_port(), dist_with(base, {"--out", dir.file("two")})),
                {{"XFER_DIST_NAN_AT", "1:2"}});
  ASSERT_EQ(two.code, 0) << two.err;
  EXPECT_EQ(dist_count(two.err, "skipping the batch"), 2) << two.err;
  EXPECT_NE(two.err.find("the loss is nan at step 2"), std::string::npos) << two.err;  // rank 1
  EXPECT_NE(two.err.find("the loss of rank 1 is not finite at step 2; skipping"), std::string::npos)
      << two.err;
  EXPECT_EQ(read_json_file(dir.file("one/result.json"))["skipped_steps"], 1);
  EXPECT_EQ(read_json_file(dir.file("two/result.json"))["skipped_steps"], 1);
  // Both ranks dropped the same update, as the one process did.
  test::expect_same_checkpoint(dir.file("one/checkpoints/last.pt"), dir.file("two/checkpoints/last.pt"),
                               "a skipped batch", kDistTolerance);
}

}  // namespace
}  // namespace xfer
