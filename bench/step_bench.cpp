// Training-step throughput of xfer, for bench/compare.sh.
//
//   xfer_bench bare    [--backbone cnn4] [--batch 64] [--threads 2] [--steps 200]
//       the bare l2 step on one fixed batch of Fashion-MNIST images: forward, cross-entropy, backward, SGD
//       (momentum 0.9, weight decay 1e-4), exactly what `bench/python/method_step.py --method l2` does
//   xfer_bench overhead [same flags]
//       the Trainer's end-to-end step (training_step: the loader with augmentation and prefetch, the
//       method, the optimizer) against the bare step, interleaved in blocks in one process;
//       --prefetch 0 and --augment 0 switch those loader features off
//   xfer_bench method --method NAME [same flags]
//       NAME's whole Trainer step (training_step) as `xfer finetune` runs it, on the demo's task from the
//       demo's cached source model (trained first if the cache lacks it); bench/python/method_step.py is
//       the Python reference, which gets fixed batches for free; --pretrain-steps N shortens the source
//       model's training for large backbones (step times do not depend on the weights)
//   xfer_bench eval [--backbone cnn4] [--batch 500] [--threads 2] [--steps 20]
//       one evaluation pass (xfer's evaluate(): eval mode, batch norms folded, inference mode) over the
//       demo target's 5,000 test images; bench/python/eval_pass.py is the Python reference
// Each prints one JSON line; times are medians of single steps or passes (robust to setup and to noise).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/data/idx.h"
#include "xfer/data/spec.h"
#include "xfer/methods/finetune.h"
#include "xfer/methods/registry.h"
#include "xfer/models/model.h"
#include "xfer/optim/optim.h"
#include "xfer/train/trainer.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/run.h"
#include "xfer/workflows/timing.h"

