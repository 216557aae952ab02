#include <cstdio>

#include "command.h"

namespace fireq::cli {
namespace {

int run_version(int argc, char** argv) {
  Args args("version", "", {});
  if (!args.parse(argc, argv)) return 0;
  std::printf("fireq 0.1.0\n");
  return 0;
}

const Register kVersion({"version", "print the version", run_version});

}  // namespace
}  // namespace fireq::cli
