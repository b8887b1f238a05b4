#!/usr/bin/env python3
"""Writes tests/data/tiny-tp-6h3kv8e/golden.safetensors: the reference outputs of the fixture
that tools/make_tp_fixture.py writes, from an implementation independent of the engine:
transformers' native MiniMaxForCausalLM, eager attention, float32, full forwards (no cache).

The checkpoint is in the released MiniMax-M1 layout; two things of that layout that native
transformers does not do are given to it here, as the original modeling_minimax_m1.py does them:
- partial RoPE: rotate-half on the first `rotary_dim` (4) of the 8 head dims, the rest passing
  through, with inverse frequencies over `rotary_dim`;
- lightning slopes for a head count that is not a power of two (6): the original code's
  ALiBi-style interpolation, times (1 - l/(L-1) + 1e-5) for layer l of L.
Everything else (lightning attention by blocks, RMSNorms, residual factors, softmax attention
with grouped KV heads, routing, experts) is transformers' own code.

Needs torch and transformers (tested with torch 2.15.0 CPU, transformers 5.25.0):
    python3 -m venv /tmp/tpvenv && /tmp/tpvenv/bin/pip install torch transformers safetensors numpy
    /tmp/tpvenv/bin/python tools/make_tp_fixture_golden.py [fixture dir]
The token ids come from a fixed seed, so a rerun writes the same file."""
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import MiniMaxConfig, MiniMaxForCausalLM
from transformers.models.minimax import modeling_minimax

PREFILL_TOKENS, PROMPT_TOKENS, DECODE_STEPS, GREEDY_TOKENS = 80, 37, 12, 16


def original_slopes(heads: int) -> list[float]:
    """get_slopes of modeling_minimax_m1.py."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + original_slopes(2 * closest)[0::2][: heads - closest]


def original_slope_rate(self, device=None):
    factor = 1 - self.layer_idx / (self.num_hidden_layers - 1) + 1e-5
    rate = torch.tensor(original_slopes(self.num_attention_heads), dtype=torch.float32, device=device) * factor
    return rate[:, None, None]


def partial_rotary(rotary_dim: int):
    def apply(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

        def rotate(x):
            x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
            return torch.cat((x_rot * cos + modeling_minimax.rotate_half(x_rot) * sin, x_pass), dim=-1)
        return rotate(q), rotate(k)
    return apply


def native_model(m1: dict, weights: dict) -> MiniMaxForCausalLM:
    layer_types = ["linear_attention" if t == 0 else "full_attention" for t in m1["attn_type_list"]]
    config = MiniMaxConfig(
        vocab_size=m1["vocab_size"], hidden_size=m1["hidden_size"], intermediate_size=m1["intermediate_size"],
        num_hidden_layers=m1["num_hidden_layers"], num_attention_heads=m1["num_attention_heads"],
        num_key_value_heads=m1["num_key_value_heads"], head_dim=m1["head_dim"],
        num_local_experts=m1["num_local_experts"], num_experts_per_tok=m1["num_experts_per_tok"],
        rms_norm_eps=m1["rms_norm_eps"], rope_parameters={"rope_type": "default", "rope_theta": m1["rope_theta"]},
        block_size=m1["block_size"], layer_types=layer_types, max_position_embeddings=m1["max_position_embeddings"],
        full_attn_alpha_factor=m1["layernorm_full_attention_alpha"], full_attn_beta_factor=m1["layernorm_full_attention_beta"],
        linear_attn_alpha_factor=m1["layernorm_linear_attention_alpha"],
        linear_attn_beta_factor=m1["layernorm_linear_attention_beta"],
        mlp_alpha_factor=m1["layernorm_mlp_alpha"], mlp_beta_factor=m1["layernorm_mlp_beta"],
        tie_word_embeddings=False, hidden_act="silu", attn_implementation="eager")
    assert m1["postnorm"], "transformers' MiniMax is postnorm only"
    model = MiniMaxForCausalLM(config).float().eval()

    state = {}
    for name, w in weights.items():
        name = name.replace(".block_sparse_moe.gate.", ".mlp.gate.")
        if ".block_sparse_moe.experts." not in name:
            state[name] = w
    for l in range(config.num_hidden_layers):
        p = f"model.layers.{l}.block_sparse_moe.experts."
        experts = range(config.num_local_experts)
        # transformers' fused experts: gate (w1) rows, then up (w3) rows.
        state[f"model.layers.{l}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[f"{p}{e}.w1.weight"], weights[f"{p}{e}.w3.weight"]]) for e in experts])
        state[f"model.layers.{l}.mlp.experts.down_proj"] = torch.stack([weights[f"{p}{e}.w2.weight"] for e in experts])
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {".slope_rate", ".query_decay", ".key_decay", ".diagonal_decay"}
    assert not unexpected, unexpected
    assert all(any(m.endswith(b) for b in buffers) for m in missing), missing

    rotary_dim = m1["rotary_dim"]
    rotary = model.model.rotary_emb
    rotary.inv_freq = 1.0 / (m1["rope_theta"] ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    modeling_minimax.apply_rotary_pos_emb = partial_rotary(rotary_dim)
    for layer in model.model.layers:
        attention = layer.self_attn
        if isinstance(attention, modeling_minimax.MiniMaxLightningAttention):
            slope_rate = original_slope_rate(attention)
            attention.slope_rate, (attention.query_decay, attention.key_decay, attention.diagonal_decay) = (
                slope_rate, attention.decay_factors(slope_rate))
    return model


def main(fixture: Path) -> None:
    m1 = json.loads((fixture / "config.json").read_text())
    model = native_model(m1, load_file(fixture / "model.safetensors"))
    vocab = m1["vocab_size"]
    generator = torch.Generator().manual_seed(20261206)
    prefill_ids = torch.randint(0, vocab, (PREFILL_TOKENS,), generator=generator)
    prompt_ids = torch.randint(0, vocab, (PROMPT_TOKENS,), generator=generator)
    step_ids = torch.randint(0, vocab, (DECODE_STEPS,), generator=generator)

    def forward(ids):
        with torch.no_grad():
            return model(input_ids=ids[None], output_hidden_states=True, use_cache=False)

    golden = {"prefill.input_ids": prefill_ids, "decode.prompt_ids": prompt_ids, "decode.step_ids": step_ids,
              "greedy.prompt_ids": prompt_ids.clone()}
    out = forward(prefill_ids)
    golden["prefill.logits"] = out.logits[0]
    for n, hidden in enumerate(out.hidden_states):
        golden[f"prefill.hidden.{n}"] = hidden[0]
    # Step j's logits are the full forward's row at its position (causal: later tokens do not count).
    golden["decode.logits"] = forward(torch.cat([prompt_ids, step_ids])).logits[0, PROMPT_TOKENS:]
    ids = prompt_ids
    for _ in range(GREEDY_TOKENS):
        ids = torch.cat([ids, forward(ids).logits[0, -1].argmax()[None]])
    golden["greedy.output_ids"] = ids[PROMPT_TOKENS:]
    golden = {k: (v.to(torch.int64) if k.endswith("_ids") else v.to(torch.float32)).contiguous() for k, v in golden.items()}
    save_file(golden, fixture / "golden.safetensors", metadata={"format": "pt"})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/data/tiny-tp-6h3kv8e")
