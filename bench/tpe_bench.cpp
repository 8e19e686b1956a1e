// xfer's TPE sampler on standard test objectives, for bench/tpe_bench.sh, which runs Optuna's TPESampler on
// the same objectives (bench/python/tpe_optuna.py) and compares their regrets. No training: each trial is
// one evaluation of a closed-form function, so the figures are regrets, never times.
//
//   xfer_tpe_bench [--trials 40] [--seeds 100] [--objectives branin,hartmann6,log3,mixed,logint]
//                  [--kernels optuna31|normalised]
//
// --kernels normalised divides each continuous kernel's density by its sigma (Optuna 3.5 on); the default,
// optuna31, is Optuna 3.1's (see TpeOptions::optuna31_kernels).
// Prints one JSON line per objective: {"objective", "sampler": "xfer", "regrets": [one per seed]}, a regret
// being the best value found minus the objective's known minimum (the sampler maximises its negative).
// The objectives are defined identically in bench/python/tpe_optuna.py:
//   branin     x1 lin [-5, 10], x2 lin [0, 15]                               minimum 0.397887357729739
//   hartmann6  x1..x6 lin [0, 1]                                             minimum -3.32236801141551
//   log3       a log [1e-5, 1], b log [1e-3, 1e3], c lin [0, 1]:
//              (log10 a + 3)^2 + (log10 b - 1)^2 + 4 (c - 0.3)^2 + (log10 a + 3)(c - 0.3)      minimum 0
//   mixed      n int [1, 40], k cat {a, b, c}, x lin [-1, 1]:
//              ((n - 12) / 10)^2 + {a: 0.3, b: 0, c: 0.6}[k] + (x - {a: 0.4, b: -0.5, c: 0}[k])^2    minimum
//              0
//   logint     n logint [1, 1024], lr log [1e-4, 1]: (log2 n - 6)^2 / 10 + (log10 lr + 2)^2   minimum 0
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/core/rng.h"
#include "xfer/search/space.h"
#include "xfer/search/tpe.h"

namespace {

struct TpeBenchObjective {
  std::string name;
  std::vector<std::string> params;
  std::function<double(const xfer::ParamValues&)> f;
  double minimum;
};

double tpe_bench_branin(const xfer::ParamValues& v) {
  const double x1 = v.at("x1"), x2 = v.at("x2");
  const double b = 5.1 / (4 * M_PI * M_PI), c = 5 / M_PI, t = 1 / (8 * M_PI);
  return std::pow(x2 - b * x1 * x1 + c * x1 - 6, 2) + 10 * (1 - t) * std::cos(x1) + 10;
}

double tpe_bench_hartmann6(const xfer::ParamValues& v) {
  static const double alpha[4] = {1.0, 1.2, 3.0, 3.2};
  static const double a[4][6] = {{10, 3, 17, 3.5, 1.7, 8},
                                 {0.05, 10, 17, 0.1, 8, 14},
                                 {3, 3.5, 1.7, 10, 17, 8},
                                 {17, 8, 0.05, 10, 0.1, 14}};
  static const double p[4][6] = {{0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886},
                                 {0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991},
                                 {0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650},
                                 {0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381}};
  double sum = 0;
  for (int i = 0; i < 4; ++i) {
    double inner = 0;
    for (int j = 0; j < 6; ++j) {
      const double x = v.at("x" + std::to_string(j + 1));
      inner += a[i][j] * (x - p[i][j]) * (x - p[i][j]);
    }
    sum += alpha[i] * std::exp(-inner);
  }
  return -sum;
}

double tpe_bench_log3(const xfer::ParamValues& v) {
  const double la = std::log10(v.at("a")) + 3, lb = std::log10(v.at("b")) - 1, c = v.at("c") - 0.3;
  return la * la + lb * lb + 4 * c * c + la * c;
}

double tpe_bench_mixed(const xfer::ParamValues& v) {
  // k: a = 0, b = 1, c = 2. The best x depends on k, so the parameters interact.
  const double n = (v.at("n") - 12) / 10, x = v.at("x");
  const int k = static_cast<int>(v.at("k"));
  const double offset[3] = {0.3, 0.0, 0.6}, best_x[3] = {0.4, -0.5, 0.0};
  return n * n + offset[k] + (x - best_x[k]) * (x - best_x[k]);
}

double tpe_bench_logint(const xfer::ParamValues& v) {
  const double ln = std::log2(v.at("n")) - 6, llr = std::log10(v.at("lr")) + 2;
  return ln * ln / 10 + llr * llr;
}

std::vector<TpeBenchObjective> tpe_bench_objectives() {
  return {
      {"branin", {"x1=lin:-5:10", "x2=lin:0:15"}, tpe_bench_branin, 0.397887357729739},
      {"hartmann6",
       {"x1=lin:0:1", "x2=lin:0:1", "x3=lin:0:1", "x4=lin:0:1", "x5=lin:0:1", "x6=lin:0:1"},
       tpe_bench_hartmann6,
       -3.32236801141551},
      {"log3", {"a=log:1e-5:1", "b=log:1e-3:1000", "c=lin:0:1"}, tpe_bench_log3, 0.0},
      {"mixed", {"n=int:1:40", "k=cat:a,b,c", "x=lin:-1:1"}, tpe_bench_mixed, 0.0},
      {"logint", {"n=logint:1:1024", "lr=log:1e-4:1"}, tpe_bench_logint, 0.0},
  };
}

int64_t tpe_bench_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || n < 1 || n > 100000) {
    std::cerr << "xfer_tpe_bench: " << flag << " needs an integer in [1, 100000], got '" << v << "'\n";
    std::exit(2);
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t trials = 40, seeds = 100;
  std::string which = "branin,hartmann6,log3,mixed,logint", kernels = "optuna31";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::cerr << "xfer_tpe_bench: " << k << " needs a value\n";
      return 2;
    }
    const std::string v = argv[++i];
    if (k == "--trials")
      trials = tpe_bench_int(k, v);
    else if (k == "--seeds")
      seeds = tpe_bench_int(k, v);
    else if (k == "--objectives")
      which = v;
    else if (k == "--kernels" && (v == "optuna31" || v == "normalised"))
      kernels = v;
    else {
      std::cerr << "xfer_tpe_bench: unknown flag or value " << k << " " << v
                << " (--trials N, --seeds N, --objectives A,B, --kernels optuna31|normalised)\n";
      return 2;
    }
  }
  xfer::TpeOptions options;  // Optuna's defaults
  options.optuna31_kernels = kernels == "optuna31";
  for (const auto& obj : tpe_bench_objectives()) {
    if (("," + which + ",").find("," + obj.name + ",") == std::string::npos) continue;
    const xfer::SearchSpace space = xfer::SearchSpace::parse(obj.params);
    nlohmann::json regrets = nlohmann::json::array();
    for (int64_t seed = 0; seed < seeds; ++seed) {
      xfer::TpeSampler tpe(options);
      std::vector<xfer::Observation> done;
      double best = std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < trials; ++t) {
        const xfer::ParamValues v =
            tpe.sample(space, done, xfer::derive_seed(static_cast<uint64_t>(seed), static_cast<uint64_t>(t)));
        const double y = obj.f(v);
        best = std::min(best, y);
        done.push_back({v, -y});
      }
      regrets.push_back(best - obj.minimum);
    }
    const std::string sampler = kernels == "optuna31" ? "xfer" : "xfer, normalised kernels";
    std::cout << nlohmann::json{{"objective", obj.name}, {"sampler", sampler}, {"regrets", regrets}}.dump()
              << "\n";
  }
  return 0;
}
