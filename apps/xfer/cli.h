#pragma once
/// The xfer command line. Each subcommand is a class that registers its options and runs by calling
/// the library, so tests can drive the whole CLI in-process (as mlpack's bindings do).
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace xfer {
class Fields;
class MethodConfig;
struct RunOptions;
}  // namespace xfer

namespace xfer::cli {

/// Runs `xfer ARGS...` (args exclude the program name). Returns the exit code: 0 success, 2 bad input
/// (one clear line on `err`), 1 any other failure.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

class Command {
 public:
  virtual ~Command() = default;
  /// Registers the subcommand on `app`. `args` are the raw arguments, for commands whose options
  /// depend on other options (finetune adds the options of its --method).
  virtual void add(CLI::App& app, const std::vector<std::string>& args) = 0;
  virtual void run(std::ostream& out) = 0;
  CLI::App* app = nullptr;
};

std::unique_ptr<Command> make_pretrain_command();
std::unique_ptr<Command> make_finetune_command();
std::unique_ptr<Command> make_eval_command();
std::unique_ptr<Command> make_export_command();
std::unique_ptr<Command> make_analyze_command();
std::unique_ptr<Command> make_methods_command();
std::unique_ptr<Command> make_data_command();
std::unique_ptr<Command> make_demo_command();
std::unique_ptr<Command> make_select_command();
std::unique_ptr<Command> make_gradmix_pseudo_command();
std::unique_ptr<Command> make_gradmix_weights_command();
std::unique_ptr<Command> make_search_command();
std::unique_ptr<Command> make_bench_command();
std::unique_ptr<Command> make_worker_command();
std::unique_ptr<Command> make_report_command();
std::unique_ptr<Command> make_weights_command();
std::unique_ptr<Command> make_rank_command();
std::unique_ptr<Command> make_launch_command();

/// Registers every field as a flag: --name VALUE, and --name / --no-name for booleans. Fields whose
/// names are in `skip` are left out.
void add_fields(CLI::App& app, Fields& fields, const std::vector<std::string>& skip = {});
/// Reads `--method` and `--config FILE` from the raw arguments before the real parse, for subcommand
/// `command` (nothing when another subcommand was chosen): the method decides which method options
/// exist, and the file sets defaults. A --method flag wins over the file's method; the file's method
/// options apply only to its own method. With `with_method`, sets opts.method and returns the method's
/// options (with the file's values); otherwise returns nullptr.
std::unique_ptr<MethodConfig> read_method_and_config(const std::string& command,
                                                     const std::vector<std::string>& args, RunOptions& opts,
                                                     bool with_method);
/// Registers --NAME (snake_case name) as an integer or a number in [lo, hi] (a float: (lo, hi]) parsed
/// strictly, as the fields' flags are: base 10, the whole text, no silent overflow. BadInput names the flag.
CLI::Option* add_number(CLI::App& app, const std::string& name, int64_t& target, const std::string& help,
                        double lo, double hi);
CLI::Option* add_number(CLI::App& app, const std::string& name, double& target, const std::string& help,
                        double lo, double hi);
/// The subcommand named in raw arguments (the first argument that is not a flag), or "".
std::string subcommand_of(const std::vector<std::string>& args);
/// The value of `--flag VALUE` or `--flag=VALUE` in raw arguments, or "" if absent.
std::string find_flag(const std::vector<std::string>& args, const std::string& flag);

}  // namespace xfer::cli
