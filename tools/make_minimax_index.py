#!/usr/bin/env python3
"""Writes the released MiniMax-Text-01, MiniMax-M1 and MiniMax-VL-01 config.json files and their
model.safetensors.index.json (no weights) into tests/data/real/<name>/, for the memory planner's
tests and for `lightdesk-cli info --gpus ...` without the 900 GB checkpoints.

The configs carry the released values (hidden 6144, 80 layers with a softmax layer every eighth,
64 heads of 128, 8 K/V heads, 32 experts of 9216, top 2, vocabulary 200064). The indexes list
every tensor under its released name; total_size counts every tensor in bf16 except the routers
(block_sparse_moe.gate), which the released checkpoints store in float32: that is what makes the
text checkpoints' total 912,210,767,872 bytes. Tensors go to shards in name order, about 2.2 GB
each: 413 shards for the text models as released, 414 for VL-01 (its count is not known here).
The real assignment of tensors to shards is not reproduced; nothing reads it without the shards.

Usage: python3 tools/make_minimax_index.py [OUTPUT_DIR]   (default tests/data/real)
"""
import json
import math
import pathlib
import sys

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 6144, 80, 64, 8, 128
EXPERTS, WIDTH, VOCAB = 32, 9216, 200064
ALPHA = 3.5565588200778455  # (2 * 80) ** 0.25, DeepNorm
TEXT_TOTAL_SIZE = 912_210_767_872
TEXT_TENSORS = 8243
TEXT_SHARDS = 413


def attn_types():
    return [1 if (i + 1) % 8 == 0 else 0 for i in range(LAYERS)]


def text_config(architecture, model_type, auto_map, max_positions):
    return {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "attn_type_list": attn_types(),
        "auto_map": auto_map,
        "bos_token_id": None,
        "eos_token_id": None,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": WIDTH,
        "layernorm_full_attention_alpha": ALPHA,
        "layernorm_full_attention_beta": 1.0,
        "layernorm_linear_attention_alpha": ALPHA,
        "layernorm_linear_attention_beta": 1.0,
        "layernorm_mlp_alpha": ALPHA,
        "layernorm_mlp_beta": 1.0,
        "max_position_embeddings": max_positions,
        "model_type": model_type,
        "num_attention_heads": HEADS,
        "num_experts_per_tok": 2,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS,
        "output_router_logits": False,
        "postnorm": True,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000000,
        "rotary_dim": 64,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "shared_intermediate_size": 0,
        "shared_moe_mode": "sigmoid",
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.2",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def text_tensors(prefix=""):
    """(name, shape, bytes per value) of every text tensor, in the released names."""
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN], 2), ("model.norm.weight", [HIDDEN], 2),
           ("lm_head.weight", [VOCAB, HIDDEN], 2)]
    attn = HEADS * HEAD_DIM
    for layer, kind in enumerate(attn_types()):
        p = f"model.layers.{layer}."
        out += [(p + "input_layernorm.weight", [HIDDEN], 2), (p + "post_attention_layernorm.weight", [HIDDEN], 2)]
        if kind == 0:
            out += [(p + "self_attn.qkv_proj.weight", [3 * attn, HIDDEN], 2),
                    (p + "self_attn.output_gate.weight", [attn, HIDDEN], 2),
                    (p + "self_attn.norm.weight", [attn], 2),
                    (p + "self_attn.out_proj.weight", [HIDDEN, attn], 2)]
        else:
            out += [(p + "self_attn.q_proj.weight", [attn, HIDDEN], 2),
                    (p + "self_attn.k_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN], 2),
                    (p + "self_attn.v_proj.weight", [KV_HEADS * HEAD_DIM, HIDDEN], 2),
                    (p + "self_attn.o_proj.weight", [HIDDEN, attn], 2)]
        out.append((p + "block_sparse_moe.gate.weight", [EXPERTS, HIDDEN], 4))
        for e in range(EXPERTS):
            q = f"{p}block_sparse_moe.experts.{e}."
            out += [(q + "w1.weight", [WIDTH, HIDDEN], 2), (q + "w2.weight", [HIDDEN, WIDTH], 2),
                    (q + "w3.weight", [WIDTH, HIDDEN], 2)]
    return [(prefix + n, s, b) for n, s, b in out]


VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
          "patch_size": 14, "image_size": 336}


