#pragma once
/// The figures of `xfer report`, built from a run's files as plain data (a Plot or a Heatmap), so that what a
/// picture shows can be tested without drawing it.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/report/plot.h"

namespace xfer {

/// The lines of a metrics.jsonl that are JSON objects with a numeric "step" (others are skipped).
std::vector<nlohmann::json> read_metrics(const std::string& path);

/// Training loss: the total and each loss part as it enters the total, part x its weight from the line's
/// "part_weights" (1 when absent), so that SMILE's fe shows as gamma_fe x fe. A part whose weight is not 1
/// is named "fe x 0.01" (or "fe x weight" when the weight changes over the run). Validation loss, where
/// logged, as points. Parts named GROUP/NAME are diagnostics, drawn by group_plots instead.
Plot loss_plot(const std::vector<nlohmann::json>& lines, const std::string& title);
/// One plot per GROUP of parts named GROUP/NAME (GradMix's per-layer weights, Smooth TL's lambda), by group.
std::vector<std::pair<std::string, Plot>> group_plots(const std::vector<nlohmann::json>& lines,
                                                      const std::string& title);
/// The learning rate over steps.
Plot lr_plot(const std::vector<nlohmann::json>& lines, const std::string& title);
/// Accuracy curves in %: train top-1 (step lines' train_top1) and validation top-1 and top-5 (val_top1,
/// val_top5), those that are logged. No series when none is.
Plot accuracy_plot(const std::vector<nlohmann::json>& lines, const std::string& title);

/// The test confusion matrix of a result.json ("test": {"confusion"}): rows the true class, columns the
/// predicted one, counts as logged, labelled by "classes". No values when the result has none; BadInput
/// when it is not a square matrix of counts matching the classes.
Heatmap confusion_heatmap(const nlohmann::json& result, const std::string& title);
/// Test accuracy of each class in % (result.json's "test": {"per_class"}), one bar per class. No series
/// when the result has none.
Plot per_class_plot(const nlohmann::json& result, const std::string& title);

/// Test accuracy per class (%) of several methods: one row per method (in `methods` order), one column per
/// class, each cell the mean over that method's results (result.json contents) with per-class accuracies
/// for that class. Results with another number of classes than the first are left out.
Heatmap per_class_by_method(const std::vector<std::pair<std::string, nlohmann::json>>& method_results,
                            const std::vector<std::string>& methods, const std::string& title);

/// One finished run of a comparison (a demo or a bench): what accuracy-against-labels plots need.
struct LabelledRun {
  std::string method;
  int64_t per_class = 0;  // labelled examples per class of the target
  double top1 = 0;        // test top-1, a fraction
};
/// Test top-1 (%) against labels per class: one line per method (in `methods` order; methods without runs
/// are left out), at each size the mean over its seeds with the sample standard deviation as the error bar.
Plot accuracy_vs_labels(const std::vector<LabelledRun>& runs, const std::vector<std::string>& methods,
                        const std::string& title);

}  // namespace xfer
