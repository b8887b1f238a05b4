"""Writes tests/data/demo/reference_logits.safetensors: the logits tools/train/model.py computes
in float32 for the shipped demo checkpoint (resources/models/lightdesk-demo) on one ask prompt
of tests/data/demo/ask_prompt.json (more than one lightning block of 256 tokens).
tests/engine/demo_model_test.cpp checks the engine against them: a third implementation of the
architecture, beside the two the tiny fixtures come from.

    python3 tools/train/make_logits_reference.py
"""
import json
import pathlib

import torch
from safetensors.torch import save_file

import model as model_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Rows kept (the whole [T, 8192] would be large): the start, both sides of the first lightning
# block boundary, the middle and the end, where the answer is predicted.
ROWS = [0, 1, 2, 100, 254, 255, 256, 257, 300, -2, -1]


def main():
    model = model_lib.MiniMaxM1.load(ROOT / "resources/models/lightdesk-demo").eval()
    case = json.loads((ROOT / "tests/data/demo/ask_prompt.json").read_text())[0]
    ids = torch.tensor(case["prompt_ids"])
    with torch.no_grad():
        logits = model(ids[None])[0]
    rows = torch.tensor([r % len(ids) for r in ROWS])
    save_file({"input_ids": ids, "rows": rows, "logits": logits[rows].contiguous()},
              str(ROOT / "tests/data/demo/reference_logits.safetensors"))
    print(f"{len(ids)} tokens; greedy next token {int(logits[-1].argmax())}; max |logit| {logits.abs().max():.2f}")


if __name__ == "__main__":
    main()
