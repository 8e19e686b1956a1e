// TPE and random search: Optuna's defaults, the Parzen estimator's bandwidths and densities, and search
// quality on known test functions (pure sampler tests: no training).
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>

#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/search/search.h"
#include "xfer/search/tpe.h"

namespace xfer {
namespace {

TEST(Tpe, GammaAndWeightsFollowOptuna) {
  EXPECT_EQ(tpe_gamma(1), 1);
  EXPECT_EQ(tpe_gamma(10), 1);
  EXPECT_EQ(tpe_gamma(11), 2);
  EXPECT_EQ(tpe_gamma(100), 10);
  EXPECT_EQ(tpe_gamma(1000), 25);
  EXPECT_EQ(tpe_weights(3), (std::vector<double>{1, 1, 1}));
  const auto w = tpe_weights(28);  // numpy.linspace(1/28, 1, 3) then 25 ones
  ASSERT_EQ(w.size(), 28u);
  EXPECT_DOUBLE_EQ(w[0], 1.0 / 28);
  EXPECT_DOUBLE_EQ(w[1], (1.0 / 28 + 1) / 2);
  EXPECT_DOUBLE_EQ(w[2], 1.0);
  EXPECT_DOUBLE_EQ(w[27], 1.0);
}

/// |a - b| <= rtol |b| element by element (atol 1e-12 for values at 0).
void tpe_expect_close(const std::vector<double>& a, const nlohmann::json& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    const double want = b[i].get<double>();
    EXPECT_NEAR(a[i], want, 1e-6 * std::abs(want) + 1e-12) << what << "[" << i << "]";
  }
}

TEST(Tpe, ParzenEstimatorsEqualOptunasGoldenValues) {
  // tests/golden/make_tpe_golden.py: Optuna 3.1's _ParzenEstimator with TPESampler's defaults on the same
  // observations, for a parameter of each kind; weights, mus, sigmas, choice probabilities and the log
  // densities and scores log l(x) - log g(x) of fixed candidates.
  const nlohmann::json golden = read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/tpe.json");
  ASSERT_GE(golden["cases"].size(), 8u);
  for (const auto& c : golden["cases"]) {
    const std::string name = c["name"];
    const ParamSpec spec = parse_param(c["param"].get<std::string>());
    const ParzenEstimator l(spec, c["below"].get<std::vector<double>>(), TpeOptions{});
    const ParzenEstimator g(spec, c["above"].get<std::vector<double>>(), TpeOptions{});
    for (const auto& [pe, key] : {std::make_pair(&l, "l"), std::make_pair(&g, "g")}) {
      tpe_expect_close(pe->weights(), c[key]["weights"], name + " " + key + " weights");
      if (spec.numeric()) {
        tpe_expect_close(pe->mus(), c[key]["mus"], name + " " + key + " mus");
        tpe_expect_close(pe->sigmas(), c[key]["sigmas"], name + " " + key + " sigmas");
      }
    }
    std::vector<double> log_l, log_g, score;
    for (const auto& x : c["candidates"]) {
      log_l.push_back(l.log_pdf(x.get<double>()));
      log_g.push_back(g.log_pdf(x.get<double>()));
      score.push_back(log_l.back() - log_g.back());
    }
    tpe_expect_close(log_l, c["log_l"], name + " log l");
    tpe_expect_close(log_g, c["log_g"], name + " log g");
    tpe_expect_close(score, c["score"], name + " score");
  }
}

TEST(Tpe, PrunedTrialsRankAfterCompleteOnesAsInOptuna) {
  // Complete trials by value; pruned ones after them, the furthest first, then by value; a pruned trial
  // without an intermediate value last.
  std::vector<Observation> done(6);
  done[0].value = 0.5;
  done[1] = {{}, 0.9, true, 20};
  done[2].value = 0.7;
  done[3] = {{}, 0.8, true, 40};
  done[4] = {{}, 0.0, true, -1};
  done[5] = {{}, 0.95, true, 20};
  EXPECT_EQ(tpe_rank(done), (std::vector<size_t>{2, 0, 3, 5, 1, 4}));
}

TEST(Tpe, NormalQuantileInvertsTheCdf) {
  EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-12);
  EXPECT_NEAR(normal_quantile(0.5), 0.0, 1e-15);
  // Far in the upper tail cdf(x) rounds towards 1 in double, so the inverse is checked up to x = 5 there.
  for (double x : {-30.0, -8.0, -3.0, -0.5, 0.1, 2.0, 5.0})
    EXPECT_NEAR(normal_quantile(normal_cdf(x)), x, 1e-9 * (1 + std::abs(x)));
  EXPECT_TRUE(std::isinf(normal_quantile(0)));
  EXPECT_TRUE(std::isinf(normal_quantile(1)));
}

