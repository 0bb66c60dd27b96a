"""tiny-dit: a PixArt-alpha transformer denoiser on tiny-sd's latents.

    python -m helpers.train tiny-dit [--out DIR] [--seed 0] [--quick] [--threads 1]
    python -m helpers.train.card helpers/assets/tiny-dit            (measure, write the card)

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
output is epsilon only (out_channels = 4, no learned variance). The architecture and its
initialisation are lab-facing (Lab 07 builds an untrained one): `helpers.dit.TinyDiTConfig`,
`helpers.dit.build_transformer`.

Training: tiny-sd's VAE and text encoder are frozen (latents and caption states computed
once); epsilon-prediction MSE (Ho et al. 2020, eq. 14) under tiny-sd's noise schedule,
weighted by min(SNR(t), 5) / SNR(t) (Min-SNR-gamma, Hang et al. 2023: the many nearly clean
timesteps no longer dominate the gradient; it speeds up ViT/DiT training severalfold); 10%
of captions dropped to "" for classifier-free guidance; AdamW, warm-up then cosine, EMA.
Initialisation follows PixArt-alpha's `initialize_weights` (xavier linears, zeroed
cross-attention output and final projection, so each block starts near the identity).

The card compares it with tiny-sd's UNet: parameters, FLOPs per step, attention tokens,
judge accuracy at the same steps and guidance, speed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import evaluate, zoo
from helpers.diffusion import q_sample
from helpers.dit import TinyDiTConfig, build_transformer
from helpers.train.core import (Run, cached, caption_bank, config_record, count, cpu_time, encoded_dataset,
                                frozen_tiny_sd, make_optimizer, measured_by, optimizer_step, pct, pool,
                                posterior_sample, safetensors_bytes)

NAME = "tiny-dit"
WORKERS = 1  # processes sharing the card's measurements


@dataclass
class TinyDiTTrainConfig(TinyDiTConfig):
    """The architecture (helpers.dit.TinyDiTConfig: seed, hidden, heads, layers, patch) and
    how it is trained."""
    data_seed: int = 0           # the shapes stream tiny-sd was trained on
    n_train_images: int = 12_000
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


Config = TinyDiTTrainConfig


# ------------------------------------------------------------------------------ training

def train(out: Path, cfg: TinyDiTTrainConfig, base: str | None = None) -> dict:
    """Train the transformer on tiny-sd's (`base`, default the zoo's) latents and text
    states; write `out` (transformer/, scheduler/, train_info.json, train_log.csv)."""
    from diffusers.training_utils import compute_snr

    run = Run(out)
    dev = run.device
    base = Path(base or zoo.ASSETS / "tiny-sd")
    pipe, noise_sched, scale = frozen_tiny_sd(base, dev)
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer

    with run.timed("data_s"):
        items, means, stds = encoded_dataset(cfg, vae, dev, run.accelerator)
        _, index, emb = caption_bank(tokenizer, text_encoder, dev)      # frozen CLIP states
        cap_idx = torch.tensor([index[it["caption"]] for it in items])
        del items                                                           # ~1 GB of images
        empty = index[""]

    model = build_transformer(cfg, caption_channels=text_encoder.config.hidden_size,
                              latent_size=vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1),
                              latent_channels=vae.config.latent_channels).to(dev)
    params = list(model.parameters())
    opt, sched, ema = make_optimizer(params, cfg.lr, 0.0, cfg.warmup, cfg.steps, cfg.ema_decay)
    model, opt = run.accelerator.prepare(model, opt)
    acp = noise_sched.alphas_cumprod.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    model.train()
    with run.timed("dit_s"):
        bar = run.progress(range(cfg.steps), "dit")
        for step in bar:
            B = cfg.batch
            idx = torch.randint(0, len(means), (B,), generator=gen)
            z0 = posterior_sample(means, stds, idx, scale, gen)             # (B, 4, 8, 8)
            rows = cap_idx[idx].clone()
            rows[torch.rand(B, generator=gen) < cfg.cond_dropout] = empty   # "" for CFG
            eps = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (B,), generator=gen)
            z0, eps, t, cond = z0.to(dev), eps.to(dev), t.to(dev), emb[rows].to(dev)
            zt = q_sample(acp, z0, eps, t)                                   # q(z_t | z_0)
            pred = model(zt, encoder_hidden_states=cond, timestep=t).sample
            mse = F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3))   # (B,)
            if cfg.min_snr_gamma:              # epsilon-prediction weight min(SNR, gamma) / SNR
                snr = compute_snr(noise_sched, t)
                weighted = (mse * snr.clamp(max=cfg.min_snr_gamma) / snr).mean()
            else:
                weighted = mse.mean()
            loss = mse.mean()                  # logged: the plain MSE, comparable with tiny-sd's
            optimizer_step(run.accelerator, weighted, params, opt, sched, ema)
            if step % 20 == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                run.log("dit", step, loss.item(), sched.get_last_lr()[0])
        ema.copy_to(params)
    model = run.accelerator.unwrap_model(model).eval()

    model.save_pretrained(run.work / "transformer", safe_serialization=True)
    pipe.scheduler.save_pretrained(run.work / "scheduler")                # tiny-sd's schedule
    info = {
        "model": NAME,
        "config": config_record(cfg),
        "base": zoo.base_record(base, NAME),
        "params": {"transformer": count(model)},
        "tokens": {"image": (model.config.sample_size // cfg.patch) ** 2,
                   "text": tokenizer.model_max_length},
    }
    return run.finish(info, final_loss={"dit": run.last_loss("dit")})


# ---------------------------------------------------------------------------- measuring

GUIDANCE = (1.0, 4.0, 7.5)
STEPS = (10, 25)


def _load(folder):
    """(tiny-dit from `folder` with the zoo's tiny-sd parts as a TinyDiT, the zoo's tiny-sd)."""
    from diffusers import PixArtTransformer2DModel

    from helpers.dit import TinyDiT
    sd = zoo.load_pipeline("tiny-sd", device="cpu")
    tr = PixArtTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    return TinyDiT(transformer=tr.eval(), vae=sd.vae, text_encoder=sd.text_encoder,
                   tokenizer=sd.tokenizer, scheduler=sd.scheduler), sd


def _job(folder, job):
    torch.set_num_threads(1)
    dit, sd = cached(NAME, folder, _load)
    pipe = dit if job["model"] == "tiny-dit" else sd
    acc = evaluate.judge_accuracy(pipe, n=job["n"], guidance_scale=job["g"], steps=job["s"],
                                  scheduler="DPM++ 2M", split=job["split"])
    print(f"{job} -> {acc}", flush=True)
    return acc


def measure(folder: Path, quick=False, n=128, n_heldout=96, workers=WORKERS) -> dict:
    """tiny-dit beside tiny-sd's UNet: parameters, FLOPs per step, tokens, judge accuracy
    over GUIDANCE x STEPS (same prompts, scheduler and seeds for both)."""
    folder = Path(folder)
    if quick:
        n, n_heldout = 8, 8
    grid_g, grid_s = ((4.0,), (10,)) if quick else (GUIDANCE, STEPS)
    t0 = time.perf_counter()
    jobs = [dict(model=mdl, g=g, s=s, n=n, split="train")
            for mdl in ("tiny-dit", "tiny-sd") for g in grid_g for s in grid_s]
    m = {"n_prompts": n, "n_heldout_prompts": n_heldout, "scheduler": "DPM++ 2M",
         "grid": {"tiny-dit": {}, "tiny-sd": {}}, "heldout": {}}
    for j, r in zip(jobs, pool(_job, folder, jobs, workers)):
        m["grid"][j["model"]][f"{j['g']:g}|{j['s']}"] = r
    # the guidance best for the two together, at the most steps: the held-out test's setting
    s_max = grid_s[-1]
    m["compare_guidance"] = max(grid_g, key=lambda g: sum(m["grid"][k][f"{g:g}|{s_max}"]["all"] for k in m["grid"]))
    m["compare_steps"] = s_max
    jobs = [dict(model=mdl, g=m["compare_guidance"], s=s_max, n=n_heldout, split="heldout")
            for mdl in ("tiny-dit", "tiny-sd")]
    for j, r in zip(jobs, pool(_job, folder, jobs, workers)):
        m["heldout"][j["model"]] = r | {"guidance": j["g"], "steps": j["s"]}
    dit, sd = _load(folder)
    tr, unet = dit.transformer, sd.unet
    z = torch.randn(1, 4, 8, 8)
    c = torch.randn(1, sd.tokenizer.model_max_length, sd.text_encoder.config.hidden_size)
    t = torch.tensor([500])
    m["flops_per_forward"] = evaluate.forward_flops(
        {"tiny-dit": (tr, lambda: tr(z, encoder_hidden_states=c, timestep=t)),
         "tiny-sd": (unet, lambda: unet(z, t, encoder_hidden_states=c))})
    m["params"] = {"tiny-dit": evaluate.param_count(tr), "tiny-sd": evaluate.param_count(unet)}
    uc, s = unet.config, unet.config.sample_size                          # tokens per attention layer
    m["unet_attention_tokens"] = {
        "down": [(s // 2 ** i) ** 2 for i, b in enumerate(uc.down_block_types) if "CrossAttn" in b],
        "mid": (s // 2 ** (len(uc.down_block_types) - 1)) ** 2 if "CrossAttn" in str(uc.mid_block_type) else 0}
    m["bytes"] = safetensors_bytes(folder)
    for pipe in (dit, sd):
        pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
    m["bench_8x25_cfg_s"] = {"tiny-dit": round(evaluate.benchmark(dit, n=8, steps=25, guidance_scale=7.5), 3),
                             "tiny-sd": round(evaluate.benchmark(sd, n=8, steps=25, guidance_scale=7.5), 3)}
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return m


# --------------------------------------------------------------------------------- card

def render_card(folder: Path, m: dict, info: dict) -> str:
    cfg, t = info["config"], info["times_s"]
    sd_info_path = zoo.ASSETS / "tiny-sd" / "train_info.json"   # the shipped tiny-sd's
    sd_info = json.loads(sd_info_path.read_text()) if sd_info_path.exists() else {}
    sd_cfg = sd_info.get("config", {})
    sd_t = sd_info.get("times_s", {})
    f, p = m["flops_per_forward"], m["params"]
    tok, ut = info["tokens"], m["unet_attention_tokens"]
    keys = list(m["grid"]["tiny-dit"])
    acc_rows = []
    for k in keys:
        g, s = k.split("|")
        d, u = m["grid"]["tiny-dit"][k], m["grid"]["tiny-sd"][k]
        acc_rows.append(f"| {g} | {s} | {pct(d['color'])} / {pct(d['shape'])} / {pct(d['size'])} / "
                        f"{pct(d['position'])} / {pct(d['all'])} | {pct(u['color'])} / {pct(u['shape'])} / "
                        f"{pct(u['size'])} / {pct(u['position'])} / {pct(u['all'])} |")
    hd, hu = m["heldout"]["tiny-dit"], m["heldout"]["tiny-sd"]
    dit_samples = cfg["steps"] * cfg["batch"]
    sd_samples = sd_cfg.get("unet_steps", 0) * sd_cfg.get("unet_batch", 0)
    total_bytes = sum(m["bytes"].values())
    head = f"{m['compare_guidance']:g}|{m['compare_steps']}"
    d_all, u_all = m["grid"]["tiny-dit"][head]["all"], m["grid"]["tiny-sd"][head]["all"]
    g_h, s_h = head.split("|")
    compare = (f"At guidance {g_h}, {s_h} steps, tiny-dit gets all four attributes right in {pct(d_all)} of "
               f"images, tiny-sd in {pct(u_all)} (training samples: tiny-dit {dit_samples:,}, "
               f"tiny-sd {sd_samples:,}).")
    gamma = cfg.get("min_snr_gamma")
    snr_text = (f", each sample weighted by min(SNR(t), {gamma:g}) / SNR(t) (Min-SNR-gamma, Hang et al. 2023, "
                "which speeds up transformer diffusion training; the logged loss is the plain MSE)") if gamma else ""
    return f"""# tiny-dit

