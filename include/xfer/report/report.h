#pragma once
/// `xfer report`: a Markdown report with plots for a run directory or a bench directory.
///
/// For a run (a directory with metrics.jsonl): its result, learning curves of the loss and each loss
/// part, validation accuracy, and the pictures of method-specific files it holds (pairing.json: the
/// XMixup pairing as a heat map; weights.json: sorted importance weights). Loss parts named
/// "GROUP/NAME" (e.g. GradMix's per-layer weights, Smooth TL's lambda) get a plot per GROUP.
/// For a bench directory (bench.json): the tables, per-method accuracy with error bars per task, the
/// time per step relative to l2, and validation curves of each method's first run.
/// Plots are PNG files beside report.md, drawn by gnuplot; without it the report says so and has tables only.
#include <string>

#include <nlohmann/json.hpp>

namespace xfer {

/// Writes DIR/report.md (and its PNG plots) and returns {"report": path, "plots": [...], "notes": [...]}.
nlohmann::json write_report(const std::string& dir);

}  // namespace xfer
