"""Anchors for lightdesk-bench, measured through PyTorch on the same GPU in the same run.

Prints the copy bandwidth, a large bf16 GEMM, cuDNN SDPA prefill (causal, GQA 64/8, d=128) and
torch._grouped_mm over 32 experts (w13 only, top-2, uniform routing), as in
../shared/docs/performance-anchors.md §0, and over the ragged loads of a random router. Median of
CUDA-event timings after warm-up.
"""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


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


def main():
    dev = "cuda"
    print(f"anchors on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    a = torch.randn(2 << 30, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a))
    print(f"  copy 4 GiB d2d          {ms:9.3f} ms  {2 * a.numel() * 2 / ms / 1e9:.3g} TB/s")
    del a, b
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
    experts, hidden, width = 32, 6144, 9216
    w13 = torch.randn(experts, hidden, 2 * width, dtype=torch.bfloat16, device=dev) * hidden ** -0.5
    for tokens in (64, 4096):
        rows = tokens * 2
        xs = torch.randn(rows, hidden, dtype=torch.bfloat16, device=dev)
        offs = torch.arange(1, experts + 1, device=dev, dtype=torch.int32) * (rows // experts)
        ms = median_ms(lambda: torch._grouped_mm(xs, w13, offs=offs), reps=5)
        print(f"  grouped_mm w13 {tokens:5d} tok {ms:9.3f} ms  {2 * rows * hidden * 2 * width / ms / 1e9:.3g} TFLOP/s"
              f"  {w13.numel() * 2 / ms / 1e9:.3g} TB/s of weights")
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


if __name__ == "__main__":
    main()
