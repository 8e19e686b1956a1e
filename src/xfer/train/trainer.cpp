#include "xfer/train/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <torch/torch.h>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/rng.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/dist/dist.h"
#include "xfer/models/predict.h"
#include "xfer/train/checkpoint.h"
#include "xfer/train/checkpoint_saver.h"
#include "xfer/train/metrics_window.h"

namespace fs = std::filesystem;

namespace xfer {
namespace {

/// A CSV cell: numbers as JSON writes them, text quoted with its quotes doubled (RFC 4180).
std::string csv_cell(const nlohmann::json& v) {
  if (!v.is_string()) return v.dump();
  std::string out = "\"";
  for (const char c : v.get<std::string>()) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

/// metrics.jsonl: one JSON object per line, appended and flushed as training goes. When the log closes (the
/// run ended, stopped or failed), the same lines go to metrics.csv for spreadsheets and plotting tools: one
/// column per scalar key, "step" first, empty cells where a line lacks a key.
class MetricsLog {
 public:
  /// Opens `path`; when resuming at `step`, drops lines written after that step by the interrupted run.
  MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
    if (resume_step > 0 && fs::exists(path)) {
      std::istringstream in(read_file(path));
      std::string kept, line;
      while (std::getline(in, line)) {
        const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (!j.is_discarded() && j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
            j["step"].get<int64_t>() <= resume_step) {
          kept += line + "\n";
          lines_.push_back(j);
        }
      }
      write_file_atomic(path, kept);
    }
    out_.open(path, resume_step > 0 ? std::ios::app : std::ios::trunc);
    XFER_CHECK(out_.good(), "cannot write ", path);
  }
  ~MetricsLog() {
    try {
      write_csv(fs::path(path_).replace_extension(".csv").string());
    } catch (const std::exception& e) {
      log_warn(cat("could not write metrics.csv: ", e.what()));
    }
  }
  void write(const nlohmann::json& line) {
    out_ << line.dump() << '\n' << std::flush;
    lines_.push_back(line);
  }

 private:
  void write_csv(const std::string& csv) const {
    std::vector<std::string> columns{"step"};
    for (const auto& line : lines_)
      for (const auto& [key, value] : line.items())
        if (!value.is_structured() && std::find(columns.begin(), columns.end(), key) == columns.end())
          columns.push_back(key);
    std::sort(columns.begin() + 1, columns.end());
    std::string text;
    for (size_t c = 0; c < columns.size(); ++c) text += (c ? "," : "") + csv_cell(columns[c]);
    text += "\n";
    for (const auto& line : lines_) {
      for (size_t c = 0; c < columns.size(); ++c) {
        if (c) text += ",";
        const auto it = line.find(columns[c]);
        if (it != line.end() && !it->is_structured() && !it->is_null()) text += csv_cell(*it);
      }
      text += "\n";
    }
    write_file_atomic(csv, text);
  }

  std::string path_;
  std::ofstream out_;
  std::vector<nlohmann::json> lines_;
};

// More non-finite steps in a row than this means the run has diverged: skipping cannot save it.
constexpr int64_t kMaxConsecutiveSkips = 25;
/// --bn-stats frozen: batch-norm layers use (and keep) their running statistics while the rest trains.
/// --bn-stats sync: the backbone's batch-norm layers normalise with the global batch's statistics.
void apply_bn_mode(Model& model, BnStats bn) {
  XFER_CHECK(
      bn != BnStats::sync || !dist::is_distributed() || model->backbone->spec().rfind("script:", 0) != 0,
      "--bn-stats sync needs a built-in backbone: a TorchScript backbone's batch norm cannot be "
      "synchronised; "
      "use --bn-stats batch or frozen");
  model->backbone->set_sync_batch_norm(bn == BnStats::sync);
  if (bn != BnStats::frozen) return;
  for (auto& m : model->modules(/*include_self=*/false))
    if (m->as<torch::nn::BatchNorm2d>() || m->as<torch::nn::BatchNorm1d>()) m->eval();
}

/// Drops every gradient (rather than zeroing it, as LibTorch 1.13's zero_grad does): a parameter that
/// gets no gradient in a step (Seq-Train's source head after its phase) is then skipped by the optimizer
/// whether or not it had one before, so a resumed process steps exactly like the uninterrupted one.
void clear_gradients(const std::vector<ParamGroup>& groups) {
  for (const auto& g : groups)
    for (const auto& p : g.params) p.mutable_grad() = torch::Tensor();
}

/// Test hook (XFER_DIST_NAN_AT=RANK:STEP, STEP as in the error messages): a batch that made this process's
/// loss and gradients non-finite.
void poison(LossTerms& terms, Model& model) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  terms.total = torch::full_like(terms.total.detach(), nan);
  for (const auto& p : model->parameters())
    if (p.grad().defined()) p.grad().fill_(nan);
}

/// Phases as checkpoints and result.json record them: their names and steps.
nlohmann::json phases_json(const std::vector<Phase>& phases) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& ph : phases) out.push_back({{"name", ph.name}, {"steps", ph.steps}});
  return out;
}