def vision_tensors():
    """CLIP ViT-L/14-336 without post_layernorm, the projector and the image newline (bf16)."""
    d, m, p = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    positions = (VISION["image_size"] // p) ** 2 + 1
    v = "vision_tower.vision_model."
    out = [(v + "embeddings.patch_embedding.weight", [d, 3, p, p]), (v + "embeddings.class_embedding", [d]),
           (v + "embeddings.position_embedding.weight", [positions, d]),
           (v + "pre_layrnorm.weight", [d]), (v + "pre_layrnorm.bias", [d])]
    for j in range(VISION["num_hidden_layers"]):
        q = f"{v}encoder.layers.{j}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += [(q + f"self_attn.{proj}.weight", [d, d]), (q + f"self_attn.{proj}.bias", [d])]
        for norm in ("layer_norm1", "layer_norm2"):
            out += [(q + f"{norm}.weight", [d]), (q + f"{norm}.bias", [d])]
        out += [(q + "mlp.fc1.weight", [m, d]), (q + "mlp.fc1.bias", [m]),
                (q + "mlp.fc2.weight", [d, m]), (q + "mlp.fc2.bias", [d])]
    out += [("multi_modal_projector.linear_1.weight", [HIDDEN, d]), ("multi_modal_projector.linear_1.bias", [HIDDEN]),
            ("multi_modal_projector.linear_2.weight", [HIDDEN, HIDDEN]),
            ("multi_modal_projector.linear_2.bias", [HIDDEN]), ("image_newline", [HIDDEN])]
    return [(n, s, 2) for n, s in out]


def index(tensors, shards):
    sizes = [math.prod(shape) * b for _, shape, b in tensors]
    total = sum(sizes)
    per_shard = math.ceil(total / shards)
    weight_map, filled, shard = {}, 0, 1
    for (name, _, _), size in sorted(zip(tensors, sizes)):
        if filled + size > per_shard * shard and shard < shards:
            shard += 1
        weight_map[name] = f"model-{shard:05d}-of-{shards:05d}.safetensors"
        filled += size
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def write(directory, config, idx):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "model.safetensors.index.json").write_text(json.dumps(idx, indent=2, sort_keys=True) + "\n")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/real")
    text = text_tensors()
    assert len(text) == TEXT_TENSORS, len(text)
    text_index = index(text, TEXT_SHARDS)
    assert text_index["metadata"]["total_size"] == TEXT_TOTAL_SIZE, text_index["metadata"]["total_size"]

    write(root / "MiniMax-Text-01",
          text_config("MiniMaxText01ForCausalLM", "minimax_text_01",
                      {"AutoConfig": "configuration_minimax_text_01.MiniMaxText01Config",
                       "AutoModelForCausalLM": "modeling_minimax_text_01.MiniMaxText01ForCausalLM"}, 10240000),
          text_index)
    write(root / "MiniMax-M1",
          text_config("MiniMaxM1ForCausalLM", "minimax_m1",
                      {"AutoConfig": "configuration_minimax_m1.MiniMaxM1Config",
                       "AutoModelForCausalLM": "modeling_minimax_m1.MiniMaxM1ForCausalLM"}, 10240000),
          text_index)

    vl = text_tensors("language_model.") + vision_tensors()
    assert len(vl) == 8637, len(vl)
    pinpoints = [[h, w] for h in range(336, 2017, 336) for w in range(336, 2017, 336)
                 if min(h, w) <= 1008 or (h, w) == (1344, 1344)]
    assert len(pinpoints) == 28
    vl_config = {
        "architectures": ["MiniMaxVL01ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_minimax_vl_01.MiniMaxVL01Config",
                     "AutoModelForCausalLM": "modeling_minimax_vl_01.MiniMaxVL01ForConditionalGeneration"},
        "image_grid_pinpoints": pinpoints,
        "image_seq_length": 576,
        "image_token_index": 200025,
        "model_type": "minimax_vl_01",
        "projector_hidden_act": "gelu",
        "text_config": text_config("MiniMaxText01ForCausalLM", "minimax_text_01",
                                   {"AutoConfig": "configuration_minimax_text_01.MiniMaxText01Config",
                                    "AutoModelForCausalLM": "modeling_minimax_text_01.MiniMaxText01ForCausalLM"},
                                   8192),
        "torch_dtype": "bfloat16",
        "vision_config": dict(VISION, hidden_act="gelu", layer_norm_eps=1e-05, model_type="clip_vision_model",
                              num_channels=3, projection_dim=6144),
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    }
    write(root / "MiniMax-VL-01", vl_config, index(vl, TEXT_SHARDS + 1))


if __name__ == "__main__":
    main()
