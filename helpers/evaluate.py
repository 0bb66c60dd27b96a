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
                   scheduler=None, batch_size=128, **pipe_kwargs) -> dict:
    """Judge accuracy per attribute of n generated images, plus the wall time in seconds.
    pipe_kwargs go to every pipeline call (``max_sequence_length=0`` for tiny-sd3, ...)."""
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    caps, attrs = eval_prompts(n, seed=seed, split=split)
    t0 = time.perf_counter()
    images = generate(pipe, caps, guidance_scale, steps, seed=seed, batch_size=batch_size, **pipe_kwargs)
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


def ip_adapter_eval_set(n: int, seed: int = 5678, prompt: str = "conflicting"):
    """Reference images of n fresh draws and the prompts to pair them with:
    (prompts, prompt attributes or None, references (n, 3, 64, 64) in [0, 1], reference
    attributes). prompt="conflicting": the reference's own caption with another colour (drawn
    per image), so the judged colour tells whether the reference or the prompt won;
    "matching": the reference's own caption; "none": the empty prompt."""
    batch = shapes.make_batch(n, seed=seed, split="train")
    refs, ref_attrs = (batch["pixel_values"] + 1) / 2, batch["attributes"]
    if prompt == "none":
        return [""] * n, None, refs, ref_attrs
    if prompt == "matching":
        return batch["captions"], ref_attrs, refs, ref_attrs
    if prompt != "conflicting":
        raise ValueError(f"prompt must be 'conflicting', 'matching' or 'none', got {prompt!r}")
    gen = torch.Generator().manual_seed(seed)
    colors = tuple(shapes.COLORS)
    attrs = []
    for a in ref_attrs:
        k = int(torch.randint(1, len(colors), (1,), generator=gen))
        attrs.append(shapes.Attributes(a.shape, colors[(colors.index(a.color) + k) % len(colors)],
                                       a.size, a.position))
    caps = [shapes.caption(a, template=i % len(shapes.TEMPLATES)) for i, a in enumerate(attrs)]
    return caps, attrs, refs, ref_attrs


