#include "support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/data/idx.h"
#include "xfer/methods/registry.h"
#include "xfer/train/checkpoint.h"
#include "xfer/workflows/run.h"

namespace fs = std::filesystem;

namespace xfer::test {

CliOutcome run_cli(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  const int code = cli::run(args, out, err);
  return {code, out.str(), err.str()};
}

torch::Tensor json_tensor(const nlohmann::json& nested) {
  std::vector<int64_t> shape;
  for (const nlohmann::json* j = &nested; j->is_array(); j = &j->front())
    shape.push_back(static_cast<int64_t>(j->size()));
  std::vector<double> values;
  std::function<void(const nlohmann::json&)> collect = [&](const nlohmann::json& j) {
    if (!j.is_array()) return values.push_back(j.get<double>());
    for (const auto& e : j) collect(e);
  };
  collect(nested);
  return torch::tensor(values, torch::kFloat64).view(shape);
}

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "xfer-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {

/// A TCP port on 127.0.0.1 that nothing listens on now.
int support_free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  if (!ok) throw std::runtime_error("cannot find a free port on 127.0.0.1");
  return ntohs(addr.sin_port);
}

/// The newest Debian PostgreSQL server binaries (/usr/lib/postgresql/N/bin), or "".
std::string support_postgres_bin() {
  std::string best;
  int best_version = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    const fs::path bin = e.path() / "bin";
    const int version = std::atoi(e.path().filename().c_str());
    if (version > best_version && fs::exists(bin / "initdb") && fs::exists(bin / "pg_ctl") &&
        fs::exists(bin / "postgres")) {
      best = bin.string();
      best_version = version;
    }
  }
  return best;
}

}  // namespace

PostgresServer::PostgresServer() {
  bin_ = support_postgres_bin();
  if (bin_.empty()) {
    missing_ =
        "PostgreSQL's server binaries (initdb, pg_ctl, postgres in /usr/lib/postgresql/N/bin) are missing";
    return;
  }
  if (geteuid() == 0) {
    // initdb and postgres refuse to run as root: the server runs as the postgres system user.
    const passwd* pw = getpwnam("postgres");
    if (!pw || !fs::exists("/usr/sbin/runuser")) {
      missing_ = "running as root needs the postgres system user and runuser to start a test server";
      return;
    }
    if (chown(dir_.path().c_str(), pw->pw_uid, pw->pw_gid) != 0)
      throw std::runtime_error("cannot hand " + dir_.path() + " to the postgres user");
    as_user_ = "/usr/sbin/runuser -u postgres -- ";
  }
  data_ = dir_.file("data");
  log_ = dir_.file("server.log");
  if (run(bin_ + "/initdb -D " + data_ + " -U xfer -A trust --no-sync -E UTF8 --locale=C") != 0)
    throw std::runtime_error("initdb failed: " + read_file(dir_.file("command.log")));
  port_ = support_free_port();
  start();
  if (run(bin_ + "/createdb -h 127.0.0.1 -p " + std::to_string(port_) + " -U xfer xfer") != 0)
    throw std::runtime_error("createdb failed: " + read_file(dir_.file("command.log")));
}

PostgresServer::~PostgresServer() {
  if (running_) run(bin_ + "/pg_ctl -D " + data_ + " -m immediate -w stop");
}

std::string PostgresServer::url() const {
  return "postgresql://xfer@127.0.0.1:" + std::to_string(port_) + "/xfer";
}

void PostgresServer::start() {
  const std::string options = "-p " + std::to_string(port_) + " -k " + dir_.path() +
                              " -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
                              " -c full_page_writes=off -c max_connections=60";
  if (run(bin_ + "/pg_ctl -D " + data_ + " -l " + log_ + " -w -t 60 -o '" + options + "' start") != 0) {
    throw std::runtime_error("the test PostgreSQL server did not start: " + read_file(log_));
  }
  running_ = true;
}

