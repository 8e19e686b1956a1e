// xfer against numbers from Debian's python3-torch (tests/golden/make_foundation_golden.py).
#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/methods/method.h"
#include "xfer/optim/optim.h"
#include "xfer/optim/schedule.h"

namespace xfer {
namespace {

const nlohmann::json& golden() {
  static const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/foundation.json");
  return g;
}

std::vector<torch::Tensor> quadratic_params() {
  const auto& init = golden()["quadratic_init"];
  return {torch::tensor(init[0].get<std::vector<double>>(), torch::kFloat64).view({2, 2}).requires_grad_(),
          torch::tensor(init[1].get<std::vector<double>>(), torch::kFloat64).requires_grad_()};
}

torch::Tensor loss_of(const std::vector<torch::Tensor>& p) {
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  return (torch::tensor({1.0, 2.0, 0.5, 3.0}, opts).view({2, 2}) * p[0].pow(2)).sum() + (p[0] * 0.3).sum() +
         p[1].pow(4).sum() * 0.1 - (p[1] * torch::tensor({0.2, -0.4, 0.6}, opts)).sum();
}

void expect_steps_match(const OptimizerOptions& o, const std::string& key,
                        std::vector<double> mults = {1.0}) {
  auto params = quadratic_params();
  std::vector<ParamGroup> groups;
  if (mults.size() == 1)
    groups = {{"all", params, mults[0], std::nullopt}};
  else
    groups = {{"a", {params[0]}, mults[0], std::nullopt}, {"b", {params[1]}, mults[1], std::nullopt}};
  auto opt = make_optimizer(o, groups);
  set_learning_rates(*opt, groups, o.lr);
  for (int step = 0; step < 3; ++step) {
    opt->zero_grad();
    loss_of(params).backward();
    opt->step();
  }
  for (size_t i = 0; i < 2; ++i) {
    const auto expected = golden()[key][i].get<std::vector<double>>();
    const torch::Tensor got = params[i].detach().flatten();
    for (size_t j = 0; j < expected.size(); ++j)
      EXPECT_NEAR(got[j].item<double>(), expected[j], 1e-12 + 1e-9 * std::abs(expected[j]))
          << key << " " << i << "," << j;
  }
}

TEST(Golden, SgdMatchesTorchOptim) {
  OptimizerOptions o;
  o.lr = 0.1;
  o.momentum = 0;
  o.weight_decay = 0;
  expect_steps_match(o, "sgd");
  o.lr = 0.05;
  o.momentum = 0.9;
  o.weight_decay = 1e-2;
  expect_steps_match(o, "sgd_momentum_wd");
  o.nesterov = true;
  o.weight_decay = 1e-4;
  expect_steps_match(o, "sgd_nesterov");
  o.nesterov = false;
  expect_steps_match(o, "sgd_groups", {1.0, 10.0});
}

TEST(Golden, AdamMatchesTorchOptim) {
  OptimizerOptions o;
  o.optimizer = OptimizerKind::adam;
  o.lr = 0.01;
  o.weight_decay = 0;
  expect_steps_match(o, "adam");
  o.beta1 = 0.8;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  o.weight_decay = 1e-2;
  expect_steps_match(o, "adam_wd");
}

TEST(Golden, CosineMatchesCosineAnnealingLR) {
  ScheduleOptions s;
  s.schedule = ScheduleKind::cosine;
  const auto expected = golden()["cosine_10"].get<std::vector<double>>();
  for (int step = 0; step < 10; ++step) EXPECT_NEAR(lr_factor(s, step, 10), expected[step], 1e-12) << step;
}

TEST(Golden, CrossEntropyMatches) {
  const auto& ce = golden()["cross_entropy"];
  std::vector<double> flat;
  for (const auto& row : ce["logits"])
    for (double v : row) flat.push_back(v);
  const torch::Tensor logits = torch::tensor(flat, torch::kFloat64).view({4, 3});
  const torch::Tensor labels = torch::tensor(ce["labels"].get<std::vector<int64_t>>(), torch::kInt64);
  EXPECT_NEAR(cross_entropy(logits, labels).item<double>(), ce["value"].get<double>(), 1e-12);
}

}  // namespace
}  // namespace xfer
