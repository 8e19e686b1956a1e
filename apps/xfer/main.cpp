#include <iostream>

#include "xfer/cli.h"

int main(int argc, char** argv) {
  return xfer::cli::run(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}
