"""Sampling tiny-dit, the zoo's transformer denoiser, with the loop written out.

    from helpers.zoo import load_dit
    dit = load_dit()                                          # a TinyDiT (below)
    images = dit("a large red circle at the top left", num_inference_steps=25).images  # PIL
    x = generate_dit(dit.transformer, dit.vae, dit.tokenizer, dit.text_encoder,
                     dit.scheduler, ["a small blue square, center"])    # (1, 3, 64, 64) in [0, 1]

tiny-dit is a diffusers `PixArtTransformer2DModel` (PixArt-alpha, Chen et al. 2023, a DiT
(Peebles & Xie 2023) with text cross-attention): the 4x8x8 latent is cut into 2x2 patches
(16 tokens), each block modulates its LayerNorms with the timestep through adaLN-single
and reads the caption through cross-attention. It denoises tiny-sd's VAE latents (scaled by
tiny-sd's scaling_factor), conditioned on tiny-sd's frozen CLIP text encoder, and predicts
epsilon under tiny-sd's noise schedule, so every diffusers scheduler works with it.

The architecture is here too (`TinyDiTConfig`, `build_transformer`: Lab 07 builds an untrained
one when the trained folder is missing); its training is `helpers.train.tiny_dit`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class TinyDiTConfig:
    """tiny-dit's architecture: 4x8x8 latents in 2x2 patches (16 tokens) of width `hidden`,
    `layers` PixArt blocks of `heads` heads; `seed` fixes the initialisation."""
    seed: int = 0
    hidden: int = 128
    heads: int = 4
    layers: int = 6
    patch: int = 2


def build_transformer(cfg: TinyDiTConfig, caption_channels: int = 64, latent_size: int = 8,
                      latent_channels: int = 4):
    """A fresh PixArtTransformer2DModel for tiny-sd's latents, PixArt-alpha's initialisation."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(cfg.seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.hidden // cfg.heads,
        in_channels=latent_channels, out_channels=latent_channels, num_layers=cfg.layers,
        cross_attention_dim=cfg.hidden, sample_size=latent_size, patch_size=cfg.patch,
        caption_channels=caption_channels, use_additional_conditions=False,
    )
    init_pixart_(model)
    return model


@torch.no_grad()
def init_pixart_(model) -> None:
    """PixArt-alpha's `initialize_weights` (PixArt-alpha repo, diffusion/model/nets/PixArt.py):
    xavier-uniform linears with zero bias; the patch embedding like a linear; timestep and
    caption MLPs N(0, 0.02); each block's cross-attention output projection and the final
    projection zeroed."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    w = model.pos_embed.proj.weight
    torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    torch.nn.init.zeros_(model.pos_embed.proj.bias)
    te = model.adaln_single.emb.timestep_embedder
    for lin in (te.linear_1, te.linear_2, model.adaln_single.linear):
        torch.nn.init.normal_(lin.weight, std=0.02)
    for lin in (model.caption_projection.linear_1, model.caption_projection.linear_2):
        torch.nn.init.normal_(lin.weight, std=0.02)
    for block in model.transformer_blocks:
        torch.nn.init.zeros_(block.attn2.to_out[0].weight)
        torch.nn.init.zeros_(block.attn2.to_out[0].bias)
    torch.nn.init.zeros_(model.proj_out.weight)
    torch.nn.init.zeros_(model.proj_out.bias)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompts: list[str], device=None) -> torch.Tensor:
    """CLIP hidden states of `prompts`, padded to the tokenizer's max length like Stable
    Diffusion's `encode_prompt` (no attention mask): (B, L, D) = (B, 16, 64) for tiny-sd."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids           # (B, L)
    device = device or text_encoder.device
    return text_encoder(ids.to(device)).last_hidden_state                     # (B, L, D)


