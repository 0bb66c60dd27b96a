"""Lab 05 (VAE latent space): the reference equals what the diffusers pipelines do on tiny-sd,
passes its checks, and every check is proven able to fail: each planted bug below fails with
its specific hint."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.utils.torch_utils import randn_tensor

from helpers.checks import lab05_vae_latents as checks
from labtools import checker, write_pristine_starter
from helpers.checks._core import CheckFailed
from helpers.solutions import lab05_vae_latents as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["encode", "decode", "estimate_scaling_factor", "compression_ratio"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

def test_exercise_names_in_order():
    assert ref.__all__ == NAMES
    assert checks.LAB == "lab05"


def test_checks_use_tiny_sd_vae():
    assert (checks.TINY_SD_VAE / "diffusion_pytorch_model.safetensors").exists()
    vae, _ = checks._tiny_sd_vae()
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4  # factor 8


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, seed):
    run(name, getattr(ref, name), seed)


@pytest.fixture(scope="module")
def pipe():
    from helpers.zoo import load_pipeline

    return load_pipeline("tiny-sd", device="cpu")


@torch.no_grad()
def test_encode_equals_img2img_prepare_latents(pipe):
    """StableDiffusionImg2ImgPipeline.prepare_latents = add_noise(encode(sample=True), noise), with
    the same generator drawing first the posterior sample, then the noise."""
    from helpers import shapes

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    image = shapes.make_batch(2, seed=5)["pixel_values"]  # (2, 3, 64, 64) in [-1, 1]
    t = torch.tensor([600])
    img2img.scheduler.set_timesteps(10)
    theirs = img2img.prepare_latents(image, t, 2, 1, torch.float32, "cpu", torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z = ref.encode(pipe.vae, image, pipe.vae.config.scaling_factor, sample=True, generator=g)
    noise = randn_tensor(z.shape, generator=g, dtype=z.dtype)
    assert torch.equal(img2img.scheduler.add_noise(z, noise, t), theirs)


@torch.no_grad()
def test_decode_equals_pipeline_output(pipe):
    """pipe(output_type="latent") -> decode -> the image processor == pipe(output_type="pt")."""
    kw = dict(prompt=["a large red circle at the center", "a small blue square at the top left"],
              num_inference_steps=3, guidance_scale=7.5)
    latents = pipe(**kw, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    images = pipe(**kw, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    mine = ref.decode(pipe.vae, latents, pipe.vae.config.scaling_factor)
    assert torch.equal((mine / 2 + 0.5).clamp(0, 1), images)


@torch.no_grad()
def test_scaling_factor_estimate_matches_tiny_sd_config(pipe):
    """1 / std of sampled training latents is what helpers.train stored (24000 images there,
    256 here: within 4%; 1.5% at the time of writing)."""
    from helpers import shapes

    x = shapes.make_batch(256, seed=0, split="train")["pixel_values"]
    z = ref.encode(pipe.vae, x, 1.0, sample=True, generator=torch.Generator().manual_seed(0))
    s = ref.estimate_scaling_factor(z)
    assert abs(s / pipe.vae.config.scaling_factor - 1) < 0.04, (s, pipe.vae.config.scaling_factor)
    scaled = ref.encode(pipe.vae, x, s, sample=True, generator=torch.Generator().manual_seed(0))
    assert abs(scaled.std().item() - 1) < 1e-4
    assert ref.compression_ratio(x.shape[1:], z.shape[1:]) == 48.0


def test_round_trip_is_independent_of_the_factor(pipe):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = ref.decode(pipe.vae, ref.encode(pipe.vae, x, 0.3), 0.3)
        b = ref.decode(pipe.vae, ref.encode(pipe.vae, x, 1.0), 1.0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compression_ratio_examples():
    assert ref.compression_ratio((3, 512, 512), (4, 64, 64)) == 48.0
    assert ref.compression_ratio([3, 1024, 1024], torch.Size([16, 128, 128])) == 12.0
    assert math.isclose(ref.compression_ratio((1, 64, 64), (3, 8, 8)), 64 / 3)


# --------------------------------------------------------------------------- planted bugs: encode

def encode_variant(bug=None):
    def fn(vae, images, scaling_factor, sample=False, generator=None):
        x = images
        if bug == "remap01":
            x = (images + 1) / 2
        elif bug == "remap_again":
            x = images * 2 - 1
        out = vae.encode(x)
        post = out.latent_dist
        if bug == "distribution":
            return post
        if bug == "output":
            return out
        if bug == "raw":
            return post.parameters * scaling_factor
        if bug == "std":
            return post.std * scaling_factor
        use_sample = {"always_mean": False, "always_sample": True}.get(bug, sample)
        if use_sample:
            if bug in ("no_generator", "always_sample"):
                z = post.mean + post.std * torch.randn(post.mean.shape, dtype=post.mean.dtype)
            elif bug == "float32_noise":
                z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(post.mean.dtype)
            else:
                z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator, dtype=post.mean.dtype)
        else:
            z = post.mean
        if bug == "no_scale":
            return z
        if bug == "divide":
            return z / scaling_factor
        if bug == "config":
            return z * vae.config.scaling_factor
        if bug == "set_config":
            vae.register_to_config(scaling_factor=scaling_factor)
            return z * vae.config.scaling_factor
        if bug == "in_place":
            images.mul_(0.5)
        return scaling_factor * z
    return fn


@pytest.mark.parametrize("seed", SEEDS)
def test_encode_correct_variant_passes(seed):
    run("encode", encode_variant(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_scale", "missing scaling factor"),
    ("divide", "you divided by the scaling factor"),
    ("config", "not the scaling_factor argument"),
    ("always_mean", "sample=True was ignored"),
    ("always_sample", "you sampled the posterior, but sample=False"),
    ("no_generator", "not drawn from `generator`"),
    ("std", "posterior's std"),
    ("raw", "raw output"),
    ("distribution", "returned the posterior itself"),
    ("output", "output object"),
    ("remap01", "mapped them to [0, 1]"),
    ("remap_again", "mapped them again"),
    ("set_config", "changed vae.config.scaling_factor"),
    ("in_place", "changed its input `images` in place"),
])
def test_encode_bugs(bug, phrase):
    fails("encode", encode_variant(bug), phrase)


def test_encode_float32_noise_for_float64_fails():
    """Noise drawn in float32 and cast differs from diffusers' float64 draw: caught (float64 case)."""
    with pytest.raises(CheckFailed):
        for seed in (0, 1, 2, 3):
            run("encode", encode_variant("float32_noise"), seed)