/// The method's phases laid end to end: where each starts, and which one a step is in.
struct PhasePlan {
  std::vector<Phase> phases;
  std::vector<int64_t> starts;
  int64_t total = 0;

  explicit PhasePlan(std::vector<Phase> p) : phases(std::move(p)), total(phase_total_steps(phases)) {
    int64_t at = 0;
    for (const auto& ph : phases) {
      starts.push_back(at);
      at += ph.steps;
    }
  }
  /// The phase that step `step` (0-based, < total) belongs to.
  size_t of(int64_t step) const {
    size_t i = 0;
    while (i + 1 < phases.size() && step >= starts[i + 1]) ++i;
    return i;
  }
  int64_t end(size_t i) const { return starts[i] + phases[i].steps; }
  nlohmann::json to_json() const { return phases_json(phases); }
};

}  // namespace

int64_t epochs_to_iterations(double epochs, int64_t examples, int64_t batch_size) {
  XFER_CHECK(epochs > 0 && examples > 0 && batch_size > 0, "--epochs ", epochs, " over ", examples,
             " training examples at batch size ", batch_size, " gives no steps");
  const double steps = std::ceil(epochs * static_cast<double>(examples) / static_cast<double>(batch_size));
  XFER_CHECK(steps <= 1e9, "--epochs ", epochs, " over ", examples, " examples at batch size ", batch_size,
             " is ", steps, " steps; at most 10^9");
  return static_cast<int64_t>(steps);
}

void TrainerOptions::fields(Fields& f) {
  f.add("iterations", iterations, "training steps").at_least(1);
  f.add("epochs", epochs,
        "passes over the training set; when > 0 it replaces --iterations with ceil(epochs x training "
        "examples / "
        "batch size), e.g. --epochs 20 on 1000 images at -b 64 runs 313 steps")
      .non_negative()
      .at_most(1e6);
  optim.fields(f);
  schedule.fields(f);
  f.add("head_lr_mult", head_lr_mult, "learning-rate multiplier of the heads").non_negative();
  f.add("eval_every", eval_every, "steps between validation evaluations (0: iterations/10)").non_negative();
  f.add("checkpoint_every", checkpoint_every, "steps between checkpoints (0: as --eval-every)")
      .non_negative();
  f.add("log_every", log_every, "steps between metrics.jsonl lines").at_least(1);
  f.add("eval_batch", eval_batch, "batch size for evaluation").at_least(1);
  f.add("select", select,
        "the model tested at the end: best (on validation), last, or auto (best if the task "
        "has a validation split)");
  f.add("stop_after", stop_after,
        "checkpoint and stop after this many steps in this session; continue "
        "later with --resume (0: run to the end)")
      .non_negative()
      .session();
  f.add("on_nan", on_nan,
        "a NaN or infinite loss or gradient: stop with an error naming the step, or skip the "
        "batch (no update; at most 25 in a row)");
  f.add("bn_stats", bn_stats,
        "batch norm while training: batch (each process's batch statistics, as DDP without "
        "sync BN), sync (statistics of the global batch over all processes, as SyncBatchNorm; "
        "the same as batch in one process) or frozen (running statistics, as in eval mode)");
}

