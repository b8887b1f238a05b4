"""Task expert patterns of the demo model (PreMoe): one per task kind, calibrated by
`lightdesk-cli experts calibrate` over freshly generated haystacks of that kind (a seed training
and the capability benchmark never used), and merged into the model's expert_patterns.json, which
the app imports on use. Held-out haystacks of the same kind measure, for both scores (TCESS as
PreMoe's code computes it, and the mean routing probability), how much router probability mass
the top experts cover: the default score is the one that covers more.

    python3 tools/train/make_expert_patterns.py FILLER.txt --cli build/app/cli/lightdesk-cli \
        --out resources/models/lightdesk-demo/expert_patterns.json --coverage docs/demo-expert-coverage.json

FILLER.txt is tools/train/corpus.py's output.
"""
import argparse
import json
import pathlib
import random
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import prompt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources/models/lightdesk-demo"
CALIBRATION_SEED = 515151  # training used 1 and 1001, bench_capability.py 424242
COVERED = re.compile(r"held-out router mass covered by the top (\d+) of (\S+): ([0-9.]+)")


def write_examples(haystacks, rng, kind, count, length, directory):
    files, questions = [], []
    for i in range(count):
        ex = haystacks.example(rng, length, kinds=[kind])
        path = directory / f"{kind}-{i}-{ex['name']}"
        path.write_text(prompt.document_text(ex["paragraphs"]))
        files.append(str(path))
        questions.append(ex["question"])
    return files, questions


def calibrate(args, kind, files, questions, held_out, held_out_questions, database):
    command = [args.cli, "experts", "calibrate", "--model", str(MODEL), "--task", kind, "--backend", args.backend,
               "--score", args.score, "--session-db", str(database), "--out", args.out]
    for option, values in (("--file", files), ("--question", questions), ("--held-out", held_out),
                           ("--held-out-question", held_out_questions)):
        for value in values:
            command += [option, value]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    print(run.stdout, end="", flush=True)
    return [{"task": kind, "kept": int(m[1]), "score": m[2], "covered": float(m[3])}
            for m in COVERED.finditer(run.stdout)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("filler")
    ap.add_argument("--cli", default=str(ROOT / "build/app/cli/lightdesk-cli"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--kinds", default="record,passkey,needles,story")
    ap.add_argument("--per-task", type=int, default=8, help="calibration haystacks per task")
    ap.add_argument("--held-out", type=int, default=4, help="held-out haystacks per task")
    ap.add_argument("--length", type=int, default=2048, help="tokens per haystack")
    ap.add_argument("--score", default="mean-probability")
    ap.add_argument("--out", default=str(MODEL / "expert_patterns.json"))
    ap.add_argument("--coverage", help="write the held-out coverage of both scores here (JSON)")
    args = ap.parse_args()
    tok = prompt.PromptTokenizer(MODEL / "tokenizer.model")
    haystacks = prompt.Haystacks(tok, pathlib.Path(args.filler).read_text().splitlines())
    rng = random.Random(CALIBRATION_SEED)
    coverage = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        for kind in args.kinds.split(","):
            files, questions = write_examples(haystacks, rng, kind, args.per_task, args.length, directory)
            held, held_questions = write_examples(haystacks, rng, kind, args.held_out, args.length, directory)
            coverage += calibrate(args, kind, files, questions, held, held_questions, directory / "patterns.sqlite")
    if args.coverage:
        pathlib.Path(args.coverage).write_text(json.dumps({"seed": CALIBRATION_SEED, "length": args.length,
                                                           "per_task": args.per_task, "held_out": args.held_out,
                                                           "coverage": coverage}, indent=1) + "\n")
    for kept in sorted({c["kept"] for c in coverage}):
        means = {s: sum(c["covered"] for c in coverage if c["kept"] == kept and c["score"] == s) /
                 max(1, sum(1 for c in coverage if c["kept"] == kept and c["score"] == s))
                 for s in ("tcess", "mean-probability")}
        print(f"top {kept}: held-out mass covered, mean over tasks: tcess {means['tcess']:.4f}, "
              f"mean-probability {means['mean-probability']:.4f}")


if __name__ == "__main__":
    main()
