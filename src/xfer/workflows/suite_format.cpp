// The suite file format: every object of a suite JSON file (the suite, a task, a method entry, a table,
// "timing") is read through one table of its keys, which both names the valid keys and reads each one.
#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "xfer/core/error.h"
#include "xfer/core/fields.h"
#include "xfer/core/text.h"
#include "xfer/data/spec.h"
#include "xfer/methods/registry.h"
#include "xfer/search/search.h"
#include "xfer/search/space.h"
#include "xfer/workflows/pretrained.h"
#include "xfer/workflows/suite.h"
#include "xfer/workflows/suite_plan.h"

namespace xfer {
namespace {

/// One key of an object in a suite file and how its value is read: `read` gets the value, or null when
/// the key is absent.
struct SuiteKey {
  const char* name;
  std::function<void(const nlohmann::json* value)> read;
};

/// Checks that `obj` is an object whose keys are all in `keys` (naming the first stray one and the valid
/// ones), then reads every key in the table's order.
void read_keys(const nlohmann::json& obj, const std::vector<SuiteKey>& keys, const std::string& where) {
  XFER_CHECK(obj.is_object(), where, " must be a JSON object, got ", obj.dump());
  for (const auto& [key, value] : obj.items()) {
    std::string list;
    bool ok = false;
    for (const auto& k : keys) {
      ok = ok || k.name == key;
      list += (list.empty() ? "" : ", ") + std::string(k.name);
    }
    XFER_CHECK(ok, where, ": unknown key '", key, "'; valid keys: ", list);
  }
  for (const auto& k : keys) k.read(obj.contains(k.name) ? &obj[k.name] : nullptr);
}

/// A string key's value: a non-empty string, or "" when absent and not `required`.
std::string string_value(const nlohmann::json* v, const std::string& where, const char* key, bool required) {
  if (!v) {
    XFER_CHECK(!required, where, " needs \"", key, "\"");
    return "";
  }
  XFER_CHECK(v->is_string() && !v->get<std::string>().empty(), where, ".", key,
             " must be a non-empty string, got ", v->dump());
  return v->get<std::string>();
}

/// An object key's value: an object, or {} when absent or null.
nlohmann::json object_value(const nlohmann::json* v, const std::string& where, const char* key) {
  if (!v || v->is_null()) return nlohmann::json::object();
  XFER_CHECK(v->is_object(), where, ".", key, " must be a JSON object, got ", v->dump());
  return *v;
}

/// An object key whose absence means something (a pre-training block, a search): null when absent or null.
nlohmann::json object_or_null(const nlohmann::json* v, const std::string& where, const char* key) {
  return !v || v->is_null() ? nlohmann::json() : object_value(v, where, key);
}

SuiteKey string_key(const char* name, std::string& into, const std::string& where, bool required = false) {
  return {name, [&into, name, where, required](const nlohmann::json* v) {
            into = string_value(v, where, name, required);
          }};
}
SuiteKey object_key(const char* name, nlohmann::json& into, const std::string& where) {
  return {name, [&into, name, where](const nlohmann::json* v) { into = object_value(v, where, name); }};
}
SuiteKey object_or_null_key(const char* name, nlohmann::json& into, const std::string& where) {
  return {name, [&into, name, where](const nlohmann::json* v) { into = object_or_null(v, where, name); }};
}

/// Task names and method labels become folders (OUT/runs/TASK/LABEL/seedN): each must give a folder of its
/// own, inside OUT. Names that suite_slug() maps to nothing but dots ("..") or to one folder ("a b", "a_b")
/// are refused.
void check_folder_names(const std::vector<std::string>& names, const std::string& what,
                        const std::string& where) {
  std::map<std::string, std::string> by_folder;
  for (const auto& n : names) {
    const std::string folder = suite_slug(n);
    XFER_CHECK(folder.find_first_not_of('.') != std::string::npos, where, ": the ", what, " '", printable(n),
               "' cannot name a folder");
    const auto [it, fresh] = by_folder.emplace(folder, n);
    XFER_CHECK(fresh, where, ": the ", what, "s '", printable(it->second), "' and '", printable(n),
               "' would share the folder ", folder, "; rename one");
  }
}

/// Checks a method entry's "sweep": an object of non-empty value lists, at most 100 points in all.
void check_sweep(const nlohmann::json& sweep, const std::string& where) {
  XFER_CHECK(sweep.is_object() && !sweep.empty(), where, ".sweep must be {\"OPTION\": [values], ...}, got ",
             sweep.dump());
  size_t points = 1;
  for (const auto& [key, values] : sweep.items()) {
    XFER_CHECK(values.is_array() && !values.empty() && values.size() <= 100, where, ".sweep.", key,
               " must be a list of 1 to 100 values, got ", values.dump());
    points *= values.size();
    XFER_CHECK(points <= 100, where, ".sweep has more than 100 points");
  }
}

/// Checks a method entry's "search" before anything runs: the parameter specs and the search options.
void check_search(const nlohmann::json& search, const std::string& where) {
  XFER_CHECK(search.contains("params") && search["params"].is_object() && !search["params"].empty(), where,
             ".search needs \"params\": {\"NAME\": \"lin:LO:HI\", ...}");
  std::vector<std::string> texts;
  for (const auto& [name, spec] : search["params"].items()) {
    XFER_CHECK(spec.is_string(), where, ".search.params.", name, " must be a string like \"lin:0:1\", got ",
               spec.dump());
    texts.push_back(name + "=" + spec.get<std::string>());
  }
  nlohmann::json options = search;
  options.erase("params");
  for (const char* own : {"out", "storage", "workers", "study"})
    XFER_CHECK(!options.contains(own), where, ".search: \"", own, "\" is set by the suite");
  try {
    SearchSpace::parse(texts);
    SearchOptions o;
    Fields f;
    o.fields(f);
    f.read_json(options, where + ".search");
  } catch (const BadInput& e) {
    const std::string what = e.what();
    throw BadInput(what.find(where) == std::string::npos ? cat(where, ".search: ", what) : what);
  }
}

/// The keys of a table entry of `kind`: the common ones, then the kind's own (kept in t.options).
std::vector<SuiteKey> table_keys(const Suite& s, SuiteTable& t, const std::string& where) {
  std::vector<SuiteKey> keys = {
      string_key("title", t.title, where),
      {"kind", [](const nlohmann::json*) {}},  // read first: it decides the other keys
      {"task",
       [&s, &t, where](const nlohmann::json* v) {
         t.task = string_value(v, where, "task", true);
         XFER_CHECK(std::any_of(s.tasks.begin(), s.tasks.end(),
                                [&](const SuiteTask& x) { return x.name == t.task; }),
                    where, ".task: no task named '", t.task, "'");
       }},
      {"methods", [&s, &t, where](const nlohmann::json* v) {
         XFER_CHECK(v && v->is_array() && !v->empty(), where,
                    ".methods must be a non-empty list of method labels");
         for (const auto& label : *v) {
           XFER_CHECK(label.is_string(), where, ".methods: expected labels, got ", label.dump());
           const auto m = std::find_if(s.methods.begin(), s.methods.end(), [&](const SuiteMethod& x) {
             return x.label == label.get<std::string>();
           });
           XFER_CHECK(m != s.methods.end(), where, ".methods: no method labelled ", label.dump());
           XFER_CHECK(suite_runs_on(*m, t.task), where, ".methods: ", label.dump(), " does not run on task '",
                      t.task, "'");
           t.methods.push_back(label.get<std::string>());
         }
       }}};
  // The kind's own keys: checked, then kept for the table.
  auto own = [&t](const char* name, std::function<void(const nlohmann::json&)> check) {
    return SuiteKey{name, [&t, name, check](const nlohmann::json* v) {
                      if (!v) return;
                      check(*v);
                      t.options[name] = *v;
                    }};
  };
  if (t.kind == "forgetting") {
    keys.push_back(own("source", [where](const nlohmann::json& v) {
      XFER_CHECK(v.is_string() && !v.get<std::string>().empty(), where, ".source must be a dataset spec");
      try {
        DatasetSpec::parse(v.get<std::string>());
      } catch (const BadInput& e) {
        throw BadInput(cat(where, ".source: ", e.what()));
      }
    }));
    keys.push_back(own("reference", [where](const nlohmann::json& v) {
      XFER_CHECK(v.is_boolean(), where, ".reference must be true or false");
    }));
    keys.push_back(own("probe_iterations", [where](const nlohmann::json& v) {
      XFER_CHECK(v.is_number_integer() && v.get<int64_t>() >= 1, where,
                 ".probe_iterations must be an integer >= 1");
    }));
  } else if (t.kind == "interpolation") {
    keys.push_back(own("splits", [where](const nlohmann::json& v) {
      XFER_CHECK(v.is_array() && !v.empty(), where, ".splits must be a non-empty list");
      for (const auto& sp : v)
        XFER_CHECK(sp == "train" || sp == "test", where, ".splits: expected \"train\" or \"test\", got ",
                   sp.dump());
    }));
    keys.push_back(own("pairs", [where](const nlohmann::json& v) {
      XFER_CHECK(v.is_number_integer() && v.get<int64_t>() >= 1, where, ".pairs must be an integer >= 1");
    }));
    keys.push_back(own("label_output", [where](const nlohmann::json& v) {
      XFER_CHECK(v == "logits" || v == "softmax", where, ".label_output must be logits or softmax");
    }));
  }
  return keys;
}

/// Checks one entry of "tables" against the suite's tasks and method labels.
SuiteTable parse_table(const Suite& s, const nlohmann::json& j, const std::string& where) {
  XFER_CHECK(j.is_object(), where, " must be a JSON object, got ", j.dump());
  SuiteTable t;
  t.kind = string_value(j.contains("kind") ? &j["kind"] : nullptr, where, "kind", true);
  XFER_CHECK(t.kind == "accuracy" || t.kind == "forgetting" || t.kind == "interpolation", where,
             ".kind must be accuracy, forgetting or interpolation, got '", t.kind, "'");
  read_keys(j, table_keys(s, t, where), where);
  return t;
}

/// "seeds": a count (seeds 0 .. N-1) or a list of distinct seeds; absent: one seed, 0.
std::vector<int64_t> parse_seeds(const nlohmann::json& seeds, const std::string& where) {
  std::vector<int64_t> out;
  if (seeds.is_number_integer()) {
    XFER_CHECK(seeds.get<int64_t>() >= 1, where, ".seeds must be >= 1, got ", seeds.dump());
    XFER_CHECK(seeds.get<int64_t>() <= kMaxSuiteSeeds, where, ".seeds must be at most ", kMaxSuiteSeeds,
               ", got ", seeds.dump());
    for (int64_t i = 0; i < seeds.get<int64_t>(); ++i) out.push_back(i);
    return out;
  }
  XFER_CHECK(seeds.is_array() && !seeds.empty() && seeds.size() <= static_cast<size_t>(kMaxSuiteSeeds), where,
             ".seeds must be a count or a list of 1 to ", kMaxSuiteSeeds, " seeds, got ",
             seeds.dump().substr(0, 80));
  std::set<int64_t> distinct;
  for (const auto& v : seeds) {
    XFER_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, where,
               ".seeds: expected non-negative integers, got ", v.dump());
    XFER_CHECK(distinct.insert(v.get<int64_t>()).second, where, ".seeds lists ", v.dump(), " twice");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

/// One entry of "tasks".
SuiteTask parse_task(const nlohmann::json& t, const std::string& tw) {
  SuiteTask task;
  read_keys(t,
            {string_key("name", task.name, tw), string_key("target", task.target, tw, true),
             string_key("source", task.source, tw), object_key("run", task.run, tw),
             object_key("options", task.options, tw), object_or_null_key("pretrain", task.pretrain, tw)},
            tw);
  if (!t.contains("name")) task.name = task.target;
  try {
    DatasetSpec::parse(task.target);
    if (!task.source.empty()) DatasetSpec::parse(task.source);
  } catch (const BadInput& e) {
    throw BadInput(cat(tw, " ('", task.name, "'): ", e.what()));
  }
  return task;
}

/// One entry of "methods" in its object form; sets `optional`.
SuiteMethod parse_method(const nlohmann::json& m, const std::set<std::string>& task_names,
                         const std::string& mw, bool& optional) {
  SuiteMethod entry;
  read_keys(m,
            {string_key("label", entry.label, mw),
             string_key("method", entry.method, mw, true),
             object_key("options", entry.options, mw),
             object_key("run", entry.run, mw),
             object_or_null_key("pretrain", entry.pretrain, mw),
             {"search",
              [&](const nlohmann::json* v) {
                entry.search = object_or_null(v, mw, "search");
                if (!entry.search.is_null()) check_search(entry.search, mw);
              }},
             {"sweep",
              [&](const nlohmann::json* v) {
                if (!v || v->is_null()) return;
                XFER_CHECK(entry.search.is_null(), mw, ": \"search\" and \"sweep\" cannot be combined");
                check_sweep(*v, mw);
                entry.sweep = *v;
              }},
             {"tasks",
              [&](const nlohmann::json* v) {
                if (!v) return;
                XFER_CHECK(v->is_array() && !v->empty(), mw,
                           ".tasks must be a non-empty list of task names, got ", v->dump());
                for (const auto& name : *v) {
                  XFER_CHECK(name.is_string() && task_names.count(name.get<std::string>()), mw,
                             ".tasks: no task named ", name.dump());
                  entry.tasks.push_back(name.get<std::string>());
                }
              }},
             {"optional",
              [&](const nlohmann::json* v) {
                XFER_CHECK(!v || v->is_boolean(), mw, ".optional must be true or false, got ",
                           (v ? *v : nlohmann::json()).dump());
                optional = v && v->get<bool>();
              }}},
            mw);
  if (!m.contains("label")) entry.label = entry.method;
  return entry;
}

/// "methods": each entry, "all" and "core" expanded; a method not in this build is refused unless optional.
void parse_methods(const nlohmann::json* list, const std::set<std::string>& task_names, Suite& s,
                   const std::string& where) {
  XFER_CHECK(list && list->is_array() && !list->empty(), where, " needs \"methods\": a non-empty list");
  std::set<std::string> labels;
  auto add = [&](SuiteMethod m, const std::string& mw) {
    XFER_CHECK(labels.insert(m.label).second, mw, ": the label '", m.label, "' is used twice");
    s.methods.push_back(std::move(m));
  };
  for (size_t i = 0; i < list->size(); ++i) {
    const auto& m = (*list)[i];
    const std::string mw = cat(where, ".methods[", i, "]");
    if (m.is_string() && (m == "all" || m == "core")) {
      std::vector<std::string> unfit;  // methods of another task shape (GradMix: labelled sources)
      for (const auto& info : methods().all()) {
        if (!(m == "all" || info.core) || labels.count(info.name) || !info.finetunes) continue;
        if (info.task_shape != TaskShape::target_and_source) {
          unfit.push_back(info.name);
          continue;
        }
        SuiteMethod entry;
        entry.label = entry.method = info.name;
        add(std::move(entry), mw);
      }
      if (!unfit.empty())
        s.notes.push_back(cat(join(unfit, ", "),
                              " need several labelled sources and are skipped here (the `gradmix` ",
                              "suite runs them)"));
      continue;
    }
    SuiteMethod entry;
    bool optional = false;
    if (m.is_string())
      entry.method = entry.label = m.get<std::string>();
    else
      entry = parse_method(m, task_names, mw, optional);
    if (!methods().has(entry.method)) {
      XFER_CHECK(optional, mw, ": unknown method '", entry.method, "'; valid methods: ", methods().names());
      s.notes.push_back(cat("'", entry.label, "' skipped: method ", entry.method, " is not in this build"));
      continue;
    }
    add(std::move(entry), mw);
  }
  XFER_CHECK(!s.methods.empty(), where, ": none of its methods is in this build");
}

/// What the tasks and methods must satisfy together: folders of their own, a bounded number of runs, and
/// task method options that some method has.
void check_grid(const Suite& s, const std::string& where) {
  std::vector<std::string> task_list, label_list;
  for (const auto& t : s.tasks) task_list.push_back(t.name);
  for (const auto& m : s.methods) label_list.push_back(m.label);
  check_folder_names(task_list, "task name", where);
  check_folder_names(label_list, "method label", where);
  const double runs = static_cast<double>(s.tasks.size()) * static_cast<double>(s.methods.size()) *
                      static_cast<double>(s.seeds.size());
  XFER_CHECK(runs <= kMaxSuiteRuns, where, " asks for ", runs, " runs (", s.tasks.size(), " tasks x ",
             s.methods.size(), " methods x ", s.seeds.size(), " seeds); at most ", kMaxSuiteRuns, " are run");
  // A task's method options go to the methods that have them; one that no method has is a typo.
  for (size_t i = 0; i < s.tasks.size(); ++i)
    for (const auto& [key, value] : s.tasks[i].options.items()) {
      bool used = false;
      for (const auto& m : s.methods) used = used || method_option_names(m.method).count(key) > 0;
      XFER_CHECK(used, where, ".tasks[", i, "].options: no method of the suite has the option '", key, "'");
    }
}

/// "timing": false, or {"task", "steps"}.
void parse_timing(const nlohmann::json& t, const std::set<std::string>& task_names, Suite& s,
                  const std::string& where) {
  if (t.is_boolean()) {
    s.timing = t.get<bool>();
    return;
  }
  const std::string tw = where + ".timing";
  read_keys(t,
            {{"task",
              [&](const nlohmann::json* v) {
                s.timing_task = string_value(v, tw, "task", false);
                XFER_CHECK(s.timing_task.empty() || task_names.count(s.timing_task), where,
                           ".timing.task: no task named '", s.timing_task, "'");
              }},
             {"steps",
              [&](const nlohmann::json* v) {
                XFER_CHECK(!v || v->is_number_integer(), where, ".timing.steps must be an integer, got ",
                           (v ? *v : nlohmann::json()).dump());
                s.timing_steps = v ? v->get<int64_t>() : int64_t{60};
                XFER_CHECK(s.timing_steps >= 1 && s.timing_steps <= 100000, where,
                           ".timing.steps must be in [1, 100000], got ", s.timing_steps);
              }}},
            tw);
}

}  // namespace

Suite parse_suite(const nlohmann::json& j, const std::string& name) {
  const std::string where = "suite " + name;
  Suite s;
  s.name = name;
  std::set<std::string> task_names;
  read_keys(
      j,
      {string_key("description", s.description, where),
       {"pretrain",
        [&](const nlohmann::json* v) {
          s.pretrain = object_or_null(v, where, "pretrain");
          if (!s.pretrain.is_null()) PretrainPlan::from_json(s.pretrain, where + ".pretrain");
        }},
       {"run",
        [&](const nlohmann::json* v) {
          s.run = object_value(v, where, "run");
          RunOptions r;
          Fields f;
          r.fields(f);
          f.read_json(s.run, where + ".run");
        }},
       {"seeds", [&](const nlohmann::json* v) { s.seeds = parse_seeds(v ? *v : nlohmann::json(1), where); }},
       {"tasks",
        [&](const nlohmann::json* v) {
          XFER_CHECK(v && v->is_array() && !v->empty(), where, " needs \"tasks\": a non-empty list");
          for (size_t i = 0; i < v->size(); ++i) {
            s.tasks.push_back(parse_task((*v)[i], cat(where, ".tasks[", i, "]")));
            XFER_CHECK(task_names.insert(s.tasks.back().name).second, where, ": two tasks are named '",
                       s.tasks.back().name, "'");
          }
        }},
       {"methods",
        [&](const nlohmann::json* v) {
          parse_methods(v, task_names, s, where);
          check_grid(s, where);
        }},
       {"tables",
        [&](const nlohmann::json* v) {
          if (!v) return;
          XFER_CHECK(v->is_array(), where, ".tables must be a list, got ", v->dump());
          for (size_t i = 0; i < v->size(); ++i)
            s.tables.push_back(parse_table(s, (*v)[i], cat(where, ".tables[", i, "]")));
        }},
       {"timing",
        [&](const nlohmann::json* v) {
          if (v) parse_timing(*v, task_names, s, where);
        }}},
      where);
  // Every run's options are checked now, not when its turn comes.
  plan_runs(s, "runs/check", "");
  // A sweep reports the point best on validation: every task needs a validation split.
  for (const auto& m : s.methods)
    for (const auto& t : s.tasks)
      if (!m.sweep.is_null()) {
        const DatasetSpec spec = DatasetSpec::parse(t.target);
        XFER_CHECK(spec.val_count > 0 || spec.val_fraction > 0, where, ": method '", m.label,
                   "' sweeps and keeps the ", "point best on validation, but task '", t.name, "' (", t.target,
                   ") has no validation split: add val=N");
      }
  return s;
}

}  // namespace xfer
