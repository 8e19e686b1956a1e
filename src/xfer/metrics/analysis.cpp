#include "xfer/metrics/analysis.h"

#include <cmath>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/rng.h"

namespace xfer {
namespace {

MeanStd analysis_mean_std(const torch::Tensor& values) {
  const torch::Tensor v = values.to(torch::kFloat64);
  MeanStd m;
  m.n = static_cast<size_t>(v.numel());
  m.mean = v.mean().item<double>();
  m.std = v.numel() > 1 ? v.std(/*unbiased=*/true).item<double>() : 0.0;  // as core/stats.h's mean_std
  return m;
}

/// Runs `fn` with `model` in eval mode under no-grad, then restores its mode.
template <class Fn>
auto analysis_in_eval(Model& model, Fn&& fn) {
  const bool was_training = model->is_training();
  model->eval();
  torch::NoGradGuard no_grad;
  auto result = fn();
  model->train(was_training);
  return result;
}

/// (1 - d) x + d x' per row, with one d per row (broadcast over the trailing dimensions).
torch::Tensor analysis_mix(const torch::Tensor& x, const torch::Tensor& x2, const torch::Tensor& d) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  const torch::Tensor w = d.to(x.device(), x.scalar_type()).view(shape);
  return x * (1 - w) + x2 * w;
}

}  // namespace

std::vector<MeanStd> interpolation_loss(const BatchFunction& f, const torch::Tensor& inputs,
                                        const InterpolationOptions& opts) {
  const int64_t n = inputs.size(0);
  XFER_CHECK(n >= 2, "the interpolation loss needs at least 2 examples, got ", n);
  XFER_CHECK(opts.pairs >= 1, "the interpolation loss needs at least 1 pair, got ", opts.pairs);
  XFER_CHECK(opts.alpha > 0, "the interpolation loss's alpha must be > 0, got ", opts.alpha);
  XFER_CHECK(opts.batch >= 1, "the interpolation loss's batch must be >= 1, got ", opts.batch);
  at::Generator gen = make_generator(derive_seed(opts.seed, "interpolation"));
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  // The second example of a pair is any other one: i + 1 + r (mod n), r in [0, n - 1).
  const torch::Tensor first = torch::randint(n, {opts.pairs}, gen, torch::kInt64);
  const torch::Tensor second = (first + 1 + torch::randint(n - 1, {opts.pairs}, gen, torch::kInt64)) % n;
  const torch::Tensor d1 = torch::rand({opts.pairs}, gen, f64);
  const torch::Tensor d2 = torch::rand({opts.pairs}, gen, f64);
  const torch::Tensor lam = sample_beta(gen, opts.alpha, opts.alpha, opts.pairs);
  const torch::Tensor dm = lam * d1 + (1 - lam) * d2;

  const torch::Device device = inputs.device();
  std::vector<std::vector<torch::Tensor>> distances;
  for (int64_t start = 0; start < opts.pairs; start += opts.batch) {
    const int64_t end = std::min(start + opts.batch, opts.pairs), b = end - start;
    const torch::Tensor xa = inputs.index_select(0, first.slice(0, start, end).to(device));
    const torch::Tensor xb = inputs.index_select(0, second.slice(0, start, end).to(device));
    // The three mixes of each pair go through f together.
    auto mixed = [&](const torch::Tensor& d) { return analysis_mix(xa, xb, d.slice(0, start, end)); };
    const torch::Tensor outputs_in = torch::cat({mixed(dm), mixed(d1), mixed(d2)});
    const std::vector<torch::Tensor> outputs = f(outputs_in);
    XFER_CHECK(!outputs.empty(), "the interpolation loss's function gave no outputs");
    const torch::Tensor l = lam.slice(0, start, end);
    distances.resize(outputs.size());
    for (size_t k = 0; k < outputs.size(); ++k) {
      const torch::Tensor out = outputs[k].reshape({3 * b, -1}).to(torch::kFloat64);
      // lambda f(Mix_d1) + (1 - lambda) f(Mix_d2)
      const torch::Tensor target = analysis_mix(out.slice(0, 2 * b, 3 * b), out.slice(0, b, 2 * b), l);
      distances[k].push_back((out.slice(0, 0, b) - target).norm(2, {1}).cpu());
    }
  }
  std::vector<MeanStd> result;
  for (const auto& d : distances) result.push_back(analysis_mean_std(torch::cat(d)));
  return result;
}

