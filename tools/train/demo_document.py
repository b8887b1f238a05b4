"""Writes a demo document for the bundled model and questions about it with their answers.

    python3 tools/train/demo_document.py FILLER.txt OUT_DIR [--tokens 24576] [--seed 2026]

The document is filler text from Debian's texts (tools/train/corpus.py) with facts of every
task kind the model was trained on hidden at spread-out depths: key-value records, a pass key,
magic numbers and a short story's facts. OUT_DIR gets demo.txt and questions.json.
"""
import argparse
import json
import pathlib
import random
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import prompt  # noqa: E402
import tasks  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("filler")
    ap.add_argument("out_dir")
    ap.add_argument("--tokens", type=int, default=24576)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tok = prompt.PromptTokenizer(ROOT / "resources/models/lightdesk-demo/tokenizer.model")
    haystacks = prompt.Haystacks(tok, pathlib.Path(args.filler).read_text().splitlines())
    needles, questions = [], []
    for kind in ["record", "passkey", "needles", "story"]:
        kind_needles, kind_questions = tasks.TASKS[kind](rng)
        needles += kind_needles
        questions += [{"kind": kind, "question": q, "answer": a} for q, a in kind_questions[:2]]
    budget = args.tokens - sum(len(tok.encode(n)) for n in needles)
    filler = [haystacks.lines[p] for p in haystacks.filler_span(rng, budget)]
    # Facts at evenly spread depths, in shuffled order.
    rng.shuffle(needles)
    paragraphs = list(filler)
    for i, needle in reversed(list(enumerate(needles))):
        paragraphs.insert(round((i + 0.5) / len(needles) * len(filler)), needle)
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = prompt.document_text(paragraphs)
    (out / "demo.txt").write_text(text)
    prompt_tokens = len(tok.render_ask("demo.txt", text, questions[0]["question"]))
    (out / "questions.json").write_text(json.dumps({"seed": args.seed, "tokens": prompt_tokens,
                                                    "questions": questions}, indent=1) + "\n")
    print(f"demo.txt: {prompt_tokens} prompt tokens, {len(questions)} questions", file=sys.stderr)


if __name__ == "__main__":
    main()
