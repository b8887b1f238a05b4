#!/usr/bin/env python3
"""Writes tests/data/tiny-tp-6h3kv8e: random float32 weights in the released MiniMax-M1 layout
with 6 query heads, 3 key/value heads and 8 experts, so that tensor-parallel layouts of 3 and 6
ranks split the heads, replicate the key/value heads (6 ranks) and place the experts unevenly
(3/3/2 on 3 ranks), and the 97-row vocabulary splits unevenly too. Pure Python (no numpy or
torch); its reference outputs come from tools/make_tp_fixture_golden.py."""
import json
import random
import struct
import sys
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, EXPERTS, WIDTH, VOCAB = 48, 6, 3, 8, 8, 24, 97
LAYER_TYPES = [0, 0, 0, 1]  # three lightning layers, then softmax


def main(out: Path) -> None:
    rng = random.Random(17)
    tensors = {}

    def matrix(name, rows, cols, scale=None):
        s = scale if scale is not None else cols ** -0.5
        tensors[name] = ([rows, cols], [rng.uniform(-s, s) for _ in range(rows * cols)])

    def norm(name, n):  # away from 1, so that a skipped norm weight shows
        tensors[name] = ([n], [rng.uniform(0.5, 1.5) for _ in range(n)])

    A, KV = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    matrix("model.embed_tokens.weight", VOCAB, HIDDEN, 1.0)
    matrix("lm_head.weight", VOCAB, HIDDEN)
    norm("model.norm.weight", HIDDEN)
    for l, kind in enumerate(LAYER_TYPES):
        p = f"model.layers.{l}."
        norm(p + "input_layernorm.weight", HIDDEN)
        norm(p + "post_attention_layernorm.weight", HIDDEN)
        if kind == 0:
            matrix(p + "self_attn.qkv_proj.weight", 3 * A, HIDDEN)
            matrix(p + "self_attn.output_gate.weight", A, HIDDEN)
            norm(p + "self_attn.norm.weight", A)
            matrix(p + "self_attn.out_proj.weight", HIDDEN, A)
        else:
            matrix(p + "self_attn.q_proj.weight", A, HIDDEN)
            matrix(p + "self_attn.k_proj.weight", KV, HIDDEN)
            matrix(p + "self_attn.v_proj.weight", KV, HIDDEN)
            matrix(p + "self_attn.o_proj.weight", HIDDEN, A)
        matrix(p + "block_sparse_moe.gate.weight", EXPERTS, HIDDEN, (3 / HIDDEN) ** 0.5)
        for e in range(EXPERTS):
            q = p + f"block_sparse_moe.experts.{e}."
            matrix(q + "w1.weight", WIDTH, HIDDEN)
            matrix(q + "w3.weight", WIDTH, HIDDEN)
            matrix(q + "w2.weight", HIDDEN, WIDTH)

    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (shape, values) in sorted(tensors.items()):
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    config = {
        "architectures": ["MiniMaxM1ForCausalLM"], "model_type": "minimax_m1", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "intermediate_size": WIDTH, "num_hidden_layers": len(LAYER_TYPES),
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "num_local_experts": EXPERTS, "num_experts_per_tok": 2, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "rotary_dim": 4, "block_size": 16, "attn_type_list": LAYER_TYPES,
        "layernorm_full_attention_alpha": 1.7, "layernorm_full_attention_beta": 0.9,
        "layernorm_linear_attention_alpha": 1.3, "layernorm_linear_attention_beta": 1.1,
        "layernorm_mlp_alpha": 1.2, "layernorm_mlp_beta": 0.8, "postnorm": True, "hidden_act": "silu",
        "tie_word_embeddings": False, "max_position_embeddings": 4096, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/tiny-tp-6h3kv8e")
