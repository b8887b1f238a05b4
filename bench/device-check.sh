#!/usr/bin/env bash
# Builds Lightdesk on a GPU machine (no Qt) and runs the CUDA tests, in one go: the script the
# GPU machine runs. Debian -dev packages that machine may lack (nlohmann-json, OpenBLAS,
# GoogleTest, pkgconf) can come as .deb files in the folders of $LIGHTDESK_DEBS (':'-separated,
# default .debs, filled by bench/fetch-device-deps.sh); they are unpacked with dpkg -x into a private prefix, never into /. CUTLASS's
# headers come from the nvidia-cutlass wheel in .whl/ (packaging/fetch-cutlass.sh puts it there).
# Usage: bash bench/device-check.sh [--sanitize] [--bench] [--cli] [--baseline REV]
#   (logs go to $OUT, else /tmp/device-check)
#   --sanitize: compute-sanitizer memcheck and racecheck on the kernel tests
#   --bench:    the PyTorch anchors (bench/anchors.py), then lightdesk-bench with their figures;
#               Python wheels in $LIGHTDESK_WHEELS (default .whl), such as flash-linear-attention's
#               fla-core for its lightning prefill anchor, are installed for them into a private folder
#   --baseline REV: also builds lightdesk-bench of git revision REV (an archive of it beside the
#               checkout, configured like this one; or REV is a folder holding that source, for a
#               copy of the tree without its git history: `git archive REV --prefix=baseline-src/ |
#               tar -x`) and runs `lightdesk-bench --quick` of REV and of this tree in turn, twice
#               each, then prints every row's time of this tree over REV's (each side's faster run)
#               and the rows more than 3 % slower; alone: it builds the two benchmarks side by side
#               and runs no tests
#   --cli:      lightdesk-cli too (LIGHTDESK_WITH_CLI, without PDF and image decoding); its text and
#               store libraries (pcre2, sentencepiece, ICU, libxml2, SQLite, xxHash) and CLI11
#               (libcli11-dev, header-only) must be in the .debs
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/device-check}"
mkdir -p "$out"
sanitize=0
bench=0
cli_options=()
cli_target=()
baseline=""
while [ $# -gt 0 ]; do
  arg="$1"
  shift
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --bench) bench=1 ;;
    --baseline)
      [ $# -gt 0 ] || { echo "--baseline needs a git revision" >&2; exit 2; }
      baseline="$1"
      shift ;;
    --cli)
      cli_options=(-DLIGHTDESK_WITH_CLI=ON -DLIGHTDESK_WITH_PDF=OFF -DLIGHTDESK_WITH_IMAGE_DECODING=OFF)
      cli_target=(lightdesk-cli) ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
