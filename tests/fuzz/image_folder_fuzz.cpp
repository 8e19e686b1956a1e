// libFuzzer target: walking an image folder (folder:dir=ROOT) whose tree an attacker laid out, links
// included. The input is a small program, two bytes an instruction: make a class folder, a subfolder, an
// image file, or a link (to ".", "..", a sibling, another class, the root, outside the root) at a path drawn
// from a few names. Then scan_image_folder must end (no link loop), with a BadInput or with files that all
// lie inside their own class folder: anything else aborts.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fuzz_support.h"
#include "xfer/data/image_folder.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fs::path root = fs::path("/tmp") / ("xfer_image_folder_fuzz_" + std::to_string(::getpid()));
  return xfer::fuzz::expect_clean_errors(data, size, [&](const std::string& bytes) {
    std::error_code ec;
    fs::remove_all(root, ec);
    fs::create_directories(root / "root", ec);
    fs::create_directories(root / "outside", ec);
    std::ofstream(root / "outside" / "x.png") << "png";
    const fs::path top = root / "root";
    static const char* names[] = {"a", "b", "c", "d"};
    static const char* targets[] = {".", "..", "../..", "b", "../b", "../../outside", "sub", "x.png"};
    for (size_t i = 0; i + 1 < bytes.size() && i < 64; i += 2) {
      const uint8_t op = static_cast<uint8_t>(bytes[i]), arg = static_cast<uint8_t>(bytes[i + 1]);
      const fs::path cls = top / names[arg & 3];
      const fs::path at = (op & 4) ? cls / "sub" : cls;
      switch (op & 3) {
        case 0:
          fs::create_directories(at, ec);
          break;
        case 1:
          fs::create_directories(at, ec);
          std::ofstream(at / (std::string(names[(arg >> 2) & 3]) + ".png")) << "png";
          break;
        case 2:
          fs::create_directories(at, ec);
          fs::create_directory_symlink(targets[(arg >> 2) & 7],
                                       at / ("l" + std::string(names[(arg >> 5) & 3])), ec);
          break;
        case 3:
          fs::create_directory_symlink(targets[(arg >> 2) & 7], top / ("L" + std::to_string(arg >> 5)), ec);
          break;
      }
    }
    const xfer::FolderScan scan = xfer::scan_image_folder(top.string());
    for (size_t i = 0; i < scan.files.size(); ++i) {
      const fs::path home = fs::canonical(top / scan.class_names[static_cast<size_t>(scan.labels[i])]);
      const fs::path file = fs::canonical(top / scan.files[i]);
      auto h = home.begin(), f = file.begin();
      for (; h != home.end(); ++h, ++f)
        if (f == file.end() || *f != *h) {
          std::fprintf(stderr, "%s escapes its class folder %s\n", file.c_str(), home.c_str());
          std::abort();
        }
    }
  });
}