namespace {

struct Args {
  std::string mode = "bare", backbone = "cnn4", method;
  int64_t batch = 64, threads = 2, steps = 200, warmup = 20, prefetch = 1, augment = 1;
  int64_t pretrain_steps =
      2000;  // method mode: the cached source model's training (its weights do not change step times)
};

Args parse(int argc, char** argv) {
  Args a;
  if (argc > 1) a.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--backbone")
      a.backbone = v;
    else if (k == "--batch")
      a.batch = std::stoll(v);
    else if (k == "--threads")
      a.threads = std::stoll(v);
    else if (k == "--steps")
      a.steps = std::stoll(v);
    else if (k == "--warmup")
      a.warmup = std::stoll(v);
    else if (k == "--prefetch")
      a.prefetch = std::stoll(v);
    else if (k == "--augment")
      a.augment = std::stoll(v);
    else if (k == "--method")
      a.method = v;
    else if (k == "--pretrain-steps")
      a.pretrain_steps = std::stoll(v);
    else
      throw std::invalid_argument("unknown flag " + k);
  }
  if (a.mode != "bare" && a.mode != "overhead" && a.mode != "method" && a.mode != "eval")
    throw std::invalid_argument("mode must be bare, overhead, method or eval");
  if ((a.mode == "method") != !a.method.empty())
    throw std::invalid_argument("--method goes with mode method");
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double bare(const Args& a) {
  xfer::Arch arch{a.backbone, 1, 28, 28, {{0.286}, {0.353}}, {{"target", {"0", "1", "2", "3", "4"}}}};
  xfer::Model model(arch);
  model->train();
  std::vector<xfer::ParamGroup> groups = {{"all", model->parameters(), 1.0, std::nullopt}};
  xfer::OptimizerOptions o;  // sgd, lr 0.01, momentum 0.9, weight decay 1e-4
  auto opt = xfer::make_optimizer(o, groups);
  // The same fixed batch as bench/python/method_step.py: the first training images of Fashion-MNIST.
  // Real images matter: their constant backgrounds make steps faster than random inputs do.
  const xfer::IdxArray images =
      xfer::read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  const xfer::IdxArray labels =
      xfer::read_idx("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
  const torch::Tensor x =
      ((images.data.slice(0, 0, a.batch).unsqueeze(1).to(torch::kFloat32) / 255.0 - 0.2860) / 0.3530)
          .contiguous();
  const torch::Tensor y = labels.data.slice(0, 0, a.batch).to(torch::kInt64) % 5;
  auto step = [&] {
    opt->zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    opt->step();
  };
  for (int64_t i = 0; i < a.warmup; ++i) step();
  std::vector<double> times;
  for (int64_t i = 0; i < a.steps; ++i) {
    const double t0 = xfer::now_seconds();
    step();
    times.push_back(xfer::now_seconds() - t0);
  }
  return median(times);
}

/// The end-to-end step against the bare step, measured in one process on one model: blocks of bare
/// steps (one fixed batch) alternate with blocks of the Trainer's own step (training_step, drawing
/// augmented batches from the prefetching loader), so machine noise hits both alike.
std::pair<double, double> overhead(const Args& a) {
  const xfer::Task task = xfer::load_task("fmnist:classes=2,4,6,7,9:per_class=100:test=none", 0);
  xfer::Arch arch{a.backbone, 1, 28, 28, {{0.286}, {0.353}}, {{"target", task.class_names()}}};
  xfer::Model model(arch);
  model->train();
  xfer::CrossEntropyMethod method;
  const auto groups = method.param_groups(model, 1.0);
  auto opt = xfer::make_optimizer(xfer::OptimizerOptions(), groups);
  xfer::LoaderOptions loader;
  loader.batch_size = a.batch;
  loader.prefetch = a.prefetch != 0;
  if (!a.augment) {
    loader.crop_pad = 0;
    loader.flip = false;
  }
  xfer::Batches batches;
  batches.add("target", std::make_unique<xfer::BatchStream>(task.train, arch.input, loader, 1));
  const xfer::Batch fixed = batches.stream("target").next();
  at::Generator rng = xfer::make_generator(0);
  const std::string head = "target";
  std::vector<double> bare_times, e2e_times;
  const int64_t block = 20;
  for (int64_t done = 0; done < a.warmup + a.steps; done += block) {
    const bool timed = done >= a.warmup;
    for (int64_t i = 0; i < block; ++i) {
      const double t0 = xfer::now_seconds();
      opt->zero_grad();
      torch::nn::functional::cross_entropy(model->forward(fixed.x), fixed.y).backward();
      opt->step();
      if (timed) bare_times.push_back(xfer::now_seconds() - t0);
    }
    for (int64_t i = 0; i < block; ++i) {
      xfer::StepContext ctx{batches, model, done + i, a.warmup + a.steps, rng, head};
      const double t0 = xfer::now_seconds();
      xfer::training_step(method, *opt, groups, 0.01, ctx);
      if (timed) e2e_times.push_back(xfer::now_seconds() - t0);
    }
  }
  return {median(bare_times), median(e2e_times)};
}

/// The median of `method`'s Trainer steps, as `xfer finetune --method` runs them on the demo's task.
double method_step(const Args& a) {
  std::ostringstream log;
  const std::string source = "fmnist:classes=0,1,3,5,8";
  xfer::RunOptions o;
  o.init = xfer::cached_pretrain(
      {xfer::source_pretrain_options(source + ":val=200", a.backbone, a.pretrain_steps)}, "", log);
  const xfer::MethodInfo& info = xfer::methods().get(a.method);
  o.method = a.method;
  o.target = "fmnist:classes=2,4,6,7,9:per_class=50";
  if (info.needs_source) o.source = source;
  o.threads = a.threads;
  o.loader.batch_size = a.batch;
  o.loader.prefetch = a.prefetch != 0;
  o.trainer.iterations = a.warmup + a.steps;
  auto config = info.make_config();
  auto run = xfer::prepare_run("finetune", o, info, *config);
  return xfer::interleaved_step_ms({run.get()}, {a.steps, a.steps, a.warmup})[0] / 1000;
}

/// The median time of one evaluation pass over the demo target's test set (5 classes x 1,000 images).
std::pair<double, int64_t> eval_pass(const Args& a) {
  const xfer::Task task = xfer::load_task("fmnist:classes=2,4,6,7,9:per_class=100", 0);
  xfer::Arch arch{a.backbone, 1, 28, 28, {{0.286}, {0.353}}, {{"target", task.class_names()}}};
  xfer::Model model(arch);
  std::vector<double> times;
  for (int64_t i = 0; i < a.warmup / 10 + a.steps; ++i) {
    const double t0 = xfer::now_seconds();
    const xfer::Evaluation e = xfer::evaluate(model, task.test, "target", a.batch);
    if (i >= a.warmup / 10) times.push_back(xfer::now_seconds() - t0);
    if (e.top1 < 0) throw std::logic_error("no accuracy");
  }
  return {median(times), task.test.size()};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    xfer::set_verbosity(0);
    xfer::set_threads(static_cast<int>(a.threads));
    xfer::tune_allocator();
    xfer::seed_global(0);
    nlohmann::json j = {{"mode", a.mode},   {"impl", "xfer"},       {"backbone", a.backbone},
                        {"batch", a.batch}, {"threads", a.threads}, {"steps", a.steps}};
    if (a.mode == "eval") {
      const auto [secs, images] = eval_pass(a);
      j["images"] = images;
      j["pass_ms"] = 1000 * secs;
      j["images_per_s"] = static_cast<double>(images) / secs;
    } else if (a.mode == "bare" || a.mode == "method") {
      const double secs = a.mode == "bare" ? bare(a) : method_step(a);
      if (a.mode == "method") j["method"] = a.method;
      j["step_ms"] = 1000 * secs;
      j["samples_per_s"] = a.batch / secs;
    } else {
      const auto [bare_secs, e2e_secs] = overhead(a);
      j["bare_step_ms"] = 1000 * bare_secs;
      j["e2e_step_ms"] = 1000 * e2e_secs;
      j["ratio"] = e2e_secs / bare_secs;
    }
    std::cout << j.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "xfer_bench: " << e.what() << "\n";
    return 2;
  }
}
