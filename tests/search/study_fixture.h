#pragma once
// What the study tests share on every storage (SQLite, PostgreSQL): a two-parameter space, a sampler whose
// values say what it saw, and run directories by number.
#include <string>
#include <vector>

#include "xfer/search/study.h"

namespace xfer::test {

inline StudyInfo study_info(const std::string& name = "test") {
  StudyInfo info;
  info.name = name;
  info.space = SearchSpace::parse({"x=lin:-1:1", "c=cat:a,b"});
  info.seed = 3;
  info.config = {{"iterations", 10}, {"method.tau", 5.0}};
  return info;
}

/// x = (complete trials seen) / 100, c = the trial number's parity.
inline Study::SampleFn study_sampler() {
  return [](const std::vector<Observation>& complete, int64_t number) {
    return ParamValues{{"x", static_cast<double>(complete.size()) / 100},
                       {"c", static_cast<double>(number % 2)}};
  };
}

inline Study::RunDirFn study_dirs() {
  return [](int64_t n) { return "runs/" + std::to_string(n); };
}

}  // namespace xfer::test
