#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang (libraries instrumented for coverage,
# AddressSanitizer and UndefinedBehaviorSanitizer; no CUDA, no GUI) in build-fuzz/ and runs each
# for FUZZ_SECONDS (default 60) from its seed corpus in tests/fuzz/corpus/NAME (with the
# dictionary tests/fuzz/NAME.dict where there is one). Prints the
# executions each got; fails if any harness crashed, leaked, hung or broke an invariant (the input
# is kept in build-fuzz/crashes/). Arguments: harness names to run only those.
#   FUZZ_SECONDS=600 bash tests/fuzz/run.sh session_db
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build-fuzz
seconds=${FUZZ_SECONDS:-60}
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/lightdesk-ccache}"
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS="$flags" \
  -DLIGHTDESK_WITH_CUDA=OFF -DLIGHTDESK_WITH_GUI=OFF -DLIGHTDESK_BUILD_TESTS=OFF -DLIGHTDESK_BUILD_FUZZERS=ON \
  >/dev/null
if [ $# -gt 0 ]; then
  harnesses=("$@")
else
  harnesses=()
  for source in tests/fuzz/*_fuzzer.cpp; do
    name=$(basename "$source" _fuzzer.cpp)
    harnesses+=("$name")
  done
fi
cmake --build "$build" -j"$(nproc)" --target "${harnesses[@]/%/_fuzzer}"

mkdir -p "$build/crashes" "$build/logs"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
failed=()
for name in "${harnesses[@]}"; do
  work="$build/corpus/$name"  # what this run adds; the committed seeds stay as they are
  mkdir -p "$work"
  log="$build/logs/$name.log"
  dictionary=()
  if [ -f "tests/fuzz/$name.dict" ]; then dictionary=(-dict="tests/fuzz/$name.dict"); fi
  status=0
  "$build/tests/fuzz/${name}_fuzzer" "${dictionary[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/crashes/$name-" "$work" "tests/fuzz/corpus/$name" \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    echo "fuzz $name: ${runs:-?} executions in ${seconds} s, no failure"
  else
    echo "fuzz $name: FAILED (exit $status) after ${runs:-?} executions; log $log:"
    awk '/ERROR|runtime error|terminate called|what\(\)|invariant broken|Timeout|out-of-memory/ { shown = 1 } shown' \
      "$log" | grep -v ' in fuzzer::' | head -40 | cut -c1-240 || true
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of ${#harnesses[@]} harnesses failed: ${failed[*]} (inputs in $build/crashes/)"
  exit 1
fi
echo "fuzz: ${#harnesses[@]} harnesses ran ${seconds} s each, no failure"