A transformer denoiser for [tiny-sd](../tiny-sd/README.md)'s latents: the same VAE, the same
text encoder, the same noise schedule, with a diffusers `PixArtTransformer2DModel` in the
UNet's place. Sampled by a written-out scheduler loop (`helpers.dit.generate_dit`):

```python
from diffusers import PixArtTransformer2DModel
transformer = PixArtTransformer2DModel.from_pretrained("helpers/assets/tiny-dit", subfolder="transformer")
# or, checksum-verified, with tiny-sd's VAE, text encoder, tokenizer and a scheduler:
from helpers.zoo import load_dit
dit = load_dit()
images = dit("a large red circle at the top left", num_inference_steps=25, output_type="pt").images
```

Every number below was measured by `{measured_by(m)} helpers/assets/tiny-dit`.

## Architecture, and why PixArt

PixArt-alpha (Chen et al. 2023) is DiT (Peebles & Xie 2023) with text: it has exactly the
three parts to compare with a UNet, each in its plainest form.
- Patch tokens: the 4x8x8 latent is cut into {cfg['patch']}x{cfg['patch']} patches, {tok['image']} tokens of width
  {cfg['hidden']}, with fixed 2-D sin-cos position embeddings.
- Timestep through adaptive LayerNorm ("adaLN-single"): one MLP of the timestep embedding
  gives shift, scale and gate for every block's two LayerNorm/residual pairs, plus a learned
  per-block table; the UNet instead adds a projected timestep embedding inside each ResNet block.
