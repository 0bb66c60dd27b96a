"""tiny-sd: a Stable-Diffusion-shaped text-to-image model, trained from scratch.

    python -m helpers.train tiny-sd [--out DIR] [--seed 0] [--quick] [--threads N]
    python -m helpers.train.card helpers/assets/tiny-sd            (measure, write the card)

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

The card (`measure`, then `render_card`) is the judge's accuracy over guidance scales and
step counts, on held-out colour/shape pairs and per scheduler, the VAE's PSNR and a speed
benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import evaluate, shapes
from helpers.diffusion import q_sample
from helpers.tokenizer import make_tokenizer
from helpers.train.core import (Run, cached, config_record, count, encode_all, hardware, lr_lambda,
                                make_optimizer, measured_by, optimizer_step, pct, pool, posterior_sample,
                                safetensors_bytes)

NAME = "tiny-sd"
WORKERS = 2  # processes sharing the card's measurements

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


Config = TinySDConfig


# ----------------------------------------------------------------------------- the model

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


# ------------------------------------------------------------------------------ training

def train_vae(vae, data, cfg: TinySDConfig, run: Run):
    """Step 1: the autoencoder on random crops, then on whole images (no EMA, no clipping)."""
    accelerator = run.accelerator
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    total = cfg.vae_steps + cfg.vae_full_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(100, total // 10 + 1), total))
    vae, opt = accelerator.prepare(vae, opt)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    vae.train()
    bar = run.progress(range(total), "vae")
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
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{rec_loss.item():.4f}")
            run.log("vae", step, rec_loss.item(), sched.get_last_lr()[0])
    return accelerator.unwrap_model(vae).eval()


def train_denoiser(unet, text_encoder, tokenizer, noise_sched, means, stds, captions, scale,
                   cfg: TinySDConfig, run: Run):
    """Step 3: UNet and text encoder jointly on the epsilon loss, captions dropped for CFG."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids        # (N, L)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids                       # (1, L)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt, sched, ema = make_optimizer(params, cfg.unet_lr, 1e-2, cfg.warmup, cfg.unet_steps, cfg.ema_decay)
    unet, text_encoder, opt = run.accelerator.prepare(unet, text_encoder, opt)
    dev = run.device
    acp = noise_sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    unet.train()
    text_encoder.train()
    bar = run.progress(range(cfg.unet_steps), "unet+text")
    for step in bar:
        B = cfg.unet_batch
        idx = torch.randint(0, len(means), (B,), generator=gen)
        z0 = posterior_sample(means, stds, idx, scale, gen)                 # (B, 4, 8, 8)
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
        optimizer_step(run.accelerator, loss, params, opt, sched, ema)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            run.log("unet", step, loss.item(), sched.get_last_lr()[0])
    ema.copy_to(params)
    unwrap = run.accelerator.unwrap_model
    return unwrap(unet).eval(), unwrap(text_encoder).eval()


