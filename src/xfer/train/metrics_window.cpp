#include "xfer/train/metrics_window.h"

#include <algorithm>

#include <torch/torch.h>

#include "xfer/dist/dist.h"

namespace xfer {

void MetricsWindow::add(const LossTerms& terms) {
  loss_sum_ += terms.total.item<double>();
  for (const auto& [name, t] : terms.parts) part_sums_[name] += t.item<double>();
  if (terms.train_logits.defined()) {
    correct_ += (terms.train_logits.argmax(1) == terms.train_labels).sum().item<int64_t>();
    seen_ += terms.train_labels.size(0);
  }
  part_weights_ = terms.weights;
  ++steps_;
}

void MetricsWindow::add_communication(double allreduce_seconds, double wait_seconds) {
  allreduce_seconds_ += allreduce_seconds;
  wait_seconds_ += wait_seconds;
}

void MetricsWindow::average_over_processes() {
  if (!dist::is_distributed()) return;
  std::vector<double> sums{loss_sum_};
  for (const auto& [name, sum] : part_sums_) sums.push_back(sum);
  torch::Tensor t = torch::tensor(sums, torch::kFloat64);
  dist::all_reduce_sum({t});
  t.div_(dist::world_size());
  loss_sum_ = t[0].item<double>();
  int64_t i = 1;
  for (auto& [name, sum] : part_sums_) sum = t[i++].item<double>();
}

void MetricsWindow::write(nlohmann::json& line, bool communication) const {
  if (steps_) line["loss"] = loss_sum_ / steps_;
  if (seen_) line["train_top1"] = static_cast<double>(correct_) / static_cast<double>(seen_);
  for (const auto& [name, sum] : part_sums_) line[name] = sum / steps_;
  if (!part_weights_.empty()) line["part_weights"] = part_weights_;
  if (communication) {
    line["allreduce_ms"] = 1000.0 * allreduce_seconds_ / std::max<int64_t>(steps_, 1);
    line["allreduce_wait_ms"] = 1000.0 * wait_seconds_ / std::max<int64_t>(steps_, 1);
  }
}

void MetricsWindow::reset() {
  loss_sum_ = allreduce_seconds_ = wait_seconds_ = 0;
  steps_ = seen_ = correct_ = 0;
  part_sums_.clear();
}

void StepTimes::add(double seconds, double allreduce_seconds, double wait_seconds) {
  times_.push_back(seconds);
  seconds_ += seconds;
  allreduce_seconds_ += allreduce_seconds;
  wait_seconds_ += wait_seconds;
}

double StepTimes::samples_per_s(int64_t batch_size) const {
  return seconds_ > 0 ? steps() * batch_size / seconds_ : 0.0;
}

double StepTimes::mean_ms() const {
  return steps() > 0 ? 1000.0 * seconds_ / steps() : 0.0;
}

double StepTimes::median_ms() const {
  if (times_.empty()) return 0.0;
  std::vector<double> v = times_;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return 1000.0 * (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

}  // namespace xfer
