#include <cmath>

#include "support.h"
#include "xfer/train/teacher.h"

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

TEST(Teacher, EmaReachesTheClosedFormAndSkipsHeadsAndBnStatistics) {
  torch::manual_seed(1);
  Model student = tiny_model();
  Teacher teacher(student);
  const torch::Tensor t0 = teacher.model()->backbone->parameters()[0].clone();
  const torch::Tensor head0 = teacher.model()->head("source")->weight.clone();
  torch::Tensor s;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : student->parameters()) p.fill_(2.0);
    for (auto& b : student->buffers()) b.fill_(3);
    s = student->backbone->parameters()[0].clone();
  }
  const double decay = 0.9;
  const int n = 7;
  for (int i = 0; i < n; ++i) teacher.ema_update(student, decay);
  // After n updates towards a fixed student: d^n t0 + (1 - d^n) s.
  const double dn = std::pow(decay, n);
  EXPECT_TRUE(torch::allclose(teacher.model()->backbone->parameters()[0], dn * t0 + (1 - dn) * s, 1e-5, 1e-6));
  EXPECT_TRUE(torch::equal(teacher.model()->head("source")->weight, head0));
  for (const auto& b : teacher.model()->backbone->named_buffers()) {
    if (b.key().find("running_var") != std::string::npos) {
      EXPECT_FALSE(torch::all(b.value() == 3).item<bool>());
    }
  }
}

TEST(Teacher, SavesAndLoadsItsWeights) {
  torch::manual_seed(2);
  Model student = tiny_model();
  Teacher a(student), b(student);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : student->parameters()) p.mul_(0.5);
  }
  a.ema_update(student, 0.5);
  Archive out;
  a.save(out, "teacher");
  const Archive in = Archive::decode(out.encode(), "teacher state");
  b.load(in, "teacher");
  EXPECT_TRUE(torch::equal(a.model()->backbone->parameters()[0], b.model()->backbone->parameters()[0]));
  test::expect_bad_input([&] { b.load(in, "missing"); }, {"no 'missing' teacher"});
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
