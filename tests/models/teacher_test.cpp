#include <cmath>
#include <map>

#include "support.h"
#include "xfer/models/teacher.h"

namespace xfer {
namespace {

Model tiny_model() {
  Arch a;
  a.backbone = "cnn4:width=4";
  a.in_channels = 1;
  a.height = a.width = 28;
  a.input = {{0.3}, {0.3}};
  a.heads = {{"source", {"a", "b"}}};
  return Model(a);
}

TEST(Teacher, IsAFrozenEvalCopyThatRunsWithoutGrad) {
  torch::manual_seed(0);
  Model student = tiny_model();
  Teacher teacher(student);
  for (const auto& p : teacher.model()->parameters()) EXPECT_FALSE(p.requires_grad());
  EXPECT_FALSE(teacher.model()->is_training());
  const torch::Tensor x = torch::randn({2, 1, 28, 28});
  const Features f = teacher.features(x);
  EXPECT_FALSE(f.pooled.requires_grad());
  EXPECT_EQ(teacher.logits(f.pooled, "source").sizes(), (std::vector<int64_t>{2, 2}));
  // A copy, not an alias: changing the student leaves the teacher alone.
  {
    torch::NoGradGuard no_grad;
    student->backbone->parameters()[0].add_(1.0);
  }
  EXPECT_FALSE(torch::equal(student->backbone->parameters()[0], teacher.model()->backbone->parameters()[0]));
}

/// Every parameter and buffer of `m`, copied, by name.
std::map<std::string, torch::Tensor> teacher_tensors(const Model& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m->named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : m->named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

TEST(Teacher, EmaReachesTheClosedFormAndSkipsHeadsAndBnStatistics) {
  torch::manual_seed(1);
  Model student = tiny_model();
  Teacher teacher(student);
  {
    torch::NoGradGuard no_grad;  // a teacher that is not the student, buffers included
    for (auto& p : teacher.model()->parameters()) p.add_(torch::randn(p.sizes()));
    for (auto& b : teacher.model()->buffers())
      if (b.is_floating_point()) b.add_(0.5);
  }
  const auto t0 = teacher_tensors(teacher.model());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : student->parameters()) p.copy_(torch::randn(p.sizes()));
    for (auto& b : student->buffers()) b.fill_(3);
  }
  const auto s = teacher_tensors(student);
  const double decay = 0.9;
  const int n = 7;
  for (int i = 0; i < n; ++i) teacher.ema_update(student, decay);
  // After n updates towards a fixed student, every backbone parameter is d^n t0 + (1 - d^n) s; heads and
  // batch-norm statistics (running means, variances, batch counts) are the teacher's own, untouched.
  const double dn = std::pow(decay, n);
  const auto now = teacher_tensors(teacher.model());
  ASSERT_EQ(now.size(), t0.size());
  int64_t moved = 0;
  for (const auto& [name, t] : now) {
    const bool parameter = teacher.model()->named_parameters().contains(name);
    if (parameter && name.rfind("backbone.", 0) == 0) {
      ++moved;
      EXPECT_TRUE(torch::allclose(t, dn * t0.at(name) + (1 - dn) * s.at(name), 1e-5, 1e-6)) << name;
    } else {
      EXPECT_TRUE(torch::equal(t, t0.at(name))) << name << " changed";
    }
  }
  EXPECT_EQ(moved, static_cast<int64_t>(teacher.model()->backbone->parameters().size()));
}

TEST(Teacher, SavesAndLoadsItsWeights) {
  torch::manual_seed(2);
  Model student = tiny_model();
  Teacher a(student), b(student);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : student->parameters()) p.mul_(0.5);
    for (auto& buf : a.model()->buffers())
      if (buf.is_floating_point()) buf.add_(0.25);
  }
  a.ema_update(student, 0.5);
  Archive out;
  a.save(out, "teacher");
  const Archive in = Archive::decode(out.encode(), "teacher state");
  b.load(in, "teacher");
  const auto ta = teacher_tensors(a.model()), tb = teacher_tensors(b.model());
  ASSERT_EQ(ta.size(), tb.size());
  for (const auto& [name, t] : ta) EXPECT_TRUE(torch::equal(t, tb.at(name))) << name;
  test::expect_bad_input([&] { b.load(in, "missing"); }, {"no 'missing' teacher"});
}

