#!/usr/bin/env python3
"""Writes a MiniMax-VL-01 vision tower + projector of the released shapes with random weights
(CLIP ViT-L/14-336: hidden 1024, 24 layers, 16 heads; projector 1024 -> 6144 -> 6144), for
throughput measurements of `lightdesk-cli image-features`. No language model weights: the
directory serves the vision path only. About 1.4 GB.

Run: python3 tools/make_vl_vision_random.py OUT_DIR   (needs numpy, safetensors)
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

D, I, LAYERS, HEADS, PATCH, SIZE, TEXT = 1024, 4096, 24, 16, 14, 336, 6144


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)

    def rand(*shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))).astype(np.float32)

    v = "vision_tower.vision_model."
    t = {v + "embeddings.patch_embedding.weight": rand(D, 3, PATCH, PATCH),
         v + "embeddings.class_embedding": rand(D),
         v + "embeddings.position_embedding.weight": rand((SIZE // PATCH) ** 2 + 1, D),
         v + "pre_layrnorm.weight": np.ones(D, np.float32), v + "pre_layrnorm.bias": np.zeros(D, np.float32)}
    for j in range(LAYERS):
        p = f"{v}encoder.layers.{j}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + f"self_attn.{n}.weight"], t[p + f"self_attn.{n}.bias"] = rand(D, D), rand(D)
        for n in ("layer_norm1", "layer_norm2"):
            t[p + n + ".weight"], t[p + n + ".bias"] = np.ones(D, np.float32), np.zeros(D, np.float32)
        t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"] = rand(I, D), rand(I)
        t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"] = rand(D, I), rand(D)
    t["multi_modal_projector.linear_1.weight"], t["multi_modal_projector.linear_1.bias"] = rand(TEXT, D), rand(TEXT)
    t["multi_modal_projector.linear_2.weight"], t["multi_modal_projector.linear_2.bias"] = rand(TEXT, TEXT), rand(TEXT)
    t["image_newline"] = rand(TEXT)
    save_file(t, os.path.join(out, "model.safetensors"))
    config = {"model_type": "minimax_vl_01", "image_token_index": 200025, "vision_feature_layer": -1,
              "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
              "vision_config": {"model_type": "clip_vision_model", "hidden_size": D, "intermediate_size": I,
                                "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "patch_size": PATCH,
                                "image_size": SIZE, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
              "text_config": {"hidden_size": TEXT}}
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
