#pragma once
/// A run: task + model + method + trainer, with its outputs in one directory.
///
///   DIR/config.json    the resolved configuration (re-run it with `--config DIR/config.json`)
///   DIR/metrics.jsonl  one line per logging step and per validation
///   DIR/result.json    method, specs, seed, test top-1, mean per-class accuracy, best validation and its
///                      step, iterations, train seconds, samples/s
///   DIR/checkpoints/   last.pt (everything to resume) and best.pt (best on validation)
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/data/loader.h"
#include "xfer/methods/registry.h"
#include "xfer/source/importance.h"
#include "xfer/train/trainer.h"

namespace xfer {

class Fields;

struct RunOptions {
  std::string target;    // dataset spec trained on by finetune
  std::string source;    // dataset spec: pre-training data, or source data for methods that use it
  std::string init;      // pretrained model: a run directory or a checkpoint file
  std::string backbone;  // "" = the --init model's, else cnn4
  std::string method = kDefaultFinetuneMethod;
  int64_t seed = 0;
  int64_t threads = 0;  // 0 = all cores
  std::string device = "cpu";
  std::string out;  // "" = runs/<command>-<method>-<time>
  bool resume = false;
  bool overwrite = false;
  TrainerOptions trainer;
  LoaderOptions loader;

  void fields(Fields& f);
};

/// Everything a run trains with, built from its options: the task (and source data), the frozen --init
/// model, the model to train (initialised from it), the batch streams, and the method, set up.
struct PreparedRun {
  std::string command, head;  // head: "target" (finetune) or "source" (pretrain)
  RunOptions opts;            // resolved: backbone filled in
  const MethodInfo* info = nullptr;
  Task task;
  std::unique_ptr<Task> source;
  Model pretrained{nullptr};
  Model model{nullptr};
  Batches batches;
  std::unique_ptr<Method> method;
  torch::Device device = torch::kCPU;
  int threads = 1;
  nlohmann::json sampling;  // what the method's prepare_data did to the data (datl), else null
};

/// What a run did: result.json, typed. A session stopped by --stop-after has `fit.stopped_at` set and
/// writes no result.json.
struct RunResult {
  std::string command, out, method, target, source, init;
  std::string backbone;  // resolved: the --init model's or cnn4 when --backbone was not given
  int64_t seed = 0;
  int threads = 1;
  int64_t train_size = 0, val_size = 0, test_size = 0;
  std::vector<std::string> classes;
  nlohmann::json sampling;  // what the method's prepare_data did to the data (datl), else null
  /// Image-folder data: the unreadable images met in any split, skipped or fatal as the spec says.
  std::optional<std::vector<std::string>> unreadable_images;
  int64_t skipped_examples = 0;  // image-folder data: the examples skipped for them
  FitResult fit;                 // the training and test

  bool stopped() const { return fit.stopped(); }
  /// result.json: the run's description ("command", "out", "method", "target", "source", "init",
  /// "backbone", "seed", "threads", "xfer_version", the split sizes, "classes"; "sampling",
  /// "unreadable_images" and "skipped_examples" where they apply) and fit.to_json(). {"stopped_at": step}
  /// for a stopped session.
  nlohmann::json to_json() const;
};
/// nlohmann::json's conversion: `nlohmann::json j = result;` is result.to_json().
inline void to_json(nlohmann::json& j, const RunResult& r) {
  j = r.to_json();
}

/// Builds a run of `command` ("finetune" or "pretrain"). `when_valid`, if given, receives the resolved
/// configuration once every input is validated and the method is set up (the run creates its output
/// directory there, so bad input leaves no files behind).
std::unique_ptr<PreparedRun> prepare_run(
    const std::string& command, const RunOptions& opts, const MethodInfo& info, MethodConfig& config,
    const std::function<void(const nlohmann::json&)>& when_valid = nullptr);

/// Fine-tunes: trains `method_config`'s method on opts.target (head "target"). Returns what result.json
/// holds.
RunResult run_finetune(RunOptions opts, MethodConfig& method_config);
/// Pre-trains a backbone and a "source" head on opts.source, from scratch, with method opts.method: scratch
/// (plain cross-entropy on the source labels) or datl (on the source resampled by importance weights, or
/// with importance-weighted loss; result.json then holds "sampling": the matcher, the size and the number of
/// unique examples). Returns what result.json holds.
RunResult run_pretrain(RunOptions opts, MethodConfig& method_config);
/// Plain pre-training: run_pretrain with method scratch.
RunResult run_pretrain(RunOptions opts);

/// Domain Adaptive Transfer Learning's importance weights of `source`'s classes (section 3.1): P_t is the
/// mean tempered softmax of the classifier in `model` (a run directory or checkpoint; its `head`, or
/// "source" when empty and it has one) over the training images of `target_spec`, never their labels.
/// The weights' provenance names the model, `source_name` and the target.
ImportanceWeights importance_weights_by_model(const std::string& model, std::string head,
                                              const TensorDataset& source, const std::string& source_name,
                                              const std::string& target_spec, double temperature,
                                              uint64_t seed, torch::Device device);

/// The resolved configuration as written to config.json.
nlohmann::json config_json(const std::string& command, RunOptions& opts, MethodConfig* method_config);
/// Reads a config.json (or a user's config file) into the options: keys are run fields plus an optional
/// "method_options" object; "command" and "xfer_version" are ignored.
void read_config(const nlohmann::json& config, RunOptions& opts, MethodConfig* method_config,
                 const std::string& where);

/// Parses "cpu", "cuda" or "cuda:N"; BadInput if CUDA is not available in this LibTorch.
torch::Device parse_device(const std::string& text);

}  // namespace xfer