if [ -n "$baseline" ] && { [ "$sanitize" = 1 ] || [ "$bench" = 1 ] || [ ${#cli_target[@]} -gt 0 ]; }; then
  echo "--baseline runs alone (it builds the benchmark only, no tests)" >&2
  exit 2
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
nvcc --version | tail -2

prefix=/tmp/lightdesk-deps
IFS=: read -ra deb_dirs <<<"${LIGHTDESK_DEBS:-.debs}"
for debs in "${deb_dirs[@]}"; do
  if [ -d "$debs" ]; then
    for f in "$debs"/*.deb; do dpkg -x "$f" "$prefix"; done
  fi
done
lib="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib/openblas-pthread:$lib:${LD_LIBRARY_PATH:-}"
# The packages' .pc files say prefix=/usr: the sysroot puts their -I and -L paths in the prefix.
export PKG_CONFIG_PATH="$lib/pkgconfig:$prefix/usr/share/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$prefix"

# CUTLASS's headers, from the nvidia-cutlass wheel carried in .whl/ (this machine has no network).
bash packaging/fetch-cutlass.sh >"$out/cutlass.log" 2>&1 || { cat "$out/cutlass.log"; exit 1; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# configure SOURCE BUILD LOG [options]: the engine-only CUDA build of a checkout.
configure() {
  local source="$1" build="$2" log="$3"
  shift 3
  cmake -S "$source" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLIGHTDESK_ENGINE_ONLY=ON "$@" \
    -DLIGHTDESK_WITH_CUDA=ON -DCMAKE_PREFIX_PATH="$prefix/usr" -DCMAKE_LIBRARY_PATH="$lib/openblas-pthread;$lib" \
    -DCMAKE_CXX_FLAGS="-isystem $prefix/usr/include/x86_64-linux-gnu/openblas-pthread" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$lib" >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
}
# With --baseline, the comparison alone (a call of its own, within ten minutes): both trees'
# lightdesk-bench, built side by side, and no tests.
targets=(cuda_tests engine_tests lightdesk-bench "${cli_target[@]}")
[ -n "$baseline" ] && targets=(lightdesk-bench)
start=$(date +%s)
configure . build-device "$out/configure.log" "${cli_options[@]}"
if [ -n "$baseline" ]; then
  # The baseline's source: the folder given, or an archive of the revision (its CUTLASS is this tree's).
  if [ -d "$baseline" ]; then
    baseline_dir="$(cd "$baseline" && pwd)"
    baseline_name="$baseline"
  else
    baseline_dir=/tmp/lightdesk-baseline
    rm -rf "$baseline_dir" && mkdir -p "$baseline_dir"
    git archive "$baseline" | tar -x -C "$baseline_dir" ||
      { echo "--baseline $baseline: not a folder, nor a revision of this checkout's git history" >&2; exit 1; }
    baseline_name="$(git rev-parse --short "$baseline")"
  fi
  configure "$baseline_dir" "$baseline_dir/build-device" "$out/configure-baseline.log" -DLIGHTDESK_CUTLASS_DIR="$PWD/.cutlass"
  cmake --build "$baseline_dir/build-device" -j"$(nproc)" --target lightdesk-bench >"$out/build-baseline.log" 2>&1 &
  baseline_build=$!
fi
cmake --build build-device -j"$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1 ||
  { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
if [ -n "$baseline" ]; then
  wait "$baseline_build" || { grep -E "error|Error" "$out/build-baseline.log" | head -40; exit 1; }
fi
echo "build: $(( $(date +%s) - start )) s"

status=0
if [ -z "$baseline" ]; then
  if [ ${#cli_target[@]} -gt 0 ]; then
    echo "--- lightdesk-cli info"
    build-device/app/cli/lightdesk-cli info --model resources/models/lightdesk-demo || status=1
  fi
  build-device/tests/cuda/cuda_tests --gtest_brief=1 2>&1 | tee "$out/cuda_tests.log" | grep -vE "^\[ measured" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "--- measured"
  grep "^\[ measured" "$out/cuda_tests.log"

  echo "--- engine tests (CPU backend) on the GPU machine"
  build-device/tests/engine_tests --gtest_brief=1 2>&1 | tee "$out/engine_tests.log" | tail -4
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [ "$sanitize" = 1 ]; then
  # Both tools at once, as separate processes on the one GPU. racecheck is many times slower than
  # memcheck: each test runs in its own process, six at a time, and the sampler's 80000-draw
  # statistics are left out (GreedyEqualsCpu runs the same shared-memory code).
  kernel_tests='CudaKernelTest*:CudaLightningDecodeTest*:CudaRouterTest*:CudaVisionKernelTest*:CudaSamplingTest*:CudaKvPagePoolTest*:CudaQuantizedExpertsTest*'
  timeout 420 compute-sanitizer --tool memcheck --error-exitcode 3 build-device/tests/cuda/cuda_tests \
    --gtest_filter="$kernel_tests" --gtest_brief=1 >"$out/sanitizer-memcheck.log" 2>&1 &
  memcheck=$!
  build-device/tests/cuda/cuda_tests --gtest_list_tests --gtest_filter="$kernel_tests:-*DrawsFollowTheDistribution" |
    awk '/^[^ ]/ {suite=$1} /^  / {print suite $1}' >"$out/racecheck-tests.txt"
  mkdir -p "$out/racecheck"
  OUT_RACECHECK="$out/racecheck" xargs -P 6 -I{} sh -c 'timeout 300 compute-sanitizer --tool racecheck \
      --error-exitcode 3 build-device/tests/cuda/cuda_tests --gtest_filter="{}" --gtest_brief=1 \
      >"$OUT_RACECHECK/$(echo "{}" | tr "/" "_").log" 2>&1 || echo "racecheck: {} exit code $?"' \
    <"$out/racecheck-tests.txt" | tee "$out/racecheck-failures.txt"
  racecheck_rc=0
  [ -s "$out/racecheck-failures.txt" ] && racecheck_rc=1
  wait "$memcheck"
  memcheck_rc=$?
  echo "--- compute-sanitizer on the kernel tests"
  grep -E "ERROR SUMMARY" "$out/sanitizer-memcheck.log"
  echo "racecheck: $(wc -l <"$out/racecheck-tests.txt") tests, each in its own process; $(cat "$out"/racecheck/*.log | grep -c "RACECHECK SUMMARY: 0 hazards") report 0 hazards"
  echo "memcheck exit code: $memcheck_rc; racecheck exit code: $racecheck_rc"
  [ "$memcheck_rc" -eq 0 ] && [ "$racecheck_rc" -eq 0 ] || status=1
fi
if [ -n "$baseline" ]; then
  echo "--- lightdesk-bench --quick: $baseline_name (baseline) and this tree, in turn, twice"
  for round in 1 2; do
    "$baseline_dir/build-device/bench/lightdesk-bench" --quick >"$out/bench-baseline-$round.log" 2>&1 || status=1
    build-device/bench/lightdesk-bench --quick >"$out/bench-tree-$round.log" 2>&1 || status=1
  done
  python3 bench/compare_bench.py "$out"/bench-baseline-*.log -- "$out"/bench-tree-*.log || status=1
fi
if [ "$bench" = 1 ]; then
  # The anchors first, so that the benchmark's ratios are to figures of this run on this GPU.
  echo "--- anchors through PyTorch"
  wheels="${LIGHTDESK_WHEELS:-.whl}"
  anchor_path=""
  if compgen -G "$wheels/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lightdesk-wheels \
      "$wheels"/*.whl && anchor_path=/tmp/lightdesk-wheels
  fi
  PYTHONPATH="$anchor_path${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 python3 bench/anchors.py \
    --json "$out/anchors.json" 2>&1 | tee "$out/anchors.log" || status=1
  anchors=()
  [ -s "$out/anchors.json" ] && anchors=(--anchors "$out/anchors.json")
  echo "--- lightdesk-bench"
  build-device/bench/lightdesk-bench "${anchors[@]}" 2>&1 | tee "$out/bench.log" || status=1
fi
exit $status
