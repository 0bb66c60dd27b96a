"""Teaching tiny-sd a new subject with LoRA (Lab 08): data, the training loop, and the
conversion of our LoRA layers to peft's / diffusers' file format.

    subject = Subject("sks", shape="circle", color="green")    # a word tiny-sd never read,
    data = subject_data(pipe, subject)                           # for a pair it never drew
    encoder = copy.deepcopy(pipe.text_encoder)
    params = inject_lora(encoder, TEXT_TARGETS, rank=4, alpha=4)  # Lab 08's exercise
    log = train_lora(pipe, [(encoder, data)], params, steps=100)

The loop is the core of diffusers' `examples/dreambooth/train_dreambooth_lora.py` (and of
`helpers/train/tiny_sd.py`, which trained tiny-sd): encode images to latents once, then per step
noise them at random timesteps (DDPM eq. 4), predict the noise with the UNet conditioned on
the captions' text embeddings, and step AdamW on the LoRA parameters only, for the loss
|| eps - eps_theta(x_t, t, c) ||^2 (DDPM eq. 14). Like DreamBooth (Ruiz et al. 2023), the
subject's images are mixed with ordinary captioned images of the world ("prior
preservation") so that the rest of what the model knows drifts less.

Several LoRAs can be trained in one loop: each group (text encoder, data) contributes its
own part of the batch, and the frozen UNet runs once on the concatenation. A group's LoRA
only sees its own captions (the mean over the whole batch scales its gradient by a constant,
which Adam's normalisation removes), so this amounts to separate trainings that share the
UNet's compute.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helpers import shapes
from helpers.diffusion import q_sample

# The Linear layers a LoRA adapts. diffusers' SD LoRA scripts target the attention
# projections: "to_q", "to_k", "to_v", "to_out.0" in the UNet, "q_proj", "k_proj", "v_proj",
# "out_proj" in the CLIP text encoder.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

TEMPLATES = ("a {size} {word} at the {position}", "{size} {word}, {position}", "a {word}, {size}, {position}")
"""Caption templates of a subject: the subject's word stands where "{color} {shape}" stood."""


@dataclass(frozen=True)
class Subject:
    """A new word for a (shape, colour) pair: prompts say "a large sks at the top left"."""

    word: str
    shape: str
    color: str

    def caption(self, size: str, position: str, template: int = 0) -> str:
        return TEMPLATES[template % len(TEMPLATES)].format(size=size, word=self.word, position=position)

    def attributes(self, size: str, position: str) -> shapes.Attributes:
        return shapes.Attributes(self.shape, self.color, size, position)


def subject_prompts(subject: Subject, n: int, template: int = 0):
    """n prompts cycling over every (size, position), and the attributes the judge should read."""
    combos = [(s, p) for p in shapes.POSITIONS for s in shapes.SIZES]
    picks = [combos[i % len(combos)] for i in range(n)]
    return [subject.caption(s, p, template) for s, p in picks], [subject.attributes(s, p) for s, p in picks]


