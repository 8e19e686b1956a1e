#pragma once
/// `xfer report`: a Markdown report with plots (PNG, drawn by gnuplot) for a run, a demo, a bench or a
/// search directory; docs/report.md shows each plot and how to read it.
///
/// A run (metrics.jsonl, result.json): its result; loss.png (the total and each part as it enters the total,
/// part x its logged weight, and the validation loss), loss_GROUP.png for parts named GROUP/NAME, lr.png,
/// accuracy.png (train and validation accuracy where logged), confusion.png and per_class.png (test), and
/// the pictures of method-specific files (pairing.json: pairing.png; weights.json: weights.png).
/// A demo (demo.json) or bench (bench.json): the tables, accuracy_vs_labels.png (test top-1 against labels
/// per class, one line per method, error bars over seeds), heat maps of test accuracy per class and method;
/// a bench also its per-task bars (accuracy.png) and validation curves (val_curves.png).
/// A search (best.json): the best trial's parameters and figures (best_*.png) beside the search's own plots.
/// Without gnuplot the report says so and has tables only.
#include <string>

#include <nlohmann/json.hpp>

namespace xfer {

/// Writes DIR/report.md (and its PNG plots) and returns {"report": path, "plots": [...], "notes": [...]}.
nlohmann::json write_report(const std::string& dir);

}  // namespace xfer
