#include "xfer/workflows/run.h"

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <optional>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/core/version.h"
#include "xfer/data/image_folder.h"
#include "xfer/data/spec.h"
#include "xfer/dist/dist.h"
#include "xfer/methods/datl.h"
#include "xfer/models/import.h"
#include "xfer/train/checkpoint.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// Whether `key` names a run option of one of `roles` (declared with the option: Fields::Role).
bool run_option_of(std::initializer_list<Fields::Role> roles, const std::string& key) {
  RunOptions o;
  Fields f;
  o.fields(f);
  const std::vector<std::string> names = f.names_of(roles);
  return std::find(names.begin(), names.end(), key) != names.end();
}

/// Options that may differ between a run and its resumption: how it executes, what this session does, the
/// version, and --on-nan (a run a NaN stopped may go on skipping such batches).
bool ignored_on_resume(const std::string& key) {
  return run_option_of({Fields::Role::execution, Fields::Role::session}, key) || key == "xfer_version" ||
         key == "on_nan";
}

/// Options that may differ between the processes of one data-parallel run: how each executes (each machine
/// its own threads), and --out, which only rank 0 writes to.
bool ignored_across_ranks(const std::string& key) {
  return run_option_of({Fields::Role::execution}, key) || key == "out";
}

/// Data-parallel: every process must train the same thing. BadInput on every rank naming those that differ.
void check_same_config(const nlohmann::json& config) {
  if (!dist::is_distributed()) return;
  nlohmann::json shared = config;
  for (const auto& [key, value] : config.items())
    if (ignored_across_ranks(key)) shared.erase(key);
  dist::check_same(dist::hash_text(shared.dump()), "resolved configuration");
}

/// Runs `fn` on rank 0 only (creating or checking the output directory); if it fails there, every rank
/// fails, so no rank waits for a partner that has gone.
void on_main_rank(const std::function<void()>& fn) {
  if (!dist::is_distributed()) return fn();
  std::string error;
  if (dist::is_main()) {
    try {
      fn();
    } catch (const BadInput& e) {
      error = e.what();
    }
  }
  torch::Tensor failed = torch::tensor({static_cast<int64_t>(error.empty() ? 0 : 1)}, torch::kInt64);
  dist::all_reduce_sum({failed});
  if (!error.empty()) throw BadInput(error);
  XFER_CHECK(failed.item<int64_t>() == 0, "rank 0 refused to start the run (see its message)");
}

std::string absolute_path(const std::string& path) {
  std::error_code ec;
  const auto absolute = std::filesystem::absolute(path, ec);
  return path.empty() || ec ? path : absolute.lexically_normal().string();
}

/// Rewrites every path a field names (Fields::PathKind) absolute against the working directory, so that
/// config.json, the checkpoints and whatever reads them (eval, analyze, --resume) mean the same files from
/// any directory.
void make_paths_absolute(Fields& fields) {
  using Kind = Fields::PathKind;
  for (auto& f : fields.all()) {
    auto* text = std::get_if<std::string*>(&f.target);
    if (f.path == Kind::none || !text || (*text)->empty()) continue;
    std::string& v = **text;
    switch (f.path) {
      case Kind::file:
        v = absolute_path(v);
        break;
      case Kind::model:
        for (const std::string prefix : {"state_dict:", "torchscript:", ""})
          if (v.rfind(prefix, 0) == 0) {
            v = prefix + absolute_path(v.substr(prefix.size()));
            break;
          }
        break;
      case Kind::spec:
        v = absolute_spec_paths(v);
        break;
      case Kind::specs: {
        std::string out;
        size_t start = 0;
        while (true) {
          const size_t end = std::min(v.find(';', start), v.size());
          out += (start ? ";" : "") + absolute_spec_paths(v.substr(start, end - start));
          if (end == v.size()) break;
          start = end + 1;
        }
        v = out;
      } break;
      case Kind::backbone:
        if (v.rfind("script:", 0) == 0) {
          const std::string spec = normalise_backbone_spec(v);
          v = "script:path=" + absolute_path(spec.substr(12));
        }
        break;
      case Kind::none:
        break;
    }
  }
}

std::string default_out(const std::string& command, const std::string& method) {
  const std::time_t t = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&t));
  return (fs::path("runs") / cat(command, "-", method, "-", stamp)).string();
}

