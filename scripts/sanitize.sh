#!/usr/bin/env bash
# Reliability checks: builds xfer with clang, AddressSanitizer and UndefinedBehaviorSanitizer (and the
# libFuzzer targets) in build-sanitize/, runs the test suite under the sanitizers, then each fuzz target
# for a bounded time from its seed corpus.
#
#   scripts/sanitize.sh                    tests (all) + 30 s per fuzz target
#   FUZZ_SECONDS=600 scripts/sanitize.sh   longer fuzzing
#   TESTS=none scripts/sanitize.sh         fuzzing only (builds only the library and the fuzz targets; CI runs
#                                          this with FUZZ_SECONDS=30);  TESTS='-R Spec' passes a filter to ctest
#
# A crash found by a fuzzer is saved as build-sanitize/fuzz/crash-<hash>; reproduce it with
# build-sanitize/tests/fuzz/<target>_fuzz <file>.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${XFER_SANITIZE_DIR:-build-sanitize}
seconds=${FUZZ_SECONDS:-30}
tests=${TESTS:-}
jobs=$(nproc)

if [ ! -f "$build/CMakeCache.txt" ]; then
  CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXFER_SANITIZE=address,undefined \
    -DXFER_BUILD_FUZZERS=ON -DXFER_BUILD_BENCH=OFF >/dev/null
fi
if [ "$tests" = none ]; then
  cmake --build "$build" -j"$jobs" --target idx_fuzz spec_fuzz json_fuzz checkpoint_fuzz pickle_fuzz \
    image_cache_fuzz image_folder_fuzz mat_fuzz
else
  cmake --build "$build" -j"$jobs"
fi

# LibTorch keeps global allocations for the life of the process: leak reports would be its, not ours.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMP_WAIT_POLICY=PASSIVE

if [ "$tests" != none ]; then
  (cd "$build" && ctest --output-on-failure -j"$jobs" $tests)
fi

mkdir -p "$build/fuzz"
status=0
for target in idx spec json checkpoint pickle image_cache image_folder mat; do
  work="$build/fuzz/corpus-$target"
  mkdir -p "$work"
  echo "fuzzing $target for ${seconds}s"
  # New inputs go to the working corpus; the seeds in tests/fuzz/corpus are only read.
  if ! "$build/tests/fuzz/${target}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$build/fuzz/$target-" -print_final_stats=1 "$work" "tests/fuzz/corpus/$target" \
      >"$build/fuzz/$target.log" 2>&1; then
    echo "  $target: FAILED, see $build/fuzz/$target.log"; status=1
    # CI keeps only what is printed: the report and the input, so the crash can be reproduced elsewhere.
    sed -n '/^==[0-9]*==ERROR\|runtime error\|deadly signal\|uncaught exception\|^terminate called/,$p' \
      "$build/fuzz/$target.log" | grep -v '^"' | head -60 | sed "s/^/    /"
    for crash in "$build/fuzz/$target"-*; do
      [ -f "$crash" ] && echo "    input $(basename "$crash") (base64): $(base64 -w0 "$crash" | head -c 4000)"
    done
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$build/fuzz/$target.log" | sed "s/^/  $target /"
done
exit $status
