"""tiny-sd3: a flow-matching Stable Diffusion 3 pipeline for the shapes world.

    python -m helpers.train tiny-sd3 [--out DIR] [--seed 0] [--quick] [--threads 1] [--steps N]
    python -m helpers.train.card helpers/assets/tiny-sd3           (measure, write the card)

A complete `StableDiffusion3Pipeline` folder, loaded by `StableDiffusion3Pipeline.from_pretrained`:
  - transformer: a diffusers `SD3Transformer2DModel` (the MMDiT of Esser et al. 2024): the 4x8x8
    latent in 2x2 patches (16 image tokens), text tokens and image tokens in ONE joint attention
    per block, each stream with its own weights; timestep + pooled text through adaLN-Zero;
  - text_encoder, text_encoder_2: `CLIPTextModelWithProjection`, both tiny-sd's CLIP text
    encoder (frozen, the same weights) with an identity `text_projection`; SD3 reads the
    penultimate hidden states (16 tokens x 64, the two concatenated: 128 wide) and the pooled,
    projected EOS state (64 + 64 = 128, `pooled_projection_dim`);
  - text_encoder_3 = tokenizer_3 = None (SD3 allows dropping T5): the pipeline then fills the
    T5 slot with `max_sequence_length` (default 256) zero vectors of width
    `joint_attention_dim` (128 here, = the CLIP width, so CLIP needs no padding);
  - vae: tiny-sd's VAE weights, with SD3's latent normalisation in its config:
    z = (E(x) - shift_factor) * scaling_factor (both measured on the training latents);
  - scheduler: `FlowMatchEulerDiscreteScheduler` (shift 3.0 like SD3).

Training (Esser et al. 2024, sec. 2-3, rectified flow): x_sigma = (1 - sigma) x_0 + sigma eps,
the transformer at timestep 1000 sigma predicts the velocity eps - x_0 (MSE), with sigma drawn
logit-normally (sigmoid of N(0, 1), SD3's choice: more training in the middle of the path);
10% of captions dropped to "" for classifier-free guidance; AdamW, warm-up then cosine, EMA.

The zero "T5" tokens: the pipeline's N zero tokens are identical at every layer (each is
processed by the same per-token weights and attends to the same keys), so in attention they
act exactly like ONE such token whose logit is raised by log N. Training uses one zero token
with that log N bias (`CountedZeroTokens`), N drawn per sample (mostly the pipeline's default
256, also 0 and other counts), so the model is exactly what the pipeline computes at
`max_sequence_length=N` for any of them, and 16x cheaper to train. The labs call it with
`max_sequence_length=0` (no T5 tokens: fast on a CPU); the card measures both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers import evaluate, shapes, zoo
from helpers.train.core import (Run, cached, config_record, count, cpu_time, encoded_dataset, frozen_tiny_sd,
                                make_optimizer, measured_by, optimizer_step, pct, pool, posterior_sample,
                                safetensors_bytes)

NAME = "tiny-sd3"
WORKERS = 1
T5_DEFAULT = 256   # StableDiffusion3Pipeline.__call__'s max_sequence_length


@dataclass
class TinySD3Config:
    seed: int = 0
    hidden: int = 96             # caption_projection_dim = heads x head_dim
    heads: int = 3
    layers: int = 4
    patch: int = 2
    data_seed: int = 0           # the shapes stream tiny-sd was trained on
    n_train_images: int = 8_000
    steps: int = 4_000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    logit_mean: float = 0.0      # sigma = sigmoid(N(logit_mean, logit_std^2))  (SD3, sec. 3.1)
    logit_std: float = 1.0
    p_default_tokens: float = 0.5   # share of samples trained with the pipeline's 256 zero T5 tokens
    p_no_tokens: float = 0.2        # ... with none (max_sequence_length=0); the rest: 1..512
    shift: float = 3.0           # the shipped scheduler's shift (SD3 medium's)

    @classmethod
    def quick(cls):
        """A seconds-long smoke configuration (tests); its weights are not good."""
        return cls(n_train_images=64, steps=4, batch=8, warmup=2)


Config = TinySD3Config


# ------------------------------------------------------------------------------ the parts

def build_transformer(cfg: TinySD3Config, text_width: int = 128, pooled_width: int = 128,
                      latent_size: int = 8, latent_channels: int = 4):
    """A fresh SD3Transformer2DModel (MMDiT) for 4x8x8 latents, initialised like SD3's / DiT's:
    xavier linears, adaLN modulations and the final projection zeroed (every block starts as
    the identity)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(cfg.seed)
    model = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=cfg.patch, in_channels=latent_channels,
        out_channels=latent_channels, num_layers=cfg.layers, attention_head_dim=cfg.hidden // cfg.heads,
        num_attention_heads=cfg.heads, joint_attention_dim=text_width, caption_projection_dim=cfg.hidden,
        pooled_projection_dim=pooled_width, pos_embed_max_size=latent_size // cfg.patch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
        for name, m in model.named_modules():
            if name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear")) or name == "proj_out":
                torch.nn.init.zeros_(m.weight)
                torch.nn.init.zeros_(m.bias)
    return model


