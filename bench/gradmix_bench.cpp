// GradMix's step against the source-only step with k = 2 sources, in one process (issue 9's benchmark).
//
//   xfer_gradmix_bench [--threads 2] [--steps 200] [--warmup 20] [--batch 64] [--per-class 2] [--layers
//   module]
//
// Both methods run the Trainer's own step (training_step: their batches from the prefetching loader, their
// backward passes, the optimizer) on the embedded task (S1 = Fashion-MNIST 5-9 rotated with noise,
// S2 = classes 0-4, V = --per-class labels of classes 5-9), each on its own model, in alternating blocks so
// machine noise hits both alike. Prints one JSON line: median step times, their ratio, and the time GradMix
// spends on the layers' inner products and SLSQP (measured inside its step) as a fraction of its step.
#include <algorithm>
#include <iostream>
#include <optional>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/data/spec.h"
#include "xfer/methods/gradmix.h"
#include "xfer/train/trainer.h"

namespace {

struct GradMixBenchArgs {
  int64_t threads = 2, steps = 200, warmup = 20, batch = 64, per_class = 2;
  std::string layers = "module";
};

double gradmix_bench_median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

/// One method on its own model and streams, stepping through training_step.
struct GradMixBenchRun {
  xfer::Model model{nullptr};
  xfer::Batches batches;
  std::unique_ptr<xfer::GradMixMethod> method;
  std::vector<xfer::ParamGroup> groups;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  at::Generator rng = xfer::make_generator(1);
  int64_t step = 0;

  GradMixBenchRun(const xfer::Task& task, xfer::GradMixMethod::Options opts,
                  const xfer::LoaderOptions& loader, int64_t total) {
    xfer::Arch arch;
    arch.backbone = "cnn4:width=16";
    arch.height = arch.width = 28;
    arch.input = xfer::compute_normalization(task.train.images);
    arch.heads = {{"target", task.class_names()}};
    xfer::seed_global(0);
    model = xfer::Model(arch);
    model->train();
    batches.add("target", std::make_unique<xfer::BatchStream>(task.train, arch.input, loader, 1));
    method = std::make_unique<xfer::GradMixMethod>(opts);
    xfer::SetupContext ctx{task,     nullptr, xfer::Model(nullptr), batches, loader, 0, torch::kCPU,
                           "target", total};
    method->setup(model, ctx);
    groups = method->param_groups(model, 1.0);
    xfer::OptimizerOptions o;
    o.lr = 0.05;
    optimizer = xfer::make_optimizer(o, groups);
  }
  double run_step(int64_t total) {
    xfer::StepContext ctx{batches, model, step++, total, rng, "target"};
    const double t0 = xfer::now_seconds();
    xfer::training_step(*method, *optimizer, groups, 0.05, ctx);
    return xfer::now_seconds() - t0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    GradMixBenchArgs a;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string k = argv[i], v = argv[i + 1];
      if (k == "--threads")
        a.threads = std::stoll(v);
      else if (k == "--steps")
        a.steps = std::stoll(v);
      else if (k == "--warmup")
        a.warmup = std::stoll(v);
      else if (k == "--batch")
        a.batch = std::stoll(v);
      else if (k == "--per-class")
        a.per_class = std::stoll(v);
      else if (k == "--layers")
        a.layers = v;
      else
        throw std::invalid_argument("unknown flag " + k);
    }
    xfer::set_verbosity(0);
    xfer::set_threads(static_cast<int>(a.threads));
    xfer::tune_allocator();
    const xfer::Task task = xfer::load_task(
        "fmnist:classes=5-9:part=1/2:per_class=" + std::to_string(a.per_class) + ":test=none", 0);
    xfer::LoaderOptions loader;
    loader.batch_size = a.batch;
    xfer::GradMixMethod::Options opts;
    opts.sources = "fmnist:classes=5-9:part=0/2:shift=rot30+noise0.2;fmnist:classes=0-4";
    const std::optional<xfer::MixingGranularity> layers =
        xfer::enum_from_name<xfer::MixingGranularity>(a.layers);
    if (!layers) {
      std::cerr << "xfer_gradmix_bench: --layers must be layer, module, tensor or global, got '" << a.layers
                << "'\n";
      return 2;
    }
    opts.layers = *layers;
    const int64_t total = a.warmup + a.steps;
    GradMixBenchRun gradmix(task, opts, loader, total);
    opts.mode = xfer::GradMixMethod::Mode::source_only;
    GradMixBenchRun source_only(task, opts, loader, total);

    std::vector<double> gm, so;
    double solver = 0, gm_timed = 0;
    const int64_t block = 10;
    for (int64_t done = 0; done < total; done += block) {
      const bool timed = done >= a.warmup;
      for (int64_t i = 0; i < block; ++i) {
        const double s = source_only.run_step(total);
        if (timed) so.push_back(s);
      }
      for (int64_t i = 0; i < block; ++i) {
        const double before = gradmix.method->solver_seconds();
        const double s = gradmix.run_step(total);
        if (timed) {
          gm.push_back(s);
          gm_timed += s;
          solver += gradmix.method->solver_seconds() - before;
        }
      }
    }
    const double gm_med = gradmix_bench_median(gm), so_med = gradmix_bench_median(so);
    nlohmann::json j = {{"bench", "gradmix_step"},
                        {"backbone", "cnn4:width=16"},
                        {"batch", a.batch},
                        {"threads", a.threads},
                        {"steps", a.steps},
                        {"sources", 2},
                        {"v_size", task.train.size()},
                        {"layers", a.layers},
                        {"mixing_layers", gradmix.method->layer_names().size()},
                        {"source_only_step_ms", 1000 * so_med},
                        {"gradmix_step_ms", 1000 * gm_med},
                        {"ratio", gm_med / so_med},
                        {"solver_ms_per_step", 1000 * solver / static_cast<double>(gm.size())},
                        {"solver_fraction", solver / gm_timed},
                        {"slsqp_failures", gradmix.method->solver_failures()}};
    std::cout << j.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "xfer_gradmix_bench: " << e.what() << "\n";
    return 2;
  }
}