/// A saved config.json with its paths made absolute as a new run's are: a run written before runs stored
/// absolute paths resumes from the directory it was started in. Unchanged if it does not read back.
nlohmann::json absolute_config(const nlohmann::json& saved, const std::string& command,
                               const MethodInfo& info) {
  try {
    RunOptions opts;
    auto method = info.make_config();
    read_config(saved, opts, method.get(), "config.json");
    Fields run_fields, method_fields;
    opts.fields(run_fields);
    method->fields(method_fields);
    make_paths_absolute(run_fields);
    make_paths_absolute(method_fields);
    nlohmann::json out =
        config_json(command, opts, saved.contains("method_options") ? method.get() : nullptr);
    if (saved.contains("xfer_version")) out["xfer_version"] = saved["xfer_version"];
    return out;
  } catch (const BadInput&) {
    return saved;
  }
}

/// Creates the output directory, or checks that resuming / reusing it is what the user asked for.
void prepare_out_dir(const std::string& out, const nlohmann::json& config, bool resume, bool overwrite,
                     const std::string& command, const MethodInfo& info) {
  const fs::path config_path = fs::path(out) / "config.json";
  const bool exists = fs::exists(config_path);
  if (resume) {
    // A run killed before its first checkpoint resumes from step 0 (the trainer says so).
    XFER_CHECK(exists, "--resume: ", out, " holds no run (no config.json)");
    const nlohmann::json saved = absolute_config(read_json_file(config_path.string()), command, info);
    for (const auto& [key, value] : config.items()) {
      if (ignored_on_resume(key)) continue;
      const nlohmann::json before = saved.contains(key) ? saved[key] : nlohmann::json(nullptr);
      XFER_CHECK(before == value, "--resume: ", key, " is ", value.dump(), " now but ", before.dump(),
                 " in the run being resumed (", config_path.string(), ")");
    }
    return;
  }
  XFER_CHECK(!exists || overwrite, out, " already holds a run; pass --resume to continue it, --overwrite to ",
             "replace it, or choose another --out");
  if (exists) {
    fs::remove_all(fs::path(out) / "checkpoints");
    fs::remove(fs::path(out) / "result.json");
    fs::remove(fs::path(out) / "metrics.jsonl");
  }
  make_dirs(out);
}

RunResult run(const std::string& command, RunOptions opts, const MethodInfo& info, MethodConfig& config) {
  if (opts.out.empty()) opts.out = default_out(command, opts.method);
  const auto prepared = prepare_run(command, opts, info, config, [&](const nlohmann::json& cfg) {
    check_same_config(cfg);
    on_main_rank([&] {
      prepare_out_dir(opts.out, cfg, opts.resume, opts.overwrite, command, info);
      if (!opts.resume) write_json_file((fs::path(opts.out) / "config.json").string(), cfg);
    });
  });
  PreparedRun& r = *prepared;
  const std::string& spec = r.task.spec;
  log_info(
      cat(command, " ", info.name, " on ", spec, ": ", r.task.train.size(), " training examples, ",
          r.task.val.size(), " validation, ", r.task.test.size(), " test; backbone ", r.opts.backbone, "; ",
          r.threads, " threads",
          dist::is_distributed() ? cat("; rank ", dist::rank(), " of ", dist::world_size()) : std::string(),
          "; output in ", opts.out));
  Trainer trainer(r.opts.trainer, opts.out);  // r.opts: --epochs turned into iterations
  const nlohmann::json meta = {{"command", command}, {"method", info.name}, {"spec", spec}};
  RunResult result;
  result.fit = trainer.fit(r.model, *r.method, r.batches, r.task, r.head, static_cast<uint64_t>(opts.seed),
                           opts.resume, meta);
  if (result.stopped()) return result;  // not finished: no result.json yet

  result.command = command;
  result.out = opts.out;
  result.method = info.name;
  result.target = opts.target;
  result.source = opts.source;
  result.init = opts.init;
  result.backbone = r.opts.backbone;
  result.seed = opts.seed;
  result.threads = r.threads;
  result.train_size = r.task.train.size();
  result.val_size = r.task.val.size();
  result.test_size = r.task.test.size();
  result.classes = r.task.class_names();
  result.sampling = r.sampling;
  if (r.task.train.is_folder()) {
    // Unreadable images met in any split (they share one log).
    result.unreadable_images = r.task.train.files->corrupt_files();
    result.skipped_examples = r.task.train.files->skipped();
  }
  if (dist::is_main()) write_json_file((fs::path(opts.out) / "result.json").string(), result.to_json());
  return result;
}

}  // namespace