std::vector<ParamGroup> trainable_param_groups(Method& method, Model& model, double head_lr_mult) {
  std::vector<ParamGroup> groups;
  for (auto& g : method.param_groups(model, head_lr_mult)) {
    std::vector<torch::Tensor> trainable;
    for (auto& p : g.params)
      if (p.requires_grad()) trainable.push_back(p);
    g.params = std::move(trainable);
    if (!g.params.empty()) groups.push_back(std::move(g));
  }
  return groups;
}

LossTerms training_step(Method& method, torch::optim::Optimizer& optimizer,
                        const std::vector<ParamGroup>& groups, double lr, StepContext& ctx,
                        StepReport* report) {
  set_learning_rates(optimizer, groups, lr);
  clear_gradients(groups);
  LossTerms terms = method.compute_gradients(ctx);
  if (dist::fault_at("XFER_DIST_NAN_AT", ctx.step)) poison(terms, ctx.model);
  if (dist::is_distributed()) {
    StepReport local;
    StepReport& r = report ? *report : local;
    // Decisions any process may trigger are taken by all at this step, or one process would wait for
    // the others in the next collective until the timeout. The same all-reduce measures the wait for the
    // slowest process's backward. Non-finite gradients need no flag: they reach every process's sum.
    constexpr int64_t kNobody = std::numeric_limits<int64_t>::max();
    const int signal = stop_signal();
    const bool finite = std::isfinite(terms.total.item<double>());
    const double t0 = now_seconds();
    const std::vector<int64_t> first =
        dist::all_reduce_min({signal ? signal : kNobody, finite ? kNobody : dist::rank()});
    r.wait_seconds = r.allreduce_seconds = now_seconds() - t0;
    r.stop_signal = first[0] == kNobody ? 0 : static_cast<int>(first[0]);
    if (!finite) check_finite(terms, ctx.step);
    if (first[1] != kNobody)
      throw NumericalError(cat("the loss of rank ", first[1], " is not finite at step ", ctx.step));
    if (!method.synchronises_gradients()) {
      std::vector<torch::Tensor> params;
      for (const auto& g : groups) params.insert(params.end(), g.params.begin(), g.params.end());
      r.allreduce_seconds += dist::all_reduce_gradients(params, 25 << 20);
    }
  } else {
    check_finite(terms, ctx.step);
  }
  check_finite_gradients(ctx.model, ctx.step);
  if (terms.lr_scale != 1.0) set_learning_rates(optimizer, groups, lr * terms.lr_scale);
  optimizer.step();
  method.after_step(ctx);
  return terms;
}

void check_finite_gradients(Model& model, int64_t step) {
  std::vector<torch::Tensor> sums;  // a NaN or an infinity anywhere in a gradient reaches its sum
  for (const auto& p : model->parameters())
    if (p.grad().defined()) sums.push_back(p.grad().sum());
  if (sums.empty() || torch::stack(sums).isfinite().all().item<bool>()) return;
  for (const auto& p : model->named_parameters())
    if (p.value().grad().defined() && !p.value().grad().isfinite().all().item<bool>())
      throw NumericalError(cat("the gradient of ", p.key(), " is not finite at step ", step));
  throw NumericalError(cat("the gradients overflow at step ", step));
}

Evaluation evaluate(Model& model, const TensorDataset& data, const std::string& head, int64_t batch_size,
                    const std::string& progress_label) {
  XFER_CHECK(batch_size >= 1, "evaluation batch size must be >= 1, got ", batch_size);
  const auto* info = model->arch().head(head);
  XFER_CHECK(info != nullptr, "the model has no '", head, "' head");
  // A head may predict only its first classes (XMixup's joint head: the target classes, then the paired
  // source classes).
  const int64_t k = info->predicted();
  XFER_CHECK(k == data.num_classes(), "the model's '", head, "' head has ", k, " classes, the data has ",
             data.num_classes());
  ConfusionMatrix confusion(k);
  // Data-parallel: this process's contiguous share, then the counts summed over the processes.
  const int64_t world = dist::world_size(), rank = dist::rank();
  const int64_t first = data.size() * rank / world, stop = data.size() * (rank + 1) / world;
  std::optional<Progress> progress;
  if (!progress_label.empty() && rank == 0) progress.emplace(progress_label, stop - first);
  if (first < stop)
    predict_each(model, data, {false, {head}, batch_size, first, stop},
                 [&](int64_t start, int64_t end, const Predictions& batch) {
                   confusion.add_logits(batch.logits.at(head).slice(1, 0, k),
                                        data.labels.slice(0, start, end));
                   if (progress) progress->update(end - first, "images");
                 });
  dist::all_reduce_sum({confusion.counts(), confusion.logit_sums()});
  return confusion.evaluation();
}

