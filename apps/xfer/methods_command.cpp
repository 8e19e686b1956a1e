/// `xfer methods`: the registered methods, one line each.
#include <CLI/CLI.hpp>

#include "xfer/cli.h"
#include "xfer/core/fields.h"
#include "xfer/methods/registry.h"

namespace xfer::cli {
namespace {

class MethodsCommand : public Command {
 public:
  void add(CLI::App& parent, const std::vector<std::string>&) override {
    app = parent.add_subcommand("methods", "List the registered methods, one line each");
    app->add_flag("--options", options_, "also list each method's options with their defaults");
  }

  void run(std::ostream& out) override {
    size_t width = 0;
    for (const auto& m : methods().all()) width = std::max(width, m.name.size());
    for (const auto& m : methods().all()) {
      std::string needs;
      if (m.needs_init) needs += " [needs --init]";
      if (m.needs_source) needs += " [needs --source]";
      if (!m.finetunes) needs += " [xfer pretrain]";
      out << m.name << std::string(width + 2 - m.name.size(), ' ') << m.summary << needs
          << (m.paper.empty() ? "" : " (" + m.paper + ")") << "\n";
      if (!options_) continue;
      auto config = m.make_config();
      Fields f;
      config->fields(f);
      for (const auto& field : f.all())
        out << std::string(width + 4, ' ') << field.flag() << " " << field.value_text() << "  " << field.help
            << "\n";
    }
  }

 private:
  bool options_ = false;
};

}  // namespace

std::unique_ptr<Command> make_methods_command() {
  return std::make_unique<MethodsCommand>();
}

}  // namespace xfer::cli
