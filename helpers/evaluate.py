"""Measuring a text-to-image pipeline in the shapes world: generate from captions, let the
judge read the images back, count what is right.

    acc = judge_accuracy(pipe, n=256, guidance_scale=7.5, steps=25)   # {"color": 0.97, ...}

Used by the model cards (`helpers.train`), by the tests and by the labs' experiments; the
labs import from here, never from the maintainer-only `helpers.train`.
"""

from __future__ import annotations

import math
import time

import torch

from helpers import shapes

SCHEDULERS = {  # the schedulers a Stable Diffusion user swaps in with from_config
    "DDPM": "DDPMScheduler",
    "DDIM": "DDIMScheduler",
    "PNDM": "PNDMScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "UniPC": "UniPCMultistepScheduler",
}


def make_scheduler(name: str, config, **overrides):
    """A scheduler by its UI name ("DPM++ 2M", ...) from another scheduler's config, with
    deliberate `overrides` of config entries (``steps_offset=0``, ...)."""
    import diffusers
    return getattr(diffusers, SCHEDULERS[name]).from_config(config, **overrides)


def eval_prompts(n: int, seed: int = 1234, split: str = "train", template: int | None = None):
    """n captions and their attributes, deterministic; templates cycle unless fixed."""
    attrs = shapes.sample_attributes(n, seed=seed, split=split)
    caps = [shapes.caption(a, template=(i % len(shapes.TEMPLATES)) if template is None else template)
            for i, a in enumerate(attrs)]
    return caps, attrs


@torch.no_grad()
def generate(pipe, captions, guidance_scale=7.5, steps=25, seed=0, batch_size=128,
             negative_prompt=None, control=None, **pipe_kwargs):
    """Images (B, 3, H, W) in [0, 1] on the CPU, batch by batch, seeded per batch.

    The one batching loop over a pipeline call (tiny-sd, tiny-dit, a ControlNet pipeline):
    control: control images (B, 3, H, W) for a ControlNet pipeline, cut into the same batches
    as the captions and passed as `image=`; pipe_kwargs go to every call
    (``controlnet_conditioning_scale=1.0``, ...)."""
    out = []
    for i in range(0, len(captions), batch_size):
        chunk = captions[i:i + batch_size]
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        neg = None if negative_prompt is None else [negative_prompt] * len(chunk)
        if control is not None:
            pipe_kwargs["image"] = control[i:i + batch_size]
        res = pipe(prompt=chunk, negative_prompt=neg, num_inference_steps=steps,
                   guidance_scale=guidance_scale, generator=gen, output_type="pt", **pipe_kwargs)
        out.append(res.images.float().cpu())
    return torch.cat(out)


def generate_with_sampler(pipe, sampler: str, captions, steps: int, guidance_scale=7.5, seed=0,
                          config=None, **overrides):
    """Swap `sampler` (a SCHEDULERS name) into `pipe` and generate one batch of `captions`.

    pipe: a pipeline, or a zoo model's name, loaded here on the CPU (what another process is
    given: ``in_background``). The scheduler is built from `config` (default: the pipeline's
    current scheduler config) plus deliberate `overrides` (``steps_offset=0``, ...).
    Returns (images (B, 3, H, W) in [0, 1], seconds of the generation alone, loading excluded).
    """
    if isinstance(pipe, str):
        from helpers import zoo
        pipe = zoo.load_pipeline(pipe, device="cpu")
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config if config is None else config, **overrides)
    t0 = time.perf_counter()
    images = generate(pipe, list(captions), guidance_scale, steps, seed=seed, batch_size=len(captions))
    return images, time.perf_counter() - t0


