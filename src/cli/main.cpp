// fireq: command-line entry point. Dispatches to the registered subcommands and turns every
// fireq::Error (and any other exception) into a one-line message and a non-zero exit.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>

#include "command.h"
#include "fireq/error.h"

namespace fireq::cli {

std::map<std::string, Command>& registry() {
  static std::map<std::string, Command> commands;
  return commands;
}

Args::Args(std::string command, std::string usage, std::vector<Flag> flags)
    : command_(std::move(command)), usage_(std::move(usage)), flags_(std::move(flags)) {}

const Args::Flag* Args::find(const std::string& name) const {
  for (const Flag& f : flags_)
    if (f.name == name) return &f;
  return nullptr;
}

bool Args::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_help();
      return false;
    }
    if (arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Flag* flag = find(name);
    if (!flag) fail("unknown flag --", name, " (see fireq ", command_, " --help)");
    if (flag->is_switch) {
      if (inline_value) fail("--", name, " takes no value");
      value = "1";
    } else if (!inline_value) {
      if (i + 1 >= argc) fail("--", name, " needs a value");
      value = argv[++i];
    }
    values_[name] = value;
  }
  return true;
}

std::optional<std::string> Args::get(const std::string& name) const {
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  const Flag* flag = find(name);
  if (flag && !flag->default_value.empty()) return flag->default_value;
  return std::nullopt;
}

std::string Args::str(const std::string& name) const {
  auto v = get(name);
  if (!v) fail("--", name, " is required");
  return *v;
}

long long Args::integer(const std::string& name) const {
  const std::string v = str(name);
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end) fail("--", name, " expects an integer, got '", v, "'");
  return x;
}

double Args::number(const std::string& name) const {
  const std::string v = str(name);
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end) fail("--", name, " expects a number, got '", v, "'");
  return x;
}

bool Args::on(const std::string& name) const { return values_.count(name) > 0; }

void Args::print_help() const {
  std::printf("usage: fireq %s %s\n", command_.c_str(), usage_.c_str());
  for (const Flag& f : flags_) {
    std::string left = "--" + f.name + (f.is_switch ? "" : " V");
    std::printf("  %-24s %s%s\n", left.c_str(), f.help.c_str(),
                f.default_value.empty() ? "" : (" [" + f.default_value + "]").c_str());
  }
}

}  // namespace fireq::cli

namespace {

void print_usage() {
  std::printf("fireq: INT4/FP8 post-training quantization and inference for Llama models\n\n"
              "usage: fireq <command> [options]   (fireq <command> --help for its options)\n\n");
  for (const auto& [name, command] : fireq::cli::registry())
    std::printf("  %-10s %s\n", name.c_str(), command.summary.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  auto& commands = fireq::cli::registry();
  const auto it = commands.find(argv[1]);
  if (it == commands.end()) {
    std::fprintf(stderr, "fireq: unknown command '%s' (see fireq --help)\n", argv[1]);
    return 2;
  }
  try {
    return it->second.run(argc - 1, argv + 1);
  } catch (const fireq::Error& e) {
    std::fprintf(stderr, "fireq %s: error: %s\n", argv[1], e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fireq %s: internal error: %s\n", argv[1], e.what());
  }
  return 1;
}