void PostgresServer::stop() {
  if (run(bin_ + "/pg_ctl -D " + data_ + " -m fast -w stop") != 0)
    throw std::runtime_error("pg_ctl stop failed: " + read_file(dir_.file("command.log")));
  running_ = false;
}

int PostgresServer::run(const std::string& command) const {
  // The command's output goes to a log in the server's directory (writable by the postgres user).
  return std::system((as_user_ + command + " >" + dir_.file("command.log") + " 2>&1").c_str());
}

std::string write_tiny_idx(const std::string& dir, int classes, int per_class, int test_per_class) {
  auto make = [&](int per, int salt) {
    const int n = classes * per;
    torch::Tensor images = torch::zeros({n, 8, 8}, torch::kUInt8);
    torch::Tensor labels = torch::zeros({n}, torch::kUInt8);
    for (int i = 0; i < n; ++i) {
      const int c = i % classes;  // interleaved classes, like real files
      labels[i] = c;
      images[i][0][0] = c;                                                // the class
      images[i][0][1] = i / classes;                                      // the index within the class
      images[i][0][2] = salt;                                             // train (1) or test (2)
      images[i].slice(0, 2, 8).fill_(static_cast<uint8_t>(40 * c + 10));  // a class-dependent pattern
    }
    return std::make_pair(images, labels);
  };
  const auto [tri, trl] = make(per_class, 1);
  const auto [tei, tel] = make(test_per_class, 2);
  write_file_atomic(dir + "/train-images-idx3-ubyte", encode_idx(tri));
  write_file_atomic(dir + "/train-labels-idx1-ubyte", encode_idx(trl));
  write_file_atomic(dir + "/t10k-images-idx3-ubyte", encode_idx(tei));
  write_file_atomic(dir + "/t10k-labels-idx1-ubyte", encode_idx(tel));
  return "idx:dir=" + dir;
}

Image flat_image(int64_t h, int64_t w, uint8_t r, uint8_t g, uint8_t b) {
  Image img;
  img.height = h;
  img.width = w;
  img.rgb.resize(static_cast<size_t>(h * w * 3));
  for (int64_t i = 0; i < h * w; ++i) {
    img.rgb[i * 3] = r;
    img.rgb[i * 3 + 1] = g;
    img.rgb[i * 3 + 2] = b;
  }
  return img;
}

Image ramp_image(int64_t h, int64_t w) {
  Image img = flat_image(h, w, 0, 0, 0);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      uint8_t* p = img.rgb.data() + (y * w + x) * 3;
      p[0] = static_cast<uint8_t>((x * 7 + y) % 256);
      p[1] = static_cast<uint8_t>((y * 5) % 256);
      p[2] = 200;
    }
  return img;
}

void write_image(const std::string& path, const Image& img) {
  fs::create_directories(fs::path(path).parent_path());
  if (path.size() > 4 && path.substr(path.size() - 4) == ".png")
    write_png_rgb(path, img);
  else
    write_jpeg_rgb(path, img, 95);
}

std::string file_stamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  const auto mtime = fs::last_write_time(path).time_since_epoch().count();
  return cat(st.st_ino, ":", st.st_size, ":", mtime, ":", read_file(path));
}

std::string mark_file(const std::string& path) {
  fs::last_write_time(path, fs::last_write_time(path) - std::chrono::hours(24 * 365));
  return file_stamp(path);
}

bool skips_are_failures() {
  const char* v = std::getenv("XFER_TESTS_NO_SKIP");
  return v != nullptr && std::string(v) == "1";
}

