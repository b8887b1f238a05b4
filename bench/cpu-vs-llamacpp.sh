#!/usr/bin/env bash
# Lightdesk's CPU backend against llama.cpp on this machine, same model, same prompt ids, same
# thread count, interleaved run by run (a shared machine's load then hits both alike).
#   bash bench/cpu-vs-llamacpp.sh LLAMA_CPP_SOURCE [--threads N] [--runs N] [--model DIR]
# LLAMA_CPP_SOURCE: a llama.cpp source tree outside this repository (for one, PyPI's
# llama-cpp-python source package carries it under vendor/llama.cpp:
#   pip download --no-binary :all: --no-deps llama-cpp-python -d /tmp && tar xzf /tmp/llama_cpp_python-*.tar.gz -C /tmp).
# It is built once with -j2 into $LIGHTDESK_LLAMACPP_CACHE (default /tmp/lightdesk-llamacpp), with
# a Python venv holding the gguf and sentencepiece packages and the model written as float32 GGUF
# by tools/minimax_to_gguf.py (see its comment for what differs from llama.cpp's converter).
# Lightdesk comes from ./build (lightdesk-cli and lightdesk-cpu-bench are built there).
# Prints, from the medians of the runs: prefill tokens/s at 4K, 16K and 24K tokens and decode
# tokens/s after a short prompt and after 24K tokens, for both, with Lightdesk / llama.cpp; then
# both engines' greedy ids after the same 24K-token prompt, side by side. The prompt is
# resources/demo/demo.txt's ids, repeated from its start where a row needs more.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: bash bench/cpu-vs-llamacpp.sh LLAMA_CPP_SOURCE [--threads N] [--runs N] [--model DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
source_tree="$(realpath "$1")"
shift
threads=2 runs=3 model=resources/models/lightdesk-demo
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[ -f "$source_tree/include/llama.h" ] || { echo "cpu-vs-llamacpp: $source_tree is not a llama.cpp source tree (no include/llama.h)" >&2; exit 1; }
case "$source_tree/" in "$(pwd)/"*) echo "cpu-vs-llamacpp: keep the llama.cpp tree outside the repository" >&2; exit 1 ;; esac

cache="${LIGHTDESK_LLAMACPP_CACHE:-/tmp/lightdesk-llamacpp}"
mkdir -p "$cache"
echo "== llama.cpp from $source_tree, built in $cache/build"
cmake -S "$source_tree" -B "$cache/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=ON > "$cache/configure.log"
cmake --build "$cache/build" -j2 --target llama > "$cache/build.log"
llama_bench="$cache/llamacpp-bench"
if [ ! -x "$llama_bench" ] || [ bench/llamacpp_bench.cpp -nt "$llama_bench" ]; then
  c++ -O2 -std=c++17 bench/llamacpp_bench.cpp -I"$source_tree/include" -I"$source_tree/ggml/include" \
    -L"$cache/build/bin" -Wl,-rpath,"$cache/build/bin" -lllama -lggml -lggml-base -o "$llama_bench"
fi

echo "== the model as GGUF (tools/minimax_to_gguf.py)"
if [ ! -x "$cache/venv/bin/python" ]; then
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q gguf sentencepiece
fi
gguf="$cache/$(basename "$model")-f32.gguf"
if [ ! -s "$gguf" ] || [ tools/minimax_to_gguf.py -nt "$gguf" ] || [ "$model/config.json" -nt "$gguf" ]; then
  "$cache/venv/bin/python" tools/minimax_to_gguf.py "$model" "$gguf"
fi

echo "== Lightdesk (build/)"
cmake --build build -j2 --target lightdesk-cli lightdesk-cpu-bench > /dev/null
ids="$cache/demo-ids.txt"
build/app/cli/lightdesk-cli tokenize --model "$model" --file resources/demo/demo.txt > "$ids"

results="$cache/results.jsonl"
: > "$results"
# run ENGINE ROW PREFILL DECODE: one measurement, appended to the results with its row.
run() {
  local line
  if [ "$1" = lightdesk ]; then
    line="$(build/bench/lightdesk-cpu-bench --model "$model" --ids "$ids" --prefill "$3" --decode "$4" --threads "$threads")"
  else
    line="$("$llama_bench" --model "$gguf" --ids "$ids" --prefill "$3" --decode "$4" --threads "$threads")"
  fi
  echo "{\"row\":\"$2\",\"run\":$run_index,\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"result\":$line}" >> "$results"
}
# The document's ids, repeated from its start up to the longest row's 24,576.
python3 - "$ids" 24576 <<'EOF'
import sys
path, need = sys.argv[1], int(sys.argv[2])
ids = open(path).read().strip().split(",")
open(path, "w").write(",".join((ids * (need // len(ids) + 1))[:need]))
EOF

echo "== $runs runs, $threads threads each; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run_index in $(seq 1 "$runs"); do
  for engine in lightdesk llama.cpp; do
    run "$engine" "prefill 4,096" 4096 0
    run "$engine" "prefill 16,384" 16384 0
    run "$engine" "prefill 24,576 + decode at 24,576" 24576 32
    run "$engine" "decode, short context" 16 128
  done
  echo "   run $run_index done; load $(cut -d' ' -f1-3 /proc/loadavg)"
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def median(row, engine, key):
    return statistics.median(r["result"][key] for r in rows if r["row"] == row and r["result"]["engine"] == engine)
table = [("prefill 4,096 tokens", "prefill 4,096", "prefill_tps"),
         ("prefill 16,384 tokens", "prefill 16,384", "prefill_tps"),
         ("prefill 24,576 tokens", "prefill 24,576 + decode at 24,576", "prefill_tps"),
         ("decode, short context", "decode, short context", "decode_tps"),
         ("decode at 24,576 context", "prefill 24,576 + decode at 24,576", "decode_tps")]
loads = sorted({r["load"] for r in rows})
print(f"\nmedians of {max(r['run'] for r in rows)} runs; load averages seen at the runs' starts: {loads[0]} .. {loads[-1]}")
print("| work | Lightdesk | llama.cpp F32 | Lightdesk / llama.cpp |")
print("|---|---|---|---|")
for label, row, key in table:
    ours, theirs = median(row, "lightdesk", key), median(row, "llama.cpp", key)
    print(f"| {label} | {ours:,.0f} tok/s | {theirs:,.0f} tok/s | {ours / theirs:.2f} |")
long_row = "prefill 24,576 + decode at 24,576"
first = [r["result"] for r in rows if r["row"] == long_row and r["run"] == 1]
ours = next(r["ids"] for r in first if r["engine"] == "lightdesk")
theirs = next(r["ids"] for r in first if r["engine"] == "llama.cpp")
same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
print(f"\ngreedy ids after the same 24,576 prompt ids ({same} of {len(ours)} the same before the first difference):")
print("  Lightdesk: " + " ".join(map(str, ours)))
print("  llama.cpp: " + " ".join(map(str, theirs)))
EOF
