"""Real-scale denoisers built on the meta device from their published configs (no weights).

    from helpers.architectures import ARCHITECTURES, build, summary_table
    unet = build("SD 1.5 UNet")                 # a UNet2DConditionModel on torch.device("meta")
    rows = summary_table()                       # params vs published, attention tokens at 512 / 1024

The configs of SD 1.5's UNet, SDXL's UNet and FLUX.1's transformer live in helpers/memory.py
(Lab 10 uses them too: one config, one place); DiT-XL/2, PixArt-alpha and SD3 medium are
written out here from their published config.json files (only the keys that differ from the
diffusers classes' defaults, plus those that define the architecture). Building on the meta
device allocates no memory for weights, so even FLUX.1's 12 B parameters count in seconds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from helpers.memory import FLUX_TRANSFORMER, PUBLISHED_PARAMS, SD15_UNET, SDXL_UNET

DIT_XL_2 = dict(  # facebook/DiT-XL-2-256, transformer/config.json (class-conditional ImageNet, 256 px)
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, sample_size=32,
    patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
PIXART_ALPHA = dict(  # PixArt-alpha/PixArt-XL-2-1024-MS, transformer/config.json
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, caption_channels=4096, sample_size=128, patch_size=2, use_additional_conditions=True)
SD3_MEDIUM = dict(  # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192)


@dataclass(frozen=True)
class Arch:
    """One real denoiser: how to build it and what was published about it."""

    name: str
    repo: str
    cls: str  # the diffusers class
    config: dict
    published: int  # the published parameter count (exact where a checkpoint gives it, else as announced)
    published_text: str  # how it was announced
    text_tokens: int = 0  # text tokens that join the image tokens in self-attention (SD3, FLUX: joint attention)
    packing: int = 1  # latent pixels per token side beyond patch_size (FLUX packs 2 x 2 latent pixels)
    conditioning: str = ""


ARCHITECTURES = [
    Arch("SD 1.5 UNet", "stable-diffusion-v1-5/stable-diffusion-v1-5", "UNet2DConditionModel", SD15_UNET,
         PUBLISHED_PARAMS[("SD 1.5", "unet")], "859,520,964 (checkpoint)",
         conditioning="time: added to every ResNet; text (CLIP-L, 77 x 768): cross-attention at 3 of 4 levels"),
    Arch("SDXL UNet", "stabilityai/stable-diffusion-xl-base-1.0", "UNet2DConditionModel", SDXL_UNET,
         PUBLISHED_PARAMS[("SDXL", "unet")], "2,567,463,684 (checkpoint), '2.6B UNet'",
         conditioning="time + pooled text + size/crop (added); text (CLIP-L + bigG, 77 x 2048): cross-attention"),
    Arch("DiT-XL/2", "facebook/DiT-XL-2-256", "DiTTransformer2DModel", DIT_XL_2, 675_000_000, "675M (DiT paper, Table 4)",
         conditioning="time + class label: adaLN-Zero; no text"),
    Arch("PixArt-alpha", "PixArt-alpha/PixArt-XL-2-1024-MS", "PixArtTransformer2DModel", PIXART_ALPHA, 600_000_000,
         "0.6B (PixArt-alpha paper)",
         conditioning="time: adaLN-single (one MLP for all blocks); text (T5-XXL, 120 x 4096): cross-attention"),
    Arch("SD3 medium", "stabilityai/stable-diffusion-3-medium-diffusers", "SD3Transformer2DModel", SD3_MEDIUM,
         2_000_000_000, "2B (SD3 medium model card)", text_tokens=77 + 256,
         conditioning="time + pooled CLIP: adaLN; text (CLIP-L/G 77 + T5 256 tokens): JOINT attention (MMDiT)"),
    Arch("FLUX.1-dev", "black-forest-labs/FLUX.1-dev", "FluxTransformer2DModel", FLUX_TRANSFORMER,
         PUBLISHED_PARAMS[("FLUX.1-dev", "transformer")], "12B (model card); 11,901,408,320 (checkpoint)",
         text_tokens=512, packing=2,
         conditioning="time + guidance + pooled CLIP: adaLN; text (T5, 512 tokens): joint attention, RoPE positions"),
]
BY_NAME = {a.name: a for a in ARCHITECTURES}


@functools.lru_cache(maxsize=None)
def build(name: str):
    """The denoiser `name` (a key of BY_NAME) on the meta device: shapes, no memory."""
    import diffusers

    arch = BY_NAME[name]
    with torch.device("meta"):
        return getattr(diffusers, arch.cls)(**arch.config)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_params(name: str, model=None) -> int:
    """Parameters counted as the paper counts them. Only DiT differs from the diffusers module:
    diffusers' DiT gives EVERY block its own copy of the timestep + class embedder
    (`norm1.emb`, converted from the single shared one of the original code), so the module
    holds 27 redundant copies; the paper's 675M counts one."""
    model = model if model is not None else build(name)
    n = count_params(model)
    if BY_NAME[name].cls == "DiTTransformer2DModel":
        copies = [b.norm1.emb for b in model.transformer_blocks]
        n -= sum(count_params(e) for e in copies[1:])
    return n


def attention_tokens(name: str, resolution: int, model=None) -> dict:
    """Tokens of the largest self-attention at `resolution` px (VAE factor 8): the image tokens,
    the text tokens that join them (joint attention), their sum, and the score entries per
    head (tokens^2). UNets: the first level with attention, latent / 2**level per side;
    transformers: latent / (patch_size * packing) per side."""
    arch = BY_NAME[name]
    model = model if model is not None else build(name)
    latent = resolution // 8
    if hasattr(model, "down_blocks"):
        level = next(i for i, b in enumerate(model.down_blocks) if getattr(b, "attentions", None))
        side = latent // 2**level
    else:
        side = latent // (model.config.patch_size * arch.packing)
    image = side * side
    total = image + arch.text_tokens
    return {"image_tokens": image, "text_tokens": arch.text_tokens, "tokens": total, "scores_per_head": total * total}


def summary_table(resolutions=(512, 1024)) -> list[dict]:
    """One row per architecture: diffusers' parameter count, the paper's way of counting, the
    published number, their ratio, and the attention tokens at each resolution."""
    rows = []
    for arch in ARCHITECTURES:
        model = build(arch.name)
        row = {"model": arch.name, "class": arch.cls, "params": count_params(model),
               "paper_params": paper_params(arch.name, model), "published": arch.published,
               "published_text": arch.published_text, "conditioning": arch.conditioning}
        row["ratio"] = row["paper_params"] / arch.published
        for res in resolutions:
            row[f"tokens@{res}"] = attention_tokens(arch.name, res, model)["tokens"]
        rows.append(row)
    return rows
