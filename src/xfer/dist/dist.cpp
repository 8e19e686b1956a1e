#include "xfer/dist/dist.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>

#include <torch/torch.h>

#ifdef XFER_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#endif

#include "xfer/core/error.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/dist/store.h"

namespace xfer::dist {
namespace {

struct State {
  bool initialised = false;
  int rank = 0, world = 1, local_rank = 0;
  double timeout = 300;
#ifdef XFER_HAVE_GLOO
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
#endif
};

State& state() {
  static State s;
  return s;
}

std::string env_text(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

int64_t env_int(const char* name, int64_t fallback) {
  const std::string text = env_text(name);
  if (text.empty()) return fallback;
  const std::optional<int64_t> value = parse_int64(text);
  XFER_CHECK(value, "environment variable ", name, " must be an integer, got '", printable(text), "'");
  return *value;
}

#ifdef XFER_HAVE_GLOO
/// Waits for a collective; a failure (a rank died, the network went away, the timeout passed) becomes an
/// error that says what this rank was doing.
void wait_for(const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    throw std::runtime_error(cat("rank ", state().rank, " of ", state().world, ": ", what,
                                 " failed (another rank died, or did not answer within ", state().timeout,
                                 " s): ", e.what()));
  }
}

c10d::ProcessGroupGloo& group() {
  return *state().group;
}

/// xfer's rendezvous store (dist/store.h) as the c10d::Store ProcessGroupGloo takes: Gloo's pairs publish
/// and read their addresses with set, get and wait.
class RendezvousStore : public c10d::Store {
 public:
  RendezvousStore(std::unique_ptr<KeyValueStore> kv, std::chrono::milliseconds timeout)
      : c10d::Store(timeout), kv_(std::move(kv)) {}
  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    kv_->set(key, std::string(value.begin(), value.end()));
  }
  std::vector<uint8_t> get(const std::string& key) override {
    const std::string v = kv_->get(key);
    return {v.begin(), v.end()};
  }
  int64_t add(const std::string& key, int64_t value) override { return kv_->add(key, value); }
  bool deleteKey(const std::string& key) override { return kv_->remove(key); }
  bool check(const std::vector<std::string>& keys) override { return kv_->check(keys); }
  int64_t getNumKeys() override { return kv_->num_keys(); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    kv_->wait(keys,
              timeout == kNoTimeout ? kv_->timeout_seconds() : static_cast<double>(timeout.count()) / 1000.0);
  }

 private:
  std::unique_ptr<KeyValueStore> kv_;
};

std::string first_line_of(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  const std::string what = c10 ? c10->what_without_backtrace() : e.what();
  return what.substr(0, what.find('\n'));
}
#endif

}  // namespace

bool gloo_available() {
#ifdef XFER_HAVE_GLOO
  return true;
#else
  return false;
#endif
}

bool init_from_env() {
  State& s = state();
  if (s.initialised) return s.world > 1;
  s.initialised = true;
  s.timeout = static_cast<double>(env_int("XFER_DIST_TIMEOUT", 300));
  XFER_CHECK(s.timeout > 0, "XFER_DIST_TIMEOUT must be > 0 seconds, got ", s.timeout);
  const int64_t world = env_int("WORLD_SIZE", 1), rank = env_int("RANK", 0);
  XFER_CHECK(world >= 1, "WORLD_SIZE must be >= 1, got ", world);
  XFER_CHECK(rank >= 0 && rank < world, "RANK must be in [0, WORLD_SIZE=", world, "), got ", rank);
  if (world == 1) return false;
  const std::string addr = env_text("MASTER_ADDR");
  const int64_t port = env_int("MASTER_PORT", -1);
  XFER_CHECK(!addr.empty(), "WORLD_SIZE=", world,
             " but MASTER_ADDR is not set (use `xfer launch` or torchrun)");
  XFER_CHECK(port > 0 && port < 65536, "MASTER_PORT must be a TCP port, got ", env_text("MASTER_PORT"));
  s.world = static_cast<int>(world);
  s.rank = static_cast<int>(rank);
  s.local_rank = static_cast<int>(env_int("LOCAL_RANK", rank));
#ifdef XFER_HAVE_GLOO
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(s.timeout * 1000));
  try {
    // Rank 0 serves the store on MASTER_ADDR only (loopback stays loopback); the others connect to it.
    auto kv = s.rank == 0 ? KeyValueStore::serve(addr, static_cast<int>(port), s.timeout)
                          : KeyValueStore::connect(addr, static_cast<int>(port), s.timeout);
    s.store = c10::make_intrusive<RendezvousStore>(std::move(kv), timeout);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    // The address this rank's Gloo pairs bind to: loopback for a one-machine run, else the host's name.
    options->devices.push_back(addr == "127.0.0.1" || addr == "localhost"
                                   ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
    options->threads = 2;
    s.group = c10::make_intrusive<c10d::ProcessGroupGloo>(s.store, s.rank, s.world, options);
  } catch (const std::exception& e) {
    s.world = 1;
    s.rank = 0;
    s.group.reset();
    s.store.reset();
    throw BadInput(cat("rank ", rank, " of ", world, ": cannot join the process group at ", addr, ":", port,
                       " within ", s.timeout, " s (XFER_DIST_TIMEOUT): ", first_line_of(e)));
  }
  log_info(cat("rank ", s.rank, " of ", s.world, " joined the Gloo process group at ", addr, ":", port));
  return true;
#else
  throw BadInput(cat("WORLD_SIZE=", world,
                     " asks for distributed training, but this xfer was built without Gloo ",
                     "(install libgloo-dev and configure with -DXFER_WITH_GLOO=ON)"));
#endif
}

