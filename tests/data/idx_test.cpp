#include <zlib.h>

#include "support.h"
#include "xfer/core/io.h"
#include "xfer/data/idx.h"

namespace xfer {
namespace {

std::string gzip(const std::string& raw) {
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, raw.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

TEST(Idx, ParsesBigEndianHeaderAndData) {
  // u8, 2 dims (2, 3), data 1..6: hand-written bytes.
  const std::string bytes = {0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6};
  const IdxArray a = parse_idx(bytes, "hand.idx");
  EXPECT_EQ(a.dims, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(torch::equal(a.data, torch::tensor({{1, 2, 3}, {4, 5, 6}}, torch::kUInt8)));
  // i32 big-endian 0x01020304 = 16909060 and -2.
  const std::string ints = {0, 0, 0x0C, 1, 0, 0, 0, 2, 1, 2, 3, 4, '\xff', '\xff', '\xff', '\xfe'};
  const IdxArray b = parse_idx(ints, "ints.idx");
  EXPECT_EQ(b.data[0].item<int32_t>(), 16909060);
  EXPECT_EQ(b.data[1].item<int32_t>(), -2);
}

TEST(Idx, EncodeRoundTripsEveryType) {
  for (auto dtype :
       {torch::kUInt8, torch::kInt8, torch::kInt16, torch::kInt32, torch::kFloat32, torch::kFloat64}) {
    const torch::Tensor t = (torch::arange(24, torch::kFloat64).view({2, 3, 4}) - 5).to(dtype);
    const IdxArray a = parse_idx(encode_idx(t), "x");
    EXPECT_TRUE(torch::equal(a.data, t)) << dtype;
  }
}

TEST(Idx, GzipIsDetectedAndInflated) {
  const torch::Tensor t = torch::randint(0, 255, {5, 7, 7}, torch::kUInt8);
  EXPECT_TRUE(torch::equal(parse_idx(gzip(encode_idx(t)), "x.gz").data, t));
}

TEST(Idx, MalformedFilesGiveClearErrors) {
  const std::string good = encode_idx(torch::ones({4, 3, 3}, torch::kUInt8));
  test::expect_bad_input([&] { parse_idx("", "f.idx"); }, {"f.idx", "not an IDX file"});
  test::expect_bad_input([&] { parse_idx(std::string("\x01\x00\x08\x01", 4) + good.substr(4), "f.idx"); },
                         {"f.idx", "bad magic"});
  test::expect_bad_input([&] { parse_idx(std::string("\x00\x00\x07\x03", 4) + good.substr(4), "f.idx"); },
                         {"f.idx", "unknown IDX type code 0x7"});
  test::expect_bad_input([&] { parse_idx(good.substr(0, 9), "f.idx"); }, {"f.idx", "truncated IDX header"});
  test::expect_bad_input([&] { parse_idx(good.substr(0, good.size() - 5), "f.idx"); },
                         {"f.idx", "truncated IDX data", "31 bytes of data, the header declares 36"});
  test::expect_bad_input([&] { parse_idx(good + "xx", "f.idx"); }, {"f.idx", "2 trailing bytes"});
  test::expect_bad_input([&] { parse_idx(std::string("\x00\x00\x08\x00", 4), "f.idx"); }, {"0 dimensions"});
}

TEST(Idx, AnEmptyArrayParses) {
  // Found by tests/fuzz/idx_fuzz: a zero dimension used to memcpy into a null data pointer.
  const std::string bytes = {0, 0, 8, 2, 0, 0, 0, 0, 0, 0, 0, 3};
  const IdxArray a = parse_idx(bytes, "empty.idx");
  EXPECT_EQ(a.dims, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(a.data.numel(), 0);
}

TEST(Idx, CorruptOrTruncatedGzipIsReported) {
  const std::string gz = gzip(encode_idx(torch::randint(0, 255, {20, 8, 8}, torch::kUInt8)));
  test::expect_bad_input([&] { parse_idx(gz.substr(0, gz.size() / 2), "f.gz"); }, {"f.gz", "truncated gzip"});
  std::string corrupt = gz;
  corrupt[corrupt.size() - 6] ^= 0x55;  // inside the CRC-32 trailer
  test::expect_bad_input([&] { parse_idx(corrupt, "f.gz"); }, {"f.gz", "corrupt gzip"});
}

TEST(Idx, ReadsDebianFashionMnist) {
  XFER_REQUIRE_FMNIST();
  const IdxArray labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
  EXPECT_EQ(labels.dims, std::vector<int64_t>{10000});
  EXPECT_EQ(labels.data.max().item<int>(), 9);
  // Every class has exactly 1000 test images.
  EXPECT_TRUE(
      torch::equal(torch::bincount(labels.data.to(torch::kInt64)), torch::full({10}, 1000, torch::kInt64)));
}

}  // namespace
}  // namespace xfer