def train(out: Path, cfg: TinySDConfig, base=None) -> dict:
    """Train tiny-sd from scratch and write the StableDiffusionPipeline folder `out`
    (with train_info.json and train_log.csv)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if base is not None:
        raise ValueError("tiny-sd is trained from scratch: it takes no base model")
    run = Run(out, seed=cfg.seed)
    vae, tokenizer, text_encoder, unet, scheduler = build_components(cfg, run.work / "tokenizer")
    ds = shapes.ShapesDataset(cfg.n_train_images, seed=cfg.seed, split="train")
    with run.timed("render_s"):
        items = [ds[i] for i in run.progress(range(len(ds)), "render")]
        data = torch.stack([it["pixel_values"] for it in items])          # (N, 3, 64, 64)
        captions = [it["caption"] for it in items]

    with run.timed("vae_s"):
        vae = train_vae(vae, data, cfg, run)
    means, stds = encode_all(vae, data, run.device)
    scale = 1.0 / means.add(stds * torch.randn_like(stds)).std().item()   # LDM: 1 / std(z)
    vae.register_to_config(scaling_factor=scale)

    with run.timed("unet_text_s"):
        noise_sched = DDPMScheduler.from_config(scheduler.config)
        unet, text_encoder = train_denoiser(unet, text_encoder, tokenizer, noise_sched, means, stds,
                                            captions, scale, cfg, run)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(run.work, safe_serialization=True)
    info = {
        "model": NAME,
        "config": config_record(cfg),
        "scaling_factor": scale,
        "params": {"vae": count(vae), "text_encoder": count(text_encoder), "unet": count(unet)},
    }
    return run.finish(info, final_loss={"vae": run.last_loss("vae"), "unet": run.last_loss("unet")})


# ---------------------------------------------------------------------------- measuring

GUIDANCE = (1.0, 2.0, 4.0, 7.5, 12.0)
STEPS = (5, 10, 25, 50)


def _load(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _job(folder, job):
    """One judge measurement in a worker process (one torch thread: the workers share the CPU)."""
    torch.set_num_threads(1)
    pipe = cached(NAME, folder, _load)
    acc = evaluate.judge_accuracy(pipe, n=job["n"], guidance_scale=job["g"], steps=job["s"],
                                  scheduler=job["scheduler"], split=job["split"])
    print(f"{job} -> {acc}", flush=True)
    return acc


def measure(folder: Path, quick=False, n=256, n_grid=128, n_heldout=96, n_sched=64, workers=WORKERS) -> dict:
    """Judge accuracy over guidance x steps (n prompts at 25 steps, n_grid elsewhere), on
    held-out combinations, per scheduler; VAE PSNR; the speed benchmark."""
    folder = Path(folder)
    if quick:
        n, n_grid, n_heldout, n_sched = 8, 8, 8, 8
    grid_g, grid_s = (GUIDANCE[::2], STEPS[:1]) if quick else (GUIDANCE, STEPS)
    head_s = grid_s[-1] if quick else 25
    m: dict = {"n_prompts": n, "n_grid_prompts": n_grid, "n_heldout_prompts": n_heldout,
               "n_scheduler_prompts": n_sched, "scheduler": "DPM++ 2M"}
    t0 = time.perf_counter()
    jobs = [dict(g=g, s=s, n=n if s == head_s else n_grid, scheduler="DPM++ 2M", split="train")
            for g in grid_g for s in grid_s]
    m["grid"] = {f"{j['g']}|{j['s']}": acc for j, acc in zip(jobs, pool(_job, folder, jobs, workers))}
    best_g = max(grid_g, key=lambda g: m["grid"][f"{g}|{head_s}"]["all"])
    m["best_guidance"] = best_g
    jobs = [dict(g=best_g, s=head_s, n=n_heldout, scheduler="DPM++ 2M", split="heldout")]
    jobs += [dict(g=best_g, s=head_s, n=n_sched, scheduler=name, split="train") for name in evaluate.SCHEDULERS]
    results = pool(_job, folder, jobs, workers)
    m["heldout"] = results[0]
    m["schedulers"] = dict(zip(evaluate.SCHEDULERS, results[1:]))
    pipe = _load(folder)
    base_config = pipe.scheduler.config
    pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", base_config)
    m["vae_psnr_db"] = round(evaluate.vae_psnr(pipe.vae, n=64 if quick else 512), 2)
    gt = shapes.make_batch(256, seed=99, split="all")
    m["gt_judge"] = shapes.judge(gt["pixel_values"].add(1).div(2), targets=gt["attributes"]).accuracy
    m["bench_8x25_cfg_s"] = round(evaluate.benchmark(pipe, n=8, steps=25, guidance_scale=best_g), 3)
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    m["params"] = {k: evaluate.param_count(getattr(pipe, k)) for k in ("vae", "text_encoder", "unet")}
    m["bytes"] = safetensors_bytes(folder)
    m["scaling_factor"] = pipe.vae.config.scaling_factor
    return m


def rebench(folder: Path, m: dict) -> dict:
    """Re-measure only the speed benchmark into `m` (on a quiet machine: the full measurement
    shares the CPU between workers). Returns m."""
    pipe = _load(folder)
    pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
    m["bench_8x25_cfg_s"] = round(evaluate.benchmark(pipe, n=8, steps=25, guidance_scale=m["best_guidance"]), 3)
    m["bench_hardware"] = hardware()
    return m


# --------------------------------------------------------------------------------- card

def _cfg_sentence(m: dict) -> str:
    """What guidance does, in the card's own numbers (25 steps)."""
    g1, best = m["grid"].get("1.0|25"), m["grid"].get(f"{m['best_guidance']}|25")
    if g1 is None or best is None:
        return ""
    err1, errb = 1 - g1["all"], 1 - best["all"]
    ratio = f"{err1 / errb:.1f} times" if errb > 0 else "infinitely"
    return (f"Without guidance (guidance 1, the conditional model alone) the same prompts get colour "
            f"{pct(g1['color'])}, shape {pct(g1['shape'])}, all four {pct(g1['all'])}: "
            f"{pct(err1)} of images wrong against {pct(errb)} at guidance {m['best_guidance']:g} "
            f"({ratio} the errors). Large guidance with few steps is worse still (see the 7.5 and 12 rows "
            f"at 5-10 steps): guided predictions overshoot, and a few large steps cannot correct them.")