- Text through cross-attention to tiny-sd's CLIP token states ({tok['text']} tokens of width
  64, projected to {cfg['hidden']} by PixArt's caption projection), as in the UNet.
DiT itself conditions on a class label, not on text. SD3's MMDiT (`SD3Transformer2DModel`)
reads text by joint attention over text and image tokens and also needs a pooled text
embedding. PixArt reads the text exactly as the UNet does (cross-attention to one encoder's
token states), so the comparison changes one thing: how the image is processed (patch tokens
and adaLN instead of convolutions and a pyramid). Its resolution/aspect-ratio conditioning (for 1024 px models) is
off, and it predicts epsilon only (4 output channels, no learned variance), like tiny-sd.
{cfg['layers']} blocks, {cfg['heads']} heads of {cfg['hidden'] // cfg['heads']}. Initialisation: PixArt-alpha's (zeroed
cross-attention outputs and final projection). Weights: {total_bytes / 1e6:.2f} MB of float32 safetensors.

## Side by side with tiny-sd's UNet

| | tiny-dit (`PixArtTransformer2DModel`) | tiny-sd (`UNet2DConditionModel`) |
|---|---|---|
| parameters | {p['tiny-dit']:,} | {p['tiny-sd']:,} |
| FLOPs per denoiser call, one 64x64 image (8x8 latent) | {evaluate.human(f['tiny-dit'])} | {evaluate.human(f['tiny-sd'])} |
| FLOPs per sampling step with CFG (2 calls) | {evaluate.human(2 * f['tiny-dit'])} | {evaluate.human(2 * f['tiny-sd'])} |
| image tokens seen by attention | {tok['image']} ({cfg['patch']}x{cfg['patch']} latent patches), in all {cfg['layers']} blocks | {" and ".join(str(k) for k in ut['down'])} in the down (and matching up) blocks' transformers, {ut['mid']} in the mid block |
| text tokens (cross-attention keys) | {tok['text']} | {tok['text']} |
| timestep conditioning | adaLN-single (shift/scale/gate of LayerNorms) | embedding added in every ResNet block |
| training | {cfg['steps']:,} steps x batch {cfg['batch']} = {dit_samples:,} samples, text encoder frozen: {t['dit_s'] / 60:.1f} min | {sd_cfg.get('unet_steps', 0):,} steps x batch {sd_cfg.get('unet_batch', 0)} = {sd_samples:,} samples, jointly with the text encoder: {sd_t.get('unet_text_s', 0) / 60:.1f} min |
| 8 images, 25 steps with CFG | {m['bench_8x25_cfg_s']['tiny-dit']:.2f} s | {m['bench_8x25_cfg_s']['tiny-sd']:.2f} s |

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, a multiply-add = 2 FLOPs, attention included by counting with the classic
AttnProcessor; normalisations and activations not counted).
Training times are wall-clock on a CPU other work shared ({info['hardware']} for tiny-dit),
so they compare only roughly.

