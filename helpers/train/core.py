"""Reproducible training of the zoo's models.

    python -m helpers.train tiny-sd [--out DIR] [--seed 0] [--quick] [--threads N]
    python -m helpers.train tiny-controlnet [...]      (helpers/train_controlnet.py)
    python -m helpers.train tiny-dit [...]             (helpers/train_dit.py)

tiny-sd is trained in the order latent diffusion prescribes (Rombach et al. 2022):
  1. the autoencoder (AutoencoderKL, factor 8, 4 latent channels) on shapes images, with an
     L1 + LPIPS-free reconstruction loss and a small KL term;
  2. the latent scaling factor, 1 / std of the training latents (LDM, sec. 4.3 / appendix G);
  3. the text encoder (a small CLIPTextModel, from scratch) and the UNet2DConditionModel
     jointly, on the epsilon-prediction loss || eps - eps_theta(z_t, t, c) ||^2
     (Ho et al. 2020, eq. 14), with 10% of captions dropped to "" so that classifier-free
     guidance works (Ho & Salimans 2022).
Everything runs through `accelerate`, so the same script uses one CPU, one GPU or several
GPUs unchanged (`accelerate launch -m helpers.train tiny-sd`). The output folder is a
diffusers StableDiffusionPipeline folder plus `train_log.csv`, `metrics.json`, a model card
and a checksum manifest. Seeds fix the data, the initialisation and the noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers import shapes
from helpers.tokenizer import make_tokenizer
from helpers.zoo import ASSETS, verify, write_manifest

SD_SCHEDULER = dict(  # Stable Diffusion v1's scheduler config (scheduler/scheduler_config.json)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    skip_prk_steps=True,
)


@dataclass
class TinySDConfig:
    seed: int = 0
    # data
    n_train_images: int = 24_000
    # autoencoder
    vae_channels: tuple = (16, 32, 32, 32)
    vae_steps: int = 1_600
    vae_crop: int = 32          # most VAE steps train on random crops (convs do not care)
    vae_full_steps: int = 200   # then full 64x64 images (the mid-block attention sees them whole)
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # text encoder
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    # unet
    unet_channels: tuple = (32, 64, 64)
    unet_steps: int = 2_800
    unet_batch: int = 96
    unet_lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls):
        """A minutes-long smoke configuration (tests, CI); its weights are not good."""
        return cls(n_train_images=256, vae_steps=10, vae_full_steps=3, unet_steps=10,
                   unet_batch=16, warmup=3)


def build_components(cfg: TinySDConfig, tokenizer_dir: Path):
    """Fresh (untrained) tiny-sd components: vae, tokenizer, text_encoder, unet, scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=shapes.IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1, norm_num_groups=8,
    )  # 3 downsamplings: 64x64x3 -> 8x8x4, factor 8 like SD
    tokenizer = make_tokenizer(tokenizer_dir, shapes.VOCABULARY)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
        intermediate_size=4 * cfg.text_hidden, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=tokenizer.model_max_length,
        projection_dim=cfg.text_hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    ch = tuple(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=shapes.IMAGE_SIZE // 8, in_channels=4, out_channels=4,
        block_out_channels=ch, layers_per_block=1, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * (len(ch) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(ch) - 1),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8,
    )  # cross-attention at 8x8 and 4x4, plain ResNet blocks at 2x2
    scheduler = PNDMScheduler.from_config(SD_SCHEDULER)
    return vae, tokenizer, text_encoder, unet, scheduler


