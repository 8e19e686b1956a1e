#include "xfer/cli.h"

#include <algorithm>
#include <filesystem>
#include <type_traits>

#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/io.h"
#include "xfer/core/runtime.h"
#include "xfer/core/text.h"
#include "xfer/core/version.h"
#include "xfer/methods/registry.h"
#include "xfer/workflows/run.h"

namespace xfer::cli {

namespace {
/// The short flags people type from timm's and PyTorch's examples: -b for the batch size, -j for the CPU
/// threads (timm's -j sets its loader workers; xfer decodes and computes in one process's threads).
std::string with_short_flag(const Fields::Field& f) {
  if (f.name == "batch_size") return "-b," + f.flag();
  if (f.name == "threads") return "-j," + f.flag();
  return f.flag();
}
}  // namespace

void add_fields(CLI::App& app, Fields& fields, const std::vector<std::string>& skip) {
  for (auto& f : fields.all()) {
    if (std::find(skip.begin(), skip.end(), f.name) != skip.end()) continue;
    std::string help = f.help;
    if (!f.choices.empty()) {
      std::string valid;
      for (const auto& c : f.choices) valid += (valid.empty() ? "" : "|") + c;
      help += " {" + valid + "}";
    }
    CLI::Option* opt = nullptr;
    std::visit(
        [&](const auto& p) {
          using T = std::remove_pointer_t<std::decay_t<decltype(p)>>;
          if constexpr (std::is_same_v<T, Fields::EnumRef>) {
            opt = app.add_option_function<std::string>(
                         with_short_flag(f),
                         [field = f](const std::string& text) { set_field_text(field, text); }, help)
                      ->default_str(f.value_text())
                      ->type_name("TEXT");
          } else if constexpr (std::is_same_v<T, bool>) {
            // --name turns it on, --no-name (not listed separately) turns it off.
            opt = app.add_flag_callback(
                f.flag(), [p] { *p = true; },
                help + (*p ? " (default: on; --no-" : " (default: off; --no-") + f.flag().substr(2) +
                    " turns it off)");
            app.add_flag_callback("--no-" + f.flag().substr(2), [p] { *p = false; })->group("");
          } else if constexpr (std::is_same_v<T, std::string>) {
            opt = app.add_option(with_short_flag(f), *p, help)->capture_default_str()->type_name("TEXT");
          } else {
            // Parsed by xfer, not CLI11: CLI11 clamps an out-of-range integer to the largest one silently and
            // reads "010" as octal.
            opt = app.add_option_function<std::string>(
                         with_short_flag(f),
                         [field = f](const std::string& text) { set_field_text(field, text); }, help)
                      ->default_str(f.value_text())
                      ->type_name(std::is_same_v<T, double> ? "FLOAT" : "INT");
          }
        },
        f.target);
    if (!f.group.empty()) opt->group(f.group);
  }
}

namespace {

/// A number flag parsed strictly by the field's rules (no silent clamp), within [lo, hi]; floats' lower
/// bound is open.
template <class T>
CLI::Option* add_number_flag(CLI::App& app, const std::string& name, T& target, const std::string& help,
                             double lo, double hi) {
  Fields::Field f;
  f.name = name;
  f.target = &target;
  f.min = lo;
  f.max = hi;
  f.min_open = std::is_floating_point_v<T>;
  return app
      .add_option_function<std::string>(
          f.flag(), [f](const std::string& text) { set_field_text(f, text); }, help)
      ->default_str(f.value_text())
      ->type_name(std::is_floating_point_v<T> ? "FLOAT" : "INT");
}

}  // namespace

CLI::Option* add_number(CLI::App& app, const std::string& name, int64_t& target, const std::string& help,
                        double lo, double hi) {
  return add_number_flag(app, name, target, help, lo, hi);
}

CLI::Option* add_number(CLI::App& app, const std::string& name, double& target, const std::string& help,
                        double lo, double hi) {
  return add_number_flag(app, name, target, help, lo, hi);
}

std::string find_flag(const std::vector<std::string>& args, const std::string& flag) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) return args[i + 1];
    if (args[i].rfind(flag + "=", 0) == 0) return args[i].substr(flag.size() + 1);
  }
  return "";
}

