"""Measure a trained tiny-sd folder and write its model card (README.md) and metrics.json.

    python -m helpers.model_card helpers/assets/tiny-sd [--quick]
    python -m helpers.model_card helpers/assets/tiny-controlnet     (or tiny-dit: dispatched
                                  on the folder's train_info.json, see write_model_card)

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


def _cfg_sentence(m: dict) -> str:
    """What guidance does, in the card's own numbers (25 steps)."""
    g1, best = m["grid"].get("1.0|25"), m["grid"].get(f"{m['best_guidance']}|25")
    if g1 is None or best is None:
        return ""
    err1, errb = 1 - g1["all"], 1 - best["all"]
    ratio = f"{err1 / errb:.1f} times" if errb > 0 else "infinitely"
    return (f"Without guidance (guidance 1, the conditional model alone) the same prompts get colour "
            f"{_pct(g1['color'])}, shape {_pct(g1['shape'])}, all four {_pct(g1['all'])}: "
            f"{_pct(err1)} of images wrong against {_pct(errb)} at guidance {m['best_guidance']:g} "
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
{_cfg_sentence(m)}

Held-out combinations (compositional generalisation: colour/shape pairs never seen together in training), {m['n_heldout_prompts']} prompts, guidance {m['best_guidance']:g}, 25 steps: colour {_pct(h['color'])}, shape {_pct(h['shape'])}, size {_pct(h['size'])}, position {_pct(h['position'])}, all {_pct(h['all'])}.

Every scheduler swapped in with `from_config`, guidance {m['best_guidance']:g}, 25 steps, {m['n_scheduler_prompts']} prompts:

| scheduler | colour | shape | size | position | all | seconds |
|---|---|---|---|---|---|---|
{chr(10).join(sched_rows)}

{_scheduler_note(m)}

The judge on ground-truth images (256): {", ".join(f"{k} {_pct(v)}" for k, v in m['gt_judge'].items())}.

## VAE

Reconstruction PSNR on images not used in training (posterior mean): {m['vae_psnr_db']:.2f} dB.

## Speed

8 images at 64x64, 25 DPM++ 2M steps with CFG, one pipeline call: {m['bench_8x25_cfg_s']:.2f} s (fastest of 3, {m.get('bench_hardware', info['hardware'])}).

## Limits

Knows one object per image and the words of its captions; other words are tokenized into
letters the model never learned. Images are 64x64. Small and briefly trained, it makes mistakes
a learner can see, and the judge counts them.
"""


# ---------------------------------------------------------------------------------------
# tiny-controlnet and tiny-dit cards (`python -m helpers.model_card <folder>` dispatches on
# the folder's train_info.json "model")
# ---------------------------------------------------------------------------------------

CN_SCALES = (0.0, 0.25, 0.5, 1.0, 1.5)
CN_GUIDANCE, CN_STEPS = 7.5, 25
DIT_GUIDANCE = (1.0, 4.0, 7.5)
DIT_STEPS = (10, 25)


def controlnet_eval_set(n: int, seed: int = 4321, conflicting: bool = False):
    """Control masks of n fresh images and the prompts to pair them with:
    (captions, caption attributes, masks (n, 1, 64, 64), map attributes).
    conflicting=False: each image's own caption. conflicting=True: the caption keeps the
    colour and shape but names another position and the other size, so where and how big
    the shape comes out tells whether the map or the caption won."""
    batch = shapes.make_batch(n, seed=seed, split="train")
    maps = batch["attributes"]
    if not conflicting:
        return batch["captions"], maps, batch["mask"], maps
    gen = torch.Generator().manual_seed(seed)
    attrs = []
    for a in maps:
        k = int(torch.randint(1, len(shapes.POSITIONS), (1,), generator=gen))
        pos = shapes.POSITIONS[(shapes.POSITIONS.index(a.position) + k) % len(shapes.POSITIONS)]
        size = shapes.SIZES[1 - shapes.SIZES.index(a.size)]
        attrs.append(shapes.Attributes(a.shape, a.color, size, pos))
    caps = [shapes.caption(a, template=i % len(shapes.TEMPLATES)) for i, a in enumerate(attrs)]
    return caps, attrs, batch["mask"], maps


@torch.no_grad()
def controlnet_accuracy(pipe, n=128, scale=1.0, guidance_scale=CN_GUIDANCE, steps=CN_STEPS,
                        conflicting=False, seed=4321, batch_size=64) -> dict:
    """Generate with a StableDiffusionControlNetPipeline from n control masks and measure:
    median and mean IoU of the judged shape mask with the control mask, colour accuracy
    (against the caption), and how often shape, size and position follow the map or (for
    conflicting prompts) the caption."""
    from helpers.zoo import control_image

    caps, attrs, masks, maps = controlnet_eval_set(n, seed=seed, conflicting=conflicting)
    t0 = time.perf_counter()
    images = []
    for i in range(0, n, batch_size):
        gen = torch.Generator().manual_seed(seed + i)
        res = pipe(prompt=caps[i:i + batch_size], image=control_image(masks[i:i + batch_size]),
                   num_inference_steps=steps, guidance_scale=guidance_scale,
                   controlnet_conditioning_scale=float(scale), generator=gen, output_type="pt")
        images.append(res.images.float().cpu())
    images = torch.cat(images)
    seconds = time.perf_counter() - t0
    j = shapes.judge(images)
    ious = shapes.iou(j.masks, masks)
    got = j.attributes

    def rate(key, targets):
        return round(sum(g is not None and getattr(g, key) == getattr(t, key)
                         for g, t in zip(got, targets)) / n, 4)

    out = {"median_iou": round(float(ious.median()), 4), "mean_iou": round(float(ious.mean()), 4),
           "color": rate("color", attrs), "shape": rate("shape", maps),
           "size_map": rate("size", maps), "position_map": rate("position", maps)}
    if conflicting:
        out |= {"size_caption": rate("size", attrs), "position_caption": rate("position", attrs)}
    return out | {"seconds": round(seconds, 2)}


def _load_controlnet_pipe(folder):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from helpers import zoo
    sd = zoo.load_pipeline("tiny-sd", device="cpu")
    cn = ControlNetModel.from_pretrained(folder, local_files_only=True)
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=cn, scheduler=evaluate.make_scheduler("DPM++ 2M", sd.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_MODELS: dict = {}  # (kind, folder) -> loaded model(s), one load per worker process


def _cached(kind, folder, load):
    key = (kind, str(folder))
    if key not in _MODELS:
        _MODELS[key] = load(folder)
    return _MODELS[key]


def _cn_job(folder, job):
    torch.set_num_threads(1)
    pipe = _cached("controlnet", folder, _load_controlnet_pipe)
    r = controlnet_accuracy(pipe, n=job["n"], scale=job["scale"], conflicting=job["conflicting"])
    print(f"{job} -> {r}", flush=True)
    return r


def _pool(fn, folder, jobs, workers):
    if workers <= 1:
        return [fn(folder, j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, [folder] * len(jobs), jobs))


def measure_controlnet(folder: Path, quick=False, n=128, workers=1) -> dict:
    """IoU and colour accuracy over CN_SCALES, with matching and conflicting prompts."""
    n = 8 if quick else n
    scales = (0.0, 1.0) if quick else CN_SCALES
    t0 = time.perf_counter()
    jobs = [dict(n=n, scale=s, conflicting=c) for c in (False, True) for s in scales]
    results = _pool(_cn_job, folder, jobs, workers)
    m = {"n_prompts": n, "steps": CN_STEPS, "guidance": CN_GUIDANCE, "scheduler": "DPM++ 2M",
         "matching": {}, "conflicting": {}}
    for j, r in zip(jobs, results):
        m["conflicting" if j["conflicting"] else "matching"][f"{j['scale']:g}"] = r
    pipe = _load_controlnet_pipe(folder)
    m["params"] = {"controlnet": evaluate.param_count(pipe.controlnet),
                   "conditioning_encoder": evaluate.param_count(pipe.controlnet.controlnet_cond_embedding),
                   "unet": evaluate.param_count(pipe.unet)}
    m["zero_convs"] = len(pipe.controlnet.controlnet_down_blocks) + 1
    m["bytes"] = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*.safetensors"))}
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return m


def _cpu_time(times: dict) -> str:
    """', of which N min of CPU time' when the training recorded it (process time: what the
    run would take alone on one core)."""
    return f" ({times['cpu_s'] / 60:.1f} min of CPU time)" if "cpu_s" in times else ""


def render_controlnet_card(folder: Path, m: dict, info: dict) -> str:
    cfg, p, t = info["config"], m["params"], info["times_s"]

    def rows(mode, extra):
        out = []
        for s, r in m[mode].items():
            cells = [f"{r['median_iou']:.2f}", f"{r['mean_iou']:.2f}", _pct(r["color"]), _pct(r["shape"]),
                     _pct(r["size_map"]), _pct(r["position_map"])]
            cells += [_pct(r[k]) for k in extra]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        return "\n".join(out)

    one = m["matching"].get("1", {})
    verdict = ""
    if one:
        ok = one["median_iou"] >= 0.8 and one["color"] >= 0.9
        verdict = (f"At scale 1 with matching prompts: median IoU {one['median_iou']:.2f} (target >= 0.8), "
                   f"colour {_pct(one['color'])} (target >= 90%): "
                   f"{'both targets met' if ok else 'TARGET MISSED'}.")
    total_bytes = sum(m["bytes"].values())
    conf = m["conflicting"]
    takeover = "Position follows the caption / the map: " + ", ".join(
        f"scale {s}: {_pct(r['position_caption'])} / {_pct(r['position_map'])}" for s, r in conf.items()) + (
        ". At scale 0 the ControlNet adds nothing, so that row is tiny-sd alone. The colour "
        f"(from the caption) is right in {_pct(min(r['color'] for r in conf.values()))} to "
        f"{_pct(max(r['color'] for r in conf.values()))} of images across the scales.")
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

Every number below was measured by `python -m helpers.model_card helpers/assets/tiny-controlnet`.

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
the same colour (so shape, size and position are usually another image's; {_pct(info['captions']['own'])} of all
captions matched their image), so the map is the only reliable source of the geometry and
the caption of the colour; {int(100 * cfg['cond_dropout'])}% are "" so that the branch also
serves classifier-free guidance's unconditional half.

Hardware: {info['hardware']}. Time: {t['total_s'] / 60:.1f} min in all ({t['controlnet_s'] / 60:.1f} min of ControlNet steps),
while other work shared the machine{_cpu_time(t)}. Versions: {", ".join(f"{k} {v}" for k, v in info['versions'].items())}.
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


def count_flops(fn) -> int:
    """FLOPs of one call of fn() (torch.utils.flop_counter: matmuls and convolutions, a
    multiply-add counted as 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def forward_flops(transformer, unet, z, c, t) -> dict:
    """FLOPs of one forward of each denoiser, attention included: counted with diffusers'
    classic AttnProcessor (explicit matmuls), because FlopCounterMode does not see the fused
    scaled_dot_product_attention kernel on a CPU. The processors are restored afterwards."""
    from diffusers.models.attention_processor import AttnProcessor

    out = {}
    for name, model, call in (("tiny-dit", transformer, lambda: transformer(z, encoder_hidden_states=c, timestep=t)),
                              ("tiny-sd", unet, lambda: unet(z, t, encoder_hidden_states=c))):
        saved = model.attn_processors
        model.set_attn_processor(AttnProcessor())
        try:
            with torch.no_grad():
                out[name] = count_flops(call)
        finally:
            model.set_attn_processor(saved)
    return out


def refresh_dit_flops(folder) -> dict:
    """Re-measure only the FLOPs of tiny-dit's card and re-render it from metrics.json."""
    folder = Path(folder)
    m = json.loads((folder / "metrics.json").read_text())
    dit, sd = _load_dit(folder)
    z = torch.randn(1, 4, 8, 8)
    c = torch.randn(1, sd.tokenizer.model_max_length, sd.text_encoder.config.hidden_size)
    m["flops_per_forward"] = forward_flops(dit.transformer, sd.unet, z, c, torch.tensor([500]))
    (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    info = json.loads((folder / "train_info.json").read_text())
    (folder / "README.md").write_text(render_dit_card(folder, m, info))
    return m


def _load_dit(folder):
    from diffusers import PixArtTransformer2DModel

    from helpers import zoo
    from helpers.dit import TinyDiT
    sd = zoo.load_pipeline("tiny-sd", device="cpu")
    tr = PixArtTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    return TinyDiT(transformer=tr.eval(), vae=sd.vae, text_encoder=sd.text_encoder,
                   tokenizer=sd.tokenizer, scheduler=sd.scheduler), sd


def _dit_job(folder, job):
    torch.set_num_threads(1)
    dit, sd = _cached("dit", folder, _load_dit)
    pipe = dit if job["model"] == "tiny-dit" else sd
    acc = evaluate.judge_accuracy(pipe, n=job["n"], guidance_scale=job["g"], steps=job["s"],
                                  scheduler="DPM++ 2M", split=job["split"])
    print(f"{job} -> {acc}", flush=True)
    return acc


def measure_dit(folder: Path, quick=False, n=128, n_heldout=96, workers=1) -> dict:
    """tiny-dit beside tiny-sd's UNet: parameters, FLOPs per step, tokens, judge accuracy
    over DIT_GUIDANCE x DIT_STEPS (same prompts, scheduler and seeds for both)."""
    if quick:
        n, n_heldout = 8, 8
    grid_g, grid_s = ((4.0,), (10,)) if quick else (DIT_GUIDANCE, DIT_STEPS)
    t0 = time.perf_counter()
    jobs = [dict(model=mdl, g=g, s=s, n=n, split="train")
            for mdl in ("tiny-dit", "tiny-sd") for g in grid_g for s in grid_s]
    m = {"n_prompts": n, "n_heldout_prompts": n_heldout, "scheduler": "DPM++ 2M",
         "grid": {"tiny-dit": {}, "tiny-sd": {}}, "heldout": {}}
    for j, r in zip(jobs, _pool(_dit_job, folder, jobs, workers)):
        m["grid"][j["model"]][f"{j['g']:g}|{j['s']}"] = r
    # the guidance best for the two together, at the most steps: the held-out test's setting
    s_max = grid_s[-1]
    m["compare_guidance"] = max(grid_g, key=lambda g: sum(m["grid"][k][f"{g:g}|{s_max}"]["all"] for k in m["grid"]))
    m["compare_steps"] = s_max
    jobs = [dict(model=mdl, g=m["compare_guidance"], s=s_max, n=n_heldout, split="heldout")
            for mdl in ("tiny-dit", "tiny-sd")]
    for j, r in zip(jobs, _pool(_dit_job, folder, jobs, workers)):
        m["heldout"][j["model"]] = r | {"guidance": j["g"], "steps": j["s"]}
    dit, sd = _load_dit(folder)
    tr, unet = dit.transformer, sd.unet
    z = torch.randn(1, 4, 8, 8)
    c = torch.randn(1, sd.tokenizer.model_max_length, sd.text_encoder.config.hidden_size)
    t = torch.tensor([500])
    m["flops_per_forward"] = forward_flops(tr, unet, z, c, t)
    m["params"] = {"tiny-dit": evaluate.param_count(tr), "tiny-sd": evaluate.param_count(unet)}
    uc, s = unet.config, unet.config.sample_size                          # tokens per attention layer
    m["unet_attention_tokens"] = {
        "down": [(s // 2 ** i) ** 2 for i, b in enumerate(uc.down_block_types) if "CrossAttn" in b],
        "mid": (s // 2 ** (len(uc.down_block_types) - 1)) ** 2 if "CrossAttn" in str(uc.mid_block_type) else 0}
    m["bytes"] = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*.safetensors"))}
    for name, pipe in (("tiny-dit", dit), ("tiny-sd", sd)):
        pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
    m["bench_8x25_cfg_s"] = {"tiny-dit": round(evaluate.benchmark(dit, n=8, steps=25, guidance_scale=7.5), 3),
                             "tiny-sd": round(evaluate.benchmark(sd, n=8, steps=25, guidance_scale=7.5), 3)}
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return m


def render_dit_card(folder: Path, m: dict, info: dict) -> str:
    cfg, t = info["config"], info["times_s"]
    sd_info_path = ASSETS_SD / "train_info.json"
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
        acc_rows.append(f"| {g} | {s} | {_pct(d['color'])} / {_pct(d['shape'])} / {_pct(d['size'])} / "
                        f"{_pct(d['position'])} / {_pct(d['all'])} | {_pct(u['color'])} / {_pct(u['shape'])} / "
                        f"{_pct(u['size'])} / {_pct(u['position'])} / {_pct(u['all'])} |")
    hd, hu = m["heldout"]["tiny-dit"], m["heldout"]["tiny-sd"]
    dit_samples = cfg["steps"] * cfg["batch"]
    sd_samples = sd_cfg.get("unet_steps", 0) * sd_cfg.get("unet_batch", 0)
    total_bytes = sum(m["bytes"].values())
    head = f"{m['compare_guidance']:g}|{m['compare_steps']}"
    d_all, u_all = m["grid"]["tiny-dit"][head]["all"], m["grid"]["tiny-sd"][head]["all"]
    g_h, s_h = head.split("|")
    compare = (f"At guidance {g_h}, {s_h} steps, tiny-dit gets all four attributes right in {_pct(d_all)} of "
               f"images, tiny-sd in {_pct(u_all)} (training samples: tiny-dit {dit_samples:,}, "
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

Every number below was measured by `python -m helpers.model_card helpers/assets/tiny-dit`.

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
tiny-dit colour {_pct(hd['color'])}, shape {_pct(hd['shape'])}, all {_pct(hd['all'])};
tiny-sd colour {_pct(hu['color'])}, shape {_pct(hu['shape'])}, all {_pct(hu['all'])}.

## Training

`python -m helpers.train tiny-dit --seed {cfg['seed']}` (on `accelerate`). {cfg['n_train_images']:,} images of the
shapes world's train split (the stream tiny-sd was trained on), encoded once by tiny-sd's VAE
(posterior sample x scaling_factor at every step); captions encoded once by tiny-sd's frozen
text encoder, {int(100 * cfg['cond_dropout'])}% dropped to "" for classifier-free guidance;
epsilon-prediction MSE under tiny-sd's schedule (scaled_linear 0.00085-0.012, 1000 steps){snr_text};
AdamW lr {cfg['lr']:g}, warm-up {cfg['warmup']}, cosine to 10%, gradient clipping 1.0, EMA {cfg['ema_decay']}.
Hardware: {info['hardware']}. Time: {t['total_s'] / 60:.1f} min in all, while other work shared the machine{_cpu_time(t)}. Versions:
{", ".join(f"{k} {v}" for k, v in info['versions'].items())}. Final loss {info['final_loss']['dit']:.4f};
the curve is in `train_log.csv`.

## Limits

{compare} Transformers usually need more data and steps than UNets to reach the same
quality (they lack the convolutions' locality and translation priors), so the comparison is
one of two small models at a CPU budget, not of the architectures at scale. It needs tiny-sd's
VAE and text encoder (the zoo loader checks that they are the ones it was trained with).
"""


ASSETS_SD = Path(__file__).resolve().parent / "assets" / "tiny-sd"
# model (train_info.json "model") -> (measure, render, default worker processes for measure)
CARDS = {"tiny-sd": (measure, render_card, 2),
         "tiny-controlnet": (measure_controlnet, render_controlnet_card, 1),
         "tiny-dit": (measure_dit, render_dit_card, 1)}


def write_model_card(folder, quick=False, workers=None) -> dict:
    """Measure the model in `folder` (train_info.json "model", tiny-sd when absent) and write
    metrics.json and its card README.md; returns the metrics."""
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    measure_fn, render_fn, default_workers = CARDS.get(info.get("model"), CARDS["tiny-sd"])
    m = measure_fn(folder, quick=quick, workers=default_workers if workers is None else workers)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    (folder / "README.md").write_text(render_fn(folder, m, info))
    return m


def rerender_card(folder, bench=False) -> dict:
    """tiny-sd: re-render README.md from metrics.json, optionally re-measuring only the speed
    benchmark (on a quiet machine: the full measurement shares the CPU between workers)."""
    from helpers.train import hardware
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    m = json.loads((folder / "metrics.json").read_text())
    if bench:
        pipe = _load(folder)
        pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
        m["bench_8x25_cfg_s"] = round(evaluate.benchmark(pipe, n=8, steps=25, guidance_scale=m["best_guidance"]), 3)
        m["bench_hardware"] = hardware()
        (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    (folder / "README.md").write_text(render_card(folder, m, info))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="processes sharing the evaluation")
    ap.add_argument("--rerender", action="store_true", help="tiny-sd: re-render the card from metrics.json")
    ap.add_argument("--bench", action="store_true", help="with --rerender: re-measure the speed benchmark")
    args = ap.parse_args(argv)
    if args.rerender:
        rerender_card(args.folder, bench=args.bench)
    else:
        write_model_card(args.folder, quick=args.quick, workers=args.workers)
    from helpers.zoo import write_manifest
    write_manifest(args.folder)


if __name__ == "__main__":
    main()