def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def train_vae(vae, data, cfg, accelerator, log):
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    total = cfg.vae_steps + cfg.vae_full_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(100, total // 10 + 1), total))
    vae, opt = accelerator.prepare(vae, opt)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    vae.train()
    bar = tqdm(range(total), desc="vae", disable=not accelerator.is_local_main_process)
    for step in bar:
        idx = torch.randint(0, len(data), (cfg.vae_batch,), generator=gen)
        x = data[idx]                                                # (B, 3, 64, 64) in [-1, 1]
        if step < cfg.vae_steps and cfg.vae_crop < x.shape[-1]:
            c = cfg.vae_crop
            i, j = torch.randint(0, x.shape[-1] - c + 1, (2,), generator=gen).tolist()
            x = x[:, :, i:i + c, j:j + c]
        x = x.to(accelerator.device)
        post = accelerator.unwrap_model(vae).encode(x).latent_dist
        rec = accelerator.unwrap_model(vae).decode(post.sample()).sample
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        loss = rec_loss + cfg.vae_kl_weight * post.kl().mean()
        accelerator.backward(loss)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{rec_loss.item():.4f}")
            log("vae", step, rec_loss.item(), sched.get_last_lr()[0])
    return accelerator.unwrap_model(vae).eval()


@torch.no_grad()
def encode_all(vae, data, device, batch=256):
    """Posterior mean and std of every image: (N, 4, 8, 8) each."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        dist = vae.encode(data[i:i + batch].to(device)).latent_dist
        means.append(dist.mean.cpu()); stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def caption_bank(tokenizer, text_encoder, device):
    """Every training-split caption (each attribute combination x each template) and "",
    with the frozen text encoder's hidden states: (captions, index {caption: row},
    embeddings (N, L, D))."""
    caps = [shapes.caption(a, t) for a in shapes.all_attributes("train")
            for t in range(len(shapes.TEMPLATES))] + [""]
    ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    emb = torch.cat([text_encoder(ids[i:i + 256].to(device)).last_hidden_state.cpu()
                     for i in range(0, len(ids), 256)])
    return caps, {c: i for i, c in enumerate(caps)}, emb


def train_denoiser(unet, text_encoder, tokenizer, noise_sched, means, stds, captions, scale,
                   cfg, accelerator, log):
    from diffusers.training_utils import EMAModel

    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids        # (N, L)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids                       # (1, L)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=cfg.ema_decay)
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.unet_steps))
    unet, text_encoder, opt = accelerator.prepare(unet, text_encoder, opt)
    dev = accelerator.device
    acp = noise_sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    unet.train(); text_encoder.train()
    bar = tqdm(range(cfg.unet_steps), desc="unet+text", disable=not accelerator.is_local_main_process)
    for step in bar:
        B = cfg.unet_batch
        idx = torch.randint(0, len(means), (B,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        tok = ids[idx].clone()
        drop = torch.rand(B, generator=gen) < cfg.cond_dropout
        tok[drop] = empty                                                # "" for CFG
        eps = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (B,), generator=gen)
        z0, eps, t, tok = z0.to(dev), eps.to(dev), t.to(dev), tok.to(dev)
        zt = q_sample(acp, z0, eps, t)                                       # q(z_t | z_0)
        cond = text_encoder(tok).last_hidden_state                           # (B, L, D)
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, eps)
        optimizer_step(accelerator, loss, params, opt, sched, ema)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log("unet", step, loss.item(), sched.get_last_lr()[0])
    ema.copy_to(params)
    return accelerator.unwrap_model(unet).eval(), accelerator.unwrap_model(text_encoder).eval()


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process in closed form (DDPM eq. 4, lab 01), used by every training loop:
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. x0, noise: (B, C, H, W); t: (B,) int."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def optimizer_step(accelerator, loss, params, opt, lr_sched, ema) -> None:
    """One update of every zoo training loop: backward, clip the gradient norm to 1, AdamW,
    the learning-rate schedule, then the EMA of the weights."""
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(params, 1.0)
    opt.step(); lr_sched.step(); opt.zero_grad(set_to_none=True)
    ema.step(params)


def write_train_log(path: Path, rows) -> None:
    """The loss log as CSV: phase, step, loss, lr, elapsed_s (one row per logged step)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "step", "loss", "lr", "elapsed_s"])
        w.writerows(rows)


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def train_tiny_sd(out: Path, cfg: TinySDConfig) -> dict:
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    work = fresh_workdir(out)
    t_start = time.time()
    log_rows = []

    def log(phase, step, loss, lr):
        log_rows.append((phase, step, round(loss, 6), lr, round(time.time() - t_start, 1)))

    vae, tokenizer, text_encoder, unet, scheduler = build_components(cfg, work / "tokenizer")
    ds = shapes.ShapesDataset(cfg.n_train_images, seed=cfg.seed, split="train")
    t0 = time.time()
    items = [ds[i] for i in tqdm(range(len(ds)), desc="render", disable=not accelerator.is_local_main_process)]
    data = torch.stack([it["pixel_values"] for it in items])              # (N, 3, 64, 64)
    captions = [it["caption"] for it in items]
    times = {"render_s": round(time.time() - t0, 1)}

    t0 = time.time()
    vae = train_vae(vae, data, cfg, accelerator, log)
    times["vae_s"] = round(time.time() - t0, 1)
    means, stds = encode_all(vae, data, accelerator.device)
    scale = 1.0 / means.add(stds * torch.randn_like(stds)).std().item()   # LDM: 1 / std(z)
    vae.register_to_config(scaling_factor=scale)

    t0 = time.time()
    noise_sched = DDPMScheduler.from_config(scheduler.config)
    unet, text_encoder = train_denoiser(unet, text_encoder, tokenizer, noise_sched, means, stds,
                                        captions, scale, cfg, accelerator, log)
    times["unet_text_s"] = round(time.time() - t0, 1)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(work, safe_serialization=True)
    shutil.rmtree(work / "tokenizer_tmp", ignore_errors=True)
    with open(work / "train_log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "step", "loss", "lr", "elapsed_s"])
        w.writerows(log_rows)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "scaling_factor": scale,
        "params": {"vae": count(vae), "text_encoder": count(text_encoder), "unet": count(unet)},
        "times_s": times | {"total_s": round(time.time() - t_start, 1)},
        "hardware": hardware(accelerator),
        "versions": versions(),
        "final_loss": {"vae": next(r[2] for r in reversed(log_rows) if r[0] == "vae"),
                       "unet": next(r[2] for r in reversed(log_rows) if r[0] == "unet")},
    }
    return publish(work, out, info)