# --------------------------------------------------------------------------- planted bugs: decode

def decode_variant(bug=None):
    def fn(vae, latents, scaling_factor):
        if bug == "in_place":
            latents /= scaling_factor
            z = latents
        elif bug == "no_scale":
            z = latents
        elif bug == "multiply":
            z = latents * scaling_factor
        elif bug == "config":
            z = latents / vae.config.scaling_factor
        elif bug == "reciprocal":
            z = (1 / scaling_factor) * latents
        else:
            z = latents / scaling_factor
        if bug == "output":
            return vae.decode(z)
        if bug == "tuple":
            return vae.decode(z, return_dict=False)
        x = vae.decode(z).sample
        return {"clamp": lambda: x.clamp(-1, 1), "to01": lambda: (x / 2 + 0.5).clamp(0, 1),
                "to01_raw": lambda: x / 2 + 0.5}.get(bug, lambda: x)()
    return fn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", [None, "reciprocal"])
def test_decode_correct_variants_pass(bug, seed):
    run("decode", decode_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_scale", "missing scaling factor"),
    ("multiply", "you multiplied by the scaling factor"),
    ("config", "not the scaling_factor argument"),
    ("clamp", "you clipped the images"),
    ("to01", "mapped the images to [0, 1]"),
    ("to01_raw", "mapped the images to [0, 1]"),
    ("in_place", "changed its input `latents` in place"),
    ("output", "output object"),
    ("tuple", "output object"),
])
def test_decode_bugs(bug, phrase):
    fails("decode", decode_variant(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: estimate_scaling_factor

def scale_variant(bug=None):
    def fn(latents):
        z = latents.double()
        return {
            None: lambda: 1 / z.flatten().std().item(),
            "biased": lambda: 1 / z.std(correction=0).item(),                     # LDM appendix D.1: 1 / n
            "tensor": lambda: 1 / latents.float().std(),                          # a 0-d tensor
            "numpy": lambda: np.float64(1 / np.std(latents.double().numpy())),
            "std": lambda: z.std().item(),
            "inv_var": lambda: 1 / z.var().item(),
            "var": lambda: z.var().item(),
            "rms": lambda: 1 / z.pow(2).mean().sqrt().item(),
            "mean_abs": lambda: 1 / z.abs().mean().item(),
            "max_abs": lambda: 1 / z.abs().max().item(),
            "per_channel": lambda: 1 / z.std(dim=(0, 2, 3)),
            "mean_channel_std": lambda: 1 / z.std(dim=(0, 2, 3)).mean().item(),
            "first_image": lambda: 1 / z[0].std().item(),
            "first_channel": lambda: 1 / z[:, 0].std().item(),
            "per_image": lambda: 1 / z.flatten(1).std(dim=1),
            "in_place": lambda: 1 / latents.sub_(latents.mean()).std().item(),
        }[bug]()
    return fn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", [None, "biased", "tensor", "numpy"])
def test_estimate_scaling_factor_correct_variants_pass(bug, seed):
    run("estimate_scaling_factor", scale_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("std", "you returned the std itself"),
    ("inv_var", "you used the variance"),
    ("var", "you returned the variance"),
    ("rms", "root mean square"),
    ("mean_abs", "mean absolute value"),
    ("max_abs", "largest |z|"),
    ("per_channel", "per channel"),
    ("mean_channel_std", "averaged per-channel stds"),
    ("first_image", "first image only"),
    ("first_channel", "first channel only"),
    ("per_image", "per image"),
    ("in_place", "in place"),
])
def test_estimate_scaling_factor_bugs(bug, phrase):
    fails("estimate_scaling_factor", scale_variant(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: compression_ratio

def ratio_variant(bug=None):
    def fn(image_shape, latent_shape):
        C, H, W = image_shape
        c, h, w = latent_shape
        return {
            None: lambda: C * H * W / (c * h * w),
            "numpy": lambda: np.prod(image_shape) / np.prod(latent_shape),
            "tensor": lambda: torch.tensor(float(C * H * W)) / (c * h * w),
            "spatial": lambda: H * W / (h * w),
            "per_side": lambda: H / h,
            "inverted": lambda: c * h * w / (C * H * W),
            "channels": lambda: C / c,
            "sum": lambda: (C + H + W) / (c + h + w),
            "no_latent_channels": lambda: C * H * W / (h * w),
            "floordiv": lambda: (C * H * W) // (c * h * w),
            "string": lambda: f"{C * H * W / (c * h * w)}x",
        }[bug]()
    return fn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bug", [None, "numpy", "tensor"])
def test_compression_ratio_correct_variants_pass(bug, seed):
    run("compression_ratio", ratio_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("spatial", "you counted the pixels only"),
    ("per_side", "downsampling factor per side"),
    ("inverted", "inverted"),
    ("channels", "channels only"),
    ("sum", "you added the dimensions"),
    ("no_latent_channels", "ignored the latent's channels"),
    ("floordiv", "integer division"),
    ("string", "expected a number"),
])
def test_compression_ratio_bugs(bug, phrase):
    fails("compression_ratio", ratio_variant(bug), phrase)


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name,answer", [
    ("encode", lambda *a, **k: torch.zeros(2, 4, 8, 8)),
    ("decode", lambda *a, **k: torch.zeros(2, 3, 64, 64)),
    ("estimate_scaling_factor", lambda *a, **k: 0.18215),
    ("compression_ratio", lambda *a, **k: 48.0),
])
def test_hard_coded_answer_fails(name, answer):
    for seed in (0, 1, 2):
        with pytest.raises(CheckFailed):
            run(name, answer, seed)


@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab05", tmp_path, monkeypatch)


def test_exercise_falls_back_to_the_reference(pristine_starters, capsys):
    from helpers.exercise import exercise

    ex = exercise("lab05", seed=0)
    assert all(ex.origin[n] == "reference" for n in NAMES)
    assert ex.compression_ratio((3, 512, 512), (4, 64, 64)) == 48.0


# --------------------------------------------------------------------------- helpers the notebook uses

def test_count_forwards_counts_calls_and_removes_its_hook():
    from helpers.memory import count_forwards

    layer = torch.nn.Linear(2, 2)
    with count_forwards(layer) as calls:
        for _ in range(3):
            layer(torch.zeros(1, 2))
    assert calls.n == 3
    layer(torch.zeros(1, 2))  # outside the block: not counted, no hook left
    assert calls.n == 3 and not layer._forward_hooks
    with pytest.raises(RuntimeError):
        with count_forwards(layer) as calls:
            layer(torch.zeros(1, 2))
            raise RuntimeError("boom")
    assert calls.n == 1 and not layer._forward_hooks  # removed after an error too