nlohmann::json RunResult::to_json() const {
  if (fit.stopped()) return fit.to_json();
  nlohmann::json result = {{"command", command},       {"out", out},
                           {"method", method},         {"target", target},
                           {"source", source},         {"init", init},
                           {"backbone", backbone},     {"seed", seed},
                           {"threads", threads},       {"xfer_version", kVersion},
                           {"train_size", train_size}, {"val_size", val_size},
                           {"test_size", test_size},   {"classes", classes}};
  if (!sampling.is_null()) result["sampling"] = sampling;
  if (unreadable_images) {
    result["unreadable_images"] = *unreadable_images;
    result["skipped_examples"] = skipped_examples;
  }
  result.update(fit.to_json());  // "world_size" among them
  return result;
}

void RunOptions::fields(Fields& f) {
  f.group("Data and model");
  f.add("target", target, "target dataset spec, e.g. fmnist:classes=2,4,6,7,9:per_class=10")
      .path(Fields::PathKind::spec);
  f.add("source", source, "source dataset spec, e.g. fmnist:classes=0,1,3,5,8").path(Fields::PathKind::spec);
  f.add(
       "init", init,
       "pretrained model: a run directory of `xfer pretrain`, a checkpoint file, "
       "state_dict:FILE (torchvision ResNet-18/50 weights as torch.save(model.state_dict()) writes them, or "
       "a "
       "checkpoint holding them under 'state_dict' or 'model'; a pickle, parsed by xfer and never unpickled; "
       "docs/models.md) or torchscript:FILE (a scripted torchvision/timm model: loading it runs its "
       "code, as torch.jit.load does, so give only files you trust; docs/security.md)")
      .path(Fields::PathKind::model);
  f.add("backbone", backbone, cat("backbone: ", backbone_help(), " (default: the --init model's, else cnn4)"))
      .path(Fields::PathKind::backbone);
  f.add("method", method, "training method (see `xfer methods`)");
  f.group("Run");
  f.add("seed", seed, "random seed (init, batches, few-shot draws without seed=)").non_negative();
  f.add("threads", threads,
        "CPU threads (0 = all cores); idle ones spin briefly, then sleep (GOMP_SPINCOUNT=10000 unless "
        "OMP_WAIT_POLICY or GOMP_SPINCOUNT is set)")
      .non_negative()
      .execution();
  f.add("device", device, "cpu, cuda or cuda:N").execution();
  f.add("out", out, "output directory (default runs/<command>-<method>-<time>)").session();
  f.add("resume", resume, "continue the run in --out from its last checkpoint").session();
  f.add("overwrite", overwrite, "replace a finished or interrupted run in --out").session();
  f.group("Training");
  trainer.fields(f);
  f.group("Batches");
  loader.fields(f);
}

ImportanceWeights importance_weights_by_model(const std::string& model_path, std::string head,
                                              const TensorDataset& source, const std::string& source_name,
                                              const std::string& target_spec, double temperature,
                                              uint64_t seed, torch::Device device) {
  CheckpointReader ck(resolve_checkpoint(model_path));
  Model model = ck.read_model();
  model->to(device);
  ImportanceWeights w = importance_weights_for_target(model, std::move(head), source, source_name,
                                                      target_spec, temperature, seed);
  w.provenance["model"] = ck.path();
  return w;
}

torch::Device parse_device(const std::string& text) {
  if (text == "cpu") return torch::kCPU;
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    XFER_CHECK(torch::cuda::is_available(), "--device ", text,
               ": CUDA is not available in this LibTorch build (Debian's libtorch-dev is CPU-only; build "
               "against a CUDA LibTorch, see docs/building.md)");
    try {
      return torch::Device(text);
    } catch (const c10::Error&) {
      throw BadInput(cat("--device: cannot parse '", text, "'"));
    }
  }
  throw BadInput(cat("--device must be cpu, cuda or cuda:N, got '", text, "'"));
}

nlohmann::json config_json(const std::string& command, RunOptions& opts, MethodConfig* method_config) {
  Fields f;
  opts.fields(f);
  nlohmann::json j = {{"command", command}, {"xfer_version", kVersion}};
  j.update(f.to_json());
  if (method_config) {
    Fields mf;
    method_config->fields(mf);
    j["method_options"] = mf.to_json();
  }
  return j;
}

void read_config(const nlohmann::json& config, RunOptions& opts, MethodConfig* method_config,
                 const std::string& where) {
  XFER_CHECK(config.is_object(), where, " must hold a JSON object");
  nlohmann::json run_part = config;
  run_part.erase("command");
  run_part.erase("xfer_version");
  run_part.erase("method_options");
  Fields f;
  opts.fields(f);
  f.read_json(run_part, where);
  if (config.contains("method_options") && method_config) {
    Fields mf;
    method_config->fields(mf);
    mf.read_json(config["method_options"], where + " method_options");
  }
}

