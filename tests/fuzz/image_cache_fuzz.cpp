// libFuzzer target: image caches (cache=FILE of an image folder spec). The input is the file; every entry
// the reader accepts is read in full, as ImageFiles::load copies it, so ASan sees a pixel outside the file.
#include <unistd.h>

#include <fstream>

#include "fuzz_support.h"
#include "xfer/data/image_folder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/xfer_image_cache_fuzz_" + std::to_string(::getpid()) + ".cache";
  return xfer::fuzz::expect_clean_errors(data, size, [](const std::string& bytes) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out << bytes;
    }
    const auto cache = xfer::ImageCache::open(path);
    if (!cache) return;
    uint64_t sum = 0;
    for (const auto& p : cache->paths()) {
      const xfer::ImageCache::Entry* e = cache->find(p);
      if (!e || !e->rgb) continue;
      for (int64_t i = 0; i < e->height * e->width * 3; ++i) sum += e->rgb[i];
    }
    (void)sum;
  });
}