@torch.no_grad()
def generate_dit(transformer, vae, tokenizer, text_encoder, scheduler, prompts,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, generator=None,
                 latents: torch.Tensor | None = None, negative_prompt=None) -> torch.Tensor:
    """Text-to-image with a PixArt-style transformer: images (B, 3, H, W) in [0, 1].

    The loop of `StableDiffusionPipeline.__call__`, with the transformer in the UNet's place:
      1. c = text_encoder(prompt), u = text_encoder(negative_prompt or "")       (B, L, D)
      2. z_T ~ N(0, I) * scheduler.init_noise_sigma                             (B, 4, h, w)
      3. for t in scheduler.timesteps:
             eps_u, eps_c = transformer(scale_model_input([z_t, z_t], t), t, [u, c])
             eps = eps_u + w (eps_c - eps_u)             (classifier-free guidance, w > 1)
             z_{t-1} = scheduler.step(eps, t, z_t)
      4. x = vae.decode(z_0 / scaling_factor)
    prompts: str or list of B str; generator: a torch.Generator (the initial noise is drawn
    on its device, then moved); latents: optional initial noise (B, 4, h, w).

    Why this loop is not shared with the other two written-out loops of the course:
    - Lab 06's `generate` (helpers/solutions/lab06_pipeline_components.py) is the learner's
      exercise: a solution module imports only torch/diffusers (DESIGN), so it cannot call
      this, and this must not call it: the zoo's DiT sampling (Lab 07's figures, the
      measured tiny-dit card) would then change whenever a lab's reference is edited. Its
      denoiser call also differs (UNet: `unet(x, t, encoder_hidden_states=...)`; PixArt:
      `transformer(x, encoder_hidden_states=..., timestep=t expanded to the batch)`).
    - The Lab 06 check's `_loop` is not a sampler but the maker of typical-bug candidates
      (CFG swapped, init_noise_sigma missing, ...), deliberately written apart from the
      reference, with a switch per bug; the check's expected images come from
      `StableDiffusionPipeline` itself. Checks import only the solution, `_core`, `zoo`
      and `shapes` (docs/CONTRACT.md).
    The pipeline calls of `helpers.evaluate` (`generate`, `judge_accuracy`, `benchmark`,
    `controlnet_accuracy`) are not loops over timesteps: they call this through `TinyDiT`.
    """
    from diffusers.utils.torch_utils import randn_tensor

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    B = len(prompts)
    device, dtype = transformer.device, transformer.dtype
    cfg = guidance_scale > 1.0
    emb = encode_prompt(tokenizer, text_encoder, prompts, device)             # (B, L, D)
    if cfg:
        neg = [""] * B if negative_prompt is None else (
            [negative_prompt] * B if isinstance(negative_prompt, str) else list(negative_prompt))
        emb = torch.cat([encode_prompt(tokenizer, text_encoder, neg, device), emb])  # (2B, L, D)
    emb = emb.to(dtype)
    size = transformer.config.sample_size
    shape = (B, transformer.config.in_channels, size, size)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    latents = latents.to(device, dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    # like StableDiffusionPipeline.prepare_extra_step_kwargs: only stochastic schedulers
    # (DDPM, Euler ancestral, ...) take a generator
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2) if cfg else latents
        x = scheduler.scale_model_input(x, t)
        eps = transformer(x, encoder_hidden_states=emb, timestep=t.expand(x.shape[0]).to(device)).sample
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents, **extra).prev_sample
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


@dataclass
class TinyDiT:
    """tiny-dit's transformer with the tiny-sd parts it needs. Callable like a diffusers
    pipeline (`dit(prompt, num_inference_steps=..., guidance_scale=..., generator=...,
    output_type="pil" | "pt")` -> `.images`), so helpers.evaluate measures it unchanged;
    swap the scheduler with `dit.scheduler = DPMSolverMultistepScheduler.from_config(
    dit.scheduler.config)`."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object

    @property
    def device(self):
        return self.transformer.device

    def to(self, device=None, dtype=None):
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.transformer, self.vae, self.text_encoder):
            m.to(**kwargs)
        return self

    def set_progress_bar_config(self, **kwargs):
        """No progress bar to configure (pipeline compatibility)."""

    def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, generator=None, latents=None, output_type="pil"):
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        images = generate_dit(self.transformer, self.vae, self.tokenizer, self.text_encoder,
                              self.scheduler, prompt, num_inference_steps, guidance_scale,
                              generator, latents, negative_prompt)
        if output_type == "pil":
            from diffusers.image_processor import VaeImageProcessor
            images = VaeImageProcessor.pt_to_numpy(images.cpu())
            images = VaeImageProcessor.numpy_to_pil(images)
        elif output_type == "np":
            from diffusers.image_processor import VaeImageProcessor
            images = VaeImageProcessor.pt_to_numpy(images.cpu())
        return ImagePipelineOutput(images=images)
