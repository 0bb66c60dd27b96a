"""tiny-controlnet: a ControlNet (Zhang et al. 2023) for tiny-sd, on shape masks.

    python -m helpers.train tiny-controlnet [--out DIR] [--seed 0] [--quick] [--threads 1]
    python -m helpers.train.card helpers/assets/tiny-controlnet     (measure, write the card)

Recipe (ControlNet paper, sec. 3):
  1. `ControlNetModel.from_unet(unet)` copies tiny-sd's UNet encoder (conv_in, time
     embedding, down blocks, mid block) into a trainable branch, and adds zero-initialised
     1x1 "zero convolutions" on each of its outputs, plus a small conditioning encoder
     (64x64 control image -> 8x8 feature map, its last convolution zero-initialised too).
     At initialisation every residual the branch adds to the UNet is exactly 0, so the
     frozen model is unchanged (tests/test_zoo2.py checks it with torch.equal).
  2. tiny-sd's UNet, VAE and text encoder stay frozen. Only the branch learns, on the usual
     epsilon loss || eps - eps_theta(z_t, t, c, control) ||^2 with the UNet fed the
     branch's residuals.

The control map is the shape's binary mask (white shape on black, as a 3-channel image
like the segmentation / canny maps of the public ControlNets): it gives the shape's
outline, position and size at once, and a filled region survives the conditioning
encoder's three stride-2 convolutions (64 -> 8) better than a 1-pixel outline.

To make the map matter, half of the training captions are taken from another image of the
same colour (other shape, size and position), so the caption is right about the colour
only; the map is then the only reliable source of the geometry. 10% of the captions are
"" so the branch also works on classifier-free guidance's unconditional half.

The card measures, over conditioning scales, how well the generated shape follows the map
(IoU with the control mask, `helpers.evaluate.controlnet_accuracy`) with matching and with
conflicting captions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import evaluate, shapes, zoo
from helpers.diffusion import q_sample
from helpers.train.core import (Run, cached, caption_bank, config_record, count, cpu_time, encoded_dataset,
                                frozen_tiny_sd, make_optimizer, measured_by, optimizer_step, pct, pool,
                                posterior_sample, safetensors_bytes)

NAME = "tiny-controlnet"
WORKERS = 1  # processes sharing the card's measurements


@dataclass
class TinyControlNetConfig:
    seed: int = 0
    data_seed: int = 1000        # shapes stream of the training images (tiny-sd used 0)
    n_train_images: int = 12_000
    # conditioning encoder: 64x64 -> 8x8 through 3 stride-2 convs (len - 1 of them)
    cond_channels: tuple = (8, 16, 32, 32)
    steps: int = 1_500
    batch: int = 48
    lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.995
    p_other_caption: float = 0.5  # caption of another image of the same colour
    cond_dropout: float = 0.1     # caption "" (classifier-free guidance)

    @classmethod
    def quick(cls):
        """A seconds-long smoke configuration (tests); its weights are not good."""
        return cls(n_train_images=64, steps=4, batch=8, warmup=2)


Config = TinyControlNetConfig


# ----------------------------------------------------------------------------- the model

def build_controlnet(unet, cfg: TinyControlNetConfig):
    """A fresh ControlNet for `unet`: its encoder copied, zero convolutions, mask input."""
    from diffusers import ControlNetModel

    torch.manual_seed(cfg.seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(cfg.cond_channels))


# ------------------------------------------------------------------------------ training

def training_captions(attrs, cfg, gen):
    """Per image, the index (into caption_bank) of the caption it is trained with, and
    whether it is the image's own caption. attrs: list of Attributes; gen: torch.Generator."""
    by_color: dict[str, list] = {}
    for a in shapes.all_attributes("train"):
        by_color.setdefault(a.color, []).append(a)
    n_t = len(shapes.TEMPLATES)
    rows, own = [], []
    for a in attrs:
        r = torch.rand(3, generator=gen).tolist()
        t = int(r[2] * n_t)
        if r[0] < cfg.cond_dropout:
            rows.append(None)
            own.append(False)
        elif r[1] < cfg.p_other_caption:
            same_color = by_color[a.color]
            b = same_color[int(torch.randint(len(same_color), (1,), generator=gen))]
            rows.append((b, t))
            own.append(b == a)
        else:
            rows.append((a, t))
            own.append(True)
    return rows, own


