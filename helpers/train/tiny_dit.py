"""Training tiny-dit: a PixArt-alpha transformer denoiser on tiny-sd's latents.

    python -m helpers.train tiny-dit [--out DIR] [--seed 0] [--quick] [--threads 1]

The architecture is diffusers' `PixArtTransformer2DModel` (PixArt-alpha, Chen et al. 2023),
a DiT (Peebles & Xie 2023) with text cross-attention, chosen because it has the three parts
Lab 07 compares with the UNet, each in its plainest form:
  - patch tokens: the 4x8x8 latent cut into 2x2 patches -> 16 tokens of width `hidden`,
    plus fixed 2-D sin-cos position embeddings;
  - timestep conditioning through adaptive LayerNorm: one MLP of the timestep embedding
    gives 6 x hidden shift/scale/gate values shared by every block ("adaLN-single"), each
    block adding its own learned table;
  - text through cross-attention to the caption's token states (tiny-sd's CLIP encoder,
    64 wide, projected to `hidden` by PixArt's caption projection).
DiT proper conditions on a class label, not text; SD3's MMDiT reads text by joint attention
and also needs a pooled text embedding. PixArt reads text exactly as the UNet it is compared
with does (cross-attention to one encoder's token states), so only the image side differs. The resolution /
aspect-ratio conditioning of PixArt's 1024 px models is off (sample_size != 128), and the
output is epsilon only (out_channels = 4, no learned variance).

Training: tiny-sd's VAE and text encoder are frozen (latents and caption states computed
once); epsilon-prediction MSE (Ho et al. 2020, eq. 14) under tiny-sd's noise schedule,
weighted by min(SNR(t), 5) / SNR(t) (Min-SNR-gamma, Hang et al. 2023: the many nearly clean
timesteps no longer dominate the gradient; it speeds up ViT/DiT training severalfold); 10%
of captions dropped to "" for classifier-free guidance; AdamW, warm-up then cosine, EMA.
Initialisation follows PixArt-alpha's `initialize_weights` (xavier linears, zeroed
cross-attention output and final projection, so each block starts near the identity).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers import zoo
from helpers.train import (caption_bank, count, encoded_dataset, fresh_workdir, frozen_tiny_sd, hardware,
                           lr_lambda, optimizer_step, publish, q_sample, versions, write_train_log)


@dataclass
class TinyDiTConfig:
    seed: int = 0
    data_seed: int = 0           # the shapes stream tiny-sd was trained on
    n_train_images: int = 12_000
    hidden: int = 128
    heads: int = 4
    layers: int = 6
    patch: int = 2
    steps: int = 2_500
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0   # Min-SNR loss weighting (Hang et al. 2023); None: plain MSE

    @classmethod
    def quick(cls):
        """A seconds-long smoke configuration (tests); its weights are not good."""
        return cls(n_train_images=64, steps=4, batch=8, warmup=2)


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


def train_tiny_dit(out: Path, cfg: TinyDiTConfig, base: str | None = None) -> dict:
    """Train the transformer on tiny-sd's (`base`, default the zoo's) latents and text
    states; write `out` (transformer/, scheduler/, train_info.json, train_log.csv)."""
    from accelerate import Accelerator

    from diffusers.training_utils import EMAModel, compute_snr

    accelerator = Accelerator()
    dev = accelerator.device
    base = Path(base or zoo.ASSETS / "tiny-sd")
    pipe, noise_sched, scale = frozen_tiny_sd(base, dev)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer

    work = fresh_workdir(out)
    t_start, cpu_start = time.time(), time.process_time()
    log_rows = []

    t0 = time.time()
    items, means, stds = encoded_dataset(cfg, vae, dev, accelerator)
    caps, index, emb = caption_bank(tokenizer, text_encoder, dev)          # frozen CLIP states
    cap_idx = torch.tensor([index[it["caption"]] for it in items])
    del items                                                               # ~1 GB of images
    empty = index[""]
    times = {"data_s": round(time.time() - t0, 1)}

    model = build_transformer(cfg, caption_channels=text_encoder.config.hidden_size,
                              latent_size=vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1),
                              latent_channels=vae.config.latent_channels).to(dev)
    params = list(model.parameters())
    ema = EMAModel(params, decay=cfg.ema_decay)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.steps))
    model, opt = accelerator.prepare(model, opt)
    acp = noise_sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    model.train()
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="dit", disable=not accelerator.is_local_main_process)
    for step in bar:
        B = cfg.batch
        idx = torch.randint(0, len(means), (B,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        rows = cap_idx[idx].clone()
        rows[torch.rand(B, generator=gen) < cfg.cond_dropout] = empty       # "" for CFG
        eps = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (B,), generator=gen)
        z0, eps, t, cond = z0.to(dev), eps.to(dev), t.to(dev), emb[rows].to(dev)
        zt = q_sample(acp, z0, eps, t)                                       # q(z_t | z_0)
        pred = model(zt, encoder_hidden_states=cond, timestep=t).sample
        mse = F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3))   # (B,)
        if cfg.min_snr_gamma:                  # epsilon-prediction weight min(SNR, gamma) / SNR
            snr = compute_snr(noise_sched, t)
            weighted = (mse * snr.clamp(max=cfg.min_snr_gamma) / snr).mean()
        else:
            weighted = mse.mean()
        loss = mse.mean()                      # logged: the plain MSE, comparable with tiny-sd's
        optimizer_step(accelerator, weighted, params, opt, sched, ema)
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log_rows.append(("dit", step, round(loss.item(), 6), sched.get_last_lr()[0],
                             round(time.time() - t_start, 1)))
    ema.copy_to(params)
    times["dit_s"] = round(time.time() - t0, 1)
    model = accelerator.unwrap_model(model).eval()

    model.save_pretrained(work / "transformer", safe_serialization=True)
    pipe.scheduler.save_pretrained(work / "scheduler")                    # tiny-sd's schedule
    write_train_log(work / "train_log.csv", log_rows)
    info = {
        "model": "tiny-dit",
        "config": asdict(cfg),
        "base": zoo.base_record(base, "tiny-dit"),
        "params": {"transformer": count(model)},
        "tokens": {"image": (model.config.sample_size // cfg.patch) ** 2,
                   "text": tokenizer.model_max_length},
        "times_s": times | {"total_s": round(time.time() - t_start, 1),
                            "cpu_s": round(time.process_time() - cpu_start, 1)},
        "hardware": hardware(accelerator),
        "versions": versions(),
        "final_loss": {"dit": log_rows[-1][2]},
    }
    return publish(work, out, info)