bool is_distributed() {
  return state().world > 1;
}
int rank() {
  return state().rank;
}
int world_size() {
  return state().world;
}
int local_rank() {
  return state().local_rank;
}
bool is_main() {
  return state().rank == 0;
}
double timeout_seconds() {
  return state().timeout;
}

void broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  if (!is_distributed() || tensors.empty()) return;
#ifdef XFER_HAVE_GLOO
  // One flat buffer per dtype keeps it to a few collectives.
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_type;
  for (const auto& t : tensors)
    if (t.defined() && t.numel() > 0) by_type[t.scalar_type()].push_back(t);
  for (auto& [type, list] : by_type) {
    std::vector<torch::Tensor> parts;
    for (const auto& t : list) parts.push_back(t.detach().reshape(-1).cpu());
    std::vector<torch::Tensor> flat{torch::cat(parts)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait_for(group().broadcast(flat, o), "broadcast");
    torch::NoGradGuard no_grad;
    int64_t offset = 0;
    for (auto& t : list) {
      t.copy_(flat[0].slice(0, offset, offset + t.numel()).view_as(t));
      offset += t.numel();
    }
  }
#endif
}

void broadcast_module(const torch::nn::Module& module) {
  if (!is_distributed()) return;
  std::vector<torch::Tensor> all = module.parameters();
  for (const auto& b : module.buffers()) all.push_back(b);
  broadcast(all, 0);
}

void all_reduce_sum(const std::vector<torch::Tensor>& tensors) {
  if (!is_distributed()) return;
#ifdef XFER_HAVE_GLOO
  for (const auto& t : tensors) {
    std::vector<torch::Tensor> one{t.is_contiguous() ? t : t.contiguous()};
    wait_for(group().allreduce(one), "all-reduce");
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }
#endif
}

void all_reduce_mean(const std::vector<torch::Tensor>& tensors) {
  if (!is_distributed()) return;
  all_reduce_sum(tensors);
  for (const auto& t : tensors) t.div_(world_size());
}

double all_reduce_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  if (!is_distributed()) return 0.0;
  const double t0 = now_seconds();
#ifdef XFER_HAVE_GLOO
  // Buckets of gradients of one dtype, about bucket_bytes each, in parameter order (the same on every
  // rank), each with a flat buffer kept from step to step, like DDP's buckets: a fresh buffer per step
  // (what allreduce_coalesced allocates for a list of tensors) costs page faults that made the
  // all-reduce of resnet18's 45 MB ~4x slower on loopback. Per bucket: copy in, allreduce_coalesced, wait,
  // copy out divided by the world size.
  struct Buckets {
    std::vector<std::pair<int64_t, c10::ScalarType>> signature;
    std::vector<std::pair<size_t, size_t>> ranges;  // [first, last) gradient of each bucket
    std::vector<torch::Tensor> flats;
  };
  static Buckets cache;
  std::vector<torch::Tensor> grads;
  std::vector<std::pair<int64_t, c10::ScalarType>> signature;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;  // the same on every rank: they run the same code on the same step
    grads.push_back(p.grad());
    signature.emplace_back(p.grad().numel(), p.grad().scalar_type());
  }
  if (signature != cache.signature || cache.flats.empty() != grads.empty()) {
    cache = Buckets{};
    cache.signature = signature;
    int64_t bytes = 0, numel = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      const int64_t size = grads[i].numel() * static_cast<int64_t>(grads[i].element_size());
      const bool fresh = cache.ranges.empty() || bytes + size > bucket_bytes ||
                         grads[i].scalar_type() != grads[cache.ranges.back().first].scalar_type();
      if (fresh) {
        if (!cache.ranges.empty())
          cache.flats.push_back(torch::empty({numel}, grads[cache.ranges.back().first].options()));
        cache.ranges.emplace_back(i, i);
        bytes = numel = 0;
      }
      cache.ranges.back().second = i + 1;
      bytes += size;
      numel += grads[i].numel();
    }
    if (!cache.ranges.empty())
      cache.flats.push_back(torch::empty({numel}, grads[cache.ranges.back().first].options()));
  }
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < cache.ranges.size(); ++b) {
    torch::Tensor& flat = cache.flats[b];
    int64_t offset = 0;
    for (size_t i = cache.ranges[b].first; i < cache.ranges[b].second; ++i) {
      flat.slice(0, offset, offset + grads[i].numel()).view_as(grads[i]).copy_(grads[i]);
      offset += grads[i].numel();
    }
    std::vector<torch::Tensor> one{flat};
    wait_for(group().allreduce_coalesced(one), "gradient all-reduce");
    offset = 0;
    for (size_t i = cache.ranges[b].first; i < cache.ranges[b].second; ++i) {
      // The division fused into the copy out: one pass over the bucket instead of two.
      torch::div_out(grads[i], flat.slice(0, offset, offset + grads[i].numel()).view_as(grads[i]),
                     world_size());
      offset += grads[i].numel();
    }
  }
