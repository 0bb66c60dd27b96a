"""Measure a trained tiny-sd folder and write its model card (README.md) and metrics.json.

    python -m helpers.model_card helpers/assets/tiny-sd [--quick]

Every number in the card is measured here, by the judge, on the machine that runs this.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from helpers import evaluate, shapes

GUIDANCE = (1.0, 2.0, 4.0, 7.5, 12.0)
STEPS = (5, 10, 25, 50)


_PIPE = None


def _load(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _job(folder, job):
    """One judge measurement in a worker process (one torch thread: the workers share the CPU)."""
    global _PIPE
    torch.set_num_threads(1)
    if _PIPE is None:
        _PIPE = _load(folder)
    acc = evaluate.judge_accuracy(_PIPE, n=job["n"], guidance_scale=job["g"], steps=job["s"],
                                  scheduler=job["scheduler"], split=job["split"])
    print(f"{job} -> {acc}", flush=True)
    return acc


def _run_jobs(folder, jobs, workers):
    if workers <= 1:
        return [_job(folder, j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_job, [folder] * len(jobs), jobs))


def measure(folder: Path, quick=False, n=256, n_grid=128, n_heldout=96, n_sched=64, workers=2) -> dict:
    """Judge accuracy over guidance x steps (n prompts at 25 steps, n_grid elsewhere), on
    held-out combinations, per scheduler; VAE PSNR; the speed benchmark."""
    if quick:
        n, n_grid, n_heldout, n_sched = 8, 8, 8, 8
    grid_g, grid_s = (GUIDANCE[::2], STEPS[:1]) if quick else (GUIDANCE, STEPS)
    head_s = grid_s[-1] if quick else 25
    m: dict = {"n_prompts": n, "n_grid_prompts": n_grid, "n_heldout_prompts": n_heldout,
               "n_scheduler_prompts": n_sched, "scheduler": "DPM++ 2M"}
    t0 = time.perf_counter()
    jobs = [dict(g=g, s=s, n=n if s == head_s else n_grid, scheduler="DPM++ 2M", split="train")
            for g in grid_g for s in grid_s]
    m["grid"] = {f"{j['g']}|{j['s']}": acc for j, acc in zip(jobs, _run_jobs(folder, jobs, workers))}
    best_g = max(grid_g, key=lambda g: m["grid"][f"{g}|{head_s}"]["all"])
    m["best_guidance"] = best_g
    jobs = [dict(g=best_g, s=head_s, n=n_heldout, scheduler="DPM++ 2M", split="heldout")]
    jobs += [dict(g=best_g, s=head_s, n=n_sched, scheduler=name, split="train") for name in evaluate.SCHEDULERS]
    results = _run_jobs(folder, jobs, workers)
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
    m["bytes"] = {p.relative_to(folder).as_posix(): p.stat().st_size
                  for p in sorted(folder.rglob("*.safetensors"))}
    m["scaling_factor"] = pipe.vae.config.scaling_factor
    return m


def _pct(x) -> str:
    return f"{100 * x:.0f}%"


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
            cells.append(f"{_pct(a['color'])} / {_pct(a['shape'])} / {_pct(a['all'])}")
        g_rows.append(f"| {g:g} | " + " | ".join(cells) + " |")
    sched_rows = [f"| {k} | {_pct(v['color'])} | {_pct(v['shape'])} | {_pct(v['size'])} | "
                  f"{_pct(v['position'])} | {_pct(v['all'])} | {v['seconds']:.1f} |"
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
`python -m helpers.model_card` with the shapes judge (`helpers.shapes.judge`, which reads
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

At guidance {m['best_guidance']:g}, 25 steps: colour {_pct(best['color'])}, shape {_pct(best['shape'])}, size {_pct(best['size'])}, position {_pct(best['position'])}.

Held-out combinations (compositional generalisation: colour/shape pairs never seen together in training), {m['n_heldout_prompts']} prompts, guidance {m['best_guidance']:g}, 25 steps: colour {_pct(h['color'])}, shape {_pct(h['shape'])}, size {_pct(h['size'])}, position {_pct(h['position'])}, all {_pct(h['all'])}.

Every scheduler swapped in with `from_config`, guidance {m['best_guidance']:g}, 25 steps, {m['n_scheduler_prompts']} prompts:

| scheduler | colour | shape | size | position | all | seconds |
|---|---|---|---|---|---|---|
{chr(10).join(sched_rows)}

The judge on ground-truth images (256): {", ".join(f"{k} {_pct(v)}" for k, v in m['gt_judge'].items())}.

## VAE

Reconstruction PSNR on images not used in training (posterior mean): {m['vae_psnr_db']:.2f} dB.

## Speed

8 images at 64x64, 25 DPM++ 2M steps with CFG, one pipeline call: {m['bench_8x25_cfg_s']:.2f} s (median of 3, {info['hardware']}).

## Limits

Knows one object per image and the words of its captions; other words are tokenized into
letters the model never learned. Images are 64x64. Trained in minutes, it makes mistakes a
learner can see, and the judge counts them.
"""


def write_card(folder, quick=False, workers=2) -> dict:
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    m = measure(folder, quick=quick, workers=workers)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    (folder / "README.md").write_text(render_card(folder, m, info))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="processes sharing the evaluation")
    args = ap.parse_args(argv)
    write_card(args.folder, quick=args.quick, workers=args.workers)
    from helpers.zoo import write_manifest
    write_manifest(args.folder)


if __name__ == "__main__":
    main()
