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
#include "xfer/dist/dist.h"
#include "xfer/models/predict.h"
#include "xfer/train/checkpoint.h"

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

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// More non-finite steps in a row than this means the run has diverged: skipping cannot save it.
constexpr int64_t kMaxConsecutiveSkips = 25;
/// --bn-stats frozen: batch-norm layers use (and keep) their running statistics while the rest trains.
/// --bn-stats sync: the backbone's batch-norm layers normalise with the global batch's statistics.
void apply_bn_mode(Model& model, const std::string& bn) {
  XFER_CHECK(bn != "sync" || !dist::is_distributed() || model->backbone->spec().rfind("script:", 0) != 0,
             "--bn-stats sync needs a built-in backbone: a TorchScript backbone's batch norm cannot be synchronised; "
             "use --bn-stats batch or frozen");
  model->backbone->set_sync_batch_norm(bn == "sync");
  if (bn != "frozen") return;
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
  nlohmann::json to_json() const {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& ph : phases) out.push_back({{"name", ph.name}, {"steps", ph.steps}});
    return out;
  }
};

std::string percent(double fraction) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  os << 100.0 * fraction << "%";
  return os.str();
}

}  // namespace

int64_t epochs_to_iterations(double epochs, int64_t examples, int64_t batch_size) {
  XFER_CHECK(epochs > 0 && examples > 0 && batch_size > 0, "--epochs ", epochs, " over ", examples,
             " training examples at batch size ", batch_size, " gives no steps");
  const double steps = std::ceil(epochs * static_cast<double>(examples) / static_cast<double>(batch_size));
  XFER_CHECK(steps <= 1e9, "--epochs ", epochs, " over ", examples, " examples at batch size ", batch_size, " is ",
             steps, " steps; at most 10^9");
  return static_cast<int64_t>(steps);
}

void TrainerOptions::fields(Fields& f) {
  f.add("iterations", iterations, "training steps").at_least(1);
  f.add("epochs", epochs,
        "passes over the training set; when > 0 it replaces --iterations with ceil(epochs x training examples / "
        "batch size), e.g. --epochs 20 on 1000 images at -b 64 runs 313 steps")
      .non_negative()
      .at_most(1e6);
  optim.fields(f);
  schedule.fields(f);
  f.add("head_lr_mult", head_lr_mult, "learning-rate multiplier of the heads").non_negative();
  f.add("eval_every", eval_every, "steps between validation evaluations (0: iterations/10)").non_negative();
  f.add("checkpoint_every", checkpoint_every, "steps between checkpoints (0: as --eval-every)").non_negative();
  f.add("log_every", log_every, "steps between metrics.jsonl lines").at_least(1);
  f.add("eval_batch", eval_batch, "batch size for evaluation").at_least(1);
  f.add("select", select, "the model tested at the end: best (on validation), last, or auto (best if the task "
                          "has a validation split)")
      .choices({"auto", "best", "last"});
  f.add("stop_after", stop_after, "checkpoint and stop after this many steps in this session; continue "
                                  "later with --resume (0: run to the end)")
      .non_negative();
  f.add("on_nan", on_nan, "a NaN or infinite loss or gradient: stop with an error naming the step, or skip the "
                          "batch (no update; at most 25 in a row)")
      .choices({"stop", "skip"});
  f.add("bn_stats", bn_stats, "batch norm while training: batch (each process's batch statistics, as DDP without "
                              "sync BN), sync (statistics of the global batch over all processes, as SyncBatchNorm; "
                              "the same as batch in one process) or frozen (running statistics, as in eval mode)")
      .choices({"batch", "sync", "frozen"});
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

LossTerms training_step(Method& method, torch::optim::Optimizer& optimizer, const std::vector<ParamGroup>& groups,
                        double lr, StepContext& ctx, StepReport* report) {
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
    const std::vector<int64_t> first = dist::all_reduce_min({signal ? signal : kNobody, finite ? kNobody : dist::rank()});
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
                   confusion.add_logits(batch.logits.at(head).slice(1, 0, k), data.labels.slice(0, start, end));
                   if (progress) progress->update(end - first, "images");
                 });
  dist::all_reduce_sum({confusion.counts(), confusion.logit_sums()});
  return confusion.evaluation();
}

Trainer::Trainer(TrainerOptions opts, std::string out_dir) : opts_(std::move(opts)), out_dir_(std::move(out_dir)) {
  check_options(opts_);
}

std::string Trainer::last_checkpoint() const { return (fs::path(out_dir_) / "checkpoints" / "last.pt").string(); }
std::string Trainer::best_checkpoint() const { return (fs::path(out_dir_) / "checkpoints" / "best.pt").string(); }