TEST(Tpe, BandwidthsAreNeighbourGapsWithTheMagicClip) {
  // Observations 2, 3, 7 in [0, 10] with the prior at 5. Sorted with the bounds: 0 2 3 5 7 10. Each sigma
  // is the larger gap to a neighbour; the end kernels use their inner gap (consider_endpoints=false):
  // 2 -> 1, 3 -> 2, 7 -> 2. The magic clip floors them at 10 / min(100, 1 + 4) = 2. The prior's is 10.
  const ParamSpec p = parse_param("x=lin:0:10");
  TpeOptions no_clip;
  no_clip.magic_clip = false;
  const ParzenEstimator raw(p, {2, 3, 7}, no_clip), clipped(p, {2, 3, 7}, TpeOptions{});
  EXPECT_EQ(raw.sigmas(), (std::vector<double>{1, 2, 2, 10}));
  EXPECT_EQ(clipped.sigmas(), (std::vector<double>{2, 2, 2, 10}));
  EXPECT_EQ(clipped.mus(), (std::vector<double>{2, 3, 7, 5}));
  EXPECT_EQ(clipped.weights(),
            (std::vector<double>{0.25, 0.25, 0.25, 0.25}));  // 3 observations + prior weight 1
  // Log parameters live in log space.
  const ParzenEstimator lg(parse_param("tau=log:1:10000"), {10, 100}, TpeOptions{});
  EXPECT_NEAR(lg.mus()[0], std::log(10.0), 1e-12);
  EXPECT_NEAR(lg.mus()[2], 0.5 * std::log(10000.0), 1e-12);
  EXPECT_NEAR(lg.sigmas()[2], std::log(10000.0), 1e-12);
  // No observations: the prior alone.
  const ParzenEstimator prior(p, {}, TpeOptions{});
  EXPECT_EQ(prior.weights(), (std::vector<double>{1.0}));
}

TEST(Tpe, DensitiesNormaliseAndSamplesStayInTheSpace) {
  std::mt19937_64 engine(3);
  // Normalised kernels (Optuna 3.5 on): a float's density integrates to 1 over the range, a log float's
  // and a log integer's over the range in log space. Optuna 3.1's kernels leave out 1/sigma, so the same
  // integral is sum_k w_k sigma_k.
  TpeOptions normalised;
  normalised.optuna31_kernels = false;
  const int steps = 20000;
  auto integrate = [&](const ParzenEstimator& e, double a, double b, bool log_space) {
    double integral = 0;
    for (int i = 0; i < steps; ++i) {
      const double u = a + (b - a) * (i + 0.5) / steps;
      integral += std::exp(e.log_pdf(log_space ? std::exp(u) : u)) * (b - a) / steps;
    }
    return integral;
  };
  auto weighted_sigma = [](const ParzenEstimator& e) {
    double s = 0;
    for (size_t k = 0; k < e.weights().size(); ++k) s += e.weights()[k] * e.sigmas()[k];
    return s;
  };
  const ParamSpec fp = parse_param("x=lin:-1:3"), lp = parse_param("tau=log:0.1:1000");
  const std::vector<double> fo = {-0.8, 0.4, 2.9, 1.0}, lo = {0.5, 3, 500};
  const ParzenEstimator f(fp, fo, normalised), lf(lp, lo, normalised);
  EXPECT_NEAR(integrate(f, -1, 3, false), 1.0, 1e-6);
  EXPECT_NEAR(integrate(lf, std::log(0.1), std::log(1000.0), true), 1.0, 1e-6);
  const ParzenEstimator f31(fp, fo, TpeOptions{}), lf31(lp, lo, TpeOptions{});
  EXPECT_NEAR(integrate(f31, -1, 3, false), weighted_sigma(f31), 1e-6);
  EXPECT_NEAR(integrate(lf31, std::log(0.1), std::log(1000.0), true), weighted_sigma(lf31), 1e-6);
  const ParamSpec lip = parse_param("n=logint:1:50");
  const ParzenEstimator li(lip, {2, 50, 3}, normalised);
  EXPECT_NEAR(integrate(li, std::log(0.5), std::log(50.5), true), 1.0, 1e-6);
  // Integers: probabilities (masses of [v - 1/2, v + 1/2], which no sigma scales) sum to 1.
  for (const char* text : {"n=int:-3:9", "n=logint:1:50"}) {
    const ParamSpec ip = parse_param(text);
    const ParzenEstimator e(ip, {ip.low + 1, ip.high, ip.low + 2}, TpeOptions{});
    if (ip.kind == ParamSpec::Kind::Int) {
      double total = 0;
      for (double v = ip.low; v <= ip.high; ++v) total += std::exp(e.log_pdf(v));
      EXPECT_NEAR(total, 1.0, 1e-9) << text;
    }
    for (int i = 0; i < 500; ++i) {
      const double s = e.sample(engine);
      EXPECT_TRUE(s >= ip.low && s <= ip.high && s == std::round(s)) << text << " sampled " << s;
    }
  }
  const ParamSpec cp = parse_param("c=cat:a,b,c,d");
  const ParzenEstimator c(cp, {1, 1, 3}, TpeOptions{});
  double total = 0;
  for (int i = 0; i < 4; ++i) total += std::exp(c.log_pdf(i));
  EXPECT_NEAR(total, 1.0, 1e-12);
  // Weights 1/4 each for three observations and the prior; each observed kernel puts 1 + 1/4 on its
  // choice out of 1 + 4/4, the prior kernel 1/4 on each: p(b) = (2 * 1.25/2 + 0.25/2 + 0.25) / 4.
  EXPECT_NEAR(std::exp(c.log_pdf(1)), (2 * 0.625 + 0.125 + 0.25) / 4, 1e-12);
  for (int i = 0; i < 200; ++i) {
    const double s = f.sample(engine);
    EXPECT_TRUE(s >= -1 && s <= 3) << s;
    const double t = lf.sample(engine);
    EXPECT_TRUE(t >= 0.1 && t <= 1000) << t;
  }
}

