"""Training tiny-controlnet: a ControlNet (Zhang et al. 2023) for tiny-sd, on shape masks.

    python -m helpers.train tiny-controlnet [--out DIR] [--seed 0] [--quick] [--threads 1]

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
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers import shapes, zoo
from helpers.train import (caption_bank, count, encoded_dataset, fresh_workdir, frozen_tiny_sd, hardware,
                           lr_lambda, optimizer_step, publish, q_sample, versions, write_train_log)


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


def build_controlnet(unet, cfg: TinyControlNetConfig):
    """A fresh ControlNet for `unet`: its encoder copied, zero convolutions, mask input."""
    from diffusers import ControlNetModel

    torch.manual_seed(cfg.seed)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(cfg.cond_channels))


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
            rows.append(None); own.append(False)
        elif r[1] < cfg.p_other_caption:
            pool = by_color[a.color]
            b = pool[int(torch.randint(len(pool), (1,), generator=gen))]
            rows.append((b, t)); own.append(b == a)
        else:
            rows.append((a, t)); own.append(True)
    return rows, own


def train_tiny_controlnet(out: Path, cfg: TinyControlNetConfig, base: str | None = None) -> dict:
    """Train the ControlNet on tiny-sd (`base`: a tiny-sd folder, default the zoo's) and
    write the folder `out` (ControlNetModel at its root, train_info.json, train_log.csv)."""
    from accelerate import Accelerator

    from diffusers.training_utils import EMAModel

    accelerator = Accelerator()
    dev = accelerator.device
    base = Path(base or zoo.ASSETS / "tiny-sd")
    pipe, noise_sched, scale = frozen_tiny_sd(base, dev)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer

    work = fresh_workdir(out)
    t_start, cpu_start = time.time(), time.process_time()
    log_rows = []

    # data: images -> VAE posterior (mean, std), masks -> control images, captions -> rows
    t0 = time.time()
    items, means, stds = encoded_dataset(cfg, vae, dev, accelerator)
    masks = torch.stack([it["mask"] for it in items])                     # (N, 1, 64, 64)
    caps, index, emb = caption_bank(tokenizer, text_encoder, dev)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    rows, own = training_captions([it["attributes"] for it in items], cfg, gen)
    cap_idx = torch.tensor([index[""] if r is None else index[shapes.caption(r[0], r[1])] for r in rows])
    del items                                                               # ~1 GB of images
    times = {"data_s": round(time.time() - t0, 1)}

    controlnet = build_controlnet(unet, cfg).to(dev)
    params = list(controlnet.parameters())
    ema = EMAModel(params, decay=cfg.ema_decay)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup, cfg.steps))
    controlnet, opt = accelerator.prepare(controlnet, opt)
    unet_acp = noise_sched.alphas_cumprod.to(dev)
    controlnet.train()
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="controlnet", disable=not accelerator.is_local_main_process)
    for step in bar:
        B = cfg.batch
        idx = torch.randint(0, len(means), (B,), generator=gen)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        eps = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (B,), generator=gen)
        cond = emb[cap_idx[idx]].to(dev)                                   # (B, L, D)
        control = zoo.control_image(masks[idx]).to(dev)                    # (B, 3, 64, 64)
        z0, eps, t = z0.to(dev), eps.to(dev), t.to(dev)
        zt = q_sample(unet_acp, z0, eps, t)                                  # q(z_t | z_0)
        down, mid = controlnet(zt, t, encoder_hidden_states=cond, controlnet_cond=control,
                               return_dict=False)
        pred = unet(zt, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, eps)
        optimizer_step(accelerator, loss, params, opt, sched, ema)
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log_rows.append(("controlnet", step, round(loss.item(), 6), sched.get_last_lr()[0],
                             round(time.time() - t_start, 1)))
    ema.copy_to(params)
    times["controlnet_s"] = round(time.time() - t0, 1)
    controlnet = accelerator.unwrap_model(controlnet).eval()

    controlnet.save_pretrained(work, safe_serialization=True)
    write_train_log(work / "train_log.csv", log_rows)
    info = {
        "model": "tiny-controlnet",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "base": zoo.base_record(base, "tiny-controlnet"),
        "control": "mask",
        "params": {"controlnet": count(controlnet),
                   "conditioning_encoder": count(controlnet.controlnet_cond_embedding),
                   "unet_frozen": count(unet)},
        "captions": {"own": round(float(torch.tensor(own).float().mean()), 3),
                     "empty": round(float((cap_idx == index[""]).float().mean()), 3)},
        "times_s": times | {"total_s": round(time.time() - t_start, 1),
                            "cpu_s": round(time.process_time() - cpu_start, 1)},
        "hardware": hardware(accelerator),
        "versions": versions(),
        "final_loss": {"controlnet": log_rows[-1][2]},
    }
    return publish(work, out, info)
