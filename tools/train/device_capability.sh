#!/bin/bash
# The demo model's capability on a GPU machine, in one call of the device tool: builds
# lightdesk-cli there (bench/device-check.sh --cli, which also runs the CUDA tests), answers the
# questions of the one-million-token demo document with --stats (its prefill time), then runs
# bench_capability.py through `lightdesk-cli ask --backend cuda` at 64K, 256K and 1M tokens.
#   LIGHTDESK_DEBS=DIR bash tools/train/device_capability.sh FILLER.txt[.gz] [DEVICE-CHECK OPTIONS]
# Results in $OUT. DEVICE-CHECK OPTIONS (e.g. --bench) go to bench/device-check.sh, whose
# benchmark logs come back too. SHORT_LENGTHS (default 65536,262144; empty: none) are measured
# at every depth, 1M at depths 0, 50 and 100%.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/device-capability}"
mkdir -p "$out"
filler=$1
shift
if [[ "$filler" == *.gz ]]; then gunzip -c "$filler" >/tmp/filler.txt; filler=/tmp/filler.txt; fi

OUT=/tmp/device-check timeout 320 bash bench/device-check.sh --cli "$@" >"$out/check.log" 2>&1
echo "device-check exit code $?"; grep -E "^\[  (PASSED|FAILED|SKIPPED)|build:|tests ran|FAILED" "$out/check.log" | head -20
cp /tmp/device-check/bench.log /tmp/device-check/anchors.log "$out/" 2>/dev/null
lib=/tmp/lightdesk-deps/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$lib/openblas-pthread:$lib:${LD_LIBRARY_PATH:-}"
cli=build-device/app/cli/lightdesk-cli

gunzip -c resources/demo/demo-1m.txt.gz >/tmp/demo-1m.txt
# The first question reads the document into a stored session; the others continue from its state.
timeout 80 python3 - "$cli" >"$out/demo-1m.log" 2>&1 <<'PY'
import json, subprocess, sys, time
questions = json.load(open("resources/demo/demo-1m-questions.json"))["questions"]
for i, q in enumerate(questions):
    start = time.time()
    run = subprocess.run([sys.argv[1], "ask", "--backend", "cuda", "--model", "resources/models/lightdesk-demo",
                          "--session-db", "/tmp/demo-sessions.sqlite", "--session", "demo-1m", "--question",
                          q["question"], "--greedy", "--stats"] + (["--document", "/tmp/demo-1m.txt"] if i == 0 else []),
                         capture_output=True, text=True)
    print(json.dumps({"question": q["question"], "expected": q["answer"], "answer": run.stdout.strip(),
                      "correct": run.stdout.strip() == q["answer"], "seconds": round(time.time() - start, 2),
                      "stats": run.stderr.replace("\r", "\n").splitlines()[-6:]}), flush=True)
PY
cat "$out/demo-1m.log"
bench="python3 tools/train/bench_capability.py $filler --cli $cli --backend cuda --per-cell 1"
short_lengths=${SHORT_LENGTHS-65536,262144}
if [ -n "$short_lengths" ]; then
  timeout 170 $bench --lengths "$short_lengths" --out "$out/capability-gpu-short.json" >"$out/capability-short.log" 2>&1
  echo "$short_lengths: $(grep -c '"correct": true' "$out/capability-short.log") of $(grep -c '"correct"' "$out/capability-short.log") right"
fi
timeout 170 $bench --lengths 1048576 --depths 0,0.5,1 --kinds needles,story,record,passkey --out "$out/capability-gpu-1m.json" >"$out/capability-1m.log" 2>&1
echo "1M: $(grep -c '"correct": true' "$out/capability-1m.log") of $(grep -c '"correct"' "$out/capability-1m.log") right"
