#!/usr/bin/env python3
"""Tokenizer speed: Lightdesk against Hugging Face `tokenizers` encode_batch on the same text.

Builds a text of about --megabytes MB from Python's own library sources (code, prose in
docstrings), then times
  * tokenizers: Tokenizer.encode_batch over the text cut into line-aligned pieces (all cores);
  * Lightdesk:  `lightdesk-cli tokenize --model DIR --file TEXT` (reads, encodes on all cores,
                prints the ids), best of --repeat runs, minus the time the same command takes
                on an empty file (start-up, tokenizer loading);
and checks that both give the same ids. Not a test: run it by hand and note the figures.

  python3 tools/bench_tokenizer.py --cli build/app/cli/lightdesk-cli --model tests/data/tokenizers/cl100k-bpe
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from tokenizers import Tokenizer


def corpus(megabytes):
    parts, size = [], 0
    for path in sorted(pathlib.Path(os.__file__).parent.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text.encode())
        if size >= megabytes * 1e6:
            break
    return "".join(parts)


def time_cli(cli, model, file, repeat):
    best, out = float("inf"), b""
    for _ in range(repeat):
        start = time.perf_counter()
        out = subprocess.run([cli, "tokenize", "--model", model, "--file", file], check=True,
                             capture_output=True).stdout
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli", required=True)
    parser.add_argument("--model", required=True, help="directory with tokenizer.json")
    parser.add_argument("--megabytes", type=float, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    text = corpus(args.megabytes)
    data = text.encode()
    tok = Tokenizer.from_file(str(pathlib.Path(args.model) / "tokenizer.json"))
    tok.encode_special_tokens = True
    lines = text.splitlines(keepends=True)
    # Pieces of about 200 lines, cut only between a line that does not end in blanks and one that
    # starts with a visible character:
    # there no pre-tokenizer match of these patterns crosses the cut, so the ids are the
    # whole text's.
    pieces, current = [], []
    for line in lines:
        if len(current) >= 200 and line[:1].strip() and len(current[-1]) > 1 and not current[-1][-2].isspace():
            pieces.append("".join(current))
            current = []
        current.append(line)
    pieces.append("".join(current))
    best_hf, hf_ids = float("inf"), None
    for _ in range(args.repeat):
        start = time.perf_counter()
        encodings = tok.encode_batch(pieces, add_special_tokens=False)
        best_hf = min(best_hf, time.perf_counter() - start)
        hf_ids = [i for e in encodings for i in e.ids]

    with tempfile.TemporaryDirectory() as tmp:
        file, empty = pathlib.Path(tmp) / "text.txt", pathlib.Path(tmp) / "empty.txt"
        file.write_bytes(data)
        empty.write_bytes(b"")
        overhead, _ = time_cli(args.cli, args.model, str(empty), args.repeat)
        total, out = time_cli(args.cli, args.model, str(file), args.repeat)
    ours = [int(x) for x in out.decode().strip().split(",")]
    mb = len(data) / 1e6
    print(f"text: {mb:.1f} MB, {len(hf_ids)} tokens, {os.cpu_count()} cores")
    print(f"tokenizers encode_batch ({len(pieces)} pieces): {best_hf:.2f} s = {mb / best_hf:.1f} MB/s")
    print(f"lightdesk-cli tokenize: {total:.2f} s total, {total - overhead:.2f} s without start-up "
          f"= {mb / (total - overhead):.1f} MB/s")
    print("same ids:", ours == hf_ids)
    return 0 if ours == hf_ids else 1


if __name__ == "__main__":
    sys.exit(main())
