#pragma once
/// Seeding and RNG streams.
///
/// A run has one seed. Every consumer of randomness (model init, each batch stream, each method) gets
/// its own stream, derived from (seed, name), so adding a consumer never shifts another's numbers, and
/// resuming only needs the states of the few stateful generators. Batch streams are counter-based:
/// batch b of a stream is a pure function of (seed, b).
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/types.h>

namespace xfer {

/// SplitMix64 finaliser: a good 64-bit mixing function.
uint64_t mix64(uint64_t x);
/// A seed for the stream `name` of a run seeded with `seed`.
uint64_t derive_seed(uint64_t seed, const std::string& name);
/// A seed for item `index` of a counter-based stream.
uint64_t derive_seed(uint64_t seed, uint64_t index);

/// A CPU torch generator seeded with `seed` (for torch::randperm, torch::rand, ... with a generator).
at::Generator make_generator(uint64_t seed);

/// Seeds torch's global generator, used by module constructors' parameter init.
void seed_global(uint64_t seed);

/// A uniform integer in [0, n) (Lemire's multiply-shift, with rejection: no modulo bias).
uint64_t uniform_index(std::mt19937_64& engine, uint64_t n);
/// Fisher-Yates shuffle driven by `seed`; the same result on every platform.
void shuffle_in_place(std::vector<int64_t>& values, uint64_t seed);

/// Samples from Beta(a, b) with a std engine (via two gammas), for mixing weights.
double sample_beta(std::mt19937_64& engine, double a, double b);

// Draws from a torch generator: methods use the Trainer's checkpointed `StepContext::rng`, so their
// randomness resumes exactly. All return CPU values.

/// n draws from Beta(a, b), float64 (n), as Ga / (Ga + Gb) with two standard gammas.
torch::Tensor sample_beta(at::Generator& gen, double a, double b, int64_t n);
/// One draw from Beta(a, b).
double sample_beta(at::Generator& gen, double a, double b);
/// One draw from U[0, 1).
double sample_uniform(at::Generator& gen);
/// A uniform integer in [0, n).
int64_t sample_index(at::Generator& gen, int64_t n);
/// A random permutation of 0..n-1, int64 (n).
torch::Tensor sample_permutation(at::Generator& gen, int64_t n);

}  // namespace xfer