def _quiet_worker(threads: int) -> None:
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(threads)
    import diffusers
    import transformers
    for library in (diffusers, transformers):  # its loading bars would land in the notebook
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def in_background(fn, *args, threads: int = 1, **kwargs):
    """Start ``fn(*args, **kwargs)`` in a fresh Python process with `threads` PyTorch threads and
    return a ``concurrent.futures.Future``: ``.result()`` waits and returns fn's value (or
    raises its exception). The process exits when fn returns.

    Why a process and not a thread: a small model's time is mostly Python between PyTorch ops,
    and Python threads of one process take turns (the GIL), so two threads are slower than one.
    A second process has its own interpreter and runs on another core at full speed, provided
    this process does not also use every core (``torch.set_num_threads(1)`` here meanwhile).
    "spawn" starts a clean interpreter the same way on Linux, macOS, Windows and Colab; `fn`
    must be importable (defined in a module, not in the notebook), and its arguments and result
    are pickled across.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_worker, initargs=(threads,))
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)  # the submitted job still runs; the worker exits after it
    return future


def pareto_knee(runs: list[dict], min_accuracy: float, cost: str = "seconds") -> tuple[dict, list[dict]]:
    """The knee of a speed-vs-fidelity study (Lab 03). Returns (knee run, Pareto front).

    runs: dicts with "seconds" (wall time), "distance" (lower is better: Lab 03 uses the change a
    run's images still have to go to the same sampler's 50-step images) and
    "accuracy" (judge). Keep the runs with accuracy >= min_accuracy (all runs if none is), sort
    them by time, keep the Pareto front (each run closer than every faster one), then put the
    front in unit coordinates: x = log time from 0 (fastest) to 1 (the front's best), y =
    distance from 1 (fastest) to 0 (best). The knee is the front's run farthest below the
    straight line x + y = 1 between those two ends: before it each step in (log) time buys a lot,
    after it little. If no run lies below that line, fidelity never flattens before the best
    run, and the best run is the knee; so is it when the front has fewer than three runs.
    cost: the key read as the run's cost instead of "seconds" (e.g. "unet_calls": the same on
    every machine, where wall time varies with the load).
    """
    import numpy as np
    working = [r for r in runs if r["accuracy"] >= min_accuracy] or list(runs)
    front = []
    for r in sorted(working, key=lambda r: r[cost]):
        if not front or r["distance"] < front[-1]["distance"]:
            front.append(r)
    if len(front) < 3:
        return front[-1], front
    x = np.log([r[cost] for r in front])
    y = np.array([r["distance"] for r in front])
    x = (x - x[0]) / (x[-1] - x[0] + 1e-12)
    y = (y - y[-1]) / (y[0] - y[-1] + 1e-12)
    below = (1 - x) - y                       # > 0: under the line from the fastest to the best
    best = int(np.argmax(below))
    return (front[best] if below[best] > 1e-9 else front[-1]), front


def generate_runs(pipe, runs, captions, guidance_scale=7.5, seed=0, config=None) -> dict:
    """:func:`generate_with_sampler` for each (sampler, steps) of `runs`, one after the other on
    one pipeline: {(sampler, steps): (images, seconds)}. `pipe` may be a zoo model's name, loaded
    once here (what ``in_background`` is given); every scheduler is built from `config`
    (default: the pipeline's scheduler config as it is before the first swap)."""
    if isinstance(pipe, str):
        from helpers import zoo
        pipe = zoo.load_pipeline(pipe, device="cpu")
    config = pipe.scheduler.config if config is None else config
    return {(name, steps): generate_with_sampler(pipe, name, captions, steps, guidance_scale, seed, config)
            for name, steps in runs}


def colour_error(judged: "shapes.JudgeResult", targets, palette=None) -> torch.Tensor:
    """How far each image's shape is from the colour its caption asks for, measured against the
    world itself (no reference sampler): the RGB distance, in 0..255 units, between the judge's
    reading of the shape's colour (the median of its interior, ``judged.features[i]["rgb"]``)
    and the palette colour of ``targets[i].color``. Where the judge found no shape, the
    distance from the background to that colour (the shape is missing). (B,) float32.

    judged: ``shapes.judge(images)`` of B images; targets: B Attributes; palette: name -> RGB
    (default ``shapes.COLORS``). Real renders score about 8 (their own colour jitter, +-8 per
    channel); the palette's colours are at least 132 apart."""
    import numpy as np
    pal = shapes.COLORS if palette is None else palette
    if len(targets) != len(judged.features):
        raise ValueError(f"{len(targets)} targets for {len(judged.features)} images")
    background = np.array(shapes.BACKGROUND, np.float64)
    errors = [np.linalg.norm((background if f is None else np.array(f["rgb"])) - np.array(pal[t.color], np.float64))
              for f, t in zip(judged.features, targets)]
    return torch.tensor(errors, dtype=torch.float32)


def judge_accuracy(pipe, n=256, guidance_scale=7.5, steps=25, seed=1234, split="train",
                   scheduler=None, batch_size=128) -> dict:
    """Judge accuracy per attribute of n generated images, plus the wall time in seconds."""
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    caps, attrs = eval_prompts(n, seed=seed, split=split)
    t0 = time.perf_counter()
    images = generate(pipe, caps, guidance_scale, steps, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    result = shapes.judge(images, targets=attrs)
    return {**{k: round(v, 4) for k, v in result.accuracy.items()}, "seconds": round(seconds, 2)}


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
def controlnet_accuracy(pipe, n=128, scale=1.0, guidance_scale=7.5, steps=25,
                        conflicting=False, seed=4321, batch_size=64) -> dict:
    """Generate with a StableDiffusionControlNetPipeline from n control masks
    (`controlnet_eval_set`) and measure: median and mean IoU of the judged shape mask with the
    control mask, colour accuracy (against the caption), and how often shape, size and
    position follow the map or (for conflicting prompts) the caption; plus the seconds of the
    generation. The averages of :func:`controlnet_scores`."""
    s = controlnet_scores(pipe, n, guidance_scale, steps, conflicting, seed, batch_size,
                          controlnet_conditioning_scale=float(scale))

    def rate(agreed):
        return round(float(agreed.float().mean()), 4)

    out = {"median_iou": round(float(s["iou"].median()), 4), "mean_iou": round(float(s["iou"].mean()), 4),
           "color": rate(s["caption"]["color"]), "shape": rate(s["map"]["shape"]),
           "size_map": rate(s["map"]["size"]), "position_map": rate(s["map"]["position"])}
    if conflicting:
        out |= {"size_caption": rate(s["caption"]["size"]), "position_caption": rate(s["caption"]["position"])}
    return out | {"seconds": round(s["seconds"], 2)}


@torch.no_grad()
def controlnet_scores(pipe, n=128, guidance_scale=7.5, steps=25, conflicting=False, seed=4321,
                      batch_size=64, **pipe_kwargs) -> dict:
    """`controlnet_accuracy` image by image, for paired comparisons and their intervals: the
    same eval set (`controlnet_eval_set`), seeds and batches, so two calls that differ only in
    `pipe_kwargs` start every image from the same noise.

    pipe: a StableDiffusionControlNetPipeline, or any callable taking its keyword arguments
    (e.g. one that alters the control image). pipe_kwargs go to every call
    (``controlnet_conditioning_scale``, ``control_guidance_start``/``end``, ...).
    Returns {"iou": (n,) float32 IoU of the judged shape with the control mask,
    "map": {key: (n,) bool}, "caption": {key: (n,) bool}, "images": (n, 3, H, W) in [0, 1],
    "seconds": the generation's wall time}: for key in shape, color, size, position, whether the
    judged attribute is the map's image's / the caption's (the same unless conflicting; colour
    always comes from the caption)."""
    from helpers.zoo import control_image

    caps, attrs, masks, maps = controlnet_eval_set(n, seed=seed, conflicting=conflicting)
    t0 = time.perf_counter()
    images = generate(pipe, caps, guidance_scale, steps, seed=seed, batch_size=batch_size,
                      control=control_image(masks), **pipe_kwargs)
    seconds = time.perf_counter() - t0
    j = shapes.judge(images)

    def agree(targets):
        return {k: torch.tensor([g is not None and getattr(g, k) == getattr(t, k)
                                 for g, t in zip(j.attributes, targets)], dtype=torch.bool)
                for k in ("shape", "color", "size", "position")}

    return {"iou": shapes.iou(j.masks, masks).float(), "map": agree(maps), "caption": agree(attrs),
            "images": images, "seconds": seconds}


@torch.no_grad()
def vae_psnr(vae, n=256, seed=777, split="all") -> float:
    """Mean PSNR (dB, images in [0, 1]) of the VAE's reconstruction (posterior mean) of n
    images the VAE was not trained on (seeds disjoint from the training set's)."""
    batch = shapes.make_batch(n, seed=seed, split=split)
    x = batch["pixel_values"].to(vae.device, vae.dtype)                    # (n, 3, 64, 64) in [-1, 1]
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).flatten(1).mean(1).float()                # in [0, 1] units
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def benchmark(pipe, n=8, steps=25, guidance_scale=7.5, repeats=3) -> float:
    """Fastest wall time (s) of ``repeats`` pipeline calls making n images with CFG (the
    fastest, not the median: other work on the machine only ever adds time)."""
    caps, _ = eval_prompts(n, seed=5)
    generate(pipe, caps, guidance_scale, 2, batch_size=n)                  # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(pipe, caps, guidance_scale, steps, seed=r, batch_size=n)
        times.append(time.perf_counter() - t0)
    return min(times)


def count_flops(fn) -> int:
    """FLOPs of one call of fn() (torch.utils.flop_counter: matmuls and convolutions, a
    multiply-add counted as 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def forward_flops(calls: dict) -> dict:
    """FLOPs of one forward of each model, attention included. calls: {name: (model, fn)},
    fn() running model once. Counted with diffusers' classic AttnProcessor (explicit
    matmuls), because FlopCounterMode does not see the fused scaled_dot_product_attention
    kernel on a CPU; each model's processors are restored afterwards. Returns {name: FLOPs}."""
    from diffusers.models.attention_processor import AttnProcessor

    out = {}
    for name, (model, call) in calls.items():
        saved = model.attn_processors
        model.set_attn_processor(AttnProcessor())
        try:
            with torch.no_grad():
                out[name] = count_flops(call)
        finally:
            model.set_attn_processor(saved)
    return out


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{max(0, 3 - int(math.log10(abs(n) / div)) - 1)}f}{unit}"
    return str(int(n))
