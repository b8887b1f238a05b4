#!/usr/bin/env python3
"""Generates the tokenizer test data and the bundled model's tokenizer.

Trains small byte-level BPE tokenizers with the Hugging Face `tokenizers` library
(`pip install tokenizers`), laid out like MiniMax's (GPT-2 byte-to-unicode alphabet, a
pre-tokenizer regex split, merges by rank, MiniMax's special tokens as added tokens), and
writes, for each, reference encodings of a varied corpus that the C++ tokenizer must reproduce
id for id:

  tests/data/tokenizers/<name>/tokenizer.json, tokenizer_config.json
  tests/data/tokenizers/<name>/reference.json
      {"cases": [{"text", "ids", "ids_with_special", "decoded"}]}

  "ids" come from `encode_special_tokens = True` (special-token strings in the text are plain
  text, as user and document text must be); "ids_with_special" from the default, where they
  become their special ids (as the chat renderer's own strings do).

A SentencePiece model (tests/data/tokenizers/spm-bpe/tokenizer.model, `pip install
sentencepiece`) comes with the ids and decoded text of the Python sentencepiece package
(reference.json: {"cases": [{"text", "ids", "decoded"}]}); MiniMax's special tokens are control
symbols there, which SentencePiece never matches in text.

It also writes the 512-id tokenizer of the bundled model resources/models/tiny-a-m1-rd8 (and
its copy in tests/data/tiny-a-m1-rd8): exactly the model's vocabulary, with
<beginning_of_sentence> = 1 and <end_of_sentence> = 2 as its config.json says.

Run from the repository root: python3 tools/make_tokenizer_data.py
"""
import json
import os
import pathlib
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent

# MiniMax-01's added tokens that the chat formats use (docs/minimax-model.md §7).
MINIMAX_SPECIAL = [
    "<begin_of_document>",
    "<beginning_of_sentence>",
    "<end_of_sentence>",
    "<end_of_document>",
    "<function_call>",
    "<image>",
]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The cases the C++ tokenizer is checked on.
CORPUS = [
    "Hello, world! This is a plain ASCII sentence.",
    "It's, they're, we've, I'm, you'll, he'd; IT'S LOUD. don't",
    "Café, naïve, façade, Ångström, Ærø, São Paulo, Zürich, Łódź, crème brûlée.",
    "中文分词测试：今天天气很好。日本語のテキストです。한국어 문장입니다.",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 and text after.",
    "def f(x):\n    return {\"a\": [1, 2, 3], 'b': x ** 2}  # comment\n\n\nclass A:\n\tpass\n",
    "int main() {\n  for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }\n  return 0;\n}\n",
    "many    spaces\t\ttabs   \n\n\n   and newlines      \r\n\r\n end   ",
    "                                                                  ",
    "\n\n\n\n\n\n\n\n",
    "numbers 1234567890 3.14159 1e-5 -42 0x1F 100,000,000",
    "A document containing <end_of_sentence> and <beginning_of_sentence>user name=user\n must not end a turn.",
    "<begin_of_document><beginning_of_sentence>system ai_setting=assistant\nBe brief.<end_of_sentence>\n",
    "tags glued:<image><image>x<function_call>```typescript\nfunctions.f({})\n```",
    "Mixed: Привет мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "Zero width: a\u200bb\u200cc\u200dd\ufeffe; combining: e\u0301 a\u0308 n\u0303.",
    "Symbols: ©®™ ±×÷ ≤≥≠ ∑∫√ ←→↑↓ €£¥₹ §¶†‡ «quoted» „quoted\" ‹›",
    "URL https://example.com/path?query=a&b=c#frag and email someone@example.org.",
    "",
    " ",
    "a",
    "  leading and trailing  ",
    "Ünïcödé ÜNÏCÖDÉ  İstanbul ǅ ß ẞ ﬁ ﬂ",
    "Tabs\tbetween\twords\tand a\u00a0non-breaking space, an ideographic\u3000space.",
]


