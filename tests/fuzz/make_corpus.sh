#!/usr/bin/env bash
# Writes the seed corpus of the harnesses (tests/fuzz/corpus/NAME) from the repository's test data.
# The session database seed is made by lightdesk-cli (argument: its path) and shrunk to 512-byte
# pages. Run from anywhere; the corpus is committed, so this is only needed to remake it. The inputs
# of fixed failures (corpus/NAME/crash-*) stay.
set -euo pipefail
cd "$(dirname "$0")/../.."
cli=${1:-build/app/cli/lightdesk-cli}
out=tests/fuzz/corpus
data=tests/data
mkdir -p "$out"/{safetensors,safetensors_index,model_config,tokenizer_load,tokenizer_encode,chat_output,document,image,session_db}

python3 - "$out" "$data" <<'PY'
import json, pathlib, struct, sys
out, data = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob

mixed = safetensors([
    ("f32", "F32", [2, 3], struct.pack("<6f", 1, -2, 0.5, 1e-30, 3e38, -0.0)),
    ("bf16", "BF16", [4], struct.pack("<4H", 0x3F80, 0xBF80, 0x7F80, 0x0001)),
    ("f16", "F16", [2, 2], struct.pack("<4H", 0x3C00, 0x8001, 0x7C00, 0x03FF)),  # subnormals, inf
    ("ids", "I64", [3], struct.pack("<3q", 0, -1, 1 << 40)),
    ("empty", "F32", [0, 4], b""),
], {"format": "pt"})
(out / "safetensors/mixed.safetensors").write_bytes(mixed)
# The tiny test model's real header with only the start of its data: the header parses, the
# offsets run past the end.
model = (data / "tiny-a-m1-rd8/model.safetensors").read_bytes()
header_len = struct.unpack("<Q", model[:8])[0]
(out / "safetensors/tiny-model-truncated.safetensors").write_bytes(model[:8 + header_len + 64])

index = {"metadata": {"total_size": 56},
         "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                        "c": "model-00002-of-00002.safetensors"}}
(out / "safetensors_index/two-shards.json").write_text(json.dumps(index, indent=2))
index["weight_map"] = {"a": "model-00001-of-00002.safetensors"}
(out / "safetensors_index/one-shard.json").write_text(json.dumps(index))

for directory in ["tiny-a-hf", "tiny-a-m1-rd8", "tiny-a-m1-rd16"]:
    (out / f"model_config/{directory}.json").write_bytes((data / directory / "config.json").read_bytes())
(out / "model_config/tiny-vl.json").write_bytes(
    (data / "tiny-vl/config.json").read_bytes() + b"\0" + (data / "tiny-vl/preprocessor_config.json").read_bytes())

# First byte 0: tokenizer.json, 1: tokenizer.model.
(out / "tokenizer_load/tiny-512.json").write_bytes(b"\0" + (data / "tokenizers/tiny-512/tokenizer.json").read_bytes())
(out / "tokenizer_load/spm-bpe.model").write_bytes(b"\1" + (data / "tokenizers/spm-bpe/tokenizer.model").read_bytes())

# First byte: the tokenizer (0 byte-level BPE, 1 cl100k, 2 NFKC, 3 SentencePiece).
cases = json.loads((data / "tokenizers/tiny-512/reference.json").read_text())["cases"]
for i, case in enumerate(cases[:12]):
    (out / f"tokenizer_encode/case{i:02}").write_bytes(bytes([i % 4]) + case["text"].encode())

chat = {
    "m1-reasoning-tools": b"\x00<think>\nThe user wants weather. <thinking> is not a tag.\n</think>\nLet me check."
        b"<tool_calls>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Shanghai\"}}\n"
        b"{\"name\": \"search_web\", \"arguments\": {\"query_list\": [\"a<b\"]}}\n</tool_calls> Done <",
    "m1-split": b"\x06a <b <thi</thin<tool_call",
    "text01-call": b"\x01Sure.<function_call>```typescript\nfunctions.get_current_weather({\"location\": \"Shanghai\"})\n```"
        b" After.",
    "text01-open": b"\x05<think>x</think><function_call>```typescript\nfunctions.f(",
}
for name, bytes_ in chat.items():
    (out / f"chat_output/{name}").write_bytes(bytes_)

# First byte: the extension (0 .txt, 1 .md, 2 .html, 3 .pdf).
kinds = {".txt": 0, ".md": 1, ".cpp": 0, ".html": 2, ".pdf": 3}
for path in sorted((data / "documents").iterdir()):
    (out / f"document/{path.name}").write_bytes(bytes([kinds[path.suffix]]) + path.read_bytes())

for path in sorted((data / "tiny-vl/images").iterdir()):
    if path.name.startswith("decode-") or path.name == "tiny.png":
        (out / f"image/{path.name}").write_bytes(path.read_bytes())
PY

# A session with a saved checkpoint, as the command line leaves it.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$cli" generate --model "$data/tiny-a-m1-rd8" --ids 1,2,3 --max-new-tokens 2 --session-db "$scratch/s.db" \
  --session fuzz >/dev/null
sqlite3 "$scratch/s.db" "PRAGMA journal_mode=DELETE; PRAGMA page_size=512; VACUUM;" >/dev/null
cp "$scratch/s.db" "$out/session_db/cli-session.db"
du -sh "$out"/*