def clip_with_projection(text_encoder):
    """tiny-sd's CLIPTextModel as a CLIPTextModelWithProjection (SD3's text-encoder class):
    the same weights, an identity text_projection (pooled output = the final EOS state)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    conf = CLIPTextConfig.from_dict(text_encoder.config.to_dict() | {"architectures": ["CLIPTextModelWithProjection"],
                                                                     "projection_dim": text_encoder.config.hidden_size})
    model = CLIPTextModelWithProjection(conf)
    src = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    model.text_model.load_state_dict(src)                              # strict: every weight
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(conf.hidden_size))
    return model.requires_grad_(False).eval()


@torch.no_grad()
def sd3_caption_bank(tokenizer, text_encoder):
    """Every training caption and "", encoded as StableDiffusion3Pipeline.encode_prompt does with
    two identical CLIP encoders and no T5 tokens: (index {caption: row}, tokens (N, L, 2D), pooled (N, 2D))."""
    caps = [shapes.caption(a, t) for a in shapes.all_attributes("train")
            for t in range(len(shapes.TEMPLATES))] + [""]
    ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    toks, pooled = [], []
    for i in range(0, len(ids), 256):
        out = text_encoder(ids[i:i + 256], output_hidden_states=True)
        toks.append(out.hidden_states[-2])          # the penultimate layer, as the pipeline reads it
        pooled.append(out.text_embeds)
    toks, pooled = torch.cat(toks), torch.cat(pooled)
    return {c: i for i, c in enumerate(caps)}, torch.cat([toks, toks], -1), torch.cat([pooled, pooled], -1)


class CountedZeroTokens:
    """JointAttnProcessor2_0 with one additive logit bias per sample on the LAST context token:
    log N makes one zero T5 token attend like N identical ones (-inf: like none). Training only."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, token_bias=None):
        B, n_img = hidden_states.shape[:2]
        d = attn.heads

        def heads(x):
            return x.view(B, -1, d, x.shape[-1] // d).transpose(1, 2)

        q = torch.cat([heads(attn.to_q(hidden_states)), heads(attn.add_q_proj(encoder_hidden_states))], 2)
        k = torch.cat([heads(attn.to_k(hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))], 2)
        v = torch.cat([heads(attn.to_v(hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))], 2)
        mask = torch.zeros(B, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        mask[:, 0, 0, -1] = token_bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(B, -1, q.shape[1] * q.shape[-1])
        img, ctx = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ctx = attn.to_add_out(ctx)
        return attn.to_out[1](attn.to_out[0](img)), ctx


def token_counts(cfg, B, gen) -> torch.Tensor:
    """How many zero T5 tokens each sample of a batch stands for (0 .. 512)."""
    u = torch.rand(B, generator=gen)
    other = torch.exp(torch.rand(B, generator=gen) * math.log(512)).floor()
    n = torch.where(u < cfg.p_default_tokens, torch.full((B,), float(T5_DEFAULT)), other)
    return torch.where(u > 1 - cfg.p_no_tokens, torch.zeros(B), n)


# ------------------------------------------------------------------------------ training

def train(out: Path, cfg: TinySD3Config, base: str | None = None) -> dict:
    """Train the MMDiT on tiny-sd's (`base`, default the zoo's) VAE latents and frozen CLIP
    states with the rectified-flow objective; write the pipeline folder `out`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    run = Run(out)
    dev = run.device
    base = Path(base or zoo.ASSETS / "tiny-sd")
    sd, _, _ = frozen_tiny_sd(base, dev)
    text_encoder = clip_with_projection(sd.text_encoder).to(dev)
    with run.timed("data_s"):
        items, means, stds = encoded_dataset(cfg, sd.vae, dev, run.accelerator)
        index, toks, pooled = sd3_caption_bank(sd.tokenizer, text_encoder)
        cap_idx = torch.tensor([index[it["caption"]] for it in items])
        del items
        empty = index[""]
    # SD3's latent normalisation: z = (E(x) - shift) * scale, unit variance (posterior samples)
    shift_factor = float(means.mean())
    scaling_factor = float(1 / math.sqrt(float((means - shift_factor).pow(2).mean() + stds.pow(2).mean())))

    model = build_transformer(cfg, text_width=toks.shape[-1], pooled_width=pooled.shape[-1],
                              latent_size=means.shape[-1], latent_channels=means.shape[1]).to(dev)
    model.set_attn_processor(CountedZeroTokens())
    params = list(model.parameters())
    opt, sched, ema = make_optimizer(params, cfg.lr, 0.0, cfg.warmup, cfg.steps, cfg.ema_decay)
    model, opt = run.accelerator.prepare(model, opt)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    zero_tok = torch.zeros(1, 1, toks.shape[-1])
    model.train()
    with run.timed("mmdit_s"):
        bar = run.progress(range(cfg.steps), "mmdit")
        for step in bar:
            B = cfg.batch
            idx = torch.randint(0, len(means), (B,), generator=gen)
            x0 = (posterior_sample(means, stds, idx, 1.0, gen) - shift_factor) * scaling_factor  # (B, 4, 8, 8)
            rows = cap_idx[idx].clone()
            rows[torch.rand(B, generator=gen) < cfg.cond_dropout] = empty    # "" for CFG
            noise = torch.randn(x0.shape, generator=gen)
            sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(B, generator=gen))  # logit-normal
            s = sigma.view(B, 1, 1, 1)
            xs = (1 - s) * x0 + s * noise                                    # the straight path
            target = noise - x0                                              # its velocity
            ctx = torch.cat([toks[rows], zero_tok.expand(B, 1, -1)], 1)      # CLIP tokens + one zero token
            n = token_counts(cfg, B, gen)
            bias = torch.where(n > 0, n.clamp(min=1).log(), torch.full((B,), float("-inf")))
            pred = model(hidden_states=xs.to(dev), encoder_hidden_states=ctx.to(dev),
                         pooled_projections=pooled[rows].to(dev), timestep=(sigma * 1000).to(dev),
                         joint_attention_kwargs={"token_bias": bias.to(dev)}).sample
            loss = F.mse_loss(pred, target.to(dev))
            optimizer_step(run.accelerator, loss, params, opt, sched, ema)
            if step % 20 == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                run.log("mmdit", step, loss.item(), sched.get_last_lr()[0])
        ema.copy_to(params)
    model = run.accelerator.unwrap_model(model).eval()
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    model.set_attn_processor(JointAttnProcessor2_0())

    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", local_files_only=True)
    vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)
    pipe = StableDiffusion3Pipeline(
        transformer=model.cpu(), scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift),
        vae=vae, text_encoder=text_encoder.cpu(), tokenizer=sd.tokenizer,
        text_encoder_2=text_encoder.cpu(), tokenizer_2=sd.tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(run.work, safe_serialization=True)
    info = {
        "model": NAME,
        "config": config_record(cfg),
        "base": zoo.base_record(base, NAME),
        "latents": {"shift_factor": shift_factor, "scaling_factor": scaling_factor},
        "params": {"transformer": count(model)},
        "tokens": {"image": (means.shape[-1] // cfg.patch) ** 2, "clip": sd.tokenizer.model_max_length},
    }
    return run.finish(info, final_loss={"mmdit": run.last_loss("mmdit")})


# ---------------------------------------------------------------------------- measuring

GUIDANCE = (1.0, 2.0, 4.0, 7.0)
STEPS = (1, 2, 4, 8, 16, 25)


def _load(folder):
    from diffusers import StableDiffusion3Pipeline
    p = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p, zoo.load_pipeline("tiny-sd", device="cpu")


def _job(folder, job):
    torch.set_num_threads(1)
    sd3, sd = cached(NAME, folder, _load)
    if job["model"] == "tiny-sd3":
        acc = evaluate.judge_accuracy(sd3, n=job["n"], guidance_scale=job["g"], steps=job["s"], split=job["split"],
                                      max_sequence_length=job.get("t5", 0))
    else:
        acc = evaluate.judge_accuracy(sd, n=job["n"], guidance_scale=job["g"], steps=job["s"],
                                      scheduler="DPM++ 2M", split=job["split"])
    print(f"{job} -> {acc}", flush=True)
    return acc


def measure(folder: Path, quick=False, n=128, n_heldout=96, workers=WORKERS) -> dict:
    """tiny-sd3's judge accuracy over guidance (25 steps) and steps (at its best guidance),
    beside tiny-sd (DPM++ 2M, its best guidance 4 from its card) at the same steps; the
    pipeline's default 256 zero T5 tokens against none; parameters and FLOPs per step."""
    folder = Path(folder)
    if quick:
        n, n_heldout = 8, 8
    grid_g, grid_s = ((4.0,), (2, 25)) if quick else (GUIDANCE, STEPS)
    t0 = time.perf_counter()
    m = {"n_prompts": n, "n_heldout_prompts": n_heldout, "sd_scheduler": "DPM++ 2M",
         "guidance": {}, "steps": {"tiny-sd3": {}, "tiny-sd": {}}}
    jobs = [dict(model="tiny-sd3", g=g, s=25, n=n, split="train") for g in grid_g]
    for j, r in zip(jobs, pool(_job, folder, jobs, workers)):
        m["guidance"][f"{j['g']:g}"] = r
    best = max(grid_g, key=lambda g: m["guidance"][f"{g:g}"]["color"] + m["guidance"][f"{g:g}"]["shape"])
    m["best_guidance"] = best
    jobs = ([dict(model="tiny-sd3", g=best, s=s, n=n, split="train") for s in grid_s]
            + [dict(model="tiny-sd", g=4.0, s=s, n=n, split="train") for s in grid_s])
    for j, r in zip(jobs, pool(_job, folder, jobs, workers)):
        m["steps"][j["model"]][str(j["s"])] = r
    jobs = [dict(model="tiny-sd3", g=best, s=25, n=n, split="train", t5=T5_DEFAULT),
            dict(model="tiny-sd3", g=best, s=25, n=n_heldout, split="heldout")]
    r_default, r_held = pool(_job, folder, jobs, workers)
    m["t5_default"] = r_default
    m["heldout"] = r_held
    sd3, sd = _load(folder)
    tr, unet = sd3.transformer, sd.unet
    z = torch.randn(1, 4, 8, 8)
    t = torch.tensor([500.0])
    pooled = torch.randn(1, tr.config.pooled_projection_dim)

    def ctx(n_t5):
        return torch.randn(1, sd3.tokenizer.model_max_length + n_t5, tr.config.joint_attention_dim)

    c0, c256 = ctx(0), ctx(T5_DEFAULT)
    cu = torch.randn(1, sd.tokenizer.model_max_length, sd.text_encoder.config.hidden_size)
    m["flops_per_forward"] = evaluate.forward_flops(
        {"tiny-sd3": (tr, lambda: tr(z, encoder_hidden_states=c0, pooled_projections=pooled, timestep=t)),
         "tiny-sd3 (256 zero T5 tokens)": (tr, lambda: tr(z, encoder_hidden_states=c256, pooled_projections=pooled,
                                                          timestep=t)),
         "tiny-sd": (unet, lambda: unet(z, t, encoder_hidden_states=cu))})
    m["params"] = {"tiny-sd3": evaluate.param_count(tr), "tiny-sd": evaluate.param_count(unet)}
    m["bytes"] = safetensors_bytes(folder)
    m["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return m


# --------------------------------------------------------------------------------- card

def _cells(r):
    return f"{pct(r['color'])} / {pct(r['shape'])} / {pct(r['size'])} / {pct(r['position'])} / {pct(r['all'])}"


def render_card(folder: Path, m: dict, info: dict) -> str:
    cfg, t, f, p = info["config"], info["times_s"], m["flops_per_forward"], m["params"]
    g_rows = "\n".join(f"| {g} | {_cells(r)} |" for g, r in m["guidance"].items())
    s_rows = "\n".join(f"| {s} | {_cells(m['steps']['tiny-sd3'][s])} | {_cells(m['steps']['tiny-sd'][s])} |"
                       for s in m["steps"]["tiny-sd3"])
    best, d, h = m["best_guidance"], m["t5_default"], m["heldout"]
    b = m["guidance"][f"{best:g}"]
    lat = info["latents"]
    total_bytes = sum(m["bytes"].values())
    samples = cfg["steps"] * cfg["batch"]
    return f"""# tiny-sd3

A flow-matching Stable Diffusion 3 pipeline for the shapes world: a diffusers
`StableDiffusion3Pipeline` folder (MMDiT `SD3Transformer2DModel`, two `CLIPTextModelWithProjection`
encoders, no T5, `FlowMatchEulerDiscreteScheduler`, an `AutoencoderKL`), trained with the
rectified-flow objective of SD3 (Esser et al. 2024).

```python
from diffusers import StableDiffusion3Pipeline
pipe = StableDiffusion3Pipeline.from_pretrained("helpers/assets/tiny-sd3", text_encoder_3=None, tokenizer_3=None)
# or, checksum-verified:
from helpers.zoo import load_pipeline
pipe = load_pipeline("tiny-sd3")
images = pipe("a large red circle at the top left", num_inference_steps=25, guidance_scale={best:g},
              max_sequence_length=0, output_type="pt").images
```

Every number below was measured by `{measured_by(m)} helpers/assets/tiny-sd3`.

## What is in the folder

- `transformer/`: `SD3Transformer2DModel`, {cfg['layers']} joint blocks of width {cfg['hidden']} ({cfg['heads']} heads),
  {cfg['patch']}x{cfg['patch']} patches of the 4x8x8 latent ({info['tokens']['image']} image tokens),
  `joint_attention_dim` 128, `pooled_projection_dim` 128; {p['tiny-sd3']:,} parameters.
  Initialised like SD3/DiT (adaLN modulations and the output projection zeroed).
- `text_encoder/`, `text_encoder_2/`: tiny-sd's CLIP text encoder (frozen, the same weights in
  both) as `CLIPTextModelWithProjection` with an identity projection. The pipeline reads the
  penultimate hidden states ({info['tokens']['clip']} tokens x 64 from each, concatenated: 128 wide) and the pooled,
  projected EOS states (64 + 64 = 128). SD3 uses CLIP-L and OpenCLIP bigG here; ours are twins,
  so the two halves of each text token are equal.
- No `text_encoder_3` (T5): the pipeline then puts `max_sequence_length` zero tokens (256 by
  default) after the CLIP tokens. They carry no text; N identical tokens attend like one token
  with its logit raised by log N, so training used one zero token with that bias, for N = 256
  (half the samples), 0 and other counts: the model is trained for the default and for
  `max_sequence_length=0`, which the labs use (no T5 tokens: {evaluate.human(f['tiny-sd3'])} FLOPs per
  call instead of {evaluate.human(f['tiny-sd3 (256 zero T5 tokens)'])}).
- `vae/`: tiny-sd's VAE weights with SD3's latent normalisation in its config,
  z = (E(x) - shift_factor) x scaling_factor: shift_factor {lat['shift_factor']:.4f}, scaling_factor
  {lat['scaling_factor']:.4f}, measured on the training latents (unit variance).
- `scheduler/`: `FlowMatchEulerDiscreteScheduler`, shift {cfg['shift']:g} (SD3 medium's).

Weights: {total_bytes / 1e6:.2f} MB of float32 safetensors in all (the VAE and the text encoders are
copies of tiny-sd's; train_info.json records their sha256 as the base).

## Judge accuracy

{m['n_prompts']} prompts from the training split. Cells: colour / shape / size / position / all four.
Without T5 tokens (`max_sequence_length=0`) unless said.

Guidance, 25 steps:

| guidance | tiny-sd3 |
|---|---|
{g_rows}

Best guidance {best:g} (by colour + shape): colour {pct(b['color'])}, shape {pct(b['shape'])}. With the
pipeline's default 256 zero T5 tokens at the same setting: colour {pct(d['color'])}, shape {pct(d['shape'])},
all {pct(d['all'])}. Held-out colour/shape pairs ({m['n_heldout_prompts']} prompts): colour {pct(h['color'])},
shape {pct(h['shape'])}, all {pct(h['all'])}.

Steps, tiny-sd3 at guidance {best:g} (Euler, the flow's own sampler) against tiny-sd at guidance 4
({m['sd_scheduler']}):

| steps | tiny-sd3 | tiny-sd |
|---|---|---|
{s_rows}

## Cost

| | tiny-sd3 (`SD3Transformer2DModel`) | tiny-sd (`UNet2DConditionModel`) |
|---|---|---|
| parameters | {p['tiny-sd3']:,} | {p['tiny-sd']:,} |
| FLOPs per denoiser call, one image | {evaluate.human(f['tiny-sd3'])} (no T5 tokens); {evaluate.human(f['tiny-sd3 (256 zero T5 tokens)'])} (256) | {evaluate.human(f['tiny-sd'])} |
| FLOPs per sampling step with CFG (2 calls) | {evaluate.human(2 * f['tiny-sd3'])} | {evaluate.human(2 * f['tiny-sd'])} |

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, a multiply-add = 2 FLOPs, attention included).

## Training

`python -m helpers.train tiny-sd3 --seed {cfg['seed']}`. {cfg['n_train_images']:,} images of the shapes world's train
split, encoded once by tiny-sd's VAE (a posterior sample at every step, normalised as above);
captions encoded once by the frozen text encoder, {int(100 * cfg['cond_dropout'])}% dropped to "" for
classifier-free guidance. Rectified flow: x_sigma = (1 - sigma) x_0 + sigma eps, target eps - x_0,
timestep 1000 sigma, sigma = sigmoid(N({cfg['logit_mean']:g}, {cfg['logit_std']:g}^2)) (SD3's logit-normal sampling).
{cfg['steps']:,} steps x batch {cfg['batch']} = {samples:,} samples; AdamW lr {cfg['lr']:g}, warm-up {cfg['warmup']},
cosine to 10%, gradient clipping 1.0, EMA {cfg['ema_decay']}.
Hardware: {info['hardware']}. Time: {t['total_s'] / 60:.1f} min in all ({t['mmdit_s'] / 60:.1f} min of training), while
other work shared the machine{cpu_time(t)}. Versions: {", ".join(f"{k} {v}" for k, v in info['versions'].items())}.
Final loss {info['final_loss']['mmdit']:.4f} (velocity MSE; the curve is in `train_log.csv`).
Measuring this card took {m['eval_seconds'] / 60:.1f} min.

## Limits

A 64x64 world with {info['tokens']['image']} image tokens: SD3's resolution shift and FLUX's dynamic shift
exist for thousands of tokens, so here they only move the sampling schedule (Lab 12 measures
what that does). The text encoders are frozen twins of tiny-sd's, so tiny-sd3 differs from
tiny-sd in the denoiser, the objective and the sampler, not in what the text says.
"""