def frozen_tiny_sd(base, dev):
    """tiny-sd's parts for a model trained on top of them (ControlNet, DiT): checksum-verified,
    loaded, frozen, in eval mode, on `dev`. Returns (pipe, DDPM noise scheduler, VAE scaling factor)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    verify(base)
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).eval().to(dev)
    return pipe, DDPMScheduler.from_config(pipe.scheduler.config), pipe.vae.config.scaling_factor


def fresh_workdir(out: Path) -> Path:
    """An empty `<out>.tmp` folder to write into; renamed to `out` when training succeeds."""
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def publish(work: Path, out: Path, info: dict) -> dict:
    """Finish a training run: write `info` as train_info.json into the work folder
    (`fresh_workdir`), then replace `out` by it. Returns `info`."""
    (work / "train_info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    return info


def encoded_dataset(cfg, vae, dev, accelerator):
    """The training split rendered (cfg.n_train_images, cfg.data_seed) and encoded once:
    (items, posterior means, posterior stds)."""
    ds = shapes.ShapesDataset(cfg.n_train_images, seed=cfg.data_seed, split="train")
    items = [ds[i] for i in tqdm(range(len(ds)), desc="render", disable=not accelerator.is_local_main_process)]
    means, stds = encode_all(vae, torch.stack([it["pixel_values"] for it in items]), dev)
    return items, means, stds


def hardware(accelerator=None) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    import os
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def versions() -> dict:
    import diffusers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["tiny-sd", "tiny-controlnet", "tiny-dit"])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: helpers/assets/<model>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few steps (weights are not good)")
    ap.add_argument("--unet-steps", type=int, default=None, help="tiny-sd: UNet + text encoder steps")
    ap.add_argument("--vae-steps", type=int, default=None, help="tiny-sd: VAE steps")
    ap.add_argument("--steps", type=int, default=None, help="tiny-controlnet / tiny-dit: training steps")
    ap.add_argument("--base", type=Path, default=None,
                    help="tiny-controlnet / tiny-dit: the tiny-sd folder to build on (default: the zoo's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (1 is fastest on a CPU shared with other work)")
    ap.add_argument("--no-eval", action="store_true", help="skip the judge evaluation and model card")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ASSETS / args.model
    if args.model == "tiny-sd":
        cfg = TinySDConfig.quick() if args.quick else TinySDConfig()
        cfg.seed = args.seed
        if args.unet_steps is not None:
            cfg.unet_steps = args.unet_steps
        if args.vae_steps is not None:
            cfg.vae_steps = args.vae_steps
        info = train_tiny_sd(out, cfg)
    else:
        if args.model == "tiny-controlnet":
            from helpers.train_controlnet import TinyControlNetConfig as Config
            from helpers.train_controlnet import train_tiny_controlnet as train_fn
        else:
            from helpers.train_dit import TinyDiTConfig as Config
            from helpers.train_dit import train_tiny_dit as train_fn
        cfg = Config.quick() if args.quick else Config()
        cfg.seed = args.seed
        if args.steps is not None:
            cfg.steps = args.steps
        info = train_fn(out, cfg, base=args.base)
    print(json.dumps(info["times_s"]), info["params"])
    if not args.no_eval:
        from helpers.model_card import write_model_card
        write_model_card(out, quick=args.quick)
    write_manifest(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
