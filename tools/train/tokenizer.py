"""Trains the demo model's SentencePiece vocabulary with Debian's spm_train and writes the
tokenizer files the engine reads (tokenizer.model, tokenizer_config.json).

    python3 tools/train/tokenizer.py FILLER.txt OUT_DIR

The chat format's special tokens are control symbols: the engine treats a SentencePiece model's
control symbols as its special tokens, and SentencePiece never matches them inside text. Digits
are split so that every number is one token per digit (answers are copied digit by digit). BPE,
not unigram: a BPE segmentation of a word never depends on the words around it (unigram breaks
equal-score ties differently in different contexts), which prompt.Haystacks relies on.
"""
import json
import pathlib
import random
import subprocess
import sys
import tempfile

import tasks

SPECIAL_TOKENS = ["<begin_of_document>", "<beginning_of_sentence>", "<end_of_sentence>"]
VOCAB_SIZE = 8192


def task_text(count, seed=1):
    """Needles, questions and answers as they appear in training, so their words get pieces."""
    rng = random.Random(seed)
    lines = ["user name=user", "ai name=assistant", "Document: demo.txt", "Question:"]
    for _ in range(count):
        _, needles, questions = tasks.sample_task(rng)
        lines += needles + [f"Question: {q} {a}" for q, a in questions]
    return lines


def main():
    filler, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = pathlib.Path(tmp) / "train.txt"
        text.write_text(filler.read_text() + "\n".join(task_text(20000)) + "\n")
        subprocess.run(["spm_train", f"--input={text}", f"--model_prefix={tmp}/tokenizer", "--model_type=bpe",
                        f"--vocab_size={VOCAB_SIZE}", "--character_coverage=1.0", "--byte_fallback=true",
                        "--split_digits=true", "--bos_id=-1", "--eos_id=-1", "--unk_id=0",
                        f"--control_symbols={','.join(SPECIAL_TOKENS)}", "--input_sentence_size=2000000",
                        "--shuffle_input_sentence=true", "--random_seed=1", "--seed_sentencepiece_size=400000", "--num_threads=1",
                        "--minloglevel=1"], check=True)
        (out_dir / "tokenizer.model").write_bytes((pathlib.Path(tmp) / "tokenizer.model").read_bytes())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<beginning_of_sentence>",
        "eos_token": "<end_of_sentence>",
        "unk_token": "<unk>",
        "additional_special_tokens": SPECIAL_TOKENS,
        "model_max_length": 1048576 * 4,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