ModelInterpolation model_interpolation_loss(Model& model, const torch::Tensor& inputs,
                                            const std::string& head, const InterpolationOptions& opts,
                                            LabelOutput label_output) {
  const HeadInfo* info = model->arch().head(head);
  XFER_CHECK(info != nullptr, "the model has no '", head, "' head");
  const int64_t k = info->predicted();
  const bool softmax = label_output == LabelOutput::softmax;
  const auto il = analysis_in_eval(model, [&] {
    return interpolation_loss(
        [&](const torch::Tensor& x) {
          const torch::Tensor g = model->backbone->forward(x);
          const torch::Tensor z = model->head(head)->forward(g).slice(1, 0, k);
          return std::vector<torch::Tensor>{g, softmax ? torch::softmax(z, 1) : z};
        },
        inputs, opts);
  });
  return {il[0], il[1]};
}

double parameter_distance(const Model& model, const Model& reference) {
  XFER_CHECK(model->arch().backbone == reference->arch().backbone,
             "parameter distance: the backbones differ (", model->arch().backbone, " vs ",
             reference->arch().backbone, ")");
  torch::NoGradGuard no_grad;
  const auto theirs = reference->backbone->named_parameters();
  double total = 0;
  for (const auto& p : model->backbone->named_parameters()) {
    const torch::Tensor* w0 = theirs.find(p.key());
    XFER_CHECK(w0 != nullptr && w0->sizes() == p.value().sizes(), "parameter distance: the models differ at ",
               p.key());
    total +=
        (p.value().to(torch::kFloat64) - w0->to(p.value().device(), torch::kFloat64)).norm().item<double>();
  }
  return total;
}

torch::Tensor pooled_features(Model& model, const torch::Tensor& inputs, int64_t batch) {
  XFER_CHECK(batch >= 1, "the feature batch size must be >= 1, got ", batch);
  return analysis_in_eval(model, [&] {
    std::vector<torch::Tensor> parts;
    for (int64_t start = 0; start < inputs.size(0); start += batch)
      parts.push_back(
          model->backbone->forward(inputs.slice(0, start, std::min(start + batch, inputs.size(0)))));
    XFER_CHECK(!parts.empty(), "no inputs to extract features from");
    return torch::cat(parts);
  });
}

torch::nn::Linear fit_linear_probe(const torch::Tensor& features, const torch::Tensor& labels,
                                   int64_t classes, int64_t iterations, double decay,
                                   std::optional<uint64_t> seed) {
  XFER_CHECK(
      features.dim() == 2 && labels.dim() == 1 && features.size(0) == labels.size(0) && features.size(0) > 0,
      "a linear probe needs features (N, D) and labels (N), got ", features.sizes(), " and ", labels.sizes());
  XFER_CHECK(classes >= 1 && iterations >= 1 && decay >= 0,
             "a linear probe needs classes >= 1, iterations >= 1 ", "and decay >= 0, got ", classes, ", ",
             iterations, " and ", decay);
  const int64_t d = features.size(1);
  torch::nn::Linear probe(d, classes);
  probe->to(features.device());
  {
    torch::NoGradGuard no_grad;
    if (seed) {
      at::Generator gen = make_generator(*seed);
      const double bound = 1.0 / std::sqrt(static_cast<double>(d));
      for (torch::Tensor* p : {&probe->weight, &probe->bias})
        p->copy_(torch::rand(p->sizes(), gen, torch::kFloat32) * (2 * bound) - bound);
    } else {
      probe->weight.zero_();
      probe->bias.zero_();
    }
  }
  const torch::Tensor x = features.detach().to(torch::kFloat32);
  const torch::Tensor y = labels.to(features.device(), torch::kInt64);
  torch::optim::LBFGS lbfgs(
      probe->parameters(),
      torch::optim::LBFGSOptions(1.0).max_iter(iterations).line_search_fn("strong_wolfe"));
  lbfgs.step([&] {
    lbfgs.zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(probe->forward(x), y) +
                         0.5 * decay * (probe->weight.pow(2).sum() + probe->bias.pow(2).sum());
    loss.backward();
    return loss;
  });
  return probe;
}

