"""transformers' own MiniMax decoder layers at the widths of a config.json, for lightdesk-bench's
--model-config slice: what a Python user gets from the library they would otherwise use.

One decoder layer of each kind (lightning, softmax) as a transformers MiniMaxModel of that one
layer, at the config's widths (hidden 6144, 64 heads of 128, 8 K/V heads, 32 experts of 9216,
top 2 for MiniMax-Text-01), bf16, random weights, batch 1, SDPA attention, fed embeddings
(no vocabulary lookup): prefill of 32K and 128K tokens, and one cached decode step after 4K and
128K tokens (explicit position ids: transformers' own count is wrong for a linear layer's
cache). Median of 3 CUDA-event timings after a warm-up, the MoE block included: the method of
../shared/docs/performance-anchors.md section 9. Writes the figures lightdesk-bench --anchors
reads ("transformers_layer/prefill/32768/lightning": milliseconds, ...).

Usage: python3 bench/transformers_layers.py --config tests/data/real/MiniMax-Text-01/config.json --json FILE
"""
import argparse
import json

import torch
from transformers import MiniMaxConfig, MiniMaxModel

from anchors import median_ms  # beside this script

PREFILL = [32768, 131072]
DECODE = [4096, 131072]


def one_layer_model(released, kind, dev):
    """A MiniMaxModel of one decoder layer of `kind` at the released config's widths."""
    config = MiniMaxConfig(
        vocab_size=1024,  # unused: the model is fed embeddings
        hidden_size=released["hidden_size"],
        intermediate_size=released["intermediate_size"],
        num_hidden_layers=1,
        num_attention_heads=released["num_attention_heads"],
        num_key_value_heads=released["num_key_value_heads"],
        head_dim=released["head_dim"],
        num_local_experts=released["num_local_experts"],
        num_experts_per_tok=released["num_experts_per_tok"],
        layer_types=[kind],
        max_position_embeddings=max(PREFILL + DECODE) + 16,
        attn_implementation="sdpa",
        torch_dtype=torch.bfloat16,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = MiniMaxModel(config).to(torch.bfloat16).eval()
    return model, config


@torch.inference_mode()
def measure(released, kind, dev, figures):
    model, config = one_layer_model(released, kind, dev)
    hidden = config.hidden_size
    name = "lightning" if kind == "linear_attention" else "softmax"
    for tokens in PREFILL:
        x = torch.randn(1, tokens, hidden, device=dev, dtype=torch.bfloat16)
        ms = median_ms(lambda: model(inputs_embeds=x, use_cache=False), reps=3, warmup=1)
        figures[f"transformers_layer/prefill/{tokens}/{name}"] = ms
        print(f"  {name} layer prefill {tokens // 1024}K: {ms:.1f} ms ({tokens / ms * 1e3:.0f} tokens/s)", flush=True)
        del x
        torch.cuda.empty_cache()
    for context in DECODE:
        x = torch.randn(1, context, hidden, device=dev, dtype=torch.bfloat16)
        # MiniMaxModel makes its own MiniMaxCache (linear states and K/V) when given none.
        cache = model(inputs_embeds=x, use_cache=True,
                      position_ids=torch.arange(context, device=dev)[None]).past_key_values
        del x
        step = torch.randn(1, 1, hidden, device=dev, dtype=torch.bfloat16)
        position = [context]

        def decode():
            model(inputs_embeds=step, past_key_values=cache, use_cache=True,
                  position_ids=torch.tensor([[position[0]]], device=dev))
            position[0] += 1

        ms = median_ms(decode, reps=3, warmup=1)
        figures[f"transformers_layer/decode/{context}/{name}"] = ms
        print(f"  {name} layer decode step after {context // 1024}K: {ms:.2f} ms", flush=True)
        del cache
        torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a MiniMax config.json (text_config of VL-01 is used)")
    parser.add_argument("--json", help="write the figures here, for lightdesk-bench --anchors")
    args = parser.parse_args()
    with open(args.config) as f:
        released = json.load(f)
    released = released.get("text_config", released)
    import transformers

    dev = torch.device("cuda")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    figures = {}
    for kind in ("linear_attention", "full_attention"):
        measure(released, kind, dev, figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