#endif
  return now_seconds() - t0;
}

namespace {

class AllReduceSumFunction : public torch::autograd::Function<AllReduceSumFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    torch::Tensor sum = x.contiguous().clone();
    all_reduce_sum({sum});
    return sum;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    torch::Tensor sum = grads[0].contiguous().clone();
    all_reduce_sum({sum});
    return {sum};
  }
};

}  // namespace

torch::Tensor all_reduce_sum_differentiable(const torch::Tensor& x) {
  if (!is_distributed()) return x;
  if (!x.requires_grad()) {
    torch::Tensor sum = x.contiguous().clone();
    all_reduce_sum({sum});
    return sum;
  }
  return AllReduceSumFunction::apply(x);
}

torch::Tensor all_gather_rows(const torch::Tensor& local, int64_t global_size, int64_t offset) {
  if (!is_distributed()) return local;
  const int64_t n = local.size(0);
  XFER_CHECK(offset >= 0 && offset + n <= global_size, "rank ", rank(), "'s rows [", offset, ", ", offset + n,
             ") are not inside a global batch of ", global_size);
  // Each rank's rows in place in a zero tensor of the global shape; the sum over the ranks is the whole
  // batch, exactly (x + 0 = x). Padding is differentiable, so the backward slices this rank's rows out of
  // the summed gradient.
  std::vector<int64_t> pad(static_cast<size_t>(2 * local.dim()), 0);
  pad[pad.size() - 2] = offset;
  pad[pad.size() - 1] = global_size - offset - n;
  return all_reduce_sum_differentiable(torch::constant_pad_nd(local, pad, 0));
}

