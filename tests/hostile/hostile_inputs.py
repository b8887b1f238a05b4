#!/usr/bin/env python3
"""Hostile inputs through lightdesk-cli: malformed model directories (config.json, safetensors
headers and data, shard indexes, tokenizer files), token ids and flags, documents, images and
session databases, FIFOs, devices and oversized files in place of any of them.

Each case runs the CLI with a time limit and fails on
  - a crash (the process died of a signal),
  - a hang (the time limit passed),
  - an error that is not one clear line naming its cause (library texts such as
    "[json.exception...]", "std::bad_alloc", "PCRE2 error"), or
  - a success (exit 0) where the input must be refused, or whose output is non-finite or
    nonsense (logits with NaN, token ids outside the vocabulary, text that lost its end).

Usage: hostile_inputs.py CLI REPO_ROOT [--jobs N] [--only SUBSTRING]
Prints the number of cases per group and the failures; exits 1 if any case failed.
"""
import argparse
import collections
import concurrent.futures
import json
import math
import os
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import zlib

TIMEOUT_S = 30
BAD_TEXTS = ("[json.exception", "std::bad_alloc", "bad_alloc", "PCRE2 error", "basic_string", "vector::",
             "terminate called", "what():", "stoi", "stoll", "Assertion")


class Case:
    def __init__(self, group, name, args, expect="error", check=None, mentions=None, stdin=None):
        self.group = group
        self.name = name
        self.args = args
        # "error": must exit non-zero with one clear line; "any": either that or a sane success.
        self.expect = expect
        self.check = check  # called with (stdout, stderr) after exit 0; returns a problem or None
        self.mentions = mentions  # text the error line must hold (the file's name, usually)
        self.stdin = stdin