/// A model of `backbone` whose batch norms hold statistics and affine weights far from the identity.
Model model_with_statistics(const std::string& backbone, int64_t size) {
  Arch a;
  a.backbone = backbone;
  a.in_channels = 3;
  a.height = a.width = size;
  a.input = {{0.3, 0.3, 0.3}, {0.3, 0.3, 0.3}};
  a.heads = {{"source", {"a", "b"}}};
  Model m(a);
  torch::NoGradGuard no_grad;
  for (auto& mod : m->modules(false))
    if (auto* bn = mod->as<torch::nn::BatchNorm2d>()) {
      bn->weight.uniform_(0.5, 2.0);
      bn->bias.normal_(0, 0.5);
      bn->running_mean.normal_(0, 0.5);
      bn->running_var.uniform_(0.2, 3.0);
    }
  return m;
}

/// Folding reassociates float sums, so an output near zero in a map of large values may differ by more than
/// its own 1e-5: the check is relative to the tensor's scale, max |a - b| <= 1e-5 max |b|.
void expect_close(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  const double scale = b.abs().max().item<double>(), diff = (a - b).abs().max().item<double>();
  EXPECT_LE(diff, 1e-5 * scale) << what << ": largest difference " << diff << " of values up to " << scale;
}

void expect_same_features(const Features& folded, const Features& plain, const std::string& what) {
  expect_close(folded.pooled, plain.pooled, what + " pooled");
  ASSERT_EQ(folded.maps.size(), plain.maps.size());
  for (size_t i = 0; i < plain.maps.size(); ++i)
    expect_close(folded.maps[i].second, plain.maps[i].second, what + " " + plain.maps[i].first);
}

TEST(Teacher, FoldedBatchNormsGiveTheUnfoldedOutputs) {
  // Every built-in architecture, taps kept (DELTA) or not (SMILE), contiguous or channels-last weights,
  // and again after an EMA update, which must refold.
  torch::manual_seed(4);
  for (const auto& [spec, size] : std::vector<std::pair<std::string, int64_t>>{{"cnn4:width=4", 28},
                                                                               {"resnet20:width=4", 16},
                                                                               {"resnet18:width=4", 32},
                                                                               {"resnet50:width=2", 32}}) {
    for (const bool taps : {false, true}) {
      Model source = model_with_statistics(spec, size);
      Teacher teacher(source, taps);
      if (taps) {
        torch::NoGradGuard no_grad;
        for (auto& p : teacher.model()->parameters())
          if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
      }
      const torch::Tensor x = torch::randn({3, 3, size, size});
      const std::string what = spec + (taps ? " (taps kept, channels-last)" : "");
      auto plain = [&] {
        Model copy = clone_model(teacher.model());
        copy->eval();
        torch::NoGradGuard no_grad;
        return copy->backbone->forward_features(x);
      };
      const Features folded = teacher.features(x);
      const Features expected = plain();
      expect_same_features(folded, expected, what);
      if (taps) {
        ASSERT_EQ(folded.convs.size(), expected.convs.size());
        for (size_t i = 0; i < expected.convs.size(); ++i)
          expect_close(folded.convs[i].second, expected.convs[i].second,
                       what + " conv " + expected.convs[i].first);
      }
      Model student = model_with_statistics(spec, size);
      teacher.ema_update(student, 0.5, /*with_statistics=*/true);
      expect_same_features(teacher.features(x), plain(), what + " after an EMA update");
    }
  }
}

TEST(Teacher, FoldingSkipsTheNormsAndRefusesATrainingNetwork) {
  torch::manual_seed(5);
  Model a = model_with_statistics("cnn4:width=4", 28), b = clone_model(a);
  a->eval();
  b->eval();
  fold_batch_norms(*b->backbone, *a->backbone, /*keep_taps=*/false);
  for (const ConvNorm& cn : b->backbone->conv_norms()) {
    EXPECT_FALSE(cn.norm->running_mean.defined());  // skipped in the forward pass
    EXPECT_TRUE(cn.conv->bias.defined());
  }
  Model c = clone_model(a);
  c->train();
  test::expect_bad_input([&] { fold_batch_norms(*c->backbone, *a->backbone, false); }, {"only in eval mode"});
  Model d = model_with_statistics("resnet20:width=4", 16);
  d->eval();
  test::expect_bad_input([&] { fold_batch_norms(*d->backbone, *a->backbone, false); }, {"is not a copy of"});
}

TEST(Model, CopyHeadCopiesClassesAndWeights) {
  torch::manual_seed(3);
  Model from = tiny_model(), to = tiny_model();
  copy_head(from, "source", to, "aux");
  EXPECT_TRUE(torch::equal(to->head("aux")->weight, from->head("source")->weight));
  EXPECT_EQ(to->arch().head("aux")->class_names, (std::vector<std::string>{"a", "b"}));
  test::expect_bad_input([&] { copy_head(from, "target", to); }, {"no 'target' head"});
}

}  // namespace
}  // namespace xfer