## Judge accuracy at the same steps and guidance

{m['n_prompts']} prompts from the training split's attribute combinations (the same prompts,
seeds and {m['scheduler']} scheduler for both). Cells: colour / shape / size / position / all four.

| guidance | steps | tiny-dit | tiny-sd |
|---|---|---|---|
{chr(10).join(acc_rows)}

Held-out colour/shape pairs (never seen in training), {m['n_heldout_prompts']} prompts, guidance {hd['guidance']:g}, {hd['steps']} steps:
tiny-dit colour {pct(hd['color'])}, shape {pct(hd['shape'])}, all {pct(hd['all'])};
tiny-sd colour {pct(hu['color'])}, shape {pct(hu['shape'])}, all {pct(hu['all'])}.

## Training

`python -m helpers.train tiny-dit --seed {cfg['seed']}` (on `accelerate`). {cfg['n_train_images']:,} images of the
shapes world's train split (the stream tiny-sd was trained on), encoded once by tiny-sd's VAE
(posterior sample x scaling_factor at every step); captions encoded once by tiny-sd's frozen
text encoder, {int(100 * cfg['cond_dropout'])}% dropped to "" for classifier-free guidance;
epsilon-prediction MSE under tiny-sd's schedule (scaled_linear 0.00085-0.012, 1000 steps){snr_text};
AdamW lr {cfg['lr']:g}, warm-up {cfg['warmup']}, cosine to 10%, gradient clipping 1.0, EMA {cfg['ema_decay']}.
Hardware: {info['hardware']}. Time: {t['total_s'] / 60:.1f} min in all, while other work shared the machine{cpu_time(t)}. Versions:
{", ".join(f"{k} {v}" for k, v in info['versions'].items())}. Final loss {info['final_loss']['dit']:.4f};
the curve is in `train_log.csv`.

## Limits

{compare} Transformers usually need more data and steps than UNets to reach the same
quality (they lack the convolutions' locality and translation priors), so the comparison is
one of two small models at a CPU budget, not of the architectures at scale. It needs tiny-sd's
VAE and text encoder (the zoo loader checks that they are the ones it was trained with).
"""
