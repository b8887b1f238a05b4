#!/usr/bin/env python3
"""Writes a MiniMax-Text-01 / M1 checkpoint directory (config.json, *.safetensors, a SentencePiece
tokenizer.model) as a float32 GGUF file for llama.cpp's "minimax-01" architecture, so that
bench/cpu-vs-llamacpp.sh can run the same model in both engines.

llama.cpp's own converter (convert_hf_to_gguf.py, MiniMaxText01Model) is written for the released
checkpoints; for Lightdesk's models it needs these changes, made here:
  - the tokenizer: it reads a byte-level BPE tokenizer through transformers; these models carry a
    SentencePiece tokenizer.model, written here as a "llama" (SentencePiece) vocabulary;
  - the layer kinds: it assumes a softmax layer every 8th layer; here the full_attention_interval
    comes from attn_type_list (refused when the list is not that periodic pattern);
  - rotary_dim 0 (no rotation in the softmax layers): llama.cpp's RoPE takes at least one pair of
    dimensions and never ends its loop over a count of 0. One pair is written, under a linear
    scaling factor of 1e30, which makes every angle (position x 1e-30) round to cos 1 and a sine
    far below float32 precision: the rotation is the identity, exactly in float32;
  - float32 throughout (the checkpoint's bf16 widened exactly), as Lightdesk's CPU backend runs.
The model's residual factors must be one alpha for all three (llama.cpp stores one) and beta 1.

Usage: minimax_to_gguf.py MODEL_DIR OUT.gguf   (needs the PyPI packages gguf and sentencepiece)
"""
import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import sentencepiece


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory's *.safetensors files, widened to float32."""
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        data = path.read_bytes()
        header_size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + header_size])
        body = memoryview(data)[8 + header_size:]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            raw = body[begin:end]
            if info["dtype"] == "BF16":
                array = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] == "F32":
                array = np.frombuffer(raw, dtype=np.float32)
            else:
                sys.exit(f"minimax_to_gguf: {path.name}: tensor {name} has dtype {info['dtype']} (only BF16 and F32)")
            tensors[name] = array.reshape(info["shape"])
    if not tensors:
        sys.exit(f"minimax_to_gguf: no *.safetensors in {directory}")
    return tensors


def full_attention_interval(kinds: list[int]) -> int:
    """The interval n with softmax (1) exactly at layers n-1, 2n-1, ...: llama.cpp's layout."""
    if 1 not in kinds:
        sys.exit("minimax_to_gguf: attn_type_list has no softmax layer")
    interval = kinds.index(1) + 1
    if any(kind != ((i + 1) % interval == 0) for i, kind in enumerate(kinds)):
        sys.exit(f"minimax_to_gguf: attn_type_list {kinds} is not one softmax layer every n layers")
    return interval


def write_vocabulary(writer: gguf.GGUFWriter, tokenizer_path: Path, vocab_size: int, config: dict) -> None:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path))
    pieces, scores, types = [], [], []
    for i in range(vocab_size):
        if i >= processor.vocab_size():  # rows of the embedding beyond the tokenizer
            pieces.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        pieces.append(processor.id_to_piece(i).encode("utf-8"))
        scores.append(processor.get_score(i))
        if processor.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif processor.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif processor.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif processor.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_bos_token(False)
    if config.get("eos_token_id") is not None:
        writer.add_eos_token_id(config["eos_token_id"])
    if processor.unk_id() >= 0:
        writer.add_unk_token_id(processor.unk_id())


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    directory, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = json.loads((directory / "config.json").read_text())
    alphas = {config[f"layernorm_{part}_alpha"] for part in ("full_attention", "linear_attention", "mlp")}
    betas = {config[f"layernorm_{part}_beta"] for part in ("full_attention", "linear_attention", "mlp")}
    if len(alphas) != 1 or betas != {1.0}:
        sys.exit("minimax_to_gguf: llama.cpp takes one residual alpha for all three and beta 1")
    layers, experts = config["num_hidden_layers"], config["num_local_experts"]
    heads, head_dim = config["num_attention_heads"], config["head_dim"]
    kinds = config["attn_type_list"][:layers]

    writer = gguf.GGUFWriter(str(out), "minimax-01")
    writer.add_name(directory.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_block_count(layers)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_expert_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_expert_count(experts)
    writer.add_expert_used_count(config["num_experts_per_tok"])
    writer.add_residual_scale(alphas.pop())
    writer.add_full_attention_interval(full_attention_interval(kinds))
    writer.add_rope_freq_base(config["rope_theta"])
    rotary_dim = config.get("rotary_dim", head_dim)
    if rotary_dim == 0:
        writer.add_rope_dimension_count(2)
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(1e30)
    else:
        writer.add_rope_dimension_count(rotary_dim)
    write_vocabulary(writer, directory / "tokenizer.model", config["vocab_size"], config)

    w = read_safetensors(directory)
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", w["model.norm.weight"])
    if not config.get("tie_word_embeddings", False):
        writer.add_tensor("output.weight", w["lm_head.weight"])
    for l in range(layers):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "block_sparse_moe.gate": "ffn_gate_inp"}
        if kinds[l] == 0:
            names.update({"self_attn.qkv_proj": "attn_qkv", "self_attn.output_gate": "attn_gate",
                          "self_attn.norm": "attn_norm_2", "self_attn.out_proj": "attn_output"})
        else:
            names.update({"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                          "self_attn.o_proj": "attn_output"})
        for ours, theirs in names.items():
            writer.add_tensor(b + theirs + ".weight", w[p + ours + ".weight"])
        for matrix, theirs in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
            stacked = np.stack([w[f"{p}block_sparse_moe.experts.{e}.{matrix}.weight"] for e in range(experts)])
            writer.add_tensor(b + theirs + ".weight", stacked)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