namespace {

/// Every path the run's and the method's options name, made absolute (make_paths_absolute).
void make_option_paths_absolute(RunOptions& opts, MethodConfig& config) {
  Fields run_fields, method_fields;
  opts.fields(run_fields);
  config.fields(method_fields);
  make_paths_absolute(run_fields);
  make_paths_absolute(method_fields);
}

/// This process's share of the machine and of the run: its threads, its place in a data-parallel run
/// (under `xfer launch` or torchrun it joins the process group, and every batch stream built afterwards
/// gives it its share of each batch) and its device.
void join_run(PreparedRun& r) {
  r.threads = set_threads(r.opts.threads);
  dist::init_from_env();
  set_batch_shard({dist::rank(), dist::world_size()});
  tune_allocator();
  r.device = parse_device(r.opts.device);
}

/// The --init model frozen on the run's device, in eval mode.
Model frozen(Model model, torch::Device device) {
  freeze(*model);
  model->eval();
  model->to(device);
  return model;
}

/// Checks --init against the method, then loads an xfer checkpoint --init (frozen) and resolves the
/// backbone: --backbone, else the --init model's, else cnn4. External weights (state_dict:, torchscript:)
/// need the data's shape: load_external_init reads them.
void load_checkpoint_init(PreparedRun& r) {
  RunOptions& opts = r.opts;
  const MethodInfo& info = *r.info;
  XFER_CHECK(
      !(info.needs_init && opts.init.empty()), "method ", info.name,
      " fine-tunes a pretrained model: pass --init (a run directory of `xfer pretrain`, or a checkpoint)");
  XFER_CHECK(!(!info.allows_init && !opts.init.empty()), "method ", info.name,
             " trains from random initialisation; drop --init ", opts.init);
  // A TorchScript backbone the user names (--backbone script:path=FILE) may be loaded; one that only a
  // checkpoint names may not (trust_script).
  if (!opts.backbone.empty()) {
    const std::string spec = normalise_backbone_spec(opts.backbone);
    if (spec.rfind("script:path=", 0) == 0) trust_script(spec.substr(12));
  }
  if (is_external_init(opts.init)) return;
  if (!opts.init.empty())
    r.pretrained = frozen(CheckpointReader(resolve_checkpoint(opts.init)).read_model(), r.device);
  opts.backbone = normalise_backbone_spec(!opts.backbone.empty() ? opts.backbone
                                          : r.pretrained         ? r.pretrained->arch().backbone
                                                                 : "cnn4");
}

/// torchvision / timm weights as --init (frozen), read for the training data's shape with ImageNet's
/// normalisation unless the image folder spec gives its own; the backbone is theirs.
void load_external_init(PreparedRun& r) {
  RunOptions& opts = r.opts;
  const TensorDataset& t = r.task.train;
  const Normalization input = t.is_folder() ? t.files->options().norm : imagenet_normalization();
  r.pretrained = frozen(
      load_external_model(opts.init, opts.backbone.empty() ? "" : normalise_backbone_spec(opts.backbone),
                          t.channels(), t.height(), t.width(), input),
      r.device);
  opts.backbone = r.pretrained->arch().backbone;
}

/// BadInput when `info` is not a method of the command: datl only pre-trains, most methods only fine-tune.
void check_command_runs(const MethodInfo& info, bool pretraining) {
  if (pretraining) {
    std::vector<std::string> pretrainers;
    for (const auto& m : methods().all())
      if (m.pretrains) pretrainers.push_back(m.name);
    XFER_CHECK(info.pretrains, "method ", info.name, " fine-tunes (`xfer finetune --method ", info.name,
               "`); `xfer pretrain --method` takes ", join(pretrainers, " or "));
  } else {
    XFER_CHECK(info.finetunes, "method ", info.name,
               " pre-trains a source model: run it with `xfer pretrain ", "--method ", info.name,
               "`, then fine-tune that model");
  }
}

/// The method's choice of training data (datl: the source resampled by importance weights), made before
/// the model is built; what it did goes to result.json as "sampling".
void prepare_data(PreparedRun& r, MethodConfig& config) {
  const std::string& spec = r.command == "pretrain" ? r.opts.source : r.opts.target;
  DataContext ctx{r.task, spec, static_cast<uint64_t>(r.opts.seed), r.device, [&](const std::string& path) {
                    CheckpointReader ck(resolve_checkpoint(path));
                    return std::make_pair(frozen(ck.read_model(), r.device), ck.path());
                  }};
  r.sampling = config.prepare_data(ctx);
}

/// The model to train: the backbone and one head for the task's classes, sized for its images and
/// normalised as the --init model (or the image folder spec, or the training images) says, initialised
/// with the seed and the --init backbone's weights, on the run's device.
void build_model(PreparedRun& r) {
  const RunOptions& opts = r.opts;
  Arch arch;
  arch.backbone = opts.backbone;
  arch.in_channels = r.task.train.channels();
  arch.height = r.task.train.height();
  arch.width = r.task.train.width();
  arch.input = r.pretrained               ? r.pretrained->arch().input
               : r.task.train.is_folder() ? r.task.train.files->options().norm
                                          : compute_normalization(r.task.train.images);
  arch.heads = {{r.head, r.task.class_names()}};
  if (r.pretrained) {
    const std::string why = arch.mismatch(r.pretrained->arch(), /*with_heads=*/false);
    XFER_CHECK(why.empty(), "--init ", opts.init, ": ", why);
  }
  seed_global(derive_seed(static_cast<uint64_t>(opts.seed), "init"));
  r.model = Model(arch);
  check_input_fits(*r.model, arch.height, arch.width);
  if (r.pretrained) copy_state(*r.pretrained, *r.model, "backbone.");
  r.model->to(r.device);
  if (opts.loader.channels_last) convolutions_channels_last(*r.model);
}

/// The target batch stream and `config`'s method, set up on the model.
void set_up_method(PreparedRun& r, MethodConfig& config) {
  const RunOptions& opts = r.opts;
  r.batches.add("target", std::make_unique<BatchStream>(
                              r.task.train, r.model->arch().input, opts.loader,
                              derive_seed(static_cast<uint64_t>(opts.seed), "target"), nullptr, r.device));
  r.method = config.build();
  SetupContext ctx{r.task,    r.source.get(), r.pretrained,
                   r.batches, opts.loader,    static_cast<uint64_t>(opts.seed),
                   r.device,  r.head,         phase_total_steps(r.method->phases(opts.trainer.iterations))};
  r.method->setup(r.model, ctx);
}

}  // namespace