std::unique_ptr<MethodConfig> read_method_and_config(const std::string& command,
                                                     const std::vector<std::string>& args, RunOptions& opts,
                                                     bool with_method) {
  const bool chosen = subcommand_of(args) == command;
  std::string config = chosen ? find_flag(args, "--config") : "";
  // `--resume --out DIR` alone: everything else comes from the run's own config.json (flags still win).
  const bool resume = chosen && std::find(args.begin(), args.end(), "--resume") != args.end();
  const bool from_run =
      resume && config.empty() && !find_flag(args, "--out").empty() &&
      std::filesystem::exists(std::filesystem::path(find_flag(args, "--out")) / "config.json");
  if (from_run) config = (std::filesystem::path(find_flag(args, "--out")) / "config.json").string();
  nlohmann::json file = config.empty() ? nlohmann::json::object() : read_json_file(config);
  if (from_run) {
    XFER_CHECK(file.is_object() && file.value("command", command) == command, config,
               " is the configuration of an `xfer ",
               file.is_object() ? file.value("command", std::string("?")) : "?",
               "` run; resume it with that command");
    // What only one session of the run asked for.
    RunOptions defaults;
    Fields f;
    defaults.fields(f);
    for (const auto& key : f.names_of({Fields::Role::session})) file.erase(key);
  }
  const std::string flag_method = chosen ? find_flag(args, "--method") : "";
  const std::string file_method =
      file.contains("method") && file["method"].is_string() ? file["method"].get<std::string>() : "";
  std::unique_ptr<MethodConfig> method;
  if (with_method) {
    opts.method = !flag_method.empty() ? flag_method : !file_method.empty() ? file_method : opts.method;
    method = methods().get(opts.method).make_config();
  }
  if (!config.empty()) {
    const bool same_method = file_method.empty() || file_method == opts.method;
    read_config(file, opts, same_method ? method.get() : nullptr, config);
    if (with_method) opts.method = !flag_method.empty() ? flag_method : opts.method;
  }
  return method;
}

std::string subcommand_of(const std::vector<std::string>& args) {
  for (const auto& a : args)
    if (!a.empty() && a[0] != '-') return a;
  return "";
}

