"""The MiniMax-M1 architecture in PyTorch, written from ../shared/docs/minimax-model.md (the
project's model notes), for training the bundled demo model. Tensor names and the config are the
released layout (`model_type: minimax_m1`), so the engine loads what `save` writes.

Lightning attention runs block-wise: inside a block of C tokens the decayed q.k products are a
C x C matrix; across blocks the running [d, d] state carries everything before, and all block
states come from one matrix product (the decay between blocks is a known function of the block
distance), so nothing loops over the sequence. That core runs in float32, as the engine's state.
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from torch import nn


def demo_config(vocab_size=8192, hidden=256, layers=8, heads=8, kv_heads=2, head_dim=32, experts=8,
                expert_width=64, rotary_dim=0, softmax_layers=(3, 7)):
    """The config.json of the demo model: lightning layers except `softmax_layers`."""
    alpha = (2.0 * layers) ** 0.25  # DeepNorm, as the released models ((2 * 80) ** 0.25)
    return {
        "architectures": ["MiniMaxM1ForCausalLM"],
        "model_type": "minimax_m1",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": expert_width,
        "num_local_experts": experts,
        "num_experts_per_tok": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rotary_dim": rotary_dim,
        "max_position_embeddings": 1 << 22,
        "attn_type_list": [int(i in softmax_layers) for i in range(layers)],
        "layernorm_linear_attention_alpha": alpha,
        "layernorm_linear_attention_beta": 1.0,
        "layernorm_full_attention_alpha": alpha,
        "layernorm_full_attention_beta": 1.0,
        "layernorm_mlp_alpha": alpha,
        "layernorm_mlp_beta": 1.0,
        "postnorm": True,
        "shared_intermediate_size": 0,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": 3,
        "torch_dtype": "bfloat16",
    }


class RMSNorm(nn.Module):
    def __init__(self, width, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def lightning_slopes(heads, layer, layers):
    """Per-head decay rates of the original code (the engine's `minimax_m1` layout): ALiBi slopes
    in double, rounded to float32, times the depth factor. Head counts here are powers of two."""
    assert heads & (heads - 1) == 0, "the interpolated ALiBi slopes for other head counts are not written here"
    start = 2.0 ** (-(2.0 ** -(math.log2(heads) - 3)))
    base = torch.tensor([start * start ** h for h in range(heads)], dtype=torch.float32)
    factor = torch.tensor(1.0 - (layer if layers > 1 else 0) / (layers - 1 if layers > 1 else 1) + 1e-5,
                          dtype=torch.float32)
    return base * factor


def lightning_core(q, k, v, slopes, block):
    """o_t = q_t . sum_{j<=t} exp(-s (t-j)) k_j^T v_j for q, k, v [B, h, T, d] (float32), blocks of
    `block` rows. Returns [B, h, T, d]."""
    B, h, T, d = q.shape
    n = -(-T // block)
    pad = n * block - T
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    q, k, v = (x.view(B, h, n, block, d) for x in (q, k, v))
    s = slopes.view(h, 1).to(q.device)
    t = torch.arange(block, device=q.device, dtype=torch.float32)
    query_decay = torch.exp(-(s * (t + 1)))                      # [h, C]: row t sees the state decayed t+1 steps
    key_decay = torch.exp(-(s * (block - 1 - t)))                # [h, C]: key t decayed to the block's end
    distance = t.view(-1, 1) - t.view(1, -1)
    diagonal = torch.where(distance >= 0, torch.exp(-(s.view(h, 1, 1) * distance.clamp(min=0))),
                           torch.zeros((), device=q.device))   # [h, C, C]
    intra = ((q @ k.transpose(-1, -2)) * diagonal.view(1, h, 1, block, block)) @ v
    block_kv = (k * key_decay.view(1, h, 1, block, 1)).transpose(-1, -2) @ v        # [B, h, n, d, d]
    # State before block j: sum over i < j of exp(-s C (j-1-i)) block_kv_i.
    j = torch.arange(n, device=q.device, dtype=torch.float32)
    gap = j.view(-1, 1) - 1 - j.view(1, -1)
    between = torch.where(gap >= 0, torch.exp(-(s.view(h, 1, 1) * block * gap.clamp(min=0))),
                          torch.zeros((), device=q.device))    # [h, n, n]
    states = torch.einsum("hji,bhixy->bhjxy", between, block_kv)
    inter = (q * query_decay.view(1, h, 1, block, 1)) @ states
    out = (inter + intra).view(B, h, n * block, d)
    return out[:, :, :T]


def rope(x, rotary_dim, theta):
    """Rotate-half RoPE on the first `rotary_dim` dims of x [B, heads, T, d]; the rest pass."""
    if rotary_dim == 0:
        return x
    T = x.shape[2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=x.device).float() / rotary_dim))
    angles = torch.arange(T, device=x.device, dtype=torch.float32).view(-1, 1) * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([(rot * cos + rotated * sin).to(x.dtype), rest], -1)


class LightningAttention(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        self.heads, self.head_dim = c["num_attention_heads"], c["head_dim"]
        inner = self.heads * self.head_dim
        self.qkv_proj = nn.Linear(c["hidden_size"], 3 * inner, bias=False)   # per head [q | k | v]
        self.output_gate = nn.Linear(c["hidden_size"], inner, bias=False)
        self.norm = RMSNorm(inner, 1e-6)
        self.out_proj = nn.Linear(inner, c["hidden_size"], bias=False)
        self.register_buffer("slopes", lightning_slopes(self.heads, layer, c["num_hidden_layers"]), persistent=False)
        self.block = 256

    def forward(self, a):
        B, T, _ = a.shape
        qkv = F.silu(self.qkv_proj(a)).view(B, T, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        with torch.autocast(a.device.type, enabled=False):
            o = lightning_core(qkv[0].float(), qkv[1].float(), qkv[2].float(), self.slopes, self.block)
        o = self.norm(o.transpose(1, 2).reshape(B, T, -1))
        return self.out_proj(torch.sigmoid(self.output_gate(a)) * o)


class SoftmaxAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        H = c["hidden_size"]
        self.q_proj = nn.Linear(H, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, H, bias=False)
        self.rotary_dim, self.theta = c["rotary_dim"], c["rope_theta"]

    def forward(self, a):
        B, T, _ = a.shape
        q = self.q_proj(a).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(a).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(a).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, self.rotary_dim, self.theta), rope(k, self.rotary_dim, self.theta)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))


class Expert(nn.Module):
    def __init__(self, H, width):
        super().__init__()
        self.w1 = nn.Linear(H, width, bias=False)  # gate (through SiLU)
        self.w3 = nn.Linear(H, width, bias=False)  # up
        self.w2 = nn.Linear(width, H, bias=False)  # down


class SparseMoe(nn.Module):
    """Softmax router, top-k, weights renormalised over the chosen k. Computed densely (every
    expert on every token, unchosen ones weighted 0): with experts this small that is cheaper on a
    GPU than gathering tokens, and it is the same function."""

    def __init__(self, c):
        super().__init__()
        self.gate = nn.Linear(c["hidden_size"], c["num_local_experts"], bias=False)
        self.experts = nn.ModuleList(Expert(c["hidden_size"], c["intermediate_size"]) for _ in range(c["num_local_experts"]))
        self.top_k = c["num_experts_per_tok"]

    def forward(self, b):
        probs = torch.softmax(self.gate(b).float(), dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_i, top_w)            # [..., E]
        w1 = torch.cat([e.w1.weight for e in self.experts], 0)
        w3 = torch.cat([e.w3.weight for e in self.experts], 0)
        w2 = torch.cat([e.w2.weight for e in self.experts], 1)
        hidden = F.silu(F.linear(b, w1)) * F.linear(b, w3)                      # [..., E * width]
        E = len(self.experts)
        hidden = (hidden.view(*b.shape[:-1], E, -1) * weights.unsqueeze(-1).to(hidden.dtype)).flatten(-2)
        # Switch-style balance loss: fraction routed to each expert times its mean probability.
        routed = torch.zeros_like(probs).scatter(-1, top_i, 1.0).flatten(0, -2).mean(0)
        self.balance_loss = E * (routed * probs.flatten(0, -2).mean(0)).sum() / self.top_k
        return F.linear(hidden, w2)


class DecoderLayer(nn.Module):
    def __init__(self, c, layer):
        super().__init__()
        self.lightning = c["attn_type_list"][layer] == 0
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = LightningAttention(c, layer) if self.lightning else SoftmaxAttention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.block_sparse_moe = SparseMoe(c)
        kind = "linear_attention" if self.lightning else "full_attention"
        self.attn_alpha, self.attn_beta = c[f"layernorm_{kind}_alpha"], c[f"layernorm_{kind}_beta"]
        self.mlp_alpha, self.mlp_beta = c["layernorm_mlp_alpha"], c["layernorm_mlp_beta"]

    def forward(self, x):
        a = self.input_layernorm(x)                 # post-norm: the residual is the normed value
        h = a * self.attn_alpha + self.self_attn(a) * self.attn_beta
        b = self.post_attention_layernorm(h)
        return b * self.mlp_alpha + self.block_sparse_moe(b) * self.mlp_beta


class MiniMaxM1(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = None if c["tie_word_embeddings"] else nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def hidden(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def logits(self, hidden):
        return F.linear(hidden, self.lm_head.weight if self.lm_head is not None else self.embed_tokens.weight)

    def forward(self, ids):
        return self.logits(self.hidden(ids))

    def balance_loss(self):
        return sum(layer.block_sparse_moe.balance_loss for layer in self.layers) / len(self.layers)

    def checkpoint_tensors(self):
        """The released tensor names (`model.` prefix; lm_head only when untied)."""
        out = {}
        for name, tensor in self.state_dict().items():
            out[name if name.startswith("lm_head") else "model." + name] = tensor
        return out

    def save(self, directory, dtype=torch.bfloat16):
        from safetensors.torch import save_file
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.checkpoint_tensors().items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def load(cls, directory, device="cpu"):
        from safetensors.torch import load_file
        directory = pathlib.Path(directory)
        model = cls(json.loads((directory / "config.json").read_text()))
        tensors = load_file(str(directory / "model.safetensors"))
        state = {k[len("model."):] if k.startswith("model.") else k: v.float() for k, v in tensors.items()}
        model.load_state_dict(state)
        return model.to(device)


def parameter_count(c):
    return sum(p.numel() for p in MiniMaxM1(c).parameters())


if __name__ == "__main__":
    print(parameter_count(demo_config()))