namespace {

/// The reduced dimensions (all but the channels) of a batch-norm input, and the shape that broadcasts a
/// per-channel tensor over it.
std::pair<std::vector<int64_t>, std::vector<int64_t>> channel_dims(const torch::Tensor& x) {
  std::vector<int64_t> reduce{0}, shape(static_cast<size_t>(x.dim()), 1);
  for (int64_t d = 2; d < x.dim(); ++d) reduce.push_back(d);
  shape[1] = x.size(1);
  return {reduce, shape};
}

class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& running_mean, const torch::Tensor& running_var,
                               double momentum, double eps) {
    const auto [reduce, shape] = channel_dims(x);
    const int64_t c = x.size(1);
    // Each rank's moments in a stable one-pass form, combined in double (sum x^2 - N mean^2 would lose the
    // variance to cancellation in float).
    const auto [var, mean] = torch::var_mean(x, reduce, /*unbiased=*/false, /*keepdim=*/false);
    const double n = static_cast<double>(x.numel() / c);
    const torch::Tensor m = mean.to(torch::kDouble);
    torch::Tensor stats =
        torch::cat({m * n, (var.to(torch::kDouble) + m * m) * n, torch::full({1}, n, torch::kDouble)});
    all_reduce_sum({stats});
    const double count = stats[2 * c].item<double>();
    const torch::Tensor global_mean = stats.slice(0, 0, c) / count;
    const torch::Tensor global_var =
        (stats.slice(0, c, 2 * c) / count - global_mean * global_mean).clamp_min(0);
    if (running_mean.defined()) {
      running_mean.mul_(1 - momentum).add_(global_mean.to(running_mean.scalar_type()), momentum);
      running_var.mul_(1 - momentum)
          .add_((global_var * (count / std::max(count - 1, 1.0))).to(running_var.scalar_type()), momentum);
    }
    const torch::Tensor invstd = (global_var + eps).rsqrt().to(x.scalar_type());
    const torch::Tensor xhat = (x - global_mean.to(x.scalar_type()).view(shape)) * invstd.view(shape);
    ctx->save_for_backward({xhat, invstd, weight});
    ctx->saved_data["count"] = count;
    return weight.defined() ? torch::addcmul(bias.view(shape), xhat, weight.view(shape)) : xhat;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &xhat = saved[0], &invstd = saved[1], &weight = saved[2], &g = grads[0];
    const auto [reduce, shape] = channel_dims(xhat);
    const int64_t c = xhat.size(1);
    const torch::Tensor sum_g = g.sum(reduce), sum_g_xhat = (g * xhat).sum(reduce);
    torch::Tensor sums = torch::cat({sum_g, sum_g_xhat});
    all_reduce_sum({sums});
    sums.div_(ctx->saved_data["count"].toDouble());
    const torch::Tensor scale = weight.defined() ? invstd * weight : invstd;
    const torch::Tensor grad_x =
        (g - sums.slice(0, 0, c).view(shape) - xhat * sums.slice(0, c, 2 * c).view(shape)) *
        scale.view(shape);
    // The affine parameters' gradients are this rank's share; the gradient all-reduce averages them.
    return {grad_x,
            weight.defined() ? sum_g_xhat : torch::Tensor(),
            weight.defined() ? sum_g : torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor(),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor sync_batch_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& running_mean, const torch::Tensor& running_var,
                              double momentum, double eps) {
  if (!is_distributed())
    return torch::batch_norm(x, weight, bias, running_mean, running_var, /*training=*/true, momentum, eps,
                             at::globalContext().userEnabledCuDNN());
  XFER_CHECK(x.dim() >= 2, "batch norm needs an input of shape (N, C, ...), got ", x.sizes());
  return SyncBatchNormFunction::apply(x, weight, bias, running_mean, running_var, momentum, eps);
}

void check_same(uint64_t value, const std::string& what) {
  if (!is_distributed()) return;
  // Rank 0's value to everyone, then the ranks that differ from it to everyone.
  torch::Tensor mine = torch::tensor(
      {static_cast<int64_t>(value >> 32), static_cast<int64_t>(value & 0xffffffffu)}, torch::kInt64);
  torch::Tensor root = mine.clone();
  broadcast({root}, 0);
  torch::Tensor differs = torch::zeros({world_size()}, torch::kInt64);
  differs.data_ptr<int64_t>()[rank()] = torch::equal(mine, root) ? 0 : 1;
  all_reduce_sum({differs});
  std::string ranks;
  for (int r = 0; r < world_size(); ++r)
    if (differs.data_ptr<int64_t>()[r] != 0) ranks += cat(ranks.empty() ? "" : ", ", r);
  XFER_CHECK(ranks.empty(), "the ", what, " differs between ranks: rank(s) ", ranks,
             " differ from rank 0 (every ", "rank must be started with the same options and data)");
}

std::vector<int64_t> all_reduce_min(const std::vector<int64_t>& values) {
  if (!is_distributed() || values.empty()) return values;
  std::vector<int64_t> out = values;
#ifdef XFER_HAVE_GLOO
  std::vector<torch::Tensor> one{
      torch::from_blob(out.data(), {static_cast<int64_t>(out.size())}, torch::kInt64)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MIN;
  wait_for(group().allreduce(one, o), "all-reduce");
#endif
  return out;
}

void barrier() {
  if (!is_distributed()) return;
  all_reduce_sum({torch::zeros({1}, torch::kInt64)});
}

bool fault_at(const char* name, int64_t step) {
  const std::string spec = env_text(name);
  if (spec.empty()) return false;
  const std::vector<std::string> parts = split(spec, ':');
  const std::optional<int64_t> at_rank = parts.size() == 2 ? parse_int64(parts[0]) : std::nullopt,
                               at_step = parts.size() == 2 ? parse_int64(parts[1]) : std::nullopt;
  XFER_CHECK(at_rank && at_step, name, " must be RANK:STEP, got '", printable(spec), "'");
  return *at_rank == rank() && *at_step == step;
}

void fault_point(int64_t step) {
  for (const auto& [name, sig] :
       {std::pair{"XFER_DIST_KILL_AT", SIGKILL}, std::pair{"XFER_DIST_TERM_AT", SIGTERM}})
    if (fault_at(name, step)) {
      log_warn(cat("rank ", rank(), ": ", name, ": raising ", signal_name(sig), " at step ", step));
      std::raise(sig);
    }
}

uint64_t hash_text(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace xfer::dist