@torch.no_grad()
def ip_adapter_embeds(pipe, images01) -> torch.Tensor:
    """The image embeddings the pipeline makes of reference images (n, 3, H, W) in [0, 1]:
    through its own feature_extractor (as PIL images, like `ip_adapter_image=` does) and
    image_encoder. Returns (n, D)."""
    from PIL import Image
    pils = [Image.fromarray((x.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()) for x in images01]
    pixels = pipe.feature_extractor(pils, return_tensors="pt").pixel_values
    enc = pipe.image_encoder
    return enc(pixels.to(enc.device, enc.dtype)).image_embeds.float().cpu()


@torch.no_grad()
def ip_adapter_generate(pipe, captions, references, guidance_scale=7.5, steps=25, seed=0,
                        batch_size=64, control=None, **pipe_kwargs) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1], image i from captions[i] and reference image i (in
    [0, 1], through the pipeline's own feature extractor and image encoder).

    diffusers' pipelines take ONE reference per adapter for the whole batch: the embeddings
    they prepare (`prepare_ip_adapter_image_embeds`, also from `ip_adapter_image_embeds`) are
    repeated for every prompt. To give prompt i its own reference in one batched call, the
    pipeline's `prepare_ip_adapter_image_embeds` is replaced, for the call only, by one that
    returns the rows as they are: [zeros (the unconditional image, as `encode_image` makes
    it); the embeddings] when guidance is on. Equal, row by row, to one call per prompt with
    `ip_adapter_image=` (tested). Seeded per batch like `generate`. control: control images
    (n, 3, H, W) for a ControlNet pipeline with the adapter loaded, cut into the same batches
    and passed as `image=`."""
    embeds = ip_adapter_embeds(pipe, references)
    out = []
    for i in range(0, len(captions), batch_size):
        chunk = captions[i:i + batch_size]
        e = embeds[i:i + batch_size, None]                                   # (b, 1, D)
        if guidance_scale > 1:
            e = torch.cat([torch.zeros_like(e), e])                          # (2b, 1, D) [uncond; cond]
        rows = [e.to(pipe.device, pipe.unet.dtype)]
        if control is not None:
            pipe_kwargs["image"] = control[i:i + batch_size]
        gen = torch.Generator(device="cpu").manual_seed(seed + i)
        pipe.prepare_ip_adapter_image_embeds = lambda *args, rows=rows, **kwargs: rows  # one row per prompt, unrepeated
        try:
            res = pipe(prompt=chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
                       output_type="pt", ip_adapter_image_embeds=rows, **pipe_kwargs)
        finally:
            del pipe.prepare_ip_adapter_image_embeds                           # the class's method again
        out.append(res.images.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def ip_adapter_scores(pipe, n=128, scale=1.0, guidance_scale=7.5, steps=25, prompt="conflicting",
                      seed=5678, batch_size=64, **pipe_kwargs) -> dict:
    """Image by image: does the generated image take the reference's or the prompt's colour?
    (`ip_adapter_eval_set`; `pipe.set_ip_adapter_scale(scale)` first.) Returns
    {"reference": {key: (n,) bool}, "prompt": {key: (n,) bool} (None for prompt="none"),
    "readable": (n,) bool, "images", "seconds"}, key in shape, color, size, position."""
    caps, attrs, refs, ref_attrs = ip_adapter_eval_set(n, seed=seed, prompt=prompt)
    pipe.set_ip_adapter_scale(float(scale))
    t0 = time.perf_counter()
    images = ip_adapter_generate(pipe, caps, refs, guidance_scale, steps, seed=seed, batch_size=batch_size,
                                 **pipe_kwargs)
    seconds = time.perf_counter() - t0
    j = shapes.judge(images)

    def agree(targets):
        return {k: torch.tensor([g is not None and getattr(g, k) == getattr(t, k)
                                 for g, t in zip(j.attributes, targets)], dtype=torch.bool)
                for k in ("shape", "color", "size", "position")}

    return {"reference": agree(ref_attrs), "prompt": None if attrs is None else agree(attrs),
            "readable": torch.tensor([a is not None for a in j.attributes]), "images": images,
            "seconds": seconds}


def ip_adapter_accuracy(pipe, n=128, scale=1.0, guidance_scale=7.5, steps=25, prompt="conflicting",
                        seed=5678, batch_size=64) -> dict:
    """The rates of :func:`ip_adapter_scores`: colour / shape of the reference, colour of the
    prompt (0 for prompt="none"), readable, and the generation's seconds."""
    s = ip_adapter_scores(pipe, n, scale, guidance_scale, steps, prompt, seed, batch_size)

    def rate(x):
        return round(float(x.float().mean()), 4)

    return {"color_reference": rate(s["reference"]["color"]), "shape_reference": rate(s["reference"]["shape"]),
            "color_prompt": 0.0 if s["prompt"] is None else rate(s["prompt"]["color"]),
            "readable": rate(s["readable"]), "seconds": round(s["seconds"], 2)}


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
    multiply-add counted as 2). `F.scaled_dot_product_attention` runs on its math backend
    inside, so that its two matmuls are counted: the counter has no formula for the fused
    CPU kernel and would count it as 0."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(fc.get_total_flops())


def forward_flops(calls: dict) -> dict:
    """FLOPs of one forward of each model, attention included (`count_flops` counts
    scaled_dot_product_attention's matmuls). calls: {name: (model, fn)}, fn() running model
    once. Returns {name: FLOPs}."""
    out = {}
    for name, (_model, call) in calls.items():
        with torch.no_grad():
            out[name] = count_flops(call)
    return out


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{max(0, 3 - int(math.log10(abs(n) / div)) - 1)}f}{unit}"
    return str(int(n))


# --------------------------------------------------- pixel-space models (tiny-pixel, Lab 11)

PIXEL_SIZE = 32
"""tiny-pixel's world: the shapes world area-downsampled from 64x64 to 32x32."""
NUM_PIXEL_CLASSES = len(shapes.COLORS) * len(shapes.SHAPES)
"""tiny-pixel's class labels: one per (colour, shape) pair, 18; label 18 is the null label
(classifier-free guidance's unconditional input)."""