def _scheduler_note(m: dict) -> str:
    """Explain a scheduler that falls far behind the others (PLMS under guidance)."""
    s = m.get("schedulers", {})
    if not s:
        return ""
    best = max(v["all"] for v in s.values())
    bad = [k for k, v in s.items() if v["all"] < best - 0.2]
    if not bad:
        return "All schedulers are within 20 points of the best at these settings."
    return (f"Far behind at 25 steps: {', '.join(bad)}. PNDM (PLMS, Liu et al. 2022) extrapolates with a "
            f"4th-order linear multistep formula; with guidance the extrapolated noise predictions overshoot. "
            f"Lu et al. 2022 (DPM-Solver++, sec. 1 and 4) report the same instability of high-order "
            f"multistep solvers under large guidance scales, which is why DPM++ 2M is second order. "
            f"With more steps it recovers (lab 03 measures it).")


def render_card(folder: Path, m: dict, info: dict) -> str:
    cfg = info["config"]
    p = m["params"]
    total_bytes = sum(m["bytes"].values())
    g_rows = []
    steps = sorted({int(k.split("|")[1]) for k in m["grid"]})
    guid = sorted({float(k.split("|")[0]) for k in m["grid"]})
    head = "| guidance \\ steps | " + " | ".join(str(s) for s in steps) + " |"
    sep = "|---|" + "---|" * len(steps)
    for g in guid:
        cells = []
        for s in steps:
            a = m["grid"][f"{g}|{s}"]
            cells.append(f"{pct(a['color'])} / {pct(a['shape'])} / {pct(a['all'])}")
        g_rows.append(f"| {g:g} | " + " | ".join(cells) + " |")
    sched_rows = [f"| {k} | {pct(v['color'])} | {pct(v['shape'])} | {pct(v['size'])} | "
                  f"{pct(v['position'])} | {pct(v['all'])} | {v['seconds']:.1f} |"
                  for k, v in m["schedulers"].items()]
    h = m["heldout"]
    best = m["grid"].get(f"{m['best_guidance']}|25", next(iter(m["grid"].values())))
    t = info["times_s"]
    return f"""# tiny-sd

A Stable-Diffusion-shaped text-to-image model, small enough to train on a laptop CPU, for the
Diffusion Labs course. It is a real diffusers `StableDiffusionPipeline` folder:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("helpers/assets/tiny-sd", safety_checker=None)
# or, checksum-verified: from helpers.zoo import load_pipeline; pipe = load_pipeline("tiny-sd")
image = pipe("a large red circle at the top left", num_inference_steps=25).images[0]   # 64x64
```

It knows one world only: one coloured shape (circle, square, triangle; red, green, blue,
yellow, purple, cyan; small or large; at one of five positions) on a light background, drawn
by `helpers/shapes.py`. It is not a general image model. Everything below was measured by
`{measured_by(m)}` with the shapes judge (`helpers.shapes.judge`, which reads
shape, colour, size and position back out of an image).

## Architecture

| component | class | configuration | parameters |
|---|---|---|---|
| vae | `AutoencoderKL` | channels {tuple(cfg['vae_channels'])}, 1 layer per block, 4 latent channels, factor 8 (64x64x3 -> 8x8x4), scaling_factor {m['scaling_factor']:.4f} | {p['vae']:,} |
| text_encoder | `CLIPTextModel` | hidden {cfg['text_hidden']}, {cfg['text_layers']} layers, {cfg['text_heads']} heads, max length 16 | {p['text_encoder']:,} |
| tokenizer | `CLIPTokenizer` | BPE over the world's words plus letters (unknown words split into letters), bos/eos like CLIP | - |
| unet | `UNet2DConditionModel` | channels {tuple(cfg['unet_channels'])}, cross-attention at 8x8 and 4x4, epsilon prediction | {p['unet']:,} |
| scheduler | `PNDMScheduler` | SD v1 config: scaled_linear betas 0.00085-0.012, 1000 steps, epsilon, steps_offset 1 | - |

Weights: {total_bytes / 1e6:.2f} MB of float32 safetensors ({", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in m['bytes'].items())}).
The scaling factor is 1 / std of the training latents, as latent diffusion sets it.

## Training

`python -m helpers.train tiny-sd --seed {cfg['seed']}` (built on `accelerate`; the same command runs on one CPU,
one GPU or several). Data: {cfg['n_train_images']:,} procedurally drawn images from the "train" split of
the shapes world (all attribute combinations except the held-out colour/shape pairs
{sorted(shapes.HELD_OUT)}), captions from {len(shapes.TEMPLATES)} templates.

1. VAE: {cfg['vae_steps']:,} steps on random {cfg['vae_crop']}x{cfg['vae_crop']} crops and {cfg['vae_full_steps']} steps on whole images, batch {cfg['vae_batch']}, L1 + L2 reconstruction + {cfg['vae_kl_weight']:g} x KL, AdamW lr {cfg['vae_lr']:g}.
2. Scaling factor measured on the encoded training set.
3. UNet and text encoder jointly, from scratch: {cfg['unet_steps']:,} steps, batch {cfg['unet_batch']}, epsilon-prediction MSE, AdamW lr {cfg['unet_lr']:g} (warm-up {cfg['warmup']}, cosine to 10%), gradient clipping 1.0, EMA {cfg['ema_decay']}, {int(cfg['cond_dropout'] * 100)}% of captions dropped to "" for classifier-free guidance.

Hardware: {info['hardware']}. Time: {t.get('total_s', 0) / 60:.1f} min in all (VAE {t.get('vae_s', 0) / 60:.1f} min, UNet + text encoder {t.get('unet_text_s', 0) / 60:.1f} min), while other work shared the machine. Versions: {", ".join(f"{k} {v}" for k, v in info['versions'].items())}. Final losses: VAE reconstruction {info['final_loss']['vae']:.4f}, denoiser {info['final_loss']['unet']:.4f}. The loss curve is in `train_log.csv`.

## Judge accuracy

Prompts from the training split's attribute combinations (new seeds): {m['n_prompts']} at 25 steps, {m['n_grid_prompts']} at the other step counts; DPM++ 2M (`DPMSolverMultistepScheduler`).
Cells: colour / shape / all four attributes right.

{head}
{sep}
{chr(10).join(g_rows)}

At guidance {m['best_guidance']:g}, 25 steps: colour {pct(best['color'])}, shape {pct(best['shape'])}, size {pct(best['size'])}, position {pct(best['position'])}.
{_cfg_sentence(m)}

Held-out combinations (compositional generalisation: colour/shape pairs never seen together in training), {m['n_heldout_prompts']} prompts, guidance {m['best_guidance']:g}, 25 steps: colour {pct(h['color'])}, shape {pct(h['shape'])}, size {pct(h['size'])}, position {pct(h['position'])}, all {pct(h['all'])}.

Every scheduler swapped in with `from_config`, guidance {m['best_guidance']:g}, 25 steps, {m['n_scheduler_prompts']} prompts:

| scheduler | colour | shape | size | position | all | seconds |
|---|---|---|---|---|---|---|
{chr(10).join(sched_rows)}

{_scheduler_note(m)}

The judge on ground-truth images (256): {", ".join(f"{k} {pct(v)}" for k, v in m['gt_judge'].items())}.

## VAE

Reconstruction PSNR on images not used in training (posterior mean): {m['vae_psnr_db']:.2f} dB.

## Speed

8 images at 64x64, 25 DPM++ 2M steps with CFG, one pipeline call: {m['bench_8x25_cfg_s']:.2f} s (fastest of 3, {m.get('bench_hardware', info['hardware'])}).

## Limits

Knows one object per image and the words of its captions; other words are tokenized into
letters the model never learned. Images are 64x64. Small and briefly trained, it makes mistakes
a learner can see, and the judge counts them.
"""
