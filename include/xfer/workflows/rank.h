#pragma once
/// `xfer rank`: which source to transfer from, before any fine-tuning (source/transferability.h).
///
/// Models (`--models A,B,C`): every candidate model sees the target's labelled training images once
/// (models/predict.h); LogME and H-score score its pooled features, LEEP and NCE its source head's softmax.
///
/// Sources (`--models M --sources "S1;S2"`): candidate source datasets, or class subsets, for the one
/// model M. Each source's training images go through M too, and its classes become a classifier in M's
/// feature space (fit_source_classes: a Gaussian per class, shared variance). Every metric then scores the
/// same thing: the target's images seen through that source's classes, theta_S(x) (N, Z):
///   LEEP     LEEP(theta_S, y): how well the source's classes, as soft labels, predict the target's
///   NCE      NCE(argmax theta_S, y): how well the hard source class determines the target class
///   LogME    LogME(theta_S, y): the evidence of a linear map from the source-class posteriors to y
///   H-score  H(theta_S, y): how much of theta_S's variance the target classes explain
/// so a source whose classes separate the target's classes ranks high, whatever its size. The model's own
/// head is not used: a source's class names need not be any head's.
///
/// Outputs in --out: rank.json (below), rank.md (the table) and rank.png (scores per metric).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xfer/report/plot.h"
#include "xfer/report/table.h"

namespace xfer {

class Fields;

struct RankOptions {
  std::string target;  // the target spec: its training split's images and labels are scored
  std::string
      models;  // candidates: comma-separated run directories, checkpoints, state_dict:FILE, torchscript:FILE
  std::string sources;  // ';'-separated source specs ranked for the one --models entry ("" = rank models)
  std::string metric =
      "logme";  // logme | leep | nce | hscore | all, or a comma-separated list; the first orders
  std::string head = "source";    // the models' head over their source classes (LEEP, NCE)
  std::string out = "runs/rank";  // directory for rank.json, rank.md, rank.png (`xfer rank`; "" = none)
  int64_t batch = 500;            // images per forward pass
  int64_t seed = 0;               // for specs without seed=
  int64_t threads = 0;            // 0 = all cores
  std::string device = "cpu";

  void fields(Fields& f);
};

struct RankedCandidate {
  std::string name;                      // the --models entry, or the --sources spec
  int64_t feature_dim = 0;               // the model's pooled features (sources: the source's classes)
  int64_t source_classes = 0;            // the model's source head, or the source spec's classes (0: none)
  int64_t source_examples = 0;           // sources: training images of the spec
  std::map<std::string, double> scores;  // per metric
  std::map<std::string, int64_t> ranks;  // per metric: 1 + the candidates scoring strictly higher
  double forward_seconds = 0, metric_seconds = 0;
};

struct Ranking {
  std::string mode;    // "models" or "sources"
  std::string target;  // the spec
  std::string model;   // sources: the one model
  int64_t target_examples = 0, target_classes = 0;
  std::vector<std::string> metrics;
  std::vector<RankedCandidate> candidates;  // in the order given
  double seconds = 0;                       // the whole ranking, loading included

  /// Candidate indices, best first by `metric` (ties: the order given).
  std::vector<size_t> order(const std::string& metric) const;
  /// rank.json: {"kind": "xfer rank", mode, target, model, target_examples, target_classes, metrics, seconds,
  ///  candidates: [{name, feature_dim, source_classes, source_examples, scores, ranks, forward_seconds,
  ///  metric_seconds}], ranking: {metric: [names, best first]}}
  nlohmann::json to_json() const;
};

/// Scores every candidate. BadInput, before any forward pass, for a target with fewer than 2 classes, a
/// model without the head LEEP or NCE read, images of a shape a model does not take, or --sources with
/// other than one model.
Ranking rank_candidates(const RankOptions& opts);

/// The table `xfer rank` prints: best first by the first metric; each metric's score and its rank.
Table rank_table(const Ranking& ranking);
/// Each metric's scores rescaled to [0, 1] over the candidates (1 = its best), candidates in table order.
Plot rank_plot(const Ranking& ranking);

/// The best-ranked source of a `--sources` rank.json by `metric` ("" = its first metric), for `xfer select
/// --source-from`. BadInput naming `where` for a file that is not one, or a metric it does not hold.
std::string best_ranked_source(const nlohmann::json& rank, const std::string& metric,
                               const std::string& where);

}  // namespace xfer
