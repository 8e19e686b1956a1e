#include "xfer/core/rng.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "xfer/core/error.h"

namespace xfer {

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  return mix64(mix64(seed) ^ h);
}

uint64_t derive_seed(uint64_t seed, uint64_t index) {
  return mix64(mix64(seed) ^ mix64(index + 1));
}

at::Generator make_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

void seed_global(uint64_t seed) {
  torch::manual_seed(seed);
}

uint64_t uniform_index(std::mt19937_64& engine, uint64_t n) {
  if (n <= 1) return 0;
  unsigned __int128 m = static_cast<unsigned __int128>(engine()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(engine()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

void shuffle_in_place(std::vector<int64_t>& values, uint64_t seed) {
  std::mt19937_64 engine(seed);
  for (size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[uniform_index(engine, i)]);
}

double sample_beta(std::mt19937_64& engine, double a, double b) {
  std::gamma_distribution<double> ga(a, 1.0), gb(b, 1.0);
  const double x = ga(engine), y = gb(engine);
  // Both gammas underflow to 0 only for tiny shapes; fall back to the mean's side by a coin.
  if (x + y == 0.0) return std::uniform_real_distribution<double>(0, 1)(engine) < a / (a + b) ? 1.0 : 0.0;
  return x / (x + y);
}

torch::Tensor sample_beta(at::Generator& gen, double a, double b, int64_t n) {
  XFER_CHECK(a > 0 && b > 0, "Beta parameters must be > 0, got a=", a, " b=", b);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor x = at::_standard_gamma(torch::full({n}, a, opts), gen);
  const torch::Tensor y = at::_standard_gamma(torch::full({n}, b, opts), gen);
  const torch::Tensor sum = x + y;
  // Both gammas underflow to 0 only for tiny shapes; fall to the mean's side by a uniform draw then.
  const torch::Tensor fallback = (torch::rand({n}, gen, opts) < a / (a + b)).to(torch::kFloat64);
  return torch::where(sum > 0, x / sum.clamp_min(1e-300), fallback);
}

double sample_beta(at::Generator& gen, double a, double b) {
  return sample_beta(gen, a, b, 1).item<double>();
}

double sample_uniform(at::Generator& gen) {
  return torch::rand({1}, gen, torch::TensorOptions().dtype(torch::kFloat64)).item<double>();
}

int64_t sample_index(at::Generator& gen, int64_t n) {
  XFER_CHECK(n >= 1, "cannot draw an index from an empty range");
  return torch::randint(n, {1}, gen, torch::kInt64).item<int64_t>();
}

torch::Tensor sample_permutation(at::Generator& gen, int64_t n) {
  return torch::randperm(n, gen, torch::kInt64);
}

}  // namespace xfer
