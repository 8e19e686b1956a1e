// xfer's SGD steps on flat buffers; these tests hold it to torch::optim::SGD bit for bit.
#include "xfer/optim/optim.h"
#include "support.h"
#include "xfer/models/model.h"

namespace xfer {
namespace {

Model small_model() {
  Arch a;
  a.backbone = "cnn4:width=4";
  a.in_channels = 1;
  a.height = a.width = 28;
  a.input = {{0.3}, {0.3}};
  a.heads = {{"target", {"a", "b", "c"}}, {"source", {"a", "b"}}};
  return Model(a);
}

/// Two groups as the methods make them: the backbone, and the heads with their own lr and weight decay.
std::vector<ParamGroup> groups_of(Model& m) {
  return {{"backbone", m->backbone_parameters(), 1.0, std::nullopt},
          {"heads", m->head_parameters(), 3.0, 0.5}};
}

void expect_identical(Model& a, Model& b, const std::string& when) {
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (const auto& p : pa)
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key() << " differs " << when;
}

struct Case {
  double momentum;
  bool nesterov;
  double weight_decay;
};

TEST(Optimizer, FlatSgdStepsBitForBitAsTorchsSgd) {
  for (const Case c :
       {Case{0.9, false, 1e-4}, Case{0.9, true, 1e-3}, Case{0.0, false, 1e-4}, Case{0.5, false, 0.0}}) {
    torch::manual_seed(7);
    Model ours = small_model(), theirs = clone_model(ours);
    OptimizerOptions o;
    o.lr = 0.03;
    o.momentum = c.momentum;
    o.nesterov = c.nesterov;
    o.weight_decay = c.weight_decay;
    const auto our_groups = groups_of(ours), their_groups = groups_of(theirs);
    auto flat = make_optimizer(o, our_groups);
    std::vector<torch::optim::OptimizerParamGroup> torch_groups;
    for (const auto& g : their_groups)
      torch_groups.emplace_back(g.params, std::make_unique<torch::optim::SGDOptions>(
                                              torch::optim::SGDOptions(o.lr * g.lr_mult)
                                                  .momentum(o.momentum)
                                                  .nesterov(o.nesterov)
                                                  .weight_decay(g.weight_decay.value_or(o.weight_decay))));
    torch::optim::SGD reference(torch_groups, torch::optim::SGDOptions(o.lr));
    const auto mine = ours->parameters(), other = theirs->parameters();
    for (int step = 0; step < 6; ++step) {
      // Step 3: the source head gets no gradient (an idle head), which the flat path must skip as torch does.
      for (size_t i = 0; i < mine.size(); ++i) {
        const bool idle = step == 3 && i + 2 >= mine.size();
        const torch::Tensor g = torch::randn(mine[i].sizes());
        mine[i].mutable_grad() = idle ? torch::Tensor() : g.clone();
        other[i].mutable_grad() = idle ? torch::Tensor() : g.clone();
      }
      flat->step();
      reference.step();
      // The flat path ran: the backbone's parameters now lie end to end in one buffer.
      const auto backbone = ours->backbone_parameters();
      for (size_t i = 1; i < backbone.size(); ++i)
        ASSERT_EQ(static_cast<const float*>(backbone[i].data_ptr()),
                  static_cast<const float*>(backbone[i - 1].data_ptr()) + backbone[i - 1].numel());
      expect_identical(ours, theirs,
                       cat("after step ", step, " (momentum ", c.momentum, ", nesterov ", c.nesterov,
                           ", weight decay ", c.weight_decay, ")"));
    }
    // The momentum buffers a checkpoint stores are torch's too.
    const Archive a = save_optimizer(*flat), b = save_optimizer(reference);
    ASSERT_EQ(a.keys(), b.keys());
    for (const auto& k : a.keys()) {
      torch::Tensor x, y;
      if (a.try_read(k, x) && b.try_read(k, y)) {
        EXPECT_TRUE(torch::equal(x, y)) << k;
      }
    }
  }
}

TEST(Optimizer, FlatSgdContinuesExactlyFromALoadedState) {
  torch::manual_seed(8);
  Model ours = small_model(), theirs = clone_model(ours);
  OptimizerOptions o;
  const auto our_groups = groups_of(ours), their_groups = groups_of(theirs);
  auto first = make_optimizer(o, our_groups), reference = make_optimizer(o, their_groups);
  const auto mine = ours->parameters(), other = theirs->parameters();
  auto step = [&](torch::optim::Optimizer& a, torch::optim::Optimizer& b) {
    for (size_t i = 0; i < mine.size(); ++i) {
      const torch::Tensor g = torch::randn(mine[i].sizes());
      mine[i].mutable_grad() = g.clone();
      other[i].mutable_grad() = g.clone();
    }
    a.step();
    b.step();
  };
  for (int i = 0; i < 3; ++i) step(*first, *reference);
  // A resumed run: a new optimizer over the same parameters loads the state, then both go on.
  auto resumed = make_optimizer(o, our_groups);
  load_optimizer(*resumed, Archive::decode(save_optimizer(*first).encode(), "optimizer"));
  for (int i = 0; i < 3; ++i) step(*resumed, *reference);
  expect_identical(ours, theirs, "after a load");
  // A parameter given new data from outside is gathered back into the flat buffer.
  {
    torch::NoGradGuard no_grad;
    mine[0].set_data(mine[0].detach().clone());
  }
  step(*resumed, *reference);
  expect_identical(ours, theirs, "after set_data");
}

}  // namespace
}  // namespace xfer