std::unique_ptr<PreparedRun> prepare_run(const std::string& command, const RunOptions& options,
                                         const MethodInfo& info, MethodConfig& config,
                                         const std::function<void(const nlohmann::json&)>& when_valid) {
  auto prepared = std::make_unique<PreparedRun>();
  PreparedRun& r = *prepared;
  r.opts = options;
  RunOptions& opts = r.opts;
  make_option_paths_absolute(opts, config);
  r.info = &info;
  r.command = command;
  const bool pretraining = command == "pretrain";
  check_command_runs(info, pretraining);
  join_run(r);
  r.head = pretraining ? "source" : "target";
  const std::string& spec = pretraining ? opts.source : opts.target;
  XFER_CHECK(!spec.empty(), pretraining ? "pretrain needs --source SPEC" : "finetune needs --target SPEC",
             " (for example fmnist:classes=2,4,6,7,9:per_class=10)");

  load_checkpoint_init(r);
  r.task = load_task(spec, static_cast<uint64_t>(opts.seed));
  if (opts.trainer.epochs > 0)
    opts.trainer.iterations =
        epochs_to_iterations(opts.trainer.epochs, r.task.train.size(), opts.loader.batch_size);
  if (is_external_init(opts.init)) load_external_init(r);
  prepare_data(r, config);
  XFER_CHECK(!(info.needs_source && opts.source.empty()), "method ", info.name,
             " draws on source data: pass --source SPEC");
  if (!pretraining && !opts.source.empty())
    r.source = std::make_unique<Task>(load_task(opts.source, static_cast<uint64_t>(opts.seed)));

  build_model(r);
  set_up_method(r, config);
  if (when_valid) when_valid(config_json(command, opts, &config));
  return prepared;
}

RunResult run_finetune(RunOptions opts, MethodConfig& method_config) {
  const MethodInfo& info = methods().get(opts.method);
  return run("finetune", std::move(opts), info, method_config);
}

RunResult run_pretrain(RunOptions opts, MethodConfig& method_config) {
  opts.target.clear();
  XFER_CHECK(opts.init.empty(), "pretrain trains from random initialisation; drop --init ", opts.init);
  const MethodInfo& info = methods().get(opts.method);
  return run("pretrain", std::move(opts), info, method_config);
}

RunResult run_pretrain(RunOptions opts) {
  opts.method = kDefaultPretrainMethod;
  auto config = methods().get(opts.method).make_config();
  return run_pretrain(std::move(opts), *config);
}

}  // namespace xfer
