"""Writes tests/data/demo/ask_prompt.json: a small generated document, a question and the prompt
ids the training data uses for them (prompt.render_ask). tests/text/demo_prompt_test.cpp checks
that the engine's `ask` prompt has the same ids, so training and inference cannot drift apart.

    python3 tools/train/make_prompt_reference.py FILLER.txt
"""
import json
import pathlib
import random
import sys

import prompt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    tok = prompt.PromptTokenizer(ROOT / "resources/models/lightdesk-demo/tokenizer.model")
    haystacks = prompt.Haystacks(tok, pathlib.Path(sys.argv[1]).read_text().splitlines())
    cases = []
    for seed, kinds in [(11, ["record"]), (12, ["passkey"]), (13, ["needles"]), (14, ["story"])]:
        ex = haystacks.example(random.Random(seed), 400, kinds=kinds)
        text = prompt.document_text(ex["paragraphs"])
        cases.append({"name": ex["name"], "document": text, "question": ex["question"], "answer": ex["answer"],
                      "prompt_ids": tok.render_ask(ex["name"], text, ex["question"]),
                      "answer_ids": tok.answer_ids(ex["answer"]),
                      "follow_up": {"question": "What is the pass key?",
                                    "prompt_ids": tok.render_follow_up("What is the pass key?")}})
    out = ROOT / "tests/data/demo/ask_prompt.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