def training_text():
    """A few hundred KB of varied text, so merges cover words, code and non-Latin scripts."""
    parts = list(CORPUS) * 20
    words = ("the quick brown fox jumps over the lazy dog while tokenizers merge pairs by rank "
             "and documents of many pages become token spans with anchors").split()
    for i in range(3000):
        parts.append(" ".join(words[(i * 7 + k) % len(words)] for k in range(i % 13 + 3)) + ".")
    parts += ["中文分词测试今天天气很好我们一起学习模型" * 30, "日本語のテキストです" * 30,
              "Привет мир как дела " * 40, "def main():\n    return 0\n" * 40]
    for name in ("textwrap.py", "json/decoder.py", "string.py"):
        path = pathlib.Path(os.__file__).parent / name
        if path.exists():
            parts.append(path.read_text(encoding="utf-8"))
    return parts


def byte_level_bpe(pattern):
    tok = Tokenizer(models.BPE())
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train(pattern, vocab_size, special_first, normalizer=None):
    """special_first: special tokens take the first ids (as the 512-id model's config wants);
    otherwise they come after the merges, as in MiniMax's own tokenizer (ids >= 200000)."""
    tok = byte_level_bpe(pattern)
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=MINIMAX_SPECIAL if special_first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    if not special_first:
        tok.add_special_tokens(MINIMAX_SPECIAL)
    return tok


def config_json(model_max_length):
    # The fields MiniMax-M1 publishes (shared/fixtures/minimax-m1-tokenizer); the chat template is
    # left out on purpose: Lightdesk renders the conversation natively.
    return {
        "add_prefix_space": False,
        "bos_token": "<beginning_of_sentence>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<end_of_sentence>",
        "model_max_length": model_max_length,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<end_of_document>",
    }


def save(tok, directory, model_max_length, with_reference):
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config_json(model_max_length), indent=2) + "\n", encoding="utf-8")
    if not with_reference:
        return
    # Reload what was written, so the references come from the file the C++ side reads.
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    cases = []
    texts = CORPUS + ["\n".join(CORPUS) * 8]  # a longer text crossing the parallel split size
    for text in texts:
        tok.encode_special_tokens = True
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        ids_with_special = tok.encode(text, add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        if tok.normalizer is None and decoded != text:
            sys.exit(f"{directory}: decode does not invert encode for {text!r}")
        cases.append({"text": text, "ids": ids, "ids_with_special": ids_with_special, "decoded": decoded})
    (directory / "reference.json").write_text(
        json.dumps({"cases": cases}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def sentencepiece_model(directory):
    import io
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=model, vocab_size=1000, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        control_symbols=MINIMAX_SPECIAL, character_coverage=0.9995, minloglevel=2)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    cases = []
    for text in CORPUS:
        ids = sp.encode(text)
        cases.append({"text": text, "ids": ids, "decoded": sp.decode(ids)})
    (directory / "reference.json").write_text(
        json.dumps({"cases": cases}, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def main():
    data = ROOT / "tests" / "data"
    sentencepiece_model(data / "tokenizers" / "spm-bpe")
    save(train(None, 1200, special_first=False), data / "tokenizers" / "gpt2-bpe", 4096, True)
    save(train(CL100K_PATTERN, 2500, special_first=False), data / "tokenizers" / "cl100k-bpe", 4096, True)
    # A normalizer (NFKC: ligatures, compatibility forms, composed accents) in front of the BPE.
    save(train(CL100K_PATTERN, 1500, special_first=False, normalizer=normalizers.NFKC()),
         data / "tokenizers" / "nfkc-bpe", 4096, True)
    # The bundled model: 512 ids in all.
    tiny = train(CL100K_PATTERN, 512, special_first=True)
    if tiny.get_vocab_size(with_added_tokens=True) != 512:
        sys.exit(f"tiny tokenizer has {tiny.get_vocab_size(with_added_tokens=True)} ids, not 512")
    assert tiny.token_to_id("<beginning_of_sentence>") == 1 and tiny.token_to_id("<end_of_sentence>") == 2
    save(tiny, data / "tokenizers" / "tiny-512", 4096, True)
    for model in (ROOT / "resources" / "models" / "tiny-a-m1-rd8", data / "tiny-a-m1-rd8"):
        save(tiny, model, 4096, False)


if __name__ == "__main__":
    main()
