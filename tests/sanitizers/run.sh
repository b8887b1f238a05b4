#!/usr/bin/env bash
# Builds the CPU engine, store, text, vision and the command line with their tests, with
# AddressSanitizer and UndefinedBehaviorSanitizer (GCC, no CUDA, no GUI), in build-sanitizers/, and
# runs the tests (ctest -LE 'slow|hostile': the hostile-input script runs on the Release build).
# Any report fails the run: UBSan does not recover, ASan aborts on the first error, LeakSanitizer
# reports at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-sanitizers}
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/lightdesk-ccache}"
flags="-fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DLIGHTDESK_WITH_CUDA=OFF -DLIGHTDESK_WITH_GUI=OFF >/dev/null
cmake --build "$build" -j"$(nproc)"
export ASAN_OPTIONS="abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$build" --output-on-failure -LE 'slow|hostile' -j"$(nproc)"
