// Subcommands of the `fireq` CLI register themselves here; each lives in its own cmd_<name>.cpp.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fireq {
class Engine;
struct LlamaWeights;
}  // namespace fireq

namespace fireq::cli {

// The engine `--device` names: null for "cpu" (the caller's CPU engine), a CUDA engine over
// `weights` (BF16 path) for "cuda". Defined in cmd_bench.cpp, the CLI's CUDA code; fails for other
// names, for FireQ checkpoints (model_path; the CUDA engine has no FireQ path yet) and in builds
// without CUDA.
std::unique_ptr<Engine> device_engine(const std::string& device, const std::string& model_path,
                                      const LlamaWeights& weights, int max_context, int max_step_tokens);

// Parsed "--flag value" / "--switch" arguments plus positionals, validated against a declared set
// so that a misspelt flag is an error rather than silently ignored.
class Args {
 public:
  struct Flag {
    std::string name;          // without the leading dashes
    std::string help;
    std::string default_value; // empty: no default
    bool is_switch = false;    // takes no value
  };

  Args(std::string command, std::string usage, std::vector<Flag> flags);
  // Returns false when --help was asked for (help already printed). Throws fireq::Error on bad input.
  bool parse(int argc, char** argv);

  std::optional<std::string> get(const std::string& name) const;
  std::string str(const std::string& name) const;  // value or default; error if neither
  long long integer(const std::string& name) const;
  double number(const std::string& name) const;
  bool on(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }
  void print_help() const;

 private:
  const Flag* find(const std::string& name) const;
  std::string command_, usage_;
  std::vector<Flag> flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

struct Command {
  std::string name;
  std::string summary;
  std::function<int(int, char**)> run;  // argv[0] is the subcommand name
};

std::map<std::string, Command>& registry();

struct Register {
  explicit Register(Command c) { registry().emplace(c.name, std::move(c)); }
};

}  // namespace fireq::cli
