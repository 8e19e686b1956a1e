#include "xfer/core/archive.h"

#include <torch/torch.h>

#include "support.h"

namespace xfer {
namespace {

Archive sample_archive() {
  Archive inner;
  inner.write("counts", torch::tensor({3, 1, 4}, torch::kInt64));
  inner.write_text("note", "inner");
  Archive a;
  a.write("weights", torch::randn({2, 3, 4}, torch::kFloat64));
  a.write("half", torch::randn({5}).to(torch::kFloat16));
  a.write("mask", torch::tensor({true, false, true}));
  a.write("bytes", torch::arange(7, torch::kUInt8));
  a.write("scalar", torch::tensor(2.5f));
  a.write("empty", torch::empty({0, 3}));
  a.write("strided", torch::arange(12, torch::kInt32).reshape({3, 4}).t());  // stored contiguous
  a.write_text("meta", "{\"step\": 3}");
  a.write("inner", inner);
  a.write("none", Archive());
  return a;
}

TEST(Archive, RoundTripKeepsEveryDtypeShapeAndNestedSection) {
  const Archive a = sample_archive();
  const Archive b = Archive::decode(a.encode(), "sample");
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (const auto& [key, t] : a.tensors()) {
    const torch::Tensor u = b.read(key);
    EXPECT_EQ(t.scalar_type(), u.scalar_type()) << key;
    EXPECT_EQ(t.sizes(), u.sizes()) << key;
    EXPECT_TRUE(torch::equal(t, u)) << key;
  }
  EXPECT_EQ(a.texts(), b.texts());
  EXPECT_EQ(b.keys(), (std::vector<std::string>{"bytes", "empty", "half", "inner", "mask", "meta", "none",
                                                "scalar", "strided", "weights"}));
  const Archive inner = b.nested("inner");
  EXPECT_TRUE(torch::equal(inner.read("counts"), torch::tensor({3, 1, 4}, torch::kInt64)));
  EXPECT_EQ(inner.read_text("note"), "inner");
  EXPECT_TRUE(b.nested("none").tensors().empty());  // an empty section survives
  EXPECT_TRUE(torch::equal(b.read("strided"), torch::arange(12, torch::kInt32).reshape({3, 4}).t()));
  test::expect_bad_input([&] { b.read("missing"); }, {"no tensor 'missing'"});
  test::expect_bad_input([&] { b.nested("weights"); }, {"no section 'weights'"});
}

TEST(Archive, EveryTruncationAndMalformedFieldIsABadInput) {
  const std::string bytes = sample_archive().encode();
  for (size_t n = 0; n < bytes.size(); ++n)
    test::expect_bad_input([&] { Archive::decode(bytes.substr(0, n), "cut.bin"); }, {"cut.bin"});
  test::expect_bad_input([&] { Archive::decode(bytes + "x", "long.bin"); },
                         {"1 bytes after the last record"});

  // Hand-made records: magic, version 1, one tensor record "t".
  auto record = [](uint8_t dtype, uint8_t rank, std::vector<int64_t> sizes, const std::string& data) {
    std::string s = "XARC";
    s.append("\x01\x00\x00\x00", 4);
    s.append("\x01\x00\x00\x00\x00\x00\x00\x00", 8);
    s.append("\x00\x01\x00\x00\x00t", 6);
    s.push_back(static_cast<char>(dtype));
    s.push_back(static_cast<char>(rank));
    for (int64_t v : sizes) s.append(reinterpret_cast<const char*>(&v), 8);
    return s + data;
  };
  const uint8_t kFloat = static_cast<uint8_t>(torch::kFloat32), kBool = static_cast<uint8_t>(torch::kBool);
  EXPECT_TRUE(torch::equal(Archive::decode(record(kFloat, 1, {1}, std::string(4, '\0')), "ok").read("t"),
                           torch::zeros({1})));
  test::expect_bad_input([&] { Archive::decode(record(77, 1, {1}, "abcd"), "f"); }, {"dtype code 77"});
  test::expect_bad_input([&] { Archive::decode(record(kFloat, 40, {}, ""), "f"); }, {"rank 40"});
  test::expect_bad_input([&] { Archive::decode(record(kFloat, 1, {-1}, ""), "f"); }, {"size -1"});
  // Sizes whose product overflows 64 bits, and a size larger than the bytes that follow.
  test::expect_bad_input(
      [&] {
        Archive::decode(record(kFloat, 2, {1LL << 40, 1LL << 40}, "abcd"), "f");
      },
      {"size 1099511627776"});
  test::expect_bad_input([&] { Archive::decode(record(kFloat, 1, {2}, "abcd"), "f"); }, {"size 2"});
  test::expect_bad_input([&] { Archive::decode(record(kBool, 1, {1}, "\x02"), "f"); }, {"neither 0 nor 1"});
  std::string huge_count = record(kFloat, 1, {1}, std::string(4, '\0'));
  huge_count[8] = '\x7f';
  test::expect_bad_input([&] { Archive::decode(huge_count, "f"); }, {"corrupt archive", "records in"});
  std::string other_version = record(kFloat, 1, {1}, std::string(4, '\0'));
  other_version[4] = 9;
  test::expect_bad_input([&] { Archive::decode(other_version, "f"); }, {"archive version 9"});
}

TEST(Archive, ModulesLoadOnlyWhenEveryNameAndShapeMatches) {
  torch::nn::Sequential a(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2));
  torch::nn::Sequential b(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2));
  {
    torch::NoGradGuard no_grad;
    a->named_buffers()["1.running_mean"].fill_(0.5);
  }
  Archive saved;
  saved.write_module(*a);
  const Archive back = Archive::decode(saved.encode(), "module");
  back.read_module(*b, "the stored model");
  for (const auto& p : a->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()]));
  for (const auto& p : a->named_buffers())
    EXPECT_TRUE(torch::equal(p.value(), b->named_buffers()[p.key()])) << p.key();
  EXPECT_TRUE(torch::equal(b->named_buffers()["1.running_mean"], torch::full({2}, 0.5)));

  torch::nn::Sequential wider(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4));
  test::expect_bad_input([&] { back.read_module(*wider, "the stored model"); },
                         {"the stored model", "'0.bias' is [2], the model's is [4]"});
  torch::nn::Sequential shorter(torch::nn::Linear(3, 2));
  test::expect_bad_input([&] { back.read_module(*shorter, "the stored model"); },
                         {"has '1.", "the model does not"});
  torch::nn::Sequential longer(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2), torch::nn::Linear(2, 2));
  test::expect_bad_input([&] { back.read_module(*longer, "the stored model"); }, {"has no '2.bias'"});
}

}  // namespace
}  // namespace xfer