namespace {

/// --on-nan skip's record, kept in last.pt: the batches dropped over the whole run (result.json's
/// skipped_steps) and in a row up to now (more than kMaxConsecutiveSkips in a row: the run has diverged).
struct SkipRecord {
  int64_t total = 0, in_a_row = 0;
};

/// What a fit changes from step to step and last.pt holds to continue it: the model, the optimizer over
/// the trainable groups, the method and its RNG, the batch streams (their positions) and the skip record.
struct LoopState {
  Model& model;
  Method& method;
  Batches& batches;
  std::vector<ParamGroup> groups;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  at::Generator rng;
  SkipRecord skips;
};

/// Continues a fit from `saver`'s last.pt into `s` and the saver's record: the model (checked against the
/// saved one), the optimizer (a fresh one at a phase's first step, as the phase starts with), the method,
/// its RNG, the batch positions and the skips. Returns the step the checkpoint was written at.
int64_t resume_from_last(LoopState& s, CheckpointSaver& saver, const PhasePlan& plan,
                         const OptimizerOptions& optim) {
  CheckpointReader ck(saver.last_path(), s.model->backbone->parameters().front().device());
  const Model saved = ck.read_model();
  const std::string why = s.model->arch().mismatch(saved->arch(), /*with_heads=*/true);
  XFER_CHECK(why.empty(), ck.path(), ": cannot resume: ", why);
  copy_state(*saved, *s.model);
  load_optimizer(*s.optimizer, ck.read("optimizer"));
  s.method.load(ck.read("method"));
  s.rng.set_state(ck.read_tensor("rng").to(torch::kCPU));
  const auto& m = ck.meta();
  const int64_t start = json_int(m.at("step"), ck.path() + ": step");
  // Checkpoints older than phases hold none: they were single-phase runs.
  const nlohmann::json saved_phases = m.value("phases", nlohmann::json());
  XFER_CHECK(saved_phases.is_null() ? plan.phases.size() == 1 : saved_phases == plan.to_json(), ck.path(),
             ": cannot resume: the run was trained in the phases ", saved_phases.dump(), ", this one has ",
             plan.to_json().dump());
  if (start < plan.total && start == plan.starts[plan.of(start)])
    s.optimizer = make_optimizer(optim, s.groups);
  const double best_val = m.at("best_val").get<double>();
  const int64_t best_step = json_int(m.at("best_step"), ck.path() + ": best_step");
  saver.resumed(start, best_val, best_step);
  s.skips.total = json_int_or(m, "skipped_steps", 0, ck.path() + ": skipped_steps");
  s.skips.in_a_row = json_int_or(m, "skips_in_a_row", 0, ck.path() + ": skips_in_a_row");
  s.batches.seek(m.at("positions").get<std::map<std::string, int64_t>>());
  XFER_CHECK(start <= plan.total, ck.path(), ": the checkpoint is at step ", start, ", past --iterations ",
             plan.total);
  log_info(cat("resuming at step ", start, " from ", ck.path()));
  return start;
}

/// Writes last.pt after `step` steps: CheckpointSaver::save_last with the loop's place in `plan` (the phase
/// the next step is in), its skip record and the batch streams' positions.
void save_last(LoopState& s, CheckpointSaver& saver, const PhasePlan& plan, int64_t step) {
  const nlohmann::json state = {{"iterations", plan.total},
                                {"phases", plan.to_json()},
                                {"phase", plan.phases[plan.of(std::min(step, plan.total - 1))].name},
                                {"skipped_steps", s.skips.total},
                                {"skips_in_a_row", s.skips.in_a_row},
                                {"positions", s.batches.positions()}};
  saver.save_last(step, state, s.model, *s.optimizer, s.method, s.rng);
}

/// Rank 0's metrics.jsonl (with checkpoints/ beside it), continued at a resumed run's `start`; none
/// elsewhere.
std::unique_ptr<MetricsLog> open_metrics(const std::string& out_dir, int64_t start, bool writer) {
  if (!writer) return nullptr;
  make_dirs((fs::path(out_dir) / "checkpoints").string());
  return std::make_unique<MetricsLog>((fs::path(out_dir) / "metrics.jsonl").string(), start);
}

/// training_step under --on-nan: the step's loss terms, or none when a non-finite loss or gradient dropped
/// its update (--on-nan skip, at most kMaxConsecutiveSkips in a row). Otherwise the NumericalError goes on,
/// naming the skips before it and the last good checkpoint.
std::optional<LossTerms> step_or_skip(LoopState& s, OnNan on_nan, double lr, StepContext& ctx,
                                      StepReport& report, Progress& progress, const CheckpointSaver& saver) {
  try {
    LossTerms terms = training_step(s.method, *s.optimizer, s.groups, lr, ctx, &report);
    s.skips.in_a_row = 0;
    return terms;
  } catch (const NumericalError& e) {
    if (on_nan != OnNan::skip || s.skips.in_a_row >= kMaxConsecutiveSkips) {
      progress.finish();
      const int64_t saved = saver.last_saved();
      throw NumericalError(
          cat(e.what(), s.skips.in_a_row ? cat(" (after ", s.skips.in_a_row, " skipped in a row)") : "", "; ",
              saved >= 0 ? cat("the last good checkpoint is ", saver.last_path(), " (step ", saved, ")")
                         : std::string("no checkpoint was written yet")));
    }
    clear_gradients(s.groups);  // the update is dropped; the batch was drawn, so replay stays exact
    ++s.skips.total;
    ++s.skips.in_a_row;
    progress.message(cat("warning: ", e.what(), "; skipping the batch (--on-nan skip)"));
    return std::nullopt;
  }
}

/// Evaluates the validation split after `done` steps: its line in metrics.jsonl (rank 0's `metrics`), the
/// on_validation hook, and best.pt if it is the best so far. Returns its top-1.
double validate(Model& model, const TensorDataset& val, const std::string& head, const TrainerOptions& opts,
                int64_t done, MetricsLog* metrics, CheckpointSaver& saver) {
  const Evaluation ev = evaluate(model, val, head, opts.eval_batch);
  apply_bn_mode(model, opts.bn_stats);
  if (metrics) {
    nlohmann::json line = {
        {"step", done}, {"val_top1", ev.top1}, {"val_mean_class", ev.mean_class}, {"val_loss", ev.loss}};
    if (!std::isnan(ev.top5)) line["val_top5"] = ev.top5;  // more than 5 classes
    metrics->write(line);
  }
  if (opts.on_validation) opts.on_validation(done, ev.top1);
  saver.validated(model, done, ev.top1);
  return ev.top1;
}

/// metrics.jsonl's step line after `done` steps at learning rate `lr` in phase `ph`: the window's means, the
/// run's skipped steps, this session's throughput and the seconds since the fit started.
nlohmann::json step_line(int64_t done, double lr, const PhasePlan& plan, const Phase& ph,
                         const MetricsWindow& window, int64_t skipped, const StepTimes& times,
                         int64_t batch_size, double fit_start) {
  nlohmann::json line = {{"step", done}, {"lr", lr}};
  if (plan.phases.size() > 1) line["phase"] = ph.name;
  if (skipped) line["skipped_steps"] = skipped;
  window.write(line, dist::is_distributed());
  line["samples_per_s"] = times.samples_per_s(batch_size);
  line["elapsed_s"] = now_seconds() - fit_start;
  return line;
}

/// The end of a finished fit: the selected model tested (best.pt's if `select_best` and a validation ran,
/// else the last), with the record of the run and the time of this session.
FitResult test_selected(Model& model, const Task& task, const std::string& head, const TrainerOptions& opts,
                        bool select_best, const CheckpointSaver& saver, const PhasePlan& plan,
                        const StepTimes& times, int64_t skipped, int64_t batch_size, bool writer) {
  FitResult r;
  r.iterations = plan.total;
  r.selected_best = select_best;
  r.selected_step = plan.total;
  Model tested = model;
  if (select_best && saver.has_best()) {
    tested = clone_model(model);
    // Rank 0 wrote best.pt; the others get its weights from rank 0 (no shared file system needed).
    if (writer) copy_state(*CheckpointReader(saver.best_path()).read_model(), *tested);
    dist::broadcast_module(*tested);
    r.selected_step = saver.best_step();
  }
  if (saver.has_best()) {
    r.best_val_top1 = saver.best_val();
    r.best_val_step = saver.best_step();
  }
  r.train_seconds = times.seconds();
  r.step_ms = times.mean_ms();
  r.step_ms_median = times.median_ms();
  r.skipped_steps = skipped;
  r.samples_per_s = times.samples_per_s(batch_size);
  r.world_size = dist::world_size();
  if (plan.phases.size() > 1) r.phases = plan.phases;
  if (dist::is_distributed()) {
    r.allreduce_share = times.allreduce_share();
    r.allreduce_wait_share = times.wait_share();
  }
  if (task.test.size() > 0) r.test = evaluate(tested, task.test, head, opts.eval_batch, writer ? "test" : "");
  return r;
}

/// When a fit validates and checkpoints, and which model it tests at the end.
struct Cadence {
  int64_t eval_every, ckpt_every;
  bool has_val, select_best;
};

Cadence cadence(const TrainerOptions& opts, const Task& task) {
  Cadence c;
  c.eval_every = opts.eval_every > 0 ? opts.eval_every : std::max<int64_t>(1, opts.iterations / 10);
  c.ckpt_every = opts.checkpoint_every > 0 ? opts.checkpoint_every : c.eval_every;
  c.has_val = task.val.size() > 0;
  c.select_best =
      opts.select == ModelSelection::best || (opts.select == ModelSelection::automatic && c.has_val);
  XFER_CHECK(!(opts.select == ModelSelection::best && !c.has_val),
             "--select best needs a validation split; add val=N to the ", "dataset spec");
  return c;
}

/// A stop signal ended the session after `done` steps (last.pt written): Interrupted.
[[noreturn]] void interrupted(int64_t done, int64_t total, const CheckpointSaver& saver, int signal,
                              Progress& progress) {
  progress.finish();
  throw Interrupted(cat("training at step ", done, " of ", total, "; saved ", saver.last_path(),
                        "; continue with --resume"),
                    signal);
}

/// --stop-after ended the session after `done` steps, `start` having been its first (last.pt written).
FitResult stopped_after(int64_t start, int64_t done, Progress& progress) {
  progress.finish();
  log_info(cat("stopped after ", done - start, " steps at step ", done, "; continue with --resume"));
  FitResult stopped;
  stopped.stopped_at = done;
  return stopped;
}

}  // namespace

