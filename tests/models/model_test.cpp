#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/models/model.h"

namespace xfer {
namespace {

Arch small_arch(const std::string& backbone) {
  Arch a;
  a.backbone = backbone;
  a.in_channels = 1;
  a.height = a.width = 28;
  a.input = {{0.3}, {0.3}};
  a.heads = {{"target", {"a", "b", "c"}}};
  return a;
}

std::vector<std::vector<int64_t>> map_shapes(const Features& f) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& [name, t] : f.maps) out.push_back(t.sizes().vec());
  return out;
}

TEST(Backbone, Cnn4Shapes) {
  Backbone b = make_backbone("cnn4", 1);
  EXPECT_EQ(b->spec(), "cnn4:width=16");
  EXPECT_EQ(b->feature_dim(), 64);
  EXPECT_EQ(b->stage_names(), (std::vector<std::string>{"layer1", "layer2", "layer3", "layer4"}));
  const Features f = b->forward_features(torch::randn({2, 1, 28, 28}));
  EXPECT_EQ(f.pooled.sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(map_shapes(f), (std::vector<std::vector<int64_t>>{
                               {2, 16, 14, 14}, {2, 32, 7, 7}, {2, 64, 7, 7}, {2, 64, 7, 7}}));
  EXPECT_TRUE(torch::allclose(f.pooled, f.map("layer4").mean({2, 3})));
}

TEST(Backbone, ResNetShapesAndTorchvisionNames) {
  Backbone r20 = make_backbone("resnet20", 3);
  const Features f = r20->forward_features(torch::randn({2, 3, 32, 32}));
  EXPECT_EQ(f.pooled.sizes(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(map_shapes(f),
            (std::vector<std::vector<int64_t>>{{2, 16, 32, 32}, {2, 32, 16, 16}, {2, 64, 8, 8}}));

  Backbone r18 = make_backbone("resnet18:width=8", 3);
  EXPECT_EQ(r18->spec(), "resnet18:width=8:stem=imagenet");
  EXPECT_EQ(r18->feature_dim(), 64);
  const auto params = r18->named_parameters();
  for (const char* name : {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                           "layer2.0.downsample.0.weight", "layer4.1.conv2.weight"})
    EXPECT_TRUE(params.contains(name)) << name;
  EXPECT_TRUE(r18->named_buffers().contains("layer3.0.downsample.1.running_mean"));
  EXPECT_EQ(r18->forward(torch::randn({1, 3, 64, 64})).sizes(), (std::vector<int64_t>{1, 64}));
  // The CIFAR stem keeps small images large enough for four stages.
  const Features c =
      make_backbone("resnet18:width=8:stem=cifar", 1)->forward_features(torch::randn({1, 1, 28, 28}));
  EXPECT_EQ(c.map("layer4").sizes(), (std::vector<int64_t>{1, 64, 4, 4}));
}

TEST(Backbone, StageHookCanReplaceAStageOutput) {
  Backbone b = make_backbone("cnn4:width=4", 1);
  std::vector<std::string> seen;
  const Features f =
      b->forward_features(torch::randn({3, 1, 28, 28}), [&](const std::string& s, const torch::Tensor& x) {
        seen.push_back(s);
        return s == "layer3" ? torch::zeros_like(x) : x;
      });
  EXPECT_EQ(seen, b->stage_names());
  EXPECT_EQ(f.map("layer3").abs().sum().item<double>(), 0.0);
  test::expect_bad_input([&] { f.map("layer9"); }, {"no stage 'layer9'", "layer1, layer2, layer3, layer4"});
}

TEST(Backbone, BadSpecsAreRejected) {
  test::expect_bad_input([] { make_backbone("vgg16", 1); }, {"unknown backbone 'vgg16'", "cnn4", "resnet18"});
  test::expect_bad_input([] { make_backbone("cnn4:width=0", 1); },
                         {"width must be an integer in [1, 4096], got '0'"});
  test::expect_bad_input([] { make_backbone("cnn4:depth=3", 1); }, {"unknown option 'depth'"});
  test::expect_bad_input([] { make_backbone("resnet18:stem=big", 1); }, {"stem must be imagenet or cifar"});
}

TEST(Model, HeadsShapesAndArchRoundTrip) {
  Model m(small_arch("cnn4:width=8"));
  EXPECT_EQ(m->forward(torch::randn({4, 1, 28, 28})).sizes(), (std::vector<int64_t>{4, 3}));
  m->add_head({"source", {"x", "y", "z", "w", "v"}});
  EXPECT_EQ(m->forward(torch::randn({4, 1, 28, 28}), "source").sizes(), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(m->head_parameters().size(), 4u);
  m->remove_head("source");
  EXPECT_EQ(m->head_parameters().size(), 2u);
  EXPECT_FALSE(m->has_head("source"));
  test::expect_bad_input([&] { m->head("source"); }, {"no 'source' head", "target"});
  const Arch back = Arch::from_json(m->arch().to_json());
  EXPECT_EQ(back.backbone, "cnn4:width=8");
  EXPECT_EQ(back.heads.size(), 1u);
  EXPECT_EQ(back.input.mean, std::vector<double>{0.3});
  EXPECT_TRUE(m->arch().mismatch(back, true).empty());
}

TEST(Model, MismatchesSayWhatDiffers) {
  const Arch a = small_arch("cnn4:width=16");
  Arch b = a;
  b.backbone = "resnet20:width=16";
  EXPECT_EQ(a.mismatch(b, false),
            "the checkpoint's backbone is resnet20:width=16, this run uses cnn4:width=16");
  b = a;
  b.in_channels = 3;
  EXPECT_NE(a.mismatch(b, false).find("3-channel"), std::string::npos);
  b = a;
  b.heads[0].class_names.push_back("d");
  EXPECT_TRUE(a.mismatch(b, false).empty());
  EXPECT_NE(a.mismatch(b, true).find("has 4 classes, this run needs 3"), std::string::npos);
}

TEST(Model, CloneIsDeepAndEqual) {
  Model m(small_arch("cnn4:width=4"));
  m->eval();
  Model c = clone_model(m);
  const auto cp = c->named_parameters(), cb = c->named_buffers();
  for (const auto& p : m->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), cp[p.key()])) << p.key();
  for (const auto& b : m->named_buffers()) EXPECT_TRUE(torch::equal(b.value(), cb[b.key()])) << b.key();
  const torch::Tensor x = torch::randn({2, 1, 28, 28});
  EXPECT_TRUE(torch::equal(m->forward(x), c->forward(x)));
  {
    torch::NoGradGuard g;
    c->head("target")->weight.add_(1.0);
  }
  EXPECT_FALSE(torch::equal(m->forward(x), c->forward(x)));
}

TEST(Model, CopyStateListsMismatches) {
  Model a(small_arch("cnn4:width=4")), b(small_arch("cnn4:width=8"));
  test::expect_bad_input([&] { copy_state(*a, *b); },
                         {"weights do not match the model", "has shape", "more"});
  Model c(small_arch("cnn4:width=4"));
  {
    torch::NoGradGuard no_grad;  // statistics of its own, so that copying them shows
    for (auto& buf : a->buffers())
      if (buf.is_floating_point()) buf.add_(0.5);
  }
  copy_state(*a, *c, "backbone.");
  // Every backbone parameter and buffer copied; the heads left alone.
  const auto cp = c->named_parameters(), cb = c->named_buffers();
  for (const auto& p : a->named_parameters())
    EXPECT_EQ(torch::equal(p.value(), cp[p.key()]), p.key().rfind("backbone.", 0) == 0) << p.key();
  for (const auto& b : a->named_buffers()) EXPECT_TRUE(torch::equal(b.value(), cb[b.key()])) << b.key();
}

}  // namespace
}  // namespace xfer