class Workspace:
    def __init__(self, root, repo):
        self.root = root
        self.repo = repo
        self.model = os.path.join(repo, "resources", "models", "tiny-a-m1-rd8")
        self.vl_model = os.path.join(repo, "tests", "data", "tiny-vl")
        self.count = 0
        self.originals = {}

    def new_dir(self, prefix):
        self.count += 1
        path = os.path.join(self.root, "%s-%d" % (prefix, self.count))
        os.makedirs(path)
        return path

    def model_copy(self, source=None):
        """A copy of the tiny model: hard links to one private copy of each file (every case
        replaces the file it damages, never writes into it)."""
        source = source or self.model
        if source not in self.originals:
            private = self.new_dir("original")
            for name in os.listdir(source):
                if os.path.isfile(os.path.join(source, name)):
                    shutil.copyfile(os.path.join(source, name), os.path.join(private, name))
            self.originals[source] = private
        path = self.new_dir("model")
        for name in os.listdir(self.originals[source]):
            os.link(os.path.join(self.originals[source], name), os.path.join(path, name))
        return path

    def file(self, name, data):
        path = os.path.join(self.new_dir("file"), name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return path

    def fifo(self, name):
        path = os.path.join(self.new_dir("fifo"), name)
        os.mkfifo(path)
        return path

    def link(self, name, target):
        path = os.path.join(self.new_dir("link"), name)
        os.symlink(target, path)
        return path

    def sparse(self, name, size):
        path = os.path.join(self.new_dir("sparse"), name)
        with open(path, "wb") as f:
            f.truncate(size)
        return path


def replace_file(directory, name, kind, data=None):
    """Puts a FIFO, a /dev/zero link, a directory, a sparse huge file or `data` at directory/name."""
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.symlink("/dev/zero", path)
    elif kind == "urandom":
        os.symlink("/dev/urandom", path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(70 << 20)
    elif kind == "dangling":
        os.symlink(path + ".missing", path)
    else:
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
    return path


# ---- output checks ----

def ids_in_vocab(vocab):
    def check(out, _err):
        line = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            ids = [int(x) for x in line.split(",") if x != ""]
        except ValueError:
            return "output is not a list of ids: %r" % line[:80]
        if any(i < 0 or i >= vocab for i in ids):
            return "id outside the vocabulary in %r" % line[:80]
        return None
    return check


def finite_logits(path):
    def check(_out, _err):
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        t = header["logits"]
        begin, end = t["data_offsets"]
        values = struct.unpack("<%df" % ((end - begin) // 4), data[8 + n + begin:8 + n + end])
        if not values or not all(math.isfinite(v) for v in values):
            return "non-finite logits"
        return None
    return check


# ---- builders ----

def safetensors_bytes(header, data):
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def png(width, height, rows=None, truncate=None):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
    raw = rows if rows is not None else b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(min(height, 64)))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return data[:truncate] if truncate else data


def minimal_pdf(page_tree_damage=None):
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        None,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    stream = b"BT /F1 12 Tf 20 100 Td (Hostile page text) Tj ET"
    objects[3] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    if page_tree_damage == "kids":
        objects[1] = b"<< /Type /Pages /Kids [9 0 R] /Count 1 >>"
    elif page_tree_damage == "loop":
        objects[1] = b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"
    elif page_tree_damage == "count":
        objects[1] = b"<< /Type /Pages /Kids [3 0 R] /Count 100000000 >>"
    elif page_tree_damage == "nopages":
        objects[0] = b"<< /Type /Catalog >>"
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % (i + 1) + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


# ---- case groups ----

def config_cases(ws, cli):
    cases = []
    base = json.load(open(os.path.join(ws.model, "config.json")))
    fields = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "num_local_experts", "num_experts_per_tok", "intermediate_size", "rms_norm_eps",
              "max_position_embeddings", "rope_theta", "rotary_dim", "layernorm_full_attention_alpha",
              "layernorm_linear_attention_beta", "layernorm_mlp_alpha", "eos_token_id", "attn_type_list",
              "model_type", "architectures", "tie_word_embeddings"]
    values = [-1, 0, 2 ** 32 + 8, 1e39, "x", None, []]
    for field in fields:
        for value in values:
            config = dict(base)
            if value is None:
                config.pop(field, None)
            else:
                config[field] = value
            directory = ws.model_copy()
            replace_file(directory, "config.json", "data", json.dumps(config))
            cases.append(Case("config.json", "%s=%r" % (field, value),
                              ["generate", "--model", directory, "--ids", "1,2", "--max-new-tokens", "2"],
                              expect="any", check=ids_in_vocab(base["vocab_size"])))
    texts = {"empty": "", "truncated": json.dumps(base)[:100], "array": "[1,2]", "number": "5",
             "deep": "[" * 100000 + "]" * 100000, "nul": "\0" * 100, "utf16": json.dumps(base).encode("utf-16"),
             "deep-object": '{"a":' * 50000 + "1" + "}" * 50000}
    for name, text in texts.items():
        directory = ws.model_copy()
        replace_file(directory, "config.json", "data", text)
        cases.append(Case("config.json", name, ["info", "--model", directory], mentions="config.json"))
    for kind in ("fifo", "zero", "urandom", "dir", "huge", "dangling"):
        directory = ws.model_copy()
        replace_file(directory, "config.json", kind)
        cases.append(Case("config.json", kind, ["info", "--model", directory], mentions="config.json"))
    return cases


def safetensors_cases(ws, cli):
    cases = []
    header, data = read_safetensors(os.path.join(ws.model, "model.safetensors"))
    vocab = json.load(open(os.path.join(ws.model, "config.json")))["vocab_size"]
    names = sorted(k for k in header if k != "__metadata__")
    first, last = names[0], max(names, key=lambda k: header[k]["data_offsets"][1])

    def with_file(name, content, expect="error"):
        directory = ws.model_copy()
        replace_file(directory, "model.safetensors", "data", content)
        return Case("safetensors", name, ["generate", "--model", directory, "--ids", "1,2", "--max-new-tokens", "2"],
                    expect=expect, check=ids_in_vocab(vocab),
                    mentions="model.safetensors" if expect == "error" else None)

    whole = safetensors_bytes(header, data)
    for cut in (0, 4, 8, 9, 100, len(whole) // 2, len(whole) - 1):
        cases.append(with_file("truncated-at-%d" % cut, whole[:cut]))
    cases.append(with_file("trailing-bytes", whole + b"\0" * 64))
    cases.append(with_file("header-length-huge", struct.pack("<Q", 2 ** 63) + whole[8:]))
    cases.append(with_file("header-not-json", struct.pack("<Q", 8) + b"#notjson" + data))
    cases.append(with_file("header-array", safetensors_bytes([], data)))
    for field, value in (("dtype", "I32"), ("dtype", 5), ("shape", [-1, 4]), ("shape", [2 ** 40, 2 ** 40]),
                         ("shape", "x"), ("data_offsets", [10, 5]), ("data_offsets", [0, 2 ** 64 - 1]),
                         ("data_offsets", [-4, 4]), ("data_offsets", [0]), ("data_offsets", None)):
        h = json.loads(json.dumps(header))
        h[first][field] = value
        cases.append(with_file("%s=%r" % (field, value), safetensors_bytes(h, data)))
    h = json.loads(json.dumps(header))
    h[first]["data_offsets"] = list(h[last]["data_offsets"])
    cases.append(with_file("overlap", safetensors_bytes(h, data)))
    h = json.loads(json.dumps(header))
    h[last]["data_offsets"][1] -= 4
    h[last]["shape"] = [1] * len(h[last]["shape"])
    cases.append(with_file("last-offset-short", safetensors_bytes(h, data)))
    for value, label in ((float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")):
        begin = header[last]["data_offsets"][0]
        poisoned = bytearray(data)
        if header[last]["dtype"] == "F32":
            poisoned[begin:begin + 4] = struct.pack("<f", value)
        cases.append(with_file("weight-" + label, safetensors_bytes(header, bytes(poisoned))))
    for kind in ("fifo", "zero", "dir", "dangling"):
        directory = ws.model_copy()
        replace_file(directory, "model.safetensors", kind)
        cases.append(Case("safetensors", kind, ["info", "--model", directory], mentions="model.safetensors"))
    # Sharded: the index and its shards.
    index_variants = {
        "missing-shard": {"weight_map": {first: "nope.safetensors"}},
        "traversal": {"weight_map": {first: "../model.safetensors"}},
        "absolute": {"weight_map": {first: "/etc/passwd"}},
        "not-object": {"weight_map": [1]},
        "name-not-string": {"weight_map": {first: 5}},
        "no-map": {},
    }
    for name, index in index_variants.items():
        directory = ws.model_copy()
        replace_file(directory, "model.safetensors.index.json", "data", json.dumps(index))
        cases.append(Case("safetensors index", name, ["info", "--model", directory]))
    for kind in ("fifo", "zero", "dir"):
        directory = ws.model_copy()
        replace_file(directory, "model.safetensors.index.json", "data",
                     json.dumps({"weight_map": {k: "shard.safetensors" for k in names}}))
        replace_file(directory, "shard.safetensors", kind)
        cases.append(Case("safetensors index", "shard-" + kind, ["info", "--model", directory],
                          mentions="shard.safetensors"))
        directory = ws.model_copy()
        replace_file(directory, "model.safetensors.index.json", kind)
        cases.append(Case("safetensors index", "index-" + kind, ["info", "--model", directory],
                          mentions="model.safetensors.index.json"))
    return cases


def tokenizer_cases(ws, cli):
    cases = []
    base = json.load(open(os.path.join(ws.model, "tokenizer.json")))
    text_file = ws.file("words.txt", "hello hostile world\n")

    def with_tokenizer(name, content, expect="error"):
        directory = ws.model_copy()
        replace_file(directory, "tokenizer.json", "data", content)
        return Case("tokenizer.json", name, ["tokenize", "--model", directory, "--file", text_file], expect=expect,
                    check=ids_in_vocab(10 ** 9), mentions="tokenizer.json" if expect == "error" else None)

    for token_id in (-1, -2 ** 31, 2 ** 31, 2 ** 32 + 3, 10 ** 9, "7", 1.5, None):
        t = json.loads(json.dumps(base))
        t["added_tokens"].append({"id": token_id, "content": "<zz>", "special": True})
        cases.append(with_tokenizer("added-id=%r" % (token_id,), json.dumps(t)))
    for key, vals in (("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers")):
        nested = '{"type":"Sequence","%s":[' % vals * 100000 + "null" + "]}" * 100000
        t = dict(base)
        t[key] = "@@"
        cases.append(with_tokenizer(key + "-nested-100000", json.dumps(t).replace('"@@"', nested)))
    for path, value in ((("model",), 5), (("model", "vocab"), "x"), (("model", "merges"), [5]),
                        (("model", "merges"), ["a"]), (("model", "vocab"), {"a": -1}), (("added_tokens",), {}),
                        (("model", "type"), "WordPiece"), (("decoder",), 7)):
        t = json.loads(json.dumps(base))
        target = t
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        cases.append(with_tokenizer("%s=%r" % (".".join(path), value), json.dumps(t)))
    for regex, label in (("(", "unbalanced"), ("(a+)+$", "backtracking"), ("\\p{Nope}", "bad-property")):
        t = json.loads(json.dumps(base))
        t["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
        directory = ws.model_copy()
        replace_file(directory, "tokenizer.json", "data", json.dumps(t))
        long_text = ws.file("a.txt", "a" * 5000 + "!")
        cases.append(Case("tokenizer.json", "regex-" + label, ["tokenize", "--model", directory, "--file", long_text],
                          expect="any", check=ids_in_vocab(10 ** 9)))
    for kind in ("fifo", "zero", "dir", "huge"):
        directory = ws.model_copy()
        replace_file(directory, "tokenizer.json", kind)
        cases.append(Case("tokenizer.json", kind, ["tokenize", "--model", directory, "--file", text_file],
                          mentions="tokenizer.json"))
    for content, label in (("", "empty"), ("[", "truncated"), ('{"bos_token": 5}', "bos-number"),
                           ('{"bos_token": {"x": 1}, "eos_token": "<e>"}', "bos-object")):
        directory = ws.model_copy()
        replace_file(directory, "tokenizer_config.json", "data", content)
        doc = ws.file("d.txt", "a document\n")
        cases.append(Case("tokenizer_config.json", label,
                          ["ask", "--model", directory, "--document", doc, "--question", "q", "--max-new-tokens", "1"],
                          mentions="tokenizer_config.json"))
    for kind in ("fifo", "zero"):
        directory = ws.model_copy()
        replace_file(directory, "tokenizer_config.json", kind)
        doc = ws.file("d.txt", "a document\n")
        cases.append(Case("tokenizer_config.json", kind,
                          ["ask", "--model", directory, "--document", doc, "--question", "q", "--max-new-tokens", "1"],
                          mentions="tokenizer_config.json"))
    return cases


def flag_cases(ws, cli):
    cases = []
    m = ws.model
    vocab = json.load(open(os.path.join(m, "config.json")))["vocab_size"]
    gen = ["generate", "--model", m, "--max-new-tokens", "2"]
    for ids in ("-1", "512", "2147483648", "4294967297", "99999999999999999999", "", ",", "1,,2", "a", "1;2",
                "0x10", "1e3", "１"):
        cases.append(Case("token ids", repr(ids), ["generate", "--model", m, "--ids", ids, "--max-new-tokens", "1"],
                          expect="error"))
    many = ",".join(["1"] * 5000)  # past the tiny model's 4096-token context
    cases.append(Case("token ids", "past-the-context", ["generate", "--model", m, "--ids", many,
                                                         "--max-new-tokens", "1"], mentions="context"))
    for flag, value in (("--threads", "100000"), ("--threads", "-5"), ("--threads", "99999999999"),
                        ("--max-new-tokens", "-1"), ("--max-new-tokens", "99999999999999999999"),
                        ("--chunk", "-1"), ("--chunk", "99999999999"),
                        ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"),
                        ("--top-p", "nan"), ("--top-p", "2"), ("--top-p", "-1"), ("--top-k", "-1"),
                        ("--seed", "-1"), ("--backend", "tpu")):
        cases.append(Case("flags", "%s %s" % (flag, value), gen + ["--ids", "1,2", flag, value], expect="any",
                          check=ids_in_vocab(vocab)))
    # Nothing may run past the context, however many tokens are asked for.
    cases.append(Case("flags", "max-new-tokens-int64-max",
                      gen[:-1] + ["9223372036854775807", "--ids", "1,2"], expect="any", check=ids_in_vocab(vocab)))
    cases.append(Case("flags", "prompt-max-new-tokens-int64-max",
                      gen[:-1] + ["9223372036854775807", "--prompt", "hostile"], expect="any"))
    out = os.path.join(ws.new_dir("out"), "l.safetensors")
    cases.append(Case("flags", "decode-from-past-the-end",
                      ["logits", "--model", m, "--ids", "1,2", "--decode-from", "9", "--out", out], expect="any",
                      check=finite_logits(out)))
    out = os.path.join(ws.new_dir("out"), "l.safetensors")
    cases.append(Case("flags", "logits-finite", ["logits", "--model", m, "--ids", "1,2,3", "--out", out],
                      expect="any", check=finite_logits(out)))
    for value in ("-1", "99999999999999999999", "x"):
        cases.append(Case("flags", "info --tokens " + value, ["info", "--model", m, "--tokens", value],
                          expect="any"))
    return cases


def out_cases(ws, cli):
    cases = []
    m = ws.model
    logits = ["logits", "--model", m, "--ids", "1,2"]
    fifo = ws.fifo("out.safetensors")
    cases.append(Case("--out", "fifo", logits + ["--out", fifo], mentions="out.safetensors"))
    cases.append(Case("--out", "directory", logits + ["--out", ws.new_dir("outdir")]))
    cases.append(Case("--out", "missing-directory", logits + ["--out", os.path.join(ws.root, "no", "such", "f")]))
    # A link planted where a temporary file might go must not be followed.
    directory = ws.new_dir("planted")
    victim = os.path.join(directory, "victim")
    with open(victim, "w") as f:
        f.write("keep")
    target = os.path.join(directory, "l.safetensors")
    os.symlink(victim, target + ".tmp")

    def victim_intact(_out, _err):
        return None if open(victim, "rb").read() == b"keep" else "a planted link was followed"
    cases.append(Case("--out", "planted-tmp-link", logits + ["--out", target], expect="any", check=victim_intact))
    link_to_device = ws.link("null.safetensors", "/dev/null")
    cases.append(Case("--out", "link-to-device", logits + ["--out", link_to_device]))
    return cases


def document_cases(ws, cli):
    cases = []
    m = ws.model
    tokenizer_check = ids_in_vocab(10 ** 9)

    def tokenize(name, path, expect="any", check=None, mentions=None):
        cases.append(Case("documents", name, ["tokenize", "--model", m, "--file", path], expect=expect,
                          check=check or tokenizer_check, mentions=mentions))

    def keeps(marker):
        """Exit 0 must mean the text made it: its ids decode to text holding `marker`."""
        def check(out, err):
            problem = tokenizer_check(out, err)
            if problem:
                return problem
            ids = out.strip().splitlines()[-1]
            run = subprocess.run([cli, "detokenize", "--model", m, "--ids", ids], capture_output=True,
                                 timeout=TIMEOUT_S)
            text = run.stdout.decode("utf-8", "replace")
            if "\0" in text:
                return "the text holds NUL characters"
            return None if marker in text else "the text lost %r" % marker
        return check

    for tag in ("div", "b", "span", "font", "table"):
        for depth in (300, 5000):
            html = "<html><body>" + ("<%s>x " % tag) * depth + "THEEND</body></html>"
            tokenize("html-%s-%d" % (tag, depth), ws.file("n.html", html), check=keeps("THEEND"))
    tokenize("html-100000-deep", ws.file("d.html", "<div>" * 100000 + "THEEND"), check=keeps("THEEND"))
    tokenize("html-unclosed-300", ws.file("u.html", "<p><i><u>" * 300 + "THEEND"), check=keeps("THEEND"))
    text = "Hostile plain text with THEEND marker.\n" * 3
    for name, data in (("utf16le", text.encode("utf-16-le")), ("utf16be", text.encode("utf-16-be")),
                       ("utf32le", text.encode("utf-32-le")), ("utf32be", text.encode("utf-32-be")),
                       ("utf32-bom", text.encode("utf-32")), ("utf16-bom", text.encode("utf-16"))):
        tokenize(name, ws.file(name + ".txt", data), check=keeps("THEEND"))
    tokenize("binary", ws.file("b.txt", bytes(range(256)) * 16), expect="error", mentions="b.txt")
    tokenize("empty", ws.file("e.txt", b""), expect="error", mentions="e.txt")
    tokenize("whitespace", ws.file("w.txt", b" \n\n\t "), expect="error", mentions="w.txt")
    tokenize("latin1", ws.file("l.txt", "caf\xe9 THEEND".encode("latin-1")), check=keeps("THEEND"))
    tokenize("damaged-utf8", ws.file("d.txt", b"ok \xff\xfe\xc3 THEEND"), check=keeps("THEEND"))
    tokenize("pdf-good", ws.file("g.pdf", minimal_pdf()), check=keeps("Hostile"))
    for damage in ("kids", "loop", "count", "nopages"):
        # Either the text comes back or the file is reported: never an empty success.
        tokenize("pdf-tree-" + damage, ws.file("t.pdf", minimal_pdf(damage)), check=keeps("Hostile"),
                 mentions="t.pdf")
    tokenize("pdf-truncated", ws.file("t.pdf", minimal_pdf()[:200]), check=keeps("Hostile"), mentions="t.pdf")
    tokenize("pdf-garbage", ws.file("g.pdf", b"%PDF-1.4\n" + os.urandom(2000)), expect="error", mentions="g.pdf")
    tokenize("pdf-named-not-pdf", ws.file("x.pdf", b"hello"), expect="error", mentions="x.pdf")
    tokenize("fifo", ws.fifo("f.txt"), expect="error", mentions="f.txt")
    tokenize("dev-zero", ws.link("z.txt", "/dev/zero"), expect="error", mentions="z.txt")
    tokenize("dev-zero-pdf", ws.link("z.pdf", "/dev/zero"), expect="error", mentions="z.pdf")
    tokenize("directory", ws.new_dir("docdir"), expect="error")
    tokenize("huge-sparse", ws.sparse("h.txt", 3 << 30), expect="error", mentions="h.txt")
    doc = ws.file("ask.txt", "short document\n")
    cases.append(Case("documents", "ask-fifo-document",
                      ["ask", "--model", m, "--document", ws.fifo("q.txt"), "--question", "q",
                       "--max-new-tokens", "1"], mentions="q.txt"))
    cases.append(Case("documents", "ask-past-the-context",
                      ["ask", "--model", m, "--document", ws.file("big.txt", "word " * 40000), "--question", "q",
                       "--max-new-tokens", "1"], expect="error"))
    cases.append(Case("documents", "ask-plain", ["ask", "--model", m, "--document", doc, "--question", "q",
                                                  "--max-new-tokens", "2"], expect="any"))
    return cases


def image_cases(ws, cli):
    cases = []
    m = ws.vl_model
    out = os.path.join(ws.new_dir("img-out"), "f.safetensors")

    def features(name, path, expect="error", mentions=None):
        cases.append(Case("images", name, ["image-features", "--model", m, "--image", path, "--out", out],
                          expect=expect, mentions=mentions))

    features("fifo", ws.fifo("i.png"), mentions="i.png")
    features("dev-zero", ws.link("z.png", "/dev/zero"), mentions="z.png")
    features("directory", ws.new_dir("imgdir"))
    features("empty", ws.file("e.png", b""), mentions="e.png")
    features("garbage", ws.file("g.png", os.urandom(3000)), mentions="g.png")
    features("truncated", ws.file("t.png", png(64, 64, truncate=60)), mentions="t.png")
    features("bomb-header", ws.file("b.png", png(100000, 100000, rows=b"\0")), mentions="b.png")
    features("zero-size", ws.file("z0.png", png(0, 10, rows=b"")), mentions="z0.png")
    features("wide-thin", ws.file("w.png", png(60000, 1)), expect="any")
    features("huge-sparse", ws.sparse("h.png", 3 << 30), mentions="h.png")
    features("good", ws.file("ok.png", png(40, 30)), expect="any")
    return cases


def session_cases(ws, cli):
    cases = []
    m = ws.model
    vocab = json.load(open(os.path.join(m, "config.json")))["vocab_size"]

    def generate(name, db, expect="error", mentions=None):
        cases.append(Case("session db", name, ["generate", "--model", m, "--ids", "1,2", "--max-new-tokens", "1",
                                                "--session-db", db, "--session", "s"], expect=expect,
                          check=ids_in_vocab(vocab), mentions=mentions))

    for version in (-1, -5, -16, -1000, -2 ** 31, 99, 2 ** 31 - 1):
        db = os.path.join(ws.new_dir("db"), "v.db")
        con = sqlite3.connect(db)
        con.execute("PRAGMA user_version=%d" % version)
        con.close()
        generate("user_version=%d" % version, db, mentions="v.db")
    generate("garbage", ws.file("g.db", os.urandom(8192)), mentions="g.db")
    generate("text-file", ws.file("t.db", "not a database\n" * 100), mentions="t.db")
    generate("fifo", ws.fifo("f.db"), mentions="f.db")
    generate("dev-zero", ws.link("z.db", "/dev/zero"))
    generate("directory", ws.new_dir("dbdir"))
    # A good database, then damaged by truncation: refused or recomputed, never a crash.
    db = os.path.join(ws.new_dir("db"), "good.db")
    subprocess.run([cli, "generate", "--model", m, "--ids", "1,2,3", "--max-new-tokens", "3", "--session-db", db,
                    "--session", "s"], capture_output=True, timeout=TIMEOUT_S)
    if os.path.exists(db):
        data = open(db, "rb").read()
        for cut in (100, len(data) // 2, len(data) - 1000):
            generate("truncated-%d" % cut, ws.file("c.db", data[:cut]), expect="any")
        damaged = bytearray(data)
        for i in range(4096, len(damaged), 997):
            damaged[i] ^= 0x5A
        generate("bit-flips", ws.file("x.db", bytes(damaged)), expect="any")
    return cases


GROUPS = (config_cases, safetensors_cases, tokenizer_cases, flag_cases, out_cases, document_cases, image_cases,
          session_cases)


def run_case(cli, case, memory_limit):
    def limit_memory():
        # A regression that reads a device or a huge file whole must not take the machine's memory.
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    try:
        run = subprocess.run([cli] + case.args, capture_output=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
                             preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return "hang (no end within %d s)" % TIMEOUT_S
    except OSError as e:
        return "cannot run the CLI: %s" % e
    out = run.stdout.decode("utf-8", "replace")
    err = run.stderr.decode("utf-8", "replace")
    if run.returncode < 0:
        return "crash (%s)" % signal.Signals(-run.returncode).name
    if run.returncode == 0:
        if case.expect == "error":
            return "accepted (exit 0) where an error was due; stdout: %r" % out[:120]
        if case.check:
            try:
                problem = case.check(out, err)
            except Exception as e:  # noqa: BLE001 - any failure to read the output is a finding
                problem = "unreadable output: %s" % e
            if problem:
                return problem
        return None
    lines = [line for line in err.strip().splitlines() if line.startswith("lightdesk-cli:")]
    if not lines:
        return "exit %d without a 'lightdesk-cli:' error line; stderr: %r" % (run.returncode, err[-200:])
    line = lines[-1]
    if any(bad in line for bad in BAD_TEXTS):
        return "library text in the error: %r" % line[:200]
    if case.mentions and case.mentions not in line:
        return "the error does not name %s: %r" % (case.mentions, line[:200])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cli")
    parser.add_argument("repo")
    parser.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--only", default="")
    parser.add_argument("--summary", help="also write the case counts to this file")
    parser.add_argument("--memory-limit-gb", type=float, default=16,
                        help="address-space limit of each CLI run (0: none; CUDA builds may need none)")
    args = parser.parse_args()
    cli = os.path.abspath(args.cli)
    with tempfile.TemporaryDirectory(prefix="lightdesk-hostile-") as root:
        ws = Workspace(root, os.path.abspath(args.repo))
        cases = [c for group in GROUPS for c in group(ws, cli) if args.only in c.group + " " + c.name]
        failures = []
        counts = collections.Counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            memory_limit = int(args.memory_limit_gb * (1 << 30))
            for case, problem in zip(cases, pool.map(lambda c: run_case(cli, c, memory_limit), cases)):
                counts[case.group] += 1
                if problem:
                    failures.append((case, problem))
        summary = []
        for group, n in counts.items():
            bad = sum(1 for c, _ in failures if c.group == group)
            summary.append("hostile inputs: %-22s %4d cases, %d failed" % (group, n, bad))
        summary.append("hostile inputs: %-22s %4d cases, %d failed" % ("total", len(cases), len(failures)))
        print("\n".join(summary))
        if args.summary:
            with open(args.summary, "w") as f:
                f.write("\n".join(summary) + "\n")
        for case, problem in failures:
            print("FAIL [%s] %s: %s" % (case.group, case.name, problem))
            print("     lightdesk-cli " + " ".join(a if len(a) < 100 else a[:60] + "..." for a in case.args))
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