def pixel_label(attrs) -> int:
    """The class label of an image's (colour, shape): colour index x 3 + shape index."""
    return list(shapes.COLORS).index(attrs.color) * len(shapes.SHAPES) + shapes.SHAPES.index(attrs.shape)


def label_attributes(label: int) -> tuple[str, str]:
    """(colour, shape) of class label `label` (the inverse of `pixel_label`)."""
    return list(shapes.COLORS)[label // len(shapes.SHAPES)], shapes.SHAPES[label % len(shapes.SHAPES)]


def pixel_dataset(n: int, seed: int = 0, split: str = "all"):
    """n images of the world at PIXEL_SIZE: (images (n, 3, 32, 32) in [-1, 1], labels (n,) long,
    attributes). Every (colour, shape) pair is in split "all" (the class-conditional model
    has a label for each); size and position are not in the label."""
    batch = shapes.make_batch(n, seed=seed, split=split)
    x = torch.nn.functional.interpolate(batch["pixel_values"], size=PIXEL_SIZE, mode="area")
    labels = torch.tensor([pixel_label(a) for a in batch["attributes"]])
    return x, labels, batch["attributes"]


def pixel_labels(per_class: int) -> torch.Tensor:
    """`per_class` copies of every class label, (NUM_PIXEL_CLASSES * per_class,), class-major."""
    return torch.arange(NUM_PIXEL_CLASSES).repeat_interleave(per_class)


def to_judge(images) -> torch.Tensor:
    """Images of any size in [-1, 1] as the judge reads them: (B, 3, 64, 64) in [0, 1],
    bilinearly upsampled (a real 32x32 image upsampled so is judged 100% right)."""
    x = ((images.float().cpu() + 1) / 2).clamp(0, 1)
    if x.shape[-1] != shapes.IMAGE_SIZE:
        x = torch.nn.functional.interpolate(x, size=shapes.IMAGE_SIZE, mode="bilinear",
                                            align_corners=False).clamp(0, 1)
    return x


def pixel_accuracy(images, labels) -> dict:
    """Judge accuracy of class-conditional samples: {"color", "shape", "both"} (fractions),
    images (B, 3, H, W) in [-1, 1], labels (B,) their class labels."""
    res = shapes.judge(to_judge(images))
    col = torch.tensor([a is not None and a.color == label_attributes(int(k))[0] for a, k in zip(res.attributes, labels)])
    shp = torch.tensor([a is not None and a.shape == label_attributes(int(k))[1] for a, k in zip(res.attributes, labels)])
    return {"color": col.float().mean().item(), "shape": shp.float().mean().item(),
            "both": (col & shp).float().mean().item()}


@torch.no_grad()
def sample_pixel(unet, scheduler, labels, guidance_scale=3.0, steps=25, seed=0, batch_size=256):
    """Class-conditional samples of a pixel-space UNet2DModel, the loop written out: DDIM
    (`scheduler`'s config, `steps` steps), classifier-free guidance against the null label
    NUM_PIXEL_CLASSES (none at guidance_scale 1). labels: (B,) long. Returns (B, 3, H, W) in
    [-1, 1], on the CPU, each batch seeded (seed + its first index)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    cfg = unet.config
    dev, dtype = unet.device, unet.dtype
    out = []
    for i in range(0, len(labels), batch_size):
        lab = labels[i:i + batch_size].to(dev)
        gen = torch.Generator().manual_seed(seed + i)
        x = torch.randn((len(lab), cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=gen).to(dev, dtype)
        null = torch.full_like(lab, NUM_PIXEL_CLASSES)
        for t in sched.timesteps:
            if guidance_scale == 1:
                eps = unet(x, t, class_labels=lab).sample
            else:
                e_u, e_c = unet(torch.cat([x, x]), t, class_labels=torch.cat([null, lab])).sample.chunk(2)
                eps = e_u + guidance_scale * (e_c - e_u)
            x = sched.step(eps, t, x).prev_sample
        out.append(x.float().cpu().clamp(-1, 1))
    return torch.cat(out)


def pixel_flops(unet, sample) -> int:
    """FLOPs of one forward of a pixel UNet2DModel on `sample` (B, C, H, W), attention included
    (each Attention module given diffusers' classic AttnProcessor while counting, as in
    `forward_flops`: UNet2DModel has no `set_attn_processor`)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    attns = [m for m in unet.modules() if isinstance(m, Attention)]
    saved = [a.processor for a in attns]
    for a in attns:
        a.set_processor(AttnProcessor())
    try:
        t = torch.full((len(sample),), 500, device=sample.device)
        with torch.no_grad():
            return count_flops(lambda: unet(sample, t, class_labels=torch.zeros_like(t)))
    finally:
        for a, p in zip(attns, saved):
            a.set_processor(p)


# ------------------------------------------------ a Fréchet distance for the shapes world

WORLD_FEATURES = ("r", "g", "b", "sqrt_area", "width", "cx", "cy", "fit_circle", "fit_square",
                  "fit_triangle", "bg_r", "bg_g", "bg_b", "bg_std", "roughness")
"""What `world_features` measures per image."""
WORLD_FEATURE_SCALE = (0.36, 0.29, 0.32, 0.11, 0.11, 0.19, 0.19, 0.11, 0.13, 0.13,
                       0.0039, 0.0034, 0.0036, 0.0077, 0.0026)
"""Each feature's standard deviation over 1,000 real 32x32 images (`pixel_dataset(1000, seed=11)`):
`world_features` divides by it, so every feature counts alike (the background's colour and
noise vary far less in the world than the shape's colour, and are as telling)."""


def world_features(images) -> torch.Tensor:
    """The features of the shapes world an FID for it compares: (B, 15) float64, columns
    WORLD_FEATURES, each divided by its spread in the real world (WORLD_FEATURE_SCALE).
    images: (B, 3, H, W) in [-1, 1] (any size; upsampled to 64 as the judge
    reads them). Read by the judge (the shape's median colour, area, fitted width and centre,
    its fit to each ideal shape) and from the pixels outside the judged shape (background
    colour, its noise std, and roughness: the mean absolute Laplacian over the image, which
    noise raises and blur lowers). An image with no shape gets zeros for the shape's columns.
    Inception features (FID, Heusel et al. 2017) describe photos; these describe this world."""
    x = to_judge(images)                                                     # (B, 3, 64, 64)
    res = shapes.judge(x)
    lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1]
           - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]).abs().mean(dim=(1, 2, 3))  # (B,)
    rows = []
    for i, f in enumerate(res.features):
        bg = x[i][:, ~res.masks[i, 0]]                                        # (3, N) outside the shape
        bgm = bg.mean(1) if bg.shape[1] else torch.zeros(3)
        bgs = bg.std(1).mean() if bg.shape[1] > 1 else torch.tensor(0.0)
        if f is None:
            shape_part = [0.0] * 10
        else:
            fits = [f["fits"][s] for s in shapes.SHAPES]
            shape_part = [*(v / 255 for v in f["rgb"]), math.sqrt(f["area"]) / 64, f["width"] / 64,
                          f["center"][0] / 64, f["center"][1] / 64, *fits]
        rows.append(shape_part + [*bgm.tolist(), float(bgs), float(lap[i])])
    return torch.tensor(rows, dtype=torch.float64) / torch.tensor(WORLD_FEATURE_SCALE, dtype=torch.float64)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017, the FID formula).
    The matrix square root's trace is taken as the sum of the square roots of the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric, so exact and stable)."""
    a, b = torch.as_tensor(feats_a, dtype=torch.float64), torch.as_tensor(feats_b, dtype=torch.float64)
    mu = (a.mean(0) - b.mean(0)).pow(2).sum()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(sa)
    ha = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T                          # S_a^(1/2)
    cross = torch.linalg.eigvalsh(ha @ sb @ ha).clamp(min=0).sqrt().sum()
    return float(mu + sa.trace() + sb.trace() - 2 * cross)


def world_fid(images_a, images_b) -> float:
    """The Fréchet distance of two image sets (B, 3, H, W) in [-1, 1] on `world_features`
    (each feature in units of its real-world spread). Two real sets of 300 images are about
    0.3 apart (the estimate's own noise); pixel noise, blur and wrong shapes raise it."""
    return frechet_distance(world_features(images_a), world_features(images_b))