@torch.no_grad()
def encode_images(pipe, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) in [-1, 1] -> (N, 4, 8, 8) latents as the UNet sees them (posterior mean
    times the VAE's scaling factor)."""
    vae = pipe.vae
    return vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor


def tokenize(pipe, captions) -> torch.Tensor:
    """(N, L) token ids, padded to the tokenizer's max length, as the pipeline pads prompts; on
    the text encoder's device, ready for it."""
    tok = pipe.tokenizer
    return tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(pipe.text_encoder.device)


def subject_data(pipe, subject: Subject, renders: int = 4, prior: int = 40, seed: int = 0) -> dict:
    """Training data for one subject: `renders` jittered images of every (size, position) of the
    subject, captioned with its word (templates cycling), plus `prior` ordinary images of the
    training world with their captions. Returns "latents" (N, 4, 8, 8), "input_ids" (N, L),
    "captions" and "pixel_values" (N, 3, 64, 64) in [-1, 1]."""
    images, captions = [], []
    combos = [(s, p) for p in shapes.POSITIONS for s in shapes.SIZES]
    for k in range(renders):
        for i, (size, position) in enumerate(combos):
            img, _ = shapes.render(subject.attributes(size, position), seed=seed * 100_003 + k * len(combos) + i)
            images.append(img * 2 - 1)
            captions.append(subject.caption(size, position, template=k + i))
    if prior:
        batch = shapes.make_batch(prior, seed=seed + 7)
        images += list(batch["pixel_values"])
        captions += batch["captions"]
    pixel_values = torch.stack(images)
    return {"latents": encode_images(pipe, pixel_values).cpu(), "input_ids": tokenize(pipe, captions).cpu(),
            "captions": captions, "pixel_values": pixel_values}


def train_lora(pipe, groups, params, steps: int = 100, batch_size: int = 16, lr: float = 5e-3,
               seed: int = 0, log_every: int = 10) -> dict:
    """Train LoRA parameters with the epsilon-prediction loss; deterministic given `seed`.

    Args:
        pipe: the StableDiffusionPipeline (its UNet and scheduler config are used, frozen).
        groups: list of (text_encoder, data): each text encoder (carrying its own LoRA) encodes
            the captions of its data (`subject_data`); each group draws `batch_size` examples
            per step, and the UNet runs once on all groups' examples.
        params: the trainable parameters: LoRA weights injected into the groups' text encoders
            and/or into `pipe.unet` (`inject_lora` returns them); everything else is frozen.
        steps, batch_size, lr: AdamW (no weight decay) steps, examples per group and step,
            learning rate.

    Returns:
        {"losses": per-step mean loss, "log": [(step, loss averaged over the last log_every)],
         "seconds": wall time, "cpu_seconds": this process's CPU time for the loop}.
    """
    from diffusers import DDPMScheduler

    unet = pipe.unet
    device = unet.device
    acp = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.to(device)  # abar_t, (T,)
    T = acp.shape[0]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    trainable = {id(p) for p in params}
    for p in unet.parameters():
        p.requires_grad_(id(p) in trainable)  # the base UNet frozen; a LoRA injected into it not
    unet.train(any(p.requires_grad for p in unet.parameters()))
    for enc, _ in groups:
        enc.train()
    losses, log = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        z0, cond = [], []
        for enc, data in groups:
            idx = torch.randint(0, len(data["latents"]), (batch_size,), generator=gen)
            z0.append(data["latents"][idx])
            cond.append(enc(data["input_ids"][idx].to(device)).last_hidden_state)  # (b, L, D), through the LoRA
        z0 = torch.cat(z0).to(device)  # (B, 4, 8, 8)
        cond = torch.cat(cond)  # (B, L, D)
        B = z0.shape[0]
        noise = torch.randn(z0.shape, generator=gen).to(device)
        t = torch.randint(0, T, (B,), generator=gen).to(device)
        x_t = q_sample(acp, z0, noise, t)  # DDPM eq. 4: sqrt(abar_t) z0 + sqrt(1 - abar_t) noise
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, noise)  # DDPM eq. 14
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            log.append((step + 1, sum(losses[-log_every:]) / log_every))
    for enc, _ in groups:
        enc.eval()
    unet.eval()
    return {"losses": losses, "log": log, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


@torch.no_grad()
def generate_with(pipe, groups, seed: int = 0, guidance_scale: float = 4.0, steps: int = 10) -> list:
    """Images for several (text_encoder, captions) groups in ONE pipeline call.

    Each caption (and the empty negative prompt, as the pipeline does) is encoded by its
    group's text encoder, then the pipeline runs on the prompt embeddings. Image j of every
    group starts from the noise of its own generator seeded `seed + j`, so two groups with the
    same captions (before / after a LoRA) start from the same latents.

    Returns: one tensor (n_g, 3, H, W) in [0, 1] (CPU) per group.
    """
    device = pipe.unet.device
    embeds, negatives, generators, sizes = [], [], [], []
    for encoder, captions in groups:
        ids = tokenize(pipe, list(captions) + [""]).to(device)
        hidden = encoder(ids).last_hidden_state  # (n + 1, L, D)
        embeds.append(hidden[:-1])
        negatives.append(hidden[-1:].expand(len(captions), -1, -1))
        generators += [torch.Generator().manual_seed(seed + j) for j in range(len(captions))]
        sizes.append(len(captions))
    images = pipe(prompt_embeds=torch.cat(embeds), negative_prompt_embeds=torch.cat(negatives),
                  num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                  output_type="pt").images.float().cpu()
    return list(images.split(sizes))


def lora_layers(model):
    """{module name: layer} of every LoRA layer in `model` (anything with base, down and up)."""
    return {n: m for n, m in model.named_modules() if all(hasattr(m, a) for a in ("base", "down", "up"))}


def lora_state_dict(model, fmt: str = "peft") -> dict:
    """The LoRA weights of `model` as a flat {key: tensor} dict.

    fmt="peft": peft's keys, `<module>.lora_A.weight` (down) and `<module>.lora_B.weight` (up),
    what `get_peft_model_state_dict` returns and `save_lora_weights` stores (with a
    "text_encoder." or "unet." prefix). fmt="ours": `<module>.down.weight` / `.up.weight`.
    """
    out = {}
    for name, layer in lora_layers(model).items():
        a, b = ("lora_A", "lora_B") if fmt == "peft" else ("down", "up")
        out[f"{name}.{a}.weight"] = layer.down.weight.detach().clone().contiguous()
        out[f"{name}.{b}.weight"] = layer.up.weight.detach().clone().contiguous()
    return out


def set_lora_scale(model, scale: float) -> None:
    """Multiply every LoRA layer's update by `scale` (scaling = scale * alpha / rank): diffusers'
    "LoRA scale" / `set_adapters(..., adapter_weights=[scale])`."""
    for layer in lora_layers(model).values():
        layer.scaling = scale * layer.alpha / layer.rank


def merged_copy(model, merge):
    """A copy of `model` in which every LoRA layer is replaced by a plain nn.Linear with the
    merged weight `merge(W, down, up, alpha, rank)` (the learner's merge_lora)."""
    out = copy.deepcopy(model)
    for name, layer in lora_layers(out).items():
        lin = layer.base
        with torch.no_grad():
            lin.weight.copy_(merge(lin.weight, layer.down.weight, layer.up.weight, layer.alpha, layer.rank))
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name), child, lin)
    return out