void expect_same_checkpoint(const std::string& a, const std::string& b, const std::string& what,
                            double tolerance, const std::vector<std::string>& ignore_meta) {
  const CheckpointReader ra(a), rb(b);
  nlohmann::json ma = ra.meta(), mb = rb.meta();
  for (const auto& key : ignore_meta) ma.erase(key), mb.erase(key);
  EXPECT_EQ(ma, mb) << what << ": the metadata differ";
  const auto& ta = ra.archive().tensors();
  const auto& tb = rb.archive().tensors();
  std::vector<std::string> ka, kb;
  for (const auto& [k, v] : ta) ka.push_back(k);
  for (const auto& [k, v] : tb) kb.push_back(k);
  ASSERT_EQ(ka, kb) << what << ": the archives hold different tensors";
  for (const auto& [key, t] : ta) {
    const torch::Tensor& u = tb.at(key);
    if (tolerance > 0 && t.is_floating_point() && t.sizes() == u.sizes() &&
        t.scalar_type() == u.scalar_type()) {
      const double d =
          t.numel() ? (t.to(torch::kFloat64) - u.to(torch::kFloat64)).abs().max().item<double>() : 0.0;
      EXPECT_LE(d, tolerance) << what << ": " << key << " differs by " << d;
    } else {
      EXPECT_TRUE(t.scalar_type() == u.scalar_type() && torch::equal(t, u))
          << what << ": " << key << " differs";
    }
  }
  auto texts = [](const CheckpointReader& r) {
    std::map<std::string, std::string> out = r.archive().texts();
    out.erase("meta");  // compared above, as JSON
    return out;
  };
  EXPECT_EQ(texts(ra), texts(rb)) << what << ": the archives' texts differ";
}

bool have_fmnist() {
  return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
}

std::string pretrain_fmnist_source(const std::string& out) {
  RunOptions pre;
  pre.source = "fmnist:classes=0,1,3,5,8:per_class=300:test=none";
  pre.backbone = "cnn4:width=8";
  pre.threads = 1;
  pre.out = out;
  pre.trainer.iterations = 80;
  pre.trainer.optim.lr = 0.05;
  pre.loader.batch_size = 64;
  run_pretrain(pre);
  return out;
}

TinyTransferData::TinyTransferData() {
  const std::string data = write_tiny_idx(dir.path(), 7, 20, 4);
  target = data + ":classes=0-2:per_class=8:val=3";
  source = data + ":classes=3-6";
  sources = data + ":classes=0-2:shift=noise0.1;" + source;
  init = pretrain_tiny_source(source, dir.file("source"));
}

const TinyTransferData& tiny_transfer_data() {
  static const TinyTransferData d;
  return d;
}

TinyMethodRun tiny_method_run(const std::string& method) {
  const TinyTransferData& d = tiny_transfer_data();
  const MethodInfo& info = methods().get(method);
  TinyMethodRun r;
  r.command = info.finetunes ? "finetune" : "pretrain";
  r.options.push_back({"method", method});
  if (info.finetunes)
    r.options.push_back({"target", d.target});
  else
    r.options.push_back({"source", d.source});
  if (info.allows_init)
    r.options.push_back({"init", d.init});
  else
    r.options.push_back({"backbone", "cnn4:width=4"});
  if (info.finetunes && info.needs_source) r.options.push_back({"source", d.source});
  const auto config = info.make_config();
  Fields f;
  config->fields(f);
  if (f.has("sources")) r.options.push_back({"sources", d.sources});
  if (f.has("weights_from"))
    r.options.insert(
        r.options.end(),
        {{"weights_from", d.init}, {"weights_target", d.target}, {"matcher", "same"}, {"size", "40"}});
  return r;
}

std::vector<std::string> TinyMethodRun::flags() const {
  std::vector<std::string> out;
  for (const auto& [name, value] : options) {
    std::string flag = "--" + name;
    std::replace(flag.begin(), flag.end(), '_', '-');
    out.insert(out.end(), {flag, value});
  }
  return out;
}

std::string pretrain_tiny_source(const std::string& source, const std::string& out) {
  RunOptions pre;
  pre.source = source;
  pre.backbone = "cnn4:width=4";
  pre.threads = 1;
  pre.out = out;
  pre.trainer.iterations = 4;
  pre.loader.batch_size = 8;
  run_pretrain(pre);
  return out;
}

}  // namespace xfer::test