SubsetAccuracy forgetting_probe(const torch::Tensor& train_features, const torch::Tensor& train_labels,
                                const torch::Tensor& test_features, const torch::Tensor& test_labels,
                                int64_t classes, const std::vector<int64_t>& auxiliary, int64_t iterations,
                                double decay, uint64_t seed) {
  XFER_CHECK(test_features.dim() == 2 && test_labels.dim() == 1 &&
                 test_features.size(0) == test_labels.size(0) &&
                 test_features.size(1) == train_features.size(1),
             "the forgetting probe's test features ", test_features.sizes(), " and labels ",
             test_labels.sizes(), " do not match the training features ", train_features.sizes());
  std::vector<bool> in_aux(static_cast<size_t>(classes), false);
  for (int64_t c : auxiliary) {
    XFER_CHECK(c >= 0 && c < classes, "auxiliary class ", c, " is outside the source's ", classes,
               " classes");
    in_aux[static_cast<size_t>(c)] = true;
  }
  torch::nn::Linear head = fit_linear_probe(train_features, train_labels, classes, iterations, decay,
                                            derive_seed(seed, "forgetting-probe"));
  torch::NoGradGuard no_grad;
  const torch::Tensor y = test_labels.to(torch::kCPU, torch::kInt64).contiguous();
  const torch::Tensor right =
      head->forward(test_features.to(torch::kFloat32)).argmax(1).cpu().eq(y).contiguous();
  const int64_t* label = y.data_ptr<int64_t>();
  const bool* ok = right.data_ptr<bool>();
  int64_t hits[2] = {0, 0}, counts[2] = {0, 0};  // [ABA, auxiliary]
  for (int64_t i = 0; i < y.size(0); ++i) {
    XFER_CHECK(label[i] >= 0 && label[i] < classes, "test label ", label[i], " is outside ", classes,
               " classes");
    const int a = in_aux[static_cast<size_t>(label[i])] ? 1 : 0;
    counts[a] += 1;
    hits[a] += ok[i] ? 1 : 0;
  }
  auto rate = [](int64_t h, int64_t n) {
    return n > 0 ? static_cast<double>(h) / static_cast<double>(n) : 0.0;
  };
  SubsetAccuracy r;
  r.auxiliary_n = counts[1];
  r.aba_n = counts[0];
  r.all_n = counts[0] + counts[1];
  r.auxiliary = rate(hits[1], counts[1]);
  r.aba = rate(hits[0], counts[0]);
  r.all = rate(hits[0] + hits[1], r.all_n);
  return r;
}

std::vector<double> feature_spectrum(const torch::Tensor& features, int64_t k) {
  XFER_CHECK(features.dim() == 2 && features.numel() > 0,
             "the feature spectrum needs a non-empty (N, D) matrix, got ", features.sizes());
  XFER_CHECK(k >= 1, "the feature spectrum needs k >= 1, got ", k);
  // Singular values in float64, descending; relative to the largest.
  const torch::Tensor s = torch::linalg_svdvals(features.detach().to(torch::kCPU, torch::kFloat64));
  const double largest = s[0].item<double>();
  XFER_CHECK(largest > 0, "the feature matrix is all zeros: no spectrum");
  const int64_t m = std::min<int64_t>(k, s.size(0));
  const torch::Tensor tail = (s.slice(0, s.size(0) - m).flip({0}) / largest).contiguous();
  return std::vector<double>(tail.data_ptr<double>(), tail.data_ptr<double>() + m);
}

}  // namespace xfer