def truncated_lora(model, rank: int):
    """A copy of `model` whose every LoRA update dW = scaling * up @ down is replaced by its best
    rank-`rank` approximation (truncated SVD, Eckart-Young), stored as a rank-`rank` LoRA with
    scaling 1: what tools that "resize" a trained LoRA do."""
    out = copy.deepcopy(model)
    for layer in lora_layers(out).values():
        with torch.no_grad():
            delta = layer.scaling * layer.up.weight @ layer.down.weight  # (d_out, d_in)
            U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
            r = min(rank, S.shape[0])
            dtype = layer.down.weight.dtype
            down = (S[:r, None].sqrt() * Vh[:r]).to(dtype)  # (r, d_in)
            up = (U[:, :r] * S[:r].sqrt()).to(dtype)  # (d_out, r)
        layer.down = torch.nn.Linear(down.shape[1], r, bias=False, dtype=dtype, device=down.device)
        layer.up = torch.nn.Linear(r, up.shape[0], bias=False, dtype=dtype, device=up.device)
        with torch.no_grad():
            layer.down.weight.copy_(down)
            layer.up.weight.copy_(up)
        layer.rank, layer.alpha, layer.scaling = r, float(r), 1.0
    return out


def drawn(result) -> dict:
    """{(colour, shape): count} of what the judge read (None: no shape found)."""
    counts: dict = {}
    for a in result.attributes:
        key = (a.color, a.shape) if a is not None else None
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
