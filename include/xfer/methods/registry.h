#pragma once
/// The method registry: every method by name, with its options and what it needs.
///
/// Built-in methods are registered in `register_builtin_methods` (explicitly: static self-registration
/// is dropped by static linking). An unknown name throws and lists the valid ones.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/core/fields.h"
#include "xfer/methods/method.h"

namespace xfer {

/// What a method may do to the data before the model is built (MethodConfig::prepare_data).
struct DataContext {
  Task& task;               // its train split is what the run trains on; a method may replace it
  const std::string& spec;  // the spec `task` was loaded from
  uint64_t seed;            // the run seed
  torch::Device device;
  /// A trained model (a run directory or a checkpoint), frozen on `device`, and the checkpoint file read.
  /// Checkpoints are read above methods/, so the run supplies this.
  std::function<std::pair<Model, std::string>(const std::string& path)> load_model;
};

/// A method's options before it is built: bound to CLI flags, JSON and search parameters via `fields`.
class MethodConfig {
 public:
  virtual ~MethodConfig() = default;
  virtual void fields(Fields& f) = 0;
  /// BadInput on an option out of range, or a combination that means nothing.
  virtual void check() {
    Fields f;
    fields(f);
    f.validate();
  }
  /// Before the model is built: a method that chooses its training data (datl: the source resampled by
  /// importance weights) replaces ctx.task.train. Returns what result.json records of it as "sampling"
  /// (null: nothing).
  virtual nlohmann::json prepare_data(DataContext& ctx);
  /// Validates the options and builds the method.
  virtual std::unique_ptr<Method> build() = 0;
};

/// A MethodConfig for a method class `M` constructible from `typename M::Options` (which has `fields`).
template <class M>
class OptionsConfig : public MethodConfig {
 public:
  void fields(Fields& f) override { options.fields(f); }
  std::unique_ptr<Method> build() override {
    check();
    return std::make_unique<M>(options);
  }
  typename M::Options options;
};

/// The shape of the task a method trains on: a target with at most one source (every paper but GradMix),
/// or several labelled sources, one sharing the target's classes, with a small labelled target set V
/// (GradMix's setting, its baselines included).
enum class TaskShape { target_and_source, multi_source };
XFER_ENUM_NAMES(TaskShape, "target-and-source", "multi-source")

/// A curve a method's options describe over a run (Smooth TL's loss weight lambda(t)), which `xfer search`
/// draws for its best trials.
struct OptionCurve {
  std::string file;   // in the search's --out, e.g. "schedules.png"
  std::string title;  // what the curves are, e.g. "lambda(t)"
  std::string xlabel, ylabel;
  /// The points of the curve of `method_options` (a trial's, as config.json holds them) over a run of
  /// `total_steps` steps that starts from a pretrained model or not.
  std::function<std::pair<std::vector<double>, std::vector<double>>(const nlohmann::json& method_options,
                                                                    int64_t total_steps, bool from_init)>
      points;
};

struct MethodInfo {
  std::string name;
  std::string summary;        // one line
  std::string paper;          // citation, "" for plain baselines
  bool needs_init = false;    // fine-tunes a pretrained model: --init required
  bool allows_init = true;    // false: trains from random init, --init is an error
  bool needs_source = false;  // draws on source data: --source required
  /// The demo always runs `core` methods (scratch, l2 and each paper's own method); the rest run when
  /// they fit in its time budget.
  bool core = false;
  /// Expected time per step relative to l2 (co-training ~2), used to fit the demo in its budget.
  double relative_cost = 1.0;
  /// The task a method is evaluated on. The demo and a suite's "all" or "core" run only the
  /// target-and-source methods; the others are listed with `demo_command`.
  TaskShape task_shape = TaskShape::target_and_source;
  /// The commands that run it: `xfer finetune` (every method but datl) and `xfer pretrain` (scratch, which
  /// is plain pre-training there, and datl, which chooses what to pre-train on).
  bool finetunes = true;
  bool pretrains = false;
  /// What `xfer search` draws of its best trials' options (no `points`: nothing).
  OptionCurve search_curve;
  /// For a method whose task is not the demo's: a command that runs it on a task that fits.
  std::string demo_command;
  std::function<std::unique_ptr<MethodConfig>()> make_config;
};

/// The method a command runs when none is named: `xfer finetune` l2; `xfer pretrain` scratch, which is plain
/// pre-training on the source labels there.
inline constexpr const char* kDefaultFinetuneMethod = "l2";
inline constexpr const char* kDefaultPretrainMethod = "scratch";

class MethodRegistry {
 public:
  void add(MethodInfo info);
  /// BadInput listing the registered names if `name` is unknown.
  const MethodInfo& get(const std::string& name) const;
  bool has(const std::string& name) const;
  const std::vector<MethodInfo>& all() const { return methods_; }
  std::string names() const;

 private:
  std::vector<MethodInfo> methods_;
};

/// The process-wide registry, holding the built-in methods.
MethodRegistry& methods();
void register_builtin_methods(MethodRegistry& registry);

}  // namespace xfer