nlohmann::json Trainer::fit(Model& model, Method& method, Batches& batches, const Task& task, const std::string& head,
                            uint64_t seed, bool resume, const nlohmann::json& meta) {
  const PhasePlan plan(method.phases(opts_.iterations));
  const int64_t total = plan.total;
  const int64_t eval_every = opts_.eval_every > 0 ? opts_.eval_every : std::max<int64_t>(1, opts_.iterations / 10);
  const int64_t ckpt_every = opts_.checkpoint_every > 0 ? opts_.checkpoint_every : eval_every;
  const bool has_val = task.val.size() > 0;
  const bool select_best = opts_.select == "best" || (opts_.select == "auto" && has_val);
  XFER_CHECK(!(opts_.select == "best" && !has_val), "--select best needs a validation split; add val=N to the ",
             "dataset spec");

  const std::vector<ParamGroup> groups = trainable_param_groups(method, model, opts_.head_lr_mult);
  std::unique_ptr<torch::optim::Optimizer> optimizer = make_optimizer(opts_.optim, groups);
  at::Generator rng = make_generator(derive_seed(seed, "method"));

  int64_t start = 0, best_step = -1, skipped_steps = 0, skips_in_a_row = 0;
  double best_val = -1;
  if (resume && !fs::exists(last_checkpoint())) {
    log_info(cat("no checkpoint in ", out_dir_, " yet: starting from step 0"));
    resume = false;
  }
  if (resume) {
    CheckpointReader ck(last_checkpoint(), model->backbone->parameters().front().device());
    const Model saved = ck.read_model();
    const std::string why = model->arch().mismatch(saved->arch(), /*with_heads=*/true);
    XFER_CHECK(why.empty(), ck.path(), ": cannot resume: ", why);
    copy_state(*saved, *model);
    load_optimizer(*optimizer, ck.read("optimizer"));
    method.load(ck.read("method"));
    rng.set_state(ck.read_tensor("rng").to(torch::kCPU));
    const auto& m = ck.meta();
    start = m.at("step").get<int64_t>();
    // Checkpoints older than phases hold none: they were single-phase runs.
    const nlohmann::json saved_phases = m.value("phases", nlohmann::json());
    XFER_CHECK(saved_phases.is_null() ? plan.phases.size() == 1 : saved_phases == plan.to_json(), ck.path(),
               ": cannot resume: the run was trained in the phases ", saved_phases.dump(), ", this one has ",
               plan.to_json().dump());
    // A checkpoint at a phase's first step resumes with the fresh optimizer that phase starts with.
    if (start < total && start == plan.starts[plan.of(start)]) optimizer = make_optimizer(opts_.optim, groups);
    best_val = m.at("best_val").get<double>();
    best_step = m.at("best_step").get<int64_t>();
    skipped_steps = m.value("skipped_steps", int64_t{0});
    skips_in_a_row = m.value("skips_in_a_row", int64_t{0});
    batches.seek(m.at("positions").get<std::map<std::string, int64_t>>());
    XFER_CHECK(start <= total, ck.path(), ": the checkpoint is at step ", start, ", past --iterations ", total);
    log_info(cat("resuming at step ", start, " from ", ck.path()));
  }
  // Data-parallel: every process starts from rank 0's weights and batch-norm statistics (they agree
  // already when seeded alike; this makes it so). Only rank 0 writes files.
  dist::broadcast_module(*model);
  const bool writer = dist::is_main();

  std::unique_ptr<MetricsLog> metrics;
  if (writer) {
    make_dirs((fs::path(out_dir_) / "checkpoints").string());
    metrics = std::make_unique<MetricsLog>((fs::path(out_dir_) / "metrics.jsonl").string(), start);
  }
  int64_t last_saved = resume ? start : -1;

  auto save_last = [&](int64_t step) {
    last_saved = step;
    if (!writer) return;
    nlohmann::json m = meta;
    m["kind"] = "train";
    m["step"] = step;
    m["iterations"] = total;
    m["phases"] = plan.to_json();
    m["phase"] = plan.phases[plan.of(std::min(step, total - 1))].name;  // the phase the next step is in
    m["best_val"] = best_val;
    m["best_step"] = best_step;
    m["skipped_steps"] = skipped_steps;
    m["skips_in_a_row"] = skips_in_a_row;
    m["positions"] = batches.positions();
    CheckpointWriter w(m);
    w.write_model(model);
    w.write("optimizer", save_optimizer(*optimizer));
    Archive method_state;
    method.save(method_state);
    w.write("method", method_state);
    w.write("rng", rng.get_state());
    w.commit(last_checkpoint());
  };

  const int64_t batch_size = batches.stream("target").options().batch_size;
  Progress progress(head == "source" ? "pretrain" : "train", total, start);
  std::string status;  // the last logged window's loss and the last validation, shown until the next
  double step_seconds = 0, window_loss = 0, allreduce_total = 0, window_allreduce = 0, wait_total = 0,
         window_wait = 0;
  std::vector<double> step_times;  // per step, for a median that first-step setup and noise do not skew
  step_times.reserve(static_cast<size_t>(total - start));
  int64_t window_steps = 0, window_seen = 0, window_correct = 0;  // seen/correct: train_top1's examples
  std::map<std::string, double> window_parts, window_weights;
  std::string val_text;
  const double fit_start = now_seconds();
  model->train();
  apply_bn_mode(model, opts_.bn_stats);

  size_t phase = plan.of(std::min(start, total - 1));
  for (int64_t step = start; step < total; ++step) {
    if (step == plan.end(phase)) {  // a new training: fresh optimizer state, the schedule from its start
      ++phase;
      optimizer = make_optimizer(opts_.optim, groups);
      if (writer)
        progress.message(cat("phase ", plan.phases[phase].name, ": ", plan.phases[phase].steps, " steps from step ",
                             step, " with a fresh optimizer and learning-rate schedule"));
    }
    const Phase& ph = plan.phases[phase];
    const int64_t local = step - plan.starts[phase];
    const double lr = opts_.optim.lr * ph.lr_mult * lr_factor(opts_.schedule, local, ph.steps);
    StepContext ctx{batches, model, step, total, rng, head, static_cast<int64_t>(phase), local};
    const double t0 = now_seconds();
    LossTerms terms;
    bool skipped = false;
    StepReport report;
    try {
      terms = training_step(method, *optimizer, groups, lr, ctx, &report);
      skips_in_a_row = 0;
    } catch (const NumericalError& e) {
      if (opts_.on_nan == "skip" && skips_in_a_row < kMaxConsecutiveSkips) {
        clear_gradients(groups);  // the update is dropped; the batch was drawn, so replay stays exact
        skipped = true;
        ++skipped_steps;
        ++skips_in_a_row;
        progress.message(cat("warning: ", e.what(), "; skipping the batch (--on-nan skip)"));
      } else {
        progress.finish();
        throw NumericalError(cat(e.what(), skips_in_a_row ? cat(" (after ", skips_in_a_row, " skipped in a row)") : "",
                                 "; ",
                                 last_saved >= 0 ? cat("the last good checkpoint is ", last_checkpoint(), " (step ",
                                                       last_saved, ")")
                                                 : std::string("no checkpoint was written yet")));
      }
    }
    step_times.push_back(now_seconds() - t0);
    step_seconds += step_times.back();
    allreduce_total += report.allreduce_seconds;
    window_allreduce += report.allreduce_seconds;
    wait_total += report.wait_seconds;
    window_wait += report.wait_seconds;

    const int64_t done = step + 1;
    if (!skipped) {
      window_loss += terms.total.item<double>();
      for (const auto& [name, t] : terms.parts) window_parts[name] += t.item<double>();
      if (terms.train_logits.defined()) {
        window_correct += (terms.train_logits.argmax(1) == terms.train_labels).sum().item<int64_t>();
        window_seen += terms.train_labels.size(0);
      }
      window_weights = terms.weights;
      ++window_steps;
    }
    if (has_val && ph.validate && ((local + 1) % eval_every == 0 || local + 1 == ph.steps)) {
      const Evaluation ev = evaluate(model, task.val, head, opts_.eval_batch);
      apply_bn_mode(model, opts_.bn_stats);
      if (writer) {
        nlohmann::json line = {
            {"step", done}, {"val_top1", ev.top1}, {"val_mean_class", ev.mean_class}, {"val_loss", ev.loss}};
        if (!std::isnan(ev.top5)) line["val_top5"] = ev.top5;  // more than 5 classes
        metrics->write(line);
      }
      if (opts_.on_validation) opts_.on_validation(done, ev.top1);
      val_text = "  val " + percent(ev.top1);
      if (ev.top1 > best_val) {
        best_val = ev.top1;
        best_step = done;
        nlohmann::json m = meta;
        m["kind"] = "model";
        m["step"] = done;
        m["val_top1"] = ev.top1;
        if (writer) {
          CheckpointWriter w(m);
          w.write_model(model);
          w.commit(best_checkpoint());
        }
      }
    }
    if (done % opts_.log_every == 0 || done == total) {
      if (dist::is_distributed()) {  // the losses of the whole global batch: means over the processes
        std::vector<double> sums{window_loss};
        for (const auto& [name, sum] : window_parts) sums.push_back(sum);
        torch::Tensor t = torch::tensor(sums, torch::kFloat64);
        dist::all_reduce_sum({t});
        t.div_(dist::world_size());
        window_loss = t[0].item<double>();
        size_t i = 1;
        for (auto& [name, sum] : window_parts) sum = t[static_cast<int64_t>(i++)].item<double>();
      }
      nlohmann::json line = {{"step", done}, {"lr", lr}};
      if (plan.phases.size() > 1) line["phase"] = ph.name;
      if (window_steps) line["loss"] = window_loss / window_steps;
      if (window_seen) line["train_top1"] = static_cast<double>(window_correct) / static_cast<double>(window_seen);
      if (skipped_steps) line["skipped_steps"] = skipped_steps;
      for (const auto& [name, sum] : window_parts) line[name] = sum / window_steps;
      if (!window_weights.empty()) line["part_weights"] = window_weights;
      line["samples_per_s"] = step_seconds > 0 ? (done - start) * batch_size / step_seconds : 0.0;
      if (dist::is_distributed()) {
        line["allreduce_ms"] = 1000.0 * window_allreduce / std::max<int64_t>(window_steps, 1);
        line["allreduce_wait_ms"] = 1000.0 * window_wait / std::max<int64_t>(window_steps, 1);
      }
      line["elapsed_s"] = now_seconds() - fit_start;
      if (writer) metrics->write(line);
      status = window_steps ? cat("loss ", std::round(window_loss / window_steps * 1000) / 1000, val_text)
                            : cat("skipped", val_text);
      window_loss = 0;
      window_allreduce = 0;
      window_wait = 0;
      window_steps = window_seen = window_correct = 0;
      window_parts.clear();
    }
    if (writer) progress.update(done, status);
    const bool stopping = opts_.stop_after > 0 && done - start >= opts_.stop_after && done < total;
    // Data-parallel: the signal any process had received at this step's agreement, so all stop together.
    const int signal = dist::is_distributed() ? report.stop_signal : stop_signal();
    if (done % ckpt_every == 0 || done == total || stopping || signal) save_last(done);
    dist::fault_point(done);
    if (signal) {
      progress.finish();
      throw Interrupted(cat("training at step ", done, " of ", total, "; saved ", last_checkpoint(),
                            "; continue with --resume"),
                        signal);
    }
    if (stopping) {
      progress.finish();
      log_info(cat("stopped after ", done - start, " steps at step ", done, "; continue with --resume"));
      return {{"stopped_at", done}};
    }
  }
  progress.finish();

  // Test the selected model.
  Model tested = model;
  int64_t selected_step = total;
  if (select_best && best_step >= 0) {
    tested = clone_model(model);
    // Rank 0 wrote best.pt; the others get its weights from rank 0 (no shared file system needed).
    if (writer) copy_state(*CheckpointReader(best_checkpoint()).read_model(), *tested);
    dist::broadcast_module(*tested);
    selected_step = best_step;
  }
  nlohmann::json result = {{"iterations", total},
                           {"selected", select_best ? "best" : "last"},
                           {"selected_step", selected_step},
                           {"best_val_top1", best_step >= 0 ? nlohmann::json(best_val) : nlohmann::json(nullptr)},
                           {"best_val_step", best_step >= 0 ? nlohmann::json(best_step) : nlohmann::json(nullptr)},
                           {"train_seconds", step_seconds},
                           {"step_ms", total > start ? 1000.0 * step_seconds / (total - start) : 0.0},
                           {"step_ms_median", 1000.0 * median(step_times)},
                           {"skipped_steps", skipped_steps},
                           {"samples_per_s", step_seconds > 0 ? (total - start) * batch_size / step_seconds : 0.0},
                           {"world_size", dist::world_size()}};
  if (plan.phases.size() > 1) result["phases"] = plan.to_json();
  if (dist::is_distributed()) {
    // The all-reduce's share of the step, and the part of it spent waiting for the slowest rank's
    // backward (load imbalance) rather than moving gradients.
    result["allreduce_share"] = step_seconds > 0 ? allreduce_total / step_seconds : 0.0;
    result["allreduce_wait_share"] = step_seconds > 0 ? wait_total / step_seconds : 0.0;
  }
  if (task.test.size() > 0) {
    const Evaluation ev = evaluate(tested, task.test, head, opts_.eval_batch, writer ? "test" : "");
    result["test_top1"] = ev.top1;
    result["test_mean_class"] = ev.mean_class;
    result["test"] = ev.to_json();
  }
  return result;
}

}  // namespace xfer
