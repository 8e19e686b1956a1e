#include <iostream>

#include "xfer/cli.h"
#include "xfer/core/runtime.h"

int main(int argc, char** argv) {
  xfer::install_stop_handlers();
  return xfer::cli::run(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}
