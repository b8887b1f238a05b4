"""Capability benchmark of the demo model: exact answers from `lightdesk-cli ask --greedy` on
freshly generated haystacks (a seed training never used), by task, length and needle depth.

    python3 tools/train/bench_capability.py FILLER.txt --cli build/app/cli/lightdesk-cli \
        --lengths 4096,16384 --out docs/demo-capability.json
    python3 tools/train/bench_capability.py FILLER.txt --expert-dtype int8 --per-cell 2 \
        --out docs/demo-capability-int8.json      (int8 or int4 experts; 40 questions per length)
    python3 tools/train/bench_capability.py FILLER.txt --expert-dtype int8 --per-cell 2 \
        --only-lengths 16384 --out docs/demo-capability-16k-int8.json   (16K alone, 4K's documents skipped)
    python3 tools/train/bench_capability.py FILLER.txt --backend cuda --lengths 65536,262144,1048576 \
        --out docs/demo-capability-gpu.json      (on a GPU machine)
    python3 tools/train/bench_capability.py FILLER.txt --out docs/demo-capability.json --plot-only \
        --with docs/demo-capability-gpu.json --plot docs/demo-capability.png

Lengths are prompt tokens (document, question and chat format together). `--backend cuda` for
the long lengths on a GPU machine. `--plot-only` redraws the plot from --out.

Pruned experts (PreMoe): `--experts-kept R` keeps R experts per layer of a task pattern (the
model's expert_patterns.json, tools/train/make_expert_patterns.py): `--experts-pattern matched`
lets `ask` retrieve the pattern nearest each question (the default), `wrong` names another task's
pattern on purpose (record -> story -> passkey -> needles -> record), anything else names one.
"""
import argparse
import json
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import prompt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources/models/lightdesk-demo"
BENCH_SEED = 424242  # training used seeds 1 (examples) and 1001 (its own evaluation)
WRONG_PATTERN = {"record": "story", "story": "passkey", "passkey": "needles", "needles": "record"}


def ask(args, document, question, kind, data_dir):
    command = [str(args.cli), "ask", "--model", str(MODEL), "--document", str(document), "--question", question,
               "--greedy", "--max-new-tokens", "48", "--backend", args.backend, "--data-dir", str(data_dir),
               "--expert-dtype", args.expert_dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.experts_kept:
        command += ["--experts-kept", str(args.experts_kept), "--stats"]
        if args.experts_pattern != "matched":
            command += ["--experts-pattern", WRONG_PATTERN[kind] if args.experts_pattern == "wrong"
                        else args.experts_pattern]
    start = time.time()
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    lost = re.search(r"router probability mass lost this turn: ([0-9.]+)%", run.stderr)
    pattern = re.search(r'experts: \d+ experts per layer of pattern "([^"]+)"', run.stderr)
    return run.stdout.strip(), time.time() - start, {
        "lost_mass": float(lost[1]) / 100 if lost else None, "pattern": pattern[1] if pattern else None}


def measure(args):
    tok = prompt.PromptTokenizer(MODEL / "tokenizer.model")
    haystacks = prompt.Haystacks(tok, pathlib.Path(args.filler).read_text().splitlines())
    rng = random.Random(args.seed)
    asked = [int(x) for x in args.only_lengths.split(",")] if args.only_lengths else None
    results = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as data_dir:
        for length in [int(x) for x in args.lengths.split(",")]:
            for kind in args.kinds.split(","):
                for depth in [float(x) for x in args.depths.split(",")]:
                    for _ in range(args.per_cell):
                        ex = haystacks.example(rng, length, kinds=[kind], depth=depth)
                        if asked is not None and length not in asked:
                            continue  # drawn all the same, so later lengths get the documents of a whole run
                        document = pathlib.Path(tmp) / ex["name"]
                        document.write_text(prompt.document_text(ex["paragraphs"]))
                        answer, seconds, experts = ask(args, document, ex["question"], kind, data_dir)
                        results.append({"kind": kind, "length": length, "depth": depth, "tokens": ex["prompt_length"],
                                        "question": ex["question"], "expected": ex["answer"], "answer": answer,
                                        "correct": answer == ex["answer"], "seconds": round(seconds, 2), **experts})
                        print(json.dumps(results[-1]), flush=True)
    return results


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in results})
    lengths = sorted({r["length"] for r in results})
    depths = sorted({r["depth"] for r in results})
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 0.6 * len(lengths) + 1.8), squeeze=False,
                             sharey=True)
    for ax, kind in zip(axes[0], kinds):
        grid = [[0.0] * len(depths) for _ in lengths]
        for i, length in enumerate(lengths):
            for j, depth in enumerate(depths):
                cell = [r["correct"] for r in results if (r["kind"], r["length"], r["depth"]) == (kind, length, depth)]
                grid[i][j] = sum(cell) / len(cell) if cell else float("nan")
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
        ax.set_yticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
        ax.set_xlabel("needle depth")
        ax.set_title(kind)
        for i in range(len(lengths)):
            for j in range(len(depths)):
                value = grid[i][j]
                ax.text(j, i, "not run" if value != value else f"{value:.0%}", ha="center", va="center", fontsize=7)
    axes[0][0].set_ylabel("prompt tokens")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="exact answers")
    fig.suptitle("lightdesk-demo: greedy exact-match accuracy (lightdesk-cli ask)", y=1.04)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("filler")
    ap.add_argument("--cli", default=str(ROOT / "build/app/cli/lightdesk-cli"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--expert-dtype", default="bf16", help="bf16, int8 or int4: the experts' format")
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--only-lengths", help="ask only at these of --lengths; the others' documents are still drawn, "
                    "so each asked length gets the same documents and questions as a run of all --lengths")
    ap.add_argument("--threads", type=int, default=0, help="the CLI's --threads (0: its default, all cores)")
    ap.add_argument("--kinds", default="record,passkey,needles,story")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--per-cell", type=int, default=1)
    ap.add_argument("--seed", type=int, default=BENCH_SEED)
    ap.add_argument("--experts-kept", type=int, default=0, help="pruned mode: experts kept per layer (0: all)")
    ap.add_argument("--experts-pattern", default="matched", help="matched, wrong, or a task's pattern")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--with", dest="others", nargs="*", default=[],
                    help="more result files (e.g. the GPU lengths) to draw in the same plot")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text())["results"] if args.plot_only else measure(args)
    if not args.plot_only:
        out.write_text(json.dumps({"seed": args.seed, "backend": args.backend, "expert_dtype": args.expert_dtype,
                                   "experts_kept": args.experts_kept,
                                   "experts_pattern": args.experts_pattern if args.experts_kept else None,
                                   "results": results}, indent=1) + "\n")
    if args.plot:
        plot(results + [r for other in args.others for r in json.loads(pathlib.Path(other).read_text())["results"]],
             args.plot)


if __name__ == "__main__":
    main()