/// Minimises `f` (the samplers maximise -f) for `budget` trials; returns the best f found.
double tpe_minimise(ParamSampler& sampler, const SearchSpace& space,
                    const std::function<double(const ParamValues&)>& f, int budget, uint64_t seed) {
  std::vector<Observation> done;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < budget; ++i) {
    const ParamValues v = sampler.sample(space, done, derive_seed(seed, static_cast<uint64_t>(i)));
    const double y = f(v);
    best = std::min(best, y);
    done.push_back({v, -y});
  }
  return best;
}

double tpe_median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

TEST(Tpe, BeatsRandomSearchOnBranin) {
  // Branin on [-5, 10] x [0, 15]; its minimum is 0.397887.
  const SearchSpace space = SearchSpace::parse({"x1=lin:-5:10", "x2=lin:0:15"});
  auto branin = [](const ParamValues& v) {
    const double x1 = v.at("x1"), x2 = v.at("x2");
    const double b = 5.1 / (4 * M_PI * M_PI), c = 5 / M_PI, t = 1 / (8 * M_PI);
    return std::pow(x2 - b * x1 * x1 + c * x1 - 6, 2) + 10 * (1 - t) * std::cos(x1) + 10;
  };
  const int budget = 60;
  RandomParamSampler random;
  std::vector<double> random_best;
  for (uint64_t seed = 0; seed < 9; ++seed)
    random_best.push_back(tpe_minimise(random, space, branin, budget, seed));
  TpeSampler tpe;
  const double tpe_best = tpe_minimise(tpe, space, branin, budget, 7);
  EXPECT_LT(tpe_best, tpe_median(random_best)) << "random search's median best " << tpe_median(random_best);
  EXPECT_LT(tpe_best, 0.6);
}

TEST(Tpe, BeatsRandomSearchOnAMixedSpace) {
  // A log float, an integer and a choice, as a real search space has: the optimum is at tau = 100,
  // n = 12, c = "b".
  const SearchSpace space = SearchSpace::parse({"tau=log:1:100000", "n=int:1:40", "c=cat:a,b,c,d"});
  auto f = [](const ParamValues& v) {
    const double lt = std::log10(v.at("tau")) - 2, n = (v.at("n") - 12) / 10;
    return lt * lt + n * n + (v.at("c") == 1 ? 0.0 : 0.5);
  };
  const int budget = 50;
  RandomParamSampler random;
  std::vector<double> random_best;
  for (uint64_t seed = 0; seed < 9; ++seed)
    random_best.push_back(tpe_minimise(random, space, f, budget, seed));
  TpeSampler tpe;
  EXPECT_LT(tpe_minimise(tpe, space, f, budget, 3), tpe_median(random_best));
}

TEST(Tpe, IsDeterministicPerSeed) {
  const SearchSpace space = SearchSpace::parse({"x=lin:-2:2", "tau=log:1:1000", "n=int:0:9", "c=cat:a,b,c"});
  auto f = [](const ParamValues& v) { return v.at("x") * v.at("x") + v.at("n") + v.at("c"); };
  auto run = [&](uint64_t seed) {
    TpeSampler tpe;
    std::vector<Observation> done;
    for (int i = 0; i < 25; ++i) {
      const ParamValues v = tpe.sample(space, done, derive_seed(seed, static_cast<uint64_t>(i)));
      done.push_back({v, -f(v)});
    }
    return done;
  };
  const auto a = run(11), b = run(11), c = run(12);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].params, b[i].params) << "trial " << i;
  EXPECT_NE(a.back().params, c.back().params);
  // Past the 10 startup trials TPE is not random search: it uses the observations.
  TpeSampler tpe;
  RandomParamSampler random;
  std::vector<Observation> first(a.begin(), a.begin() + 10);
  EXPECT_EQ(tpe.sample(space, std::vector<Observation>(a.begin(), a.begin() + 9), 5),
            random.sample(space, {}, 5));
  EXPECT_NE(tpe.sample(space, first, 5), random.sample(space, {}, 5));
  test::expect_bad_input(
      [] {
        SearchOptions o;
        Fields f;
        o.fields(f);
        f.set("sampler", "grid");
      },
      {"--sampler", "grid"});
}

}  // namespace
}  // namespace xfer
