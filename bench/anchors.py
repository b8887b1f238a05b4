"""Anchors for lightdesk-bench, measured through PyTorch on the same GPU in the same run.

Prints the copy bandwidth, a large bf16 GEMM, cuDNN SDPA prefill (causal, GQA 64/8, d=128), torch
SDPA decode over a 128K context, torch._grouped_mm over 32 experts (w13 only, top-2; uniform
routing as in §0, and the ragged loads of a random router) and, where the `fla` package
(flash-linear-attention's fla-core, brought beside the project for the run) imports, its
chunk_simple_gla lightning prefill, as in ../shared/docs/performance-anchors.md §0. Median of CUDA-event timings after warm-up. With
--json FILE it also writes the figures lightdesk-bench --anchors reads; --lightning prints the
copy bandwidth and FLA alone.
"""
import argparse
import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def write_figures(path, figures):
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)


def median_ms(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def fla_lightning_prefill(dev, figures):
    """FLA's chunk_simple_gla on lightdesk-bench's lightning shapes: bf16 q/k/v [1, T, H, 128],
    per-head log decay -slope (MiniMax-Text-01's first layer), from a float32 state and returning
    the final one, as lightdesk's prefill does."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as e:
        print(f"  FLA chunk_simple_gla: not importable ({e}); lightdesk-bench quotes §0")
        return
    d = 128
    for heads, tokens in ((64, 4096), (64, 65536), (64, 262144), (8, 1 << 20)):
        q, k, v = (torch.empty(1, tokens, heads, d, dtype=torch.bfloat16, device=dev).uniform_(-0.3, 1.0)
                   for _ in range(3))
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], device=dev)
        state = torch.empty(1, heads, d, d, dtype=torch.float32, device=dev).uniform_(-1.0, 1.0)
        f = lambda: chunk_simple_gla(q, k, v, g_gamma=-slopes, scale=1.0, initial_state=state,
                                     output_final_state=True)
        ms = median_ms(f, reps=3 if tokens >= 1 << 18 else 7)
        print(f"  FLA chunk_simple_gla {heads:2d}h x {tokens // 1024:4d}K  {ms:9.3f} ms")
        figures[f"fla_chunk_simple_gla/{heads}x{tokens}"] = ms
        del q, k, v, state


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write the anchor figures here, for lightdesk-bench --anchors")
    parser.add_argument("--lightning", action="store_true", help="the copy bandwidth and FLA alone")
    args = parser.parse_args()
    figures = {}
    dev = "cuda"
    print(f"anchors on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    a = torch.randn(2 << 30, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a))
    print(f"  copy 4 GiB d2d          {ms:9.3f} ms  {2 * a.numel() * 2 / ms / 1e9:.3g} TB/s")
    del a, b
    fla_lightning_prefill(dev, figures)
    if args.lightning:
        write_figures(args.json, figures)
        return
    n = 8192
    x, w = (torch.randn(n, n, dtype=torch.bfloat16, device=dev) for _ in range(2))
    ms = median_ms(lambda: x @ w)
    print(f"  bf16 GEMM 8192^3        {ms:9.3f} ms  {2 * n ** 3 / ms / 1e9:.3g} TFLOP/s")
    for t in (4096, 16384, 32768):
        q = torch.randn(1, 64, t, 128, dtype=torch.bfloat16, device=dev)
        k, v = (torch.randn(1, 8, t, 128, dtype=torch.bfloat16, device=dev) for _ in range(2))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            ms = median_ms(f, reps=5)
        print(f"  cuDNN SDPA {t // 1024:3d}K         {ms:9.3f} ms  {2 * t * t * 64 * 128 / ms / 1e9:.3g} TFLOP/s")
        figures[f"cudnn_sdpa/{t}"] = ms
        del q, k, v
    context = 131072
    q = torch.randn(1, 64, 1, 128, dtype=torch.bfloat16, device=dev)
    k, v = (torch.randn(1, 8, context, 128, dtype=torch.bfloat16, device=dev) for _ in range(2))
    ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps=20)
    print(f"  SDPA decode 128K ctx    {ms:9.3f} ms  {2 * k.numel() * 2 / ms / 1e9:.3g} TB/s of KV")
    figures[f"torch_sdpa_decode/{context}"] = ms
    del q, k, v
    experts, hidden, width = 32, 6144, 9216
    w13 = torch.randn(experts, hidden, 2 * width, dtype=torch.bfloat16, device=dev) * hidden ** -0.5
    for tokens in (64, 4096, 32768):
        rows = tokens * 2
        xs = torch.randn(rows, hidden, dtype=torch.bfloat16, device=dev)
        offs = torch.arange(1, experts + 1, device=dev, dtype=torch.int32) * (rows // experts)
        ms = median_ms(lambda: torch._grouped_mm(xs, w13, offs=offs), reps=5)
        print(f"  grouped_mm w13 {tokens:5d} tok {ms:9.3f} ms  {2 * rows * hidden * 2 * width / ms / 1e9:.3g} TFLOP/s"
              f"  {w13.numel() * 2 / ms / 1e9:.3g} TB/s of weights")
        figures[f"grouped_mm_w13_tflops/{tokens}"] = 2 * rows * hidden * 2 * width / ms / 1e9
    # Routed as lightdesk-bench routes: a float32 router of uniform random weights (±hidden^-0.5)
    # over uniform tokens in ±1, top 2, so the experts' loads are ragged as a real router's are.
    router = (torch.rand(experts, hidden, device=dev) * 2 - 1) * hidden ** -0.5
    for tokens in (4096, 32768):
        rows = tokens * 2
        x = torch.rand(tokens, hidden, device=dev) * 2 - 1
        ids = (x @ router.t()).topk(2, dim=1).indices.flatten()
        counts = torch.bincount(ids, minlength=experts)
        offs = counts.cumsum(0).to(torch.int32)
        xs = x.repeat_interleave(2, dim=0).to(torch.bfloat16)
        ms = median_ms(lambda: torch._grouped_mm(xs, w13, offs=offs), reps=5)
        print(f"  grouped_mm w13 {tokens:5d} tok routed {ms:9.3f} ms  "
              f"{2 * rows * hidden * 2 * width / ms / 1e9:.3g} TFLOP/s  (expert rows {counts.min().item()}"
              f"..{counts.max().item()})")
        figures[f"grouped_mm_w13_routed_tflops/{tokens}"] = 2 * rows * hidden * 2 * width / ms / 1e9
    write_figures(args.json, figures)


if __name__ == "__main__":
    main()
