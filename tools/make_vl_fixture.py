#!/usr/bin/env python3
"""Builds tests/data/tiny-vl: a tiny random MiniMax-VL-01 checkpoint and image references.

The vision tower is transformers' CLIPVisionModel (hidden 32, 2 layers, 2 heads, but the real
336-pixel tiles and 14-pixel patches so the token formulas hold), the projector and the packing
are written here from the model notes (docs/minimax-model.md §6.3-§6.5), the language model is
tests/data/tiny-a-m1-rd8 under "language_model.". The preprocessing is the original VL-01
processor's "anyres" algorithm (§6.4) re-implemented with Pillow.

Outputs in tests/data/tiny-vl/:
  config.json, preprocessor_config.json, model.safetensors   the checkpoint
  images/NAME.png                                             source images
  images/NAME.tiles.png                                       reference RGB tiles stacked top to
                                                              bottom, thumbnail first
  images/decode-*                                             the same pixels in other formats
  references.safetensors   per image: NAME.grid int64 [2] (rows, columns), NAME.token_count
                           int64 [1], NAME.features float32 [tokens, 64] (projected and packed)
Run: python3 tools/make_vl_fixture.py  (needs torch, transformers, pillow, safetensors, numpy)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
OUT = os.path.join(ROOT, "tiny-vl")
TEXT = os.path.join(ROOT, "tiny-a-m1-rd8")
TILE = 336
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# The "<image>" special token of the language model's tokenizer (copied from tiny-a-m1-rd8).
IMAGE_TOKEN = 5
# The released list (§6.1), written [h, w] like the config; the original code reads (w, h).
PINPOINTS = [[a, b] for a in range(336, 2017, 336) for b in range(336, 2017, 336)
             if min(a, b) <= 1008 or (a == 1344 and b == 1344)]


def select_best_resolution(W, H):
    best, best_eff, best_waste = None, 0, float("inf")
    for pw, ph in PINPOINTS:
        scale = min(pw / W, ph / H)
        dw, dh = int(W * scale), int(H * scale)
        eff = min(dw * dh, W * H)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (pw, ph), eff, waste
    return best


def anyres_tiles(img):
    """Thumbnail first, then the grid tiles row-major, as RGB PIL images; and (rows, cols)."""
    W, H = img.size
    bw, bh = select_best_resolution(W, H)
    canvas = Image.new("RGB", (bw, bh), (0, 0, 0))
    if W / H > bw / bh:
        nh = int(bw * H / W)
        canvas.paste(img.resize((bw, nh), Image.BICUBIC).convert("RGB"), (0, (bh - nh) // 2))
    else:
        nw = int(bh * W / H)
        canvas.paste(img.resize((nw, bh), Image.BICUBIC).convert("RGB"), ((bw - nw) // 2, 0))
    tiles = [img.resize((TILE, TILE), Image.BICUBIC).convert("RGB")]
    for r in range(bh // TILE):
        for c in range(bw // TILE):
            tiles.append(canvas.crop((c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE)))
    return tiles, (bh // TILE, bw // TILE)


def pixel_values(tiles):
    x = torch.stack([torch.from_numpy(np.asarray(t).copy()).permute(2, 0, 1) for t in tiles]).float().div(255)
    mean = torch.tensor(MEAN, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(STD, dtype=torch.float32)[None, :, None, None]
    return (x - mean) / std


def unpadded(W, H, rows, cols, g=TILE // 14):
    Wp, Hp = cols * g, rows * g
    if W / H > Wp / Hp:
        new_h = (H * Wp) // W
        pad = (Hp - new_h) // 2
        return Hp - 2 * pad, Wp, pad, 0
    new_w = (W * Hp) // H
    pad = (Wp - new_w) // 2
    return Hp, Wp - 2 * pad, 0, pad


def make_images():
    rng = np.random.default_rng(7)
    images = {}
    y, x = np.mgrid[0:336, 0:336]
    images["gradient"] = Image.fromarray(np.stack([x * 255 // 335, y * 255 // 335, (x + y) * 255 // 670], -1).astype(np.uint8))
    text = Image.new("RGB", (700, 180), (250, 250, 245))
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default()
    for i, line in enumerate(["Lightdesk reads scanned pages.", "Invoice 2026-11-21  total 1,234.56",
                              "The quick brown fox jumps over the lazy dog"]):
        draw.text((12, 14 + 55 * i), line, fill=(20, 20, 60), font=font)
    images["text_wide"] = text
    ty, tx = np.mgrid[0:457, 0:123]
    gray = (tx * 2 + ty // 2 + rng.integers(0, 40, tx.shape)) % 256
    images["tall_gray"] = Image.fromarray(gray.astype(np.uint8), "L")
    ry, rx = np.mgrid[0:375, 0:500]
    rgba = np.stack([rx * 255 // 499, 255 - ry * 255 // 374, (rx ^ ry) & 255, (rx + ry) * 255 // 873], -1)
    images["alpha"] = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    images["tiny"] = Image.fromarray(rng.integers(0, 256, (5, 7, 3)).astype(np.uint8))
    # Tall: the thumbnail shrinks the height far more than the width (Pillow 13 resamples
    # vertically first there).
    receipt = Image.new("RGB", (260, 1300), (255, 253, 240))
    draw = ImageDraw.Draw(receipt)
    for i in range(40):
        draw.text((10, 12 + 32 * i), f"item {i:02d} ........ {(i * 37) % 100:2d}.{i % 10}0", fill=(30, 30, 30), font=font)
    images["receipt"] = receipt
    wy, wx = np.mgrid[0:700, 0:1000]
    rings = ((np.hypot(wx - 420, wy - 300) // 24) % 2) * 180
    images["rings"] = Image.fromarray(np.stack([rings + wx * 60 // 999, rings // 2 + 40, 255 - rings], -1).astype(np.uint8))
    return images


def write_decode_variants(img, folder):
    """The 'rings'-like content in other formats, and with EXIF orientation 6 (rotate 90° CW)."""
    small = img.resize((64, 48), Image.BICUBIC)
    small.save(os.path.join(folder, "decode-base.png"))
    small.save(os.path.join(folder, "decode-lossless.webp"), lossless=True)
    small.save(os.path.join(folder, "decode-plain.tiff"))
    small.save(os.path.join(folder, "decode-quality95.jpg"), quality=95, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    small.save(os.path.join(folder, "decode-orient6.png"), exif=exif.tobytes())
    small.save(os.path.join(folder, "decode-orient6.jpg"), quality=95, subsampling=0, exif=exif.tobytes())
    small.save(os.path.join(folder, "decode-orient6.tiff"), tiffinfo={0x0112: 6})
    small.convert("P", palette=Image.ADAPTIVE, colors=32).save(os.path.join(folder, "decode-palette.png"))
    small.convert("P", palette=Image.ADAPTIVE, colors=32).convert("RGB").save(os.path.join(folder, "decode-palette-rgb.png"))
    small.convert("L").save(os.path.join(folder, "decode-gray.png"))
    small.convert("LA").save(os.path.join(folder, "decode-gray-alpha.png"))


def init_weights(module, gen):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=TILE, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5,
                            projection_dim=64)
    tower = CLIPVisionModel(vcfg).eval()
    init_weights(tower, gen)
    text_config = json.load(open(os.path.join(TEXT, "config.json")))
    C = text_config["hidden_size"]
    linear_1, linear_2 = torch.nn.Linear(32, C), torch.nn.Linear(C, C)
    init_weights(linear_1, gen)
    init_weights(linear_2, gen)
    newline = torch.randn(C, generator=gen)

    tensors = {"language_model." + k: v for k, v in load_file(os.path.join(TEXT, "model.safetensors")).items()}
    for k, v in tower.state_dict().items():
        if "post_layernorm" in k or k.endswith("position_ids"):
            continue  # not in the released checkpoint (§3.3)
        # The released names (§3.3); transformers 5 drops the "vision_model." level in its own keys.
        name = k if k.startswith("vision_model.") else "vision_model." + k
        tensors["vision_tower." + name] = v.contiguous()
    for i, lin in ((1, linear_1), (2, linear_2)):
        tensors[f"multi_modal_projector.linear_{i}.weight"] = lin.weight.detach().contiguous()
        tensors[f"multi_modal_projector.linear_{i}.bias"] = lin.bias.detach().contiguous()
    tensors["image_newline"] = newline
    save_file(tensors, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    vision_config = {k: v for k, v in vcfg.to_dict().items()
                     if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "patch_size", "image_size", "hidden_act", "layer_norm_eps", "projection_dim",
                              "num_channels", "model_type")}
    config = {"architectures": ["MiniMaxVL01ForConditionalGeneration"], "model_type": "minimax_vl_01",
              "image_token_index": IMAGE_TOKEN, "vision_feature_layer": -1,
              "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
              "image_grid_pinpoints": PINPOINTS, "vision_config": vision_config, "text_config": text_config}
    json.dump(config, open(os.path.join(OUT, "config.json"), "w"), indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TEXT, name), os.path.join(OUT, name))
    json.dump({"process_image_mode": "anyres", "image_grid_pinpoints": PINPOINTS, "image_mean": list(MEAN),
               "image_std": list(STD), "patch_size": 14, "size": TILE},
              open(os.path.join(OUT, "preprocessor_config.json"), "w"), indent=1)

    refs = {}
    images = make_images()
    for name, img in images.items():
        img.save(os.path.join(OUT, "images", name + ".png"))
        tiles, (rows, cols) = anyres_tiles(img)
        stacked = Image.new("RGB", (TILE, TILE * len(tiles)))
        for i, t in enumerate(tiles):
            stacked.paste(t, (0, i * TILE))
        stacked.save(os.path.join(OUT, "images", name + ".tiles.png"))
        with torch.no_grad():
            pix = pixel_values(tiles)
            feat = tower(pixel_values=pix, output_hidden_states=True).hidden_states[-1][:, 1:]
            f = linear_2(torch.nn.functional.gelu(linear_1(feat)))  # [tiles, 576, C]
        g = TILE // 14
        W, H = img.size
        grid = f[1:].view(rows, cols, g, g, C).permute(4, 0, 2, 1, 3).reshape(C, rows * g, cols * g)
        h_num, w_num, top, left = unpadded(W, H, rows, cols)
        grid = grid[:, top:top + h_num, left:left + w_num]
        grid = torch.cat([grid, newline[:, None, None].expand(C, h_num, 1)], dim=-1)
        packed = torch.cat([f[0], grid.flatten(1, 2).T], dim=0)
        assert packed.shape[0] == g * g + h_num * (w_num + 1)
        refs[name + ".grid"] = torch.tensor([rows, cols], dtype=torch.int64)
        refs[name + ".token_count"] = torch.tensor([packed.shape[0]], dtype=torch.int64)
        refs[name + ".features"] = packed.contiguous().float()
        print(f"{name}: {W}x{H} mode {img.mode} grid {rows}x{cols} tokens {packed.shape[0]}", file=sys.stderr)
    save_file(refs, os.path.join(OUT, "references.safetensors"))
    write_decode_variants(images["rings"], os.path.join(OUT, "images"))


if __name__ == "__main__":
    main()
