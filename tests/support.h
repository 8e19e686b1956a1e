#pragma once
/// Helpers shared by the tests: temporary directories, tiny IDX datasets, Fashion-MNIST availability.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/data/image.h"

namespace xfer::test {

/// What `xfer ARGS` (run in this process) returned and printed.
struct CliOutcome {
  int code;
  std::string out, err;
};
CliOutcome run_cli(const std::vector<std::string>& args);

/// A float64 tensor from nested JSON lists of numbers (a golden script's tensor.tolist()).
torch::Tensor json_tensor(const nlohmann::json& nested);

/// A fresh directory under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Writes a small IDX dataset (train and test files) into `dir`: `classes` classes, `per_class`
/// examples each, 1x8x8 images whose pixels encode (class, index), so tests can check which example
/// landed where. Returns the spec text `idx:dir=DIR`.
std::string write_tiny_idx(const std::string& dir, int classes, int per_class, int test_per_class);

/// Pre-trains into `out` the small source model the learning tests fine-tune from: cnn4:width=8, 80 steps
/// (lr 0.05, batch 64, one thread) on 300 images each of Fashion-MNIST's T-shirt, Trouser, Dress, Sandal
/// and Bag. Returns `out`. (ctest runs each TEST in its own process, so each test trains its own.)
std::string pretrain_fmnist_source(const std::string& out);

/// Pre-trains into `out` a tiny source model for tests that only need one to exist: cnn4:width=4,
/// 4 steps of batch 8 on `source` (a spec), one thread. Returns `out`.
std::string pretrain_tiny_source(const std::string& source, const std::string& out);

/// Tiny transfer data every method can run on, built once per test process: seven classes of 20 images;
/// the target is three of them (8 per class, 3 for validation), the source (and the source model's
/// classes, pretrain_tiny_source) the other four, so XMixup pairs one-to-one; GradMix's sources are a
/// shifted copy of the target's classes and the source.
struct TinyTransferData {
  TempDir dir;
  std::string target, source, sources, init;
  TinyTransferData();
};
const TinyTransferData& tiny_transfer_data();

/// How a test that covers every registered method runs `method` on the tiny data: the command (finetune,
/// or pretrain for a method that only pre-trains) and the options beyond the schedule's, by name (run
/// options and method options alike): the data, --init or a small backbone, and what the method cannot
/// run without, chosen by option name so a method added tomorrow is covered (GradMix's `sources`; datl's
/// importance weights, computed in the run by the tiny source model on the target).
struct TinyMethodRun {
  std::string command;
  std::vector<std::pair<std::string, std::string>> options;
  /// The options as command-line flags: --name value (underscores as dashes).
  std::vector<std::string> flags() const;
};
TinyMethodRun tiny_method_run(const std::string& method);

/// A flat-colour image.
Image flat_image(int64_t h, int64_t w, uint8_t r, uint8_t g, uint8_t b);
/// Pixels that encode their position: (x * 7 + y) % 256, (y * 5) % 256, 200.
Image ramp_image(int64_t h, int64_t w);
/// Writes `img` as a PNG (a path ending in .png) or a JPEG of quality 95, creating the folders.
void write_image(const std::string& path, const Image& img);

/// Whether Debian's Fashion-MNIST is installed; tests that need it are skipped with a note otherwise.
bool have_fmnist();
#define XFER_REQUIRE_FMNIST()       \
  if (!::xfer::test::have_fmnist()) \
  GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup.sh)"

/// A throwaway PostgreSQL server for tests (Debian's postgresql package): initdb into a temporary directory,
/// `postgres` on a free loopback port with trust authentication, one database `xfer`; stopped and removed
/// on destruction. Run as the `postgres` system user when the tests run as root (the server refuses root).
/// missing() says what is not installed (the tests then skip, naming it).
class PostgresServer {
 public:
  PostgresServer();
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;
  const std::string& missing() const { return missing_; }
  /// postgresql://xfer@127.0.0.1:PORT/xfer
  std::string url() const;
  int port() const { return port_; }
  /// Stops the server (fast shutdown, clients are disconnected) and starts it again on the same port.
  void stop();
  void start();

 private:
  int run(const std::string& command) const;
  TempDir dir_;
  std::string missing_, bin_, data_, log_, as_user_;
  int port_ = 0;
  bool running_ = false;
};
#define XFER_REQUIRE_POSTGRES(server) \
  if (!(server).missing().empty())    \
  GTEST_SKIP() << (server).missing() << " (scripts/setup.sh installs the postgresql package)"

/// Sets the modification time of `path` a year back and returns its stamp (inode, size, modification
/// time, content). A later file_stamp equal to it means nobody rewrote or replaced the file since: unlike a
/// bare mtime comparison, this does not depend on the file system's time resolution.
std::string mark_file(const std::string& path);
/// The current stamp of `path` (as mark_file returns it).
std::string file_stamp(const std::string& path);

/// Whether XFER_TESTS_NO_SKIP=1 (set by .ci/run): every skipped test then fails instead (tests/main.cpp).
bool skips_are_failures();

/// Expects the checkpoints at `a` and `b` to hold the same archive: the same keys, every tensor (model
/// parameters and buffers, optimizer state, method state, RNG states) equal, or within `tolerance`
/// (absolute) where it is floating point, every text equal, and the same metadata (step, stream
/// positions, best step, skipped steps, ...) but for the keys in `ignore_meta`.
void expect_same_checkpoint(const std::string& a, const std::string& b, const std::string& what,
                            double tolerance = 0, const std::vector<std::string>& ignore_meta = {});

/// Expects `fn` to throw BadInput whose message contains every piece of `expected`.
template <class Fn>
void expect_bad_input(Fn&& fn, const std::vector<std::string>& expected) {
  try {
    fn();
    std::string want;
    for (const auto& piece : expected) want += " '" + piece + "'";
    ADD_FAILURE() << "expected BadInput mentioning" << want;
  } catch (const BadInput& e) {
    for (const auto& piece : expected)
      EXPECT_NE(std::string(e.what()).find(piece), std::string::npos)
          << "message: " << e.what() << "\nmissing: " << piece;
  }
}

}  // namespace xfer::test
