// The baselines' loss terms against Debian's python3-torch (tests/golden/make_baselines_golden.py), rtol
// 1e-5.
#include <nlohmann/json.hpp>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/methods/delta.h"
#include "xfer/methods/mixup.h"
#include "xfer/methods/regularization.h"

namespace xfer {
namespace {

const nlohmann::json& baselines_golden() {
  static const nlohmann::json g =
      read_json_file(std::string(XFER_SOURCE_DIR) + "/tests/golden/baselines.json");
  return g;
}

torch::Tensor baselines_golden_tensor(const nlohmann::json& values, std::vector<int64_t> shape) {
  return torch::tensor(values.get<std::vector<double>>(), torch::kFloat64).view(shape);
}

torch::Tensor baselines_golden_labels(const nlohmann::json& values) {
  return torch::tensor(values.get<std::vector<int64_t>>(), torch::kInt64);
}

void baselines_expect_close(const torch::Tensor& got, const nlohmann::json& expected,
                            const std::string& what) {
  const auto want =
      expected.is_array() ? expected.get<std::vector<double>>() : std::vector<double>{expected.get<double>()};
  const torch::Tensor g = got.detach().to(torch::kFloat64).flatten();
  ASSERT_EQ(g.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(g[static_cast<int64_t>(i)].item<double>(), want[i], 1e-5 * std::abs(want[i]) + 1e-12)
        << what << " [" << i << "]";
}

TEST(BaselinesGolden, L2SPMatchesTheAuthorsCode) {
  const auto& g = baselines_golden()["l2sp"];
  std::vector<torch::Tensor> p, p0;
  for (size_t i = 0; i < g["shapes"].size(); ++i) {
    const auto shape = g["shapes"][i].get<std::vector<int64_t>>();
    p.push_back(baselines_golden_tensor(g["params"][i], shape));
    p0.push_back(baselines_golden_tensor(g["params0"][i], shape));
  }
  baselines_expect_close(l2sp_penalty(p, p0, g["alpha"].get<double>()), g["penalty"], "l2sp");
}

TEST(BaselinesGolden, BssMatchesTllibAndItsGradient) {
  const auto& g = baselines_golden()["bss"];
  const auto shape = g["shape"].get<std::vector<int64_t>>();
  for (size_t i = 0; i < g["k"].size(); ++i) {
    const torch::Tensor f = baselines_golden_tensor(g["features"], shape).requires_grad_();
    const torch::Tensor value = bss_penalty(f, g["k"][i].get<int64_t>());
    value.backward();
    baselines_expect_close(value, g["penalty"][i], "bss k=" + g["k"][i].dump());
    baselines_expect_close(f.grad(), g["grad"][i], "bss gradient k=" + g["k"][i].dump());
  }
}

TEST(BaselinesGolden, DeltaAttentionAndPenaltyMatchTheAuthorsCode) {
  const auto& g = baselines_golden()["delta"];
  std::vector<torch::Tensor> maps, maps0, attention, uniform;
  for (size_t l = 0; l < g["shapes"].size(); ++l) {
    const auto shape = g["shapes"][l].get<std::vector<int64_t>>();
    maps.push_back(baselines_golden_tensor(g["maps"][l], shape));
    maps0.push_back(baselines_golden_tensor(g["maps0"][l], shape));
    const torch::Tensor rises = baselines_golden_tensor(g["rises"][l], {shape[1]});
    attention.push_back(delta_attention_weights(rises, g["temperature"].get<double>()).to(torch::kFloat64));
    baselines_expect_close(attention.back(), g["attention"][l],
                           "delta attention of layer " + std::to_string(l));
    uniform.push_back(torch::full({shape[1]}, 1.0 / static_cast<double>(shape[1]), torch::kFloat64));
  }
  baselines_expect_close(delta_penalty(maps, maps0, attention), g["penalty"], "delta penalty");
  baselines_expect_close(delta_penalty(maps, maps0, uniform), g["penalty_uniform"],
                         "delta penalty without attention");
}

TEST(BaselinesGolden, CoTuningRelationshipAndLossMatchTllib) {
  const auto& g = baselines_golden()["cotuning"];
  const int64_t ks = g["num_source"].get<int64_t>(), kt = g["num_target"].get<int64_t>();
  const torch::Tensor labels = baselines_golden_labels(g["labels"]);
  const int64_t n = labels.size(0);
  const torch::Tensor probs = torch::softmax(baselines_golden_tensor(g["source_logits"], {n, ks}), 1);
  const torch::Tensor rel = cotuning_relationship(probs, labels, kt);
  baselines_expect_close(rel, g["relationship"], "cotuning relationship");
  baselines_expect_close(cotuning_penalty(baselines_golden_tensor(g["head_logits"], {n, ks}), labels, rel),
                         g["penalty"], "cotuning penalty");
}

TEST(BaselinesGolden, MixupMatchesSmilesCode) {
  const auto& g = baselines_golden()["mixup"];
  const auto shape = g["x_shape"].get<std::vector<int64_t>>();
  MixupDraw d;
  d.lambda = g["lambda"].get<double>();
  d.perm = baselines_golden_labels(g["perm"]);
  const torch::Tensor y = baselines_golden_labels(g["labels"]);
  baselines_expect_close(mix_with_partners(baselines_golden_tensor(g["x"], shape), d), g["mixed_x"],
                         "mixed images");
  baselines_expect_close(mixup_loss(baselines_golden_tensor(g["logits"], {y.size(0), 4}), y, d), g["loss"],
                         "mixup loss");
}

TEST(BaselinesGolden, CutMixBoxesImagesAndLossMatchTheReference) {
  const auto& g = baselines_golden()["cutmix"];
  const int64_t h = g["height"].get<int64_t>(), w = g["width"].get<int64_t>();
  const torch::Tensor images =
      baselines_golden_tensor(g["images"], g["images_shape"].get<std::vector<int64_t>>());
  const torch::Tensor y = baselines_golden_labels(g["labels"]);
  const torch::Tensor logits = baselines_golden_tensor(g["logits"], {y.size(0), 3});
  for (const auto& c : g["boxes"]) {
    const CutMixBox box =
        cutmix_box(h, w, c["lambda"].get<double>(), c["cy"].get<int64_t>(), c["cx"].get<int64_t>());
    const auto want = c["box"].get<std::vector<int64_t>>();
    EXPECT_EQ((std::vector<int64_t>{box.y1, box.y2, box.x1, box.x2}), want) << c.dump().substr(0, 60);
    MixupDraw d;
    d.perm = baselines_golden_labels(g["perm"]);
    d.lambda = cutmix_lambda(box, h, w);
    EXPECT_NEAR(d.lambda, c["corrected_lambda"].get<double>(), 1e-12);
    baselines_expect_close(cutmix_images(images, d.perm, box), c["mixed"], "cutmix images");
    baselines_expect_close(mixup_loss(logits, y, d), c["loss"], "cutmix loss");
  }
}

}  // namespace
}  // namespace xfer
