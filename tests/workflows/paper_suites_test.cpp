// The ResNet-50 suites of SMILE and XMixup on CUB, Aircraft and Cars: they need the data and a GPU to run,
// so here they are parsed (every method, option and spec checked, every run planned) and their settings
// compared with the papers'.
#include <algorithm>

#include "support.h"
#include "xfer/data/spec.h"
#include "xfer/workflows/suite.h"

namespace xfer {
namespace {

const SuiteMethod* find_method(const Suite& s, const std::string& label) {
  for (const auto& m : s.methods)
    if (m.label == label) return &m;
  return nullptr;
}

/// The papers' shared protocol (SMILE Sec. 4.1.2, XMixup Sec. 4.2): ResNet-50 from ImageNet on a GPU, SGD
/// momentum 0.9, batch 48, 9,000 iterations, lr 0.01 divided by 10 at step 6,000, five seeds.
void expect_paper_protocol(const Suite& s) {
  SCOPED_TRACE(s.name);
  EXPECT_EQ(s.run.at("init"), "state_dict:weights/resnet50.state_dict.pt");
  EXPECT_EQ(s.run.at("device"), "cuda");
  EXPECT_EQ(s.run.at("iterations"), 9000);
  EXPECT_EQ(s.run.at("batch_size"), 48);
  EXPECT_DOUBLE_EQ(s.run.at("lr").get<double>(), 0.01);
  EXPECT_DOUBLE_EQ(s.run.at("momentum").get<double>(), 0.9);
  EXPECT_DOUBLE_EQ(s.run.at("weight_decay").get<double>(), 1e-4);
  EXPECT_EQ(s.run.at("schedule"), "step");
  EXPECT_EQ(std::llround(s.run.at("milestone").get<double>() * 9000), 6000);
  EXPECT_DOUBLE_EQ(s.run.at("gamma").get<double>(), 0.1);
  EXPECT_EQ(s.seeds, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_TRUE(s.pretrain.is_null())
      << "the source model is the torchvision ResNet-50, not trained by the suite";
  for (const auto& t : s.tasks) {
    const DatasetSpec spec = DatasetSpec::parse(t.target);
    EXPECT_EQ(spec.image.crop, "random") << t.name << ": resize 256, random 224 crop";
    EXPECT_EQ(spec.image.size, 224);
    EXPECT_EQ(spec.image.resize, 256);
  }
}

TEST(PaperSuites, SmileOnCubAircraftAndCars) {
  const std::vector<std::tuple<std::string, std::string, int64_t, int64_t>> sets = {
      // source, classes of C:25%, images per class for N:400 and N:800
      {"cub", "0-49", 8, 16},
      {"aircraft", "0-24", 16, 32},
      {"cars", "0-48", 8, 16}};
  for (const auto& [source, classes, n400, n800] : sets) {
    const Suite s = load_suite("smile-" + source);
    expect_paper_protocol(s);
    EXPECT_EQ(s.run.at("nesterov"), true) << "the authors' code";
    std::map<std::string, DatasetSpec> tasks;
    for (const auto& t : s.tasks) tasks.emplace(t.name, DatasetSpec::parse(t.target));
    for (const auto& [name, spec] : tasks) EXPECT_EQ(spec.source, source) << name;
    EXPECT_EQ(tasks.at("C25%/N400").classes.size(), source == "cub" ? 50u : source == "cars" ? 49u : 25u);
    EXPECT_EQ(*tasks.at("C25%/N400").per_class, n400);
    EXPECT_EQ(*tasks.at("C25%/N800").per_class, n800);
    EXPECT_DOUBLE_EQ(*tasks.at("15%").fraction, 0.15);
    EXPECT_FALSE(tasks.at("100%").fraction || tasks.at("100%").per_class ||
                 !tasks.at("100%").classes.empty());
    for (const char* label :
         {"l2", "mixup", "manifold mixup", "cutmix", "l2sp", "delta", "bss", "rifle", "cotuning", "smile"})
      EXPECT_NE(find_method(s, label), nullptr) << source << ": Table 2 row " << label;
    EXPECT_DOUBLE_EQ(find_method(s, "mixup")->options.at("alpha").get<double>(), 0.2);
    // DELTA's code alpha 0.01 over xfer's 0.5 C, C = 2048 channels of layer4.
    EXPECT_DOUBLE_EQ(find_method(s, "delta")->options.at("alpha").get<double>() * 0.5 * 2048, 0.01);
  }
  // CUB adds Table 5's ablation at 30% and 100%.
  const Suite cub = load_suite("smile-cub");
  const SuiteMethod* wo_fe = find_method(cub, "smile w/o L_FE");
  ASSERT_NE(wo_fe, nullptr);
  EXPECT_EQ(wo_fe->options.at("fe"), false);
  EXPECT_EQ(wo_fe->tasks, (std::vector<std::string>{"30%", "100%"}));
  EXPECT_NE(find_method(cub, "smile w/o L_FC"), nullptr);
  for (const auto& t : cub.tasks) {
    if (t.name == "30%") {
      EXPECT_DOUBLE_EQ(*DatasetSpec::parse(t.target).fraction, 0.3);
    }
  }
}

TEST(PaperSuites, XMixupOnCubAircraftAndCars) {
  for (const std::string source : {"cub", "aircraft", "cars"}) {
    const Suite s = load_suite("xmixup-" + source);
    expect_paper_protocol(s);
    ASSERT_EQ(s.tasks.size(), 1u);
    EXPECT_EQ(DatasetSpec::parse(s.tasks[0].target).source, source);
    const DatasetSpec imagenet = DatasetSpec::parse(s.tasks[0].source);
    EXPECT_EQ(imagenet.source, "folder");
    EXPECT_EQ(imagenet.dir, "data/imagenet/train");
    for (const char* label : {"l2", "l2sp", "bss", "seqtrain", "cotrain", "xmixup"})
      EXPECT_NE(find_method(s, label), nullptr) << source << ": Table 1 column " << label;
    // "The value is 100,000 for Stanford Dogs and 200,000 for other datasets."
    for (const char* label : {"seqtrain", "cotrain", "xmixup"})
      EXPECT_EQ(find_method(s, label)->options.at("aux_size"), 200000) << label;
    EXPECT_DOUBLE_EQ(find_method(s, "xmixup")->options.at("beta").get<double>(), 1.0)
        << "the paper fixes beta = 1";
    const double alpha = find_method(s, "xmixup")->options.at("alpha").get<double>();
    EXPECT_TRUE(alpha >= 1 && alpha <= 64) << "the paper's range for targets unlike ImageNet";
  }
}

}  // namespace
}  // namespace xfer