nlohmann::json FitResult::to_json() const {
  if (stopped_at) return {{"stopped_at", *stopped_at}};
  const auto or_null = [](const auto& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  nlohmann::json out = {{"iterations", iterations},
                        {"selected", selected_best ? "best" : "last"},
                        {"selected_step", selected_step},
                        {"best_val_top1", or_null(best_val_top1)},
                        {"best_val_step", or_null(best_val_step)},
                        {"train_seconds", train_seconds},
                        {"step_ms", step_ms},
                        {"step_ms_median", step_ms_median},
                        {"skipped_steps", skipped_steps},
                        {"samples_per_s", samples_per_s},
                        {"world_size", world_size}};
  if (!phases.empty()) out["phases"] = phases_json(phases);
  if (allreduce_share) out["allreduce_share"] = *allreduce_share;
  if (allreduce_wait_share) out["allreduce_wait_share"] = *allreduce_wait_share;
  if (test) {
    out["test_top1"] = test->top1;
    out["test_mean_class"] = test->mean_class;
    out["test"] = test->to_json();
  }
  return out;
}

Trainer::Trainer(TrainerOptions opts, std::string out_dir)
    : opts_(std::move(opts)), out_dir_(std::move(out_dir)) {
  check_options(opts_);
}

std::string Trainer::last_checkpoint() const {
  return (fs::path(out_dir_) / "checkpoints" / "last.pt").string();
}
std::string Trainer::best_checkpoint() const {
  return (fs::path(out_dir_) / "checkpoints" / "best.pt").string();
}

FitResult Trainer::fit(Model& model, Method& method, Batches& batches, const Task& task,
                       const std::string& head, uint64_t seed, bool resume, const nlohmann::json& meta) {
  const PhasePlan plan(method.phases(opts_.iterations));
  const int64_t total = plan.total;
  const Cadence every = cadence(opts_, task);
  std::vector<ParamGroup> groups = trainable_param_groups(method, model, opts_.head_lr_mult);
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(opts_.optim, groups);
  LoopState s{model,
              method,
              batches,
              std::move(groups),
              std::move(optimizer),
              make_generator(derive_seed(seed, "method"))};
  const bool writer = dist::is_main();  // only rank 0 writes files
  CheckpointSaver saver(out_dir_, meta, writer);
  if (resume && !fs::exists(saver.last_path())) {
    log_info(cat("no checkpoint in ", out_dir_, " yet: starting from step 0"));
    resume = false;
  }
  const int64_t start = resume ? resume_from_last(s, saver, plan, opts_.optim) : 0;
  // Data-parallel: every process starts from rank 0's weights and batch-norm statistics (they agree
  // already when seeded alike; this makes it so).
  dist::broadcast_module(*model);
  const std::unique_ptr<MetricsLog> metrics = open_metrics(out_dir_, start, writer);

  const int64_t batch_size = batches.stream("target").options().batch_size;
  Progress progress(head == "source" ? "pretrain" : "train", total, start);
  std::string status,
      val_text;  // the last logged window's loss and the last validation, shown until the next
  MetricsWindow window;
  StepTimes times;
  const double fit_start = now_seconds();
  model->train();
  apply_bn_mode(model, opts_.bn_stats);

  size_t phase = plan.of(std::min(start, total - 1));
  for (int64_t step = start; step < total; ++step) {
    if (step == plan.end(phase)) {  // a new training: fresh optimizer state, the schedule from its start
      ++phase;
      s.optimizer = make_optimizer(opts_.optim, s.groups);
      if (writer)
        progress.message(cat("phase ", plan.phases[phase].name, ": ", plan.phases[phase].steps,
                             " steps from step ", step,
                             " with a fresh optimizer and learning-rate schedule"));
    }
    const Phase& ph = plan.phases[phase];
    const int64_t local = step - plan.starts[phase];
    const double lr = opts_.optim.lr * ph.lr_mult * lr_factor(opts_.schedule, local, ph.steps);
    StepContext ctx{batches, model, step, total, s.rng, head, static_cast<int64_t>(phase), local};
    StepReport report;
    const double t0 = now_seconds();
    const std::optional<LossTerms> terms = step_or_skip(s, opts_.on_nan, lr, ctx, report, progress, saver);
    times.add(now_seconds() - t0, report.allreduce_seconds, report.wait_seconds);
    window.add_communication(report.allreduce_seconds, report.wait_seconds);
    if (terms) window.add(*terms);

    const int64_t done = step + 1;
    if (every.has_val && ph.validate && ((local + 1) % every.eval_every == 0 || local + 1 == ph.steps))
      val_text = "  val " + percent(validate(model, task.val, head, opts_, done, metrics.get(), saver));
    if (done % opts_.log_every == 0 || done == total) {
      window.average_over_processes();  // the losses of the whole global batch
      if (writer)
        metrics->write(step_line(done, lr, plan, ph, window, s.skips.total, times, batch_size, fit_start));
      status = window.steps() ? cat("loss ", std::round(window.loss() * 1000) / 1000, val_text)
                              : cat("skipped", val_text);
      window.reset();
    }
    if (writer) progress.update(done, status);
    const bool stopping = opts_.stop_after > 0 && done - start >= opts_.stop_after && done < total;
    // Data-parallel: the signal any process had received at this step's agreement, so all stop together.
    const int signal = dist::is_distributed() ? report.stop_signal : stop_signal();
    if (done % every.ckpt_every == 0 || done == total || stopping || signal) save_last(s, saver, plan, done);
    dist::fault_point(done);
    if (signal) interrupted(done, total, saver, signal, progress);
    if (stopping) return stopped_after(start, done, progress);
  }
  progress.finish();
  return test_selected(model, task, head, opts_, every.select_best, saver, plan, times, s.skips.total,
                       batch_size, writer);
}

}  // namespace xfer