namespace {
std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

/// " (did you mean --lr?)" for the first of `args` that is no long flag of `app` (or of the root `root`) and
/// lies within a few edits of one; "" if none does.
std::string did_you_mean(const CLI::App& root, const CLI::App& app, const std::vector<std::string>& args) {
  std::vector<std::string> known;
  for (const CLI::App* a : {&root, &app})
    for (const CLI::Option* o : a->get_options())
      for (const auto& n : o->get_lnames()) known.push_back("--" + n);
  for (const std::string& arg : args) {
    if (arg.rfind("--", 0) != 0 || arg.size() < 3 || arg.size() > 64) continue;
    const std::string flag = arg.substr(0, arg.find('='));
    if (std::find(known.begin(), known.end(), flag) != known.end()) continue;
    std::string best;
    size_t best_distance = std::max<size_t>(2, flag.size() / 4) + 1;
    for (const auto& k : known) {
      const size_t distance = edit_distance(flag, k);
      if (distance < best_distance) best_distance = distance, best = k;
    }
    if (!best.empty()) return cat(" (did you mean ", best, "?)");
    // An option of another method (`xfer pretrain --weights` without --method datl).
    std::vector<std::string> owners;
    for (const auto& m : methods().all()) {
      const auto config = m.make_config();
      Fields f;
      config->fields(f);
      for (const auto& field : f.all())
        if (field.flag() == flag) owners.push_back(m.name);
    }
    if (owners.size() == 1)
      return cat(" (", flag, " is an option of method ", owners[0], ": add --method ", owners[0], ")");
    if (!owners.empty()) return cat(" (", flag, " is an option of the methods ", join(owners, ", "), ")");
  }
  return "";
}
}  // namespace

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{
      "xfer: transfer learning with auxiliary data, on LibTorch.\n\n"
      "Fine-tune a source-pretrained network on a small target task while still drawing on the\n"
      "source data or model (XMixup, SMILE, Smooth Transfer, Domain Adaptive Transfer, GradMix\n"
      "and their baselines), all on one trainer.",
      "xfer"};
  app.require_subcommand(1);
  // A flag given twice takes the last value, so an override can be appended to a long command.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer(
      "Start here:\n"
      "  xfer demo                      the embedded Fashion-MNIST task, every method, a results table\n"
      "  xfer data fmnist:classes=2,4,6,7,9:per_class=10 --png grid.png\n"
      "  xfer pretrain --source fmnist:classes=0,1,3,5,8 --out runs/source\n"
      "  xfer finetune --method l2 --init runs/source --target fmnist:classes=2,4,6,7,9:per_class=10\n"
      "Run `xfer COMMAND --help` for the options of a command.");
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "only errors on stderr");
  app.add_flag("-v,--verbose", verbose, "more detail on stderr");
  double log_interval = progress_interval();
  add_number(app, "log_interval", log_interval,
             "seconds between progress lines when stderr is not a terminal (piped, nohup, batch jobs)", 0,
             86400);
  app.set_version_flag("--version", std::string("xfer ") + kVersion);

  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(make_demo_command());
  commands.push_back(make_pretrain_command());
  commands.push_back(make_finetune_command());
  commands.push_back(make_select_command());
  commands.push_back(make_weights_command());
  commands.push_back(make_rank_command());
  commands.push_back(make_eval_command());
  commands.push_back(make_export_command());
  commands.push_back(make_analyze_command());
  commands.push_back(make_methods_command());
  commands.push_back(make_data_command());
  commands.push_back(make_search_command());
  commands.push_back(make_bench_command());
  commands.push_back(make_worker_command());
  commands.push_back(make_launch_command());
  commands.push_back(make_report_command());
  commands.push_back(make_gradmix_pseudo_command());
  commands.push_back(make_gradmix_weights_command());

  try {
    for (auto& c : commands) c->add(app, args);
    std::vector<std::string> reversed(args.rbegin(), args.rend());
    app.parse(reversed);
    set_verbosity(quiet ? 0 : verbose ? 2 : 1);
    set_progress_interval(log_interval);
    for (auto& c : commands)
      if (c->app && c->app->parsed()) c->run(out);
    return 0;
  } catch (const CLI::CallForHelp&) {
    const CLI::App* sub = &app;
    for (auto& c : commands)
      if (c->app && c->app->parsed()) sub = c->app;
    out << sub->help();
    return 0;
  } catch (const CLI::CallForVersion&) {
    out << "xfer " << kVersion << "\n";
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    const CLI::App* sub = &app;
    for (auto& c : commands)
      if (c->app && c->app->parsed()) sub = c->app;
    err << "error: " << first_line(e.what()) << did_you_mean(app, *sub, args) << "\n";
    err << "run `xfer " << (app.get_subcommands().empty() ? "" : app.get_subcommands()[0]->get_name() + " ")
        << "--help` for the valid options\n";
    return 2;
  } catch (const BadInput& e) {
    err << "error: " << e.what() << "\n";
    return 2;
  } catch (const NumericalError& e) {
    err << "error: " << e.what() << "\n";
    return 1;
  } catch (const Interrupted& e) {
    err << "interrupted: " << e.what() << "\n";
    return 128 + e.signal();
  } catch (const c10::Error& e) {
    err << "error: " << first_line(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const nlohmann::json::type_error& e) {
    // 316: a text that reached a JSON output is not UTF-8; it came from a flag, a file or a folder name.
    err << "error: " << (e.id == 316 ? "a name or value given to xfer is not valid UTF-8: " : "") << e.what()
        << "\n";
    return e.id == 316 ? 2 : 1;
  } catch (const std::exception& e) {
    err << "error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace xfer::cli