def train(out: Path, cfg: TinyControlNetConfig, base: str | None = None) -> dict:
    """Train the ControlNet on tiny-sd (`base`: a tiny-sd folder, default the zoo's) and
    write the folder `out` (ControlNetModel at its root, train_info.json, train_log.csv)."""
    run = Run(out)
    dev = run.device
    base = Path(base or zoo.ASSETS / "tiny-sd")
    pipe, noise_sched, scale = frozen_tiny_sd(base, dev)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer

    # data: images -> VAE posterior (mean, std), masks -> control images, captions -> rows
    with run.timed("data_s"):
        items, means, stds = encoded_dataset(cfg, vae, dev, run.accelerator)
        masks = torch.stack([it["mask"] for it in items])                 # (N, 1, 64, 64)
        _, index, emb = caption_bank(tokenizer, text_encoder, dev)
        gen = torch.Generator().manual_seed(cfg.seed + 3)
        rows, own = training_captions([it["attributes"] for it in items], cfg, gen)
        cap_idx = torch.tensor([index[""] if r is None else index[shapes.caption(r[0], r[1])] for r in rows])
        del items                                                           # ~1 GB of images

    controlnet = build_controlnet(unet, cfg).to(dev)
    params = list(controlnet.parameters())
    opt, sched, ema = make_optimizer(params, cfg.lr, 0.0, cfg.warmup, cfg.steps, cfg.ema_decay)
    controlnet, opt = run.accelerator.prepare(controlnet, opt)
    unet_acp = noise_sched.alphas_cumprod.to(dev)
    controlnet.train()
    with run.timed("controlnet_s"):
        bar = run.progress(range(cfg.steps), "controlnet")
        for step in bar:
            B = cfg.batch
            idx = torch.randint(0, len(means), (B,), generator=gen)
            z0 = posterior_sample(means, stds, idx, scale, gen)             # (B, 4, 8, 8)
            eps = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (B,), generator=gen)
            cond = emb[cap_idx[idx]].to(dev)                               # (B, L, D)
            control = zoo.control_image(masks[idx]).to(dev)                # (B, 3, 64, 64)
            z0, eps, t = z0.to(dev), eps.to(dev), t.to(dev)
            zt = q_sample(unet_acp, z0, eps, t)                              # q(z_t | z_0)
            down, mid = controlnet(zt, t, encoder_hidden_states=cond, controlnet_cond=control,
                                   return_dict=False)
            pred = unet(zt, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
            loss = F.mse_loss(pred, eps)
            optimizer_step(run.accelerator, loss, params, opt, sched, ema)
            if step % 20 == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                run.log("controlnet", step, loss.item(), sched.get_last_lr()[0])
        ema.copy_to(params)
    controlnet = run.accelerator.unwrap_model(controlnet).eval()

    controlnet.save_pretrained(run.work, safe_serialization=True)
    info = {
        "model": NAME,
        "config": config_record(cfg),
        "base": zoo.base_record(base, NAME),
        "control": "mask",
        "params": {"controlnet": count(controlnet),
                   "conditioning_encoder": count(controlnet.controlnet_cond_embedding),
                   "unet_frozen": count(unet)},
        "captions": {"own": round(float(torch.tensor(own).float().mean()), 3),
                     "empty": round(float((cap_idx == index[""]).float().mean()), 3)},
    }
    return run.finish(info, final_loss={"controlnet": run.last_loss("controlnet")})


# ---------------------------------------------------------------------------- measuring

SCALES = (0.0, 0.25, 0.5, 1.0, 1.5)
GUIDANCE, STEPS = 7.5, 25


def _load_pipe(folder):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    sd = zoo.load_pipeline("tiny-sd", device="cpu")
    cn = ControlNetModel.from_pretrained(folder, local_files_only=True)
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=cn, scheduler=evaluate.make_scheduler("DPM++ 2M", sd.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _job(folder, job):
    torch.set_num_threads(1)
    pipe = cached(NAME, folder, _load_pipe)
    r = evaluate.controlnet_accuracy(pipe, n=job["n"], scale=job["scale"], guidance_scale=GUIDANCE,
                                     steps=STEPS, conflicting=job["conflicting"])
    print(f"{job} -> {r}", flush=True)
    return r


def measure(folder: Path, quick=False, n=128, workers=WORKERS) -> dict:
    """IoU and colour accuracy over SCALES, with matching and conflicting prompts."""
    folder = Path(folder)
    n = 8 if quick else n
    scales = (0.0, 1.0) if quick else SCALES
    t0 = time.perf_counter()
    jobs = [dict(n=n, scale=s, conflicting=c) for c in (False, True) for s in scales]
    results = pool(_job, folder, jobs, workers)
    m = {"n_prompts": n, "steps": STEPS, "guidance": GUIDANCE, "scheduler": "DPM++ 2M",
         "matching": {}, "conflicting": {}}
    for j, r in zip(jobs, results):
        m["conflicting" if j["conflicting"] else "matching"][f"{j['scale']:g}"] = r
    pipe = _load_pipe(folder)
    m["params"] = {"controlnet": evaluate.param_count(pipe.controlnet),
                   "conditioning_encoder": evaluate.param_count(pipe.controlnet.controlnet_cond_embedding),
                   "unet": evaluate.param_count(pipe.unet)}
    m["zero_convs"] = len(pipe.controlnet.controlnet_down_blocks) + 1
    m["bytes"] = safetensors_bytes(folder)
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return m


# --------------------------------------------------------------------------------- card

def render_card(folder: Path, m: dict, info: dict) -> str:
    cfg, p, t = info["config"], m["params"], info["times_s"]

    def rows(mode, extra):
        out = []
        for s, r in m[mode].items():
            cells = [f"{r['median_iou']:.2f}", f"{r['mean_iou']:.2f}", pct(r["color"]), pct(r["shape"]),
                     pct(r["size_map"]), pct(r["position_map"])]
            cells += [pct(r[k]) for k in extra]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    one = m["matching"].get("1", {})
    verdict = ""
    if one:
        ok = one["median_iou"] >= 0.8 and one["color"] >= 0.9
        verdict = (f"At scale 1 with matching prompts: median IoU {one['median_iou']:.2f} (target >= 0.8), "
                   f"colour {pct(one['color'])} (target >= 90%): "
                   f"{'both targets met' if ok else 'TARGET MISSED'}.")
    total_bytes = sum(m["bytes"].values())
    conf = m["conflicting"]
    takeover = "Position follows the caption / the map: " + ", ".join(
        f"scale {s}: {pct(r['position_caption'])} / {pct(r['position_map'])}" for s, r in conf.items()) + (
        ". At scale 0 the ControlNet adds nothing, so that row is tiny-sd alone. The colour "
        f"(from the caption) is right in {pct(min(r['color'] for r in conf.values()))} to "
        f"{pct(max(r['color'] for r in conf.values()))} of images across the scales.")
    return f"""# tiny-controlnet

A ControlNet (Zhang, Rao & Agrawala 2023) for [tiny-sd](../tiny-sd/README.md): given the mask
of a shape, tiny-sd draws the shape there, in the colour the prompt asks for. A real diffusers
`ControlNetModel` folder:

```python
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
controlnet = ControlNetModel.from_pretrained("helpers/assets/tiny-controlnet")
# or, checksum-verified, the whole pipeline with tiny-sd's parts:
from helpers.zoo import load_controlnet_pipeline, control_image
pipe = load_controlnet_pipeline()
image = pipe("a red circle", image=control_image(mask), num_inference_steps=25).images[0]
```

Every number below was measured by `{measured_by(m)} helpers/assets/tiny-controlnet`.

## Architecture

`ControlNetModel.from_unet(tiny-sd's unet, conditioning_embedding_out_channels={tuple(cfg['cond_channels'])})`:
a trainable copy of tiny-sd's UNet encoder (conv_in, time embedding, down blocks and mid
block, with their cross-attention to the caption), a zero-initialised 1x1 convolution on each
of its {m['zero_convs']} outputs (one per skip connection, one for the mid block), and a conditioning encoder that takes the
64x64 control image to the 8x8 latent grid with three stride-2 convolutions ({p['conditioning_encoder']:,}
parameters, its last convolution zero-initialised as well). Its outputs are added to the
frozen UNet's skip connections and mid block (`down_block_additional_residuals`,
`mid_block_additional_residual`), each multiplied by `controlnet_conditioning_scale`.
Parameters: {p['controlnet']:,} (tiny-sd's UNet: {p['unet']:,}). Weights: {total_bytes / 1e6:.2f} MB of float32 safetensors.

At initialisation every residual is exactly zero, so the pipeline's output is exactly
tiny-sd's (a test checks it with `torch.equal`).

## Control map: the mask

The control image is the shape's binary mask (`helpers.shapes`' "mask", white shape on black,
repeated to 3 channels like the segmentation and canny maps of the public ControlNets;
`helpers.zoo.control_image(mask)`). Why the mask rather than the edge map: it carries the
outline, the position and the size at once; a filled region survives the conditioning
encoder's 8x downsampling, where a 1-pixel outline leaves little; and the quality measure,
IoU with the mask, asks for the region itself. (The edge map is the mask's outline,
`helpers.shapes.edges(mask)`, so no information is lost by the choice.)

## Training

`python -m helpers.train tiny-controlnet --seed {cfg['seed']}` (on `accelerate`). tiny-sd's UNet, VAE and
text encoder frozen; {cfg['n_train_images']:,} images from the shapes world's train split (stream {cfg['data_seed']}),
{cfg['steps']:,} steps, batch {cfg['batch']}, AdamW lr {cfg['lr']:g} (warm-up {cfg['warmup']}, cosine to 10%),
gradient clipping 1.0, EMA {cfg['ema_decay']}, epsilon-prediction MSE.
Captions: {int(100 * cfg['p_other_caption'])}% of the non-empty ones are a random training caption of
the same colour (so shape, size and position are usually another image's; {pct(info['captions']['own'])} of all
captions matched their image), so the map is the only reliable source of the geometry and
the caption of the colour; {int(100 * cfg['cond_dropout'])}% are "" so that the branch also
serves classifier-free guidance's unconditional half.

Hardware: {info['hardware']}. Time: {t['total_s'] / 60:.1f} min in all ({t['controlnet_s'] / 60:.1f} min of ControlNet steps),
while other work shared the machine{cpu_time(t)}. Versions: {", ".join(f"{k} {v}" for k, v in info['versions'].items())}.
Final loss {info['final_loss']['controlnet']:.4f}; the curve is in `train_log.csv`.

## Does the shape follow the map?

{m['n_prompts']} control masks of new images (seeds not used in training), {m['steps']} DPM++ 2M
steps, guidance {m['guidance']:g}, for each `controlnet_conditioning_scale`. IoU: between the
judge's mask of the generated shape (`helpers.shapes.judge(...).masks`) and the control mask
(`helpers.shapes.iou`). Colour: the judged colour is the caption's. Shape / size / position
(map): the judged attribute is the map's.

Matching prompts (each map with its own image's caption):

| scale | median IoU | mean IoU | colour | shape (map) | size (map) | position (map) |
|---|---|---|---|---|---|---|
{rows('matching', [])}

{verdict}

Conflicting prompts (the caption keeps colour and shape but names another position and the
other size): who wins, the map or the caption?

| scale | median IoU | mean IoU | colour | shape (map) | size (map) | position (map) | size (caption) | position (caption) |
|---|---|---|---|---|---|---|---|---|
{rows('conflicting', ['size_caption', 'position_caption'])}

{takeover}

## Limits

Trained on one-shape masks of the shapes world at 64x64; other control images (several
shapes, edges, photographs) are outside what it learned. The conditioning scale trades the
map against the caption; above 1 the residuals are extrapolated beyond training.
"""
