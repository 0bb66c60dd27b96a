"""The training core every zoo model shares, and the pieces of its cards.

A model module (`tiny_sd.py`, ...) writes its own loop body (what is noised, what the
denoiser sees, the loss) and takes everything around it from here:

    run = Run(out, seed=cfg.seed)               # accelerate, the seed, <out>.tmp, clock, loss log
    opt, sched, ema = make_optimizer(params, cfg.lr, 0.0, cfg.warmup, cfg.steps, cfg.ema_decay)
    for step in run.progress(range(cfg.steps), "dit"):
        ...                     # z0 = posterior_sample(...); zt = helpers.diffusion.q_sample(...)
        optimizer_step(run.accelerator, loss, params, opt, sched, ema)
        run.log("dit", step, loss.item(), sched.get_last_lr()[0])
    ema.copy_to(params)
    model.save_pretrained(run.work, ...)
    return run.finish({...}, final_loss={...})  # train_log.csv, train_info.json, <out>.tmp -> out

Data shared by the models trained on tiny-sd: `frozen_tiny_sd` (its parts, verified and
frozen), `encoded_dataset` (the shapes training split through its VAE), `caption_bank`
(every training caption through its text encoder).

Cards: `pool` runs measurement jobs in worker processes, `cached` loads a model once per
worker, `pct` and `cpu_time` format numbers the same way on every card.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from helpers import shapes
from helpers.zoo import verify

LEGACY_CARD_COMMAND = "python -m helpers.model_card"
"""The card command before helpers/train/ existed. The shipped cards were measured by it and
say so; their metrics.json has no "measured_by", so they re-render with this name (their
checksums stay). A card measured now records `python -m helpers.train.card`."""


# ---------------------------------------------------------------------------- a training run

class Run:
    """One training run of a zoo model: an `accelerate.Accelerator` (one CPU, one GPU or
    several, unchanged), the global seed, an empty work folder `<out>.tmp`, the clock and
    the loss log. `finish` publishes the work folder as `out`."""

    def __init__(self, out: Path, seed: int | None = None):
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self.device = self.accelerator.device
        if seed is not None:
            torch.manual_seed(seed)
        self.out = Path(out)
        self.work = fresh_workdir(self.out)
        self.t_start, self.cpu_start = time.time(), time.process_time()
        self.log_rows: list[tuple] = []
        self.times: dict[str, float] = {}

    @property
    def main_process(self) -> bool:
        return self.accelerator.is_local_main_process

    def progress(self, iterable, desc: str):
        """tqdm over `iterable` on the main process only."""
        return tqdm(iterable, desc=desc, disable=not self.main_process)

    def log(self, phase: str, step: int, loss: float, lr: float) -> None:
        """One row of train_log.csv: phase, step, loss, lr, seconds since the start."""
        self.log_rows.append((phase, step, round(loss, 6), lr, round(time.time() - self.t_start, 1)))

    def last_loss(self, phase: str) -> float:
        return next(r[2] for r in reversed(self.log_rows) if r[0] == phase)

    @contextmanager
    def timed(self, key: str):
        """`with run.timed("vae_s"):` records the block's wall time (s) in times_s[key]."""
        t0 = time.time()
        yield
        self.times[key] = round(time.time() - t0, 1)

    def finish(self, info: dict, final_loss: dict) -> dict:
        """Write train_log.csv and train_info.json (`info`, then times_s, hardware, versions
        and final_loss) into the work folder, and replace `out` by it. Returns the info."""
        write_train_log(self.work / "train_log.csv", self.log_rows)
        info = info | {
            "times_s": self.times | {"total_s": round(time.time() - self.t_start, 1),
                                     "cpu_s": round(time.process_time() - self.cpu_start, 1)},
            "hardware": hardware(self.accelerator),
            "versions": versions(),
            "final_loss": final_loss,
        }
        return publish(self.work, self.out, info)


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


def write_train_log(path: Path, rows) -> None:
    """The loss log as CSV: phase, step, loss, lr, elapsed_s (one row per logged step)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "step", "loss", "lr", "elapsed_s"])
        w.writerows(rows)


def config_record(cfg) -> dict:
    """A config dataclass as train_info.json stores it (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def hardware(accelerator=None) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def versions() -> dict:
    import diffusers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__}


# ------------------------------------------------------------------------ the optimisation

def lr_lambda(warmup: int, total: int):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def make_optimizer(params, lr: float, weight_decay: float, warmup: int, total: int, ema_decay: float):
    """AdamW over `params` with `lr_lambda(warmup, total)` and an EMA of the weights:
    (optimizer, lr scheduler, EMAModel)."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel(params, decay=ema_decay)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total)), ema


def optimizer_step(accelerator, loss, params, opt, lr_sched, ema) -> None:
    """One update of every zoo training loop: backward, clip the gradient norm to 1, AdamW,
    the learning-rate schedule, then the EMA of the weights."""
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(params, 1.0)
    opt.step()
    lr_sched.step()
    opt.zero_grad(set_to_none=True)
    ema.step(params)


def posterior_sample(means, stds, idx, scale: float, gen) -> torch.Tensor:
    """z_0 for the images `idx`: a sample of their VAE posterior N(mean, std^2), times the
    latent scaling factor (LDM, sec. 4.3). means, stds: (N, 4, h, w); returns (B, 4, h, w)."""
    return (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale


# ------------------------------------------------------- data of the models built on tiny-sd

@torch.no_grad()
def encode_all(vae, data, device, batch=256):
    """Posterior mean and std of every image: (N, 4, 8, 8) each."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        dist = vae.encode(data[i:i + batch].to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
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


def encoded_dataset(cfg, vae, dev, accelerator):
    """The training split rendered (cfg.n_train_images, cfg.data_seed) and encoded once:
    (items, posterior means, posterior stds)."""
    ds = shapes.ShapesDataset(cfg.n_train_images, seed=cfg.data_seed, split="train")
    items = [ds[i] for i in tqdm(range(len(ds)), desc="render", disable=not accelerator.is_local_main_process)]
    means, stds = encode_all(vae, torch.stack([it["pixel_values"] for it in items]), dev)
    return items, means, stds


# -------------------------------------------------------------------------- cards

def measured_by(m: dict) -> str:
    """The command that measured metrics `m` (see LEGACY_CARD_COMMAND)."""
    return m.get("measured_by", LEGACY_CARD_COMMAND)


def pct(x) -> str:
    return f"{100 * x:.0f}%"


def cpu_time(times: dict) -> str:
    """' (N min of CPU time)' when the training recorded it (process time: what the run would
    take alone on one core)."""
    return f" ({times['cpu_s'] / 60:.1f} min of CPU time)" if "cpu_s" in times else ""


_MODELS: dict = {}  # (kind, folder) -> loaded model(s), one load per worker process


def cached(kind: str, folder, load):
    """load(folder), once per process and (kind, folder)."""
    key = (kind, str(folder))
    if key not in _MODELS:
        _MODELS[key] = load(folder)
    return _MODELS[key]


def pool(fn, folder, jobs, workers: int) -> list:
    """[fn(folder, job) for job in jobs], in `workers` spawned processes when workers > 1
    (fn must be importable; each worker should use one torch thread)."""
    if workers <= 1:
        return [fn(folder, j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as executor:
        return list(executor.map(fn, [folder] * len(jobs), jobs))


def safetensors_bytes(folder: Path) -> dict:
    """{relative path: size} of every safetensors file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*.safetensors"))}
