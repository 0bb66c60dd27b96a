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
from labtools import checker
from helpers.checks._core import CheckFailed
from helpers.solutions import lab05_vae_latents as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["encode", "decode", "estimate_scaling_factor", "compression_ratio", "blend_v", "blend_h", "tiled_decode"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

def test_checks_use_tiny_sd_vae():
    assert (checks.TINY_SD_VAE / "diffusion_pytorch_model.safetensors").exists()
    vae, _ = checks._tiny_sd_vae()
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4  # factor 8


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
            "float32": lambda: 1 / latents.float().flatten().std().item(),
            "two_pass": lambda: float(1 / math.sqrt(((z - z.mean()) ** 2).sum().item() / (z.numel() - 1))),
            "per_channel_inverse_mean": lambda: (1 / z.std(dim=(0, 2, 3))).mean().item(),
            "tensor": lambda: 1 / latents.float().std(),                          # a 0-d tensor
            "numpy": lambda: np.float64(1 / np.std(latents.double().numpy(), ddof=1)),  # numpy: biased unless ddof=1
            "numpy_biased": lambda: np.float64(1 / np.std(latents.double().numpy())),
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
@pytest.mark.parametrize("bug", [None, "tensor", "numpy", "float32", "two_pass"])
def test_estimate_scaling_factor_correct_variants_pass(bug, seed):
    run("estimate_scaling_factor", scale_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("biased", "you divided by n (the biased std"),
    ("numpy_biased", "you divided by n (the biased std"),
    ("per_channel_inverse_mean", "averaged per-channel scaling factors"),
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


# --------------------------------------------------------------------------- blend_v, blend_h, tiled_decode

def test_blends_equal_diffusers_on_the_lab_s_seams():
    """The reference blends equal AutoencoderKL.blend_v / blend_h (which write into b), a short
    edge tile and an extent larger than both tiles included."""
    from diffusers import AutoencoderKL

    g = torch.Generator().manual_seed(0)
    for ha, hb, e in [(8, 8, 2), (8, 3, 5), (2, 6, 4), (5, 5, 0), (16, 16, 16)]:
        a, b = torch.randn(2, 3, ha, 7, generator=g), torch.randn(2, 3, hb, 7, generator=g)
        torch.testing.assert_close(ref.blend_v(a, b, e), AutoencoderKL.blend_v(None, a.clone(), b.clone(), e))
        at, bt = a.transpose(2, 3), b.transpose(2, 3)
        torch.testing.assert_close(ref.blend_h(at, bt, e), AutoencoderKL.blend_h(None, at.clone(), bt.clone(), e))


def test_tiled_decode_equals_diffusers_on_tiny_sd(pipe):
    vae = pipe.vae
    z = torch.randn(1, 4, 14, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref.tiled_decode(vae, z), vae.tiled_decode(z).sample, atol=1e-5, rtol=1e-5)


def blend_variant(axis, bug=None):
    """blend_v (axis "v") or blend_h ("h") written the ways a learner might: diffusers' loop, vectorised
    forms (float32 or float64 weights, lerp, in place), and planted bugs."""
    def fn(a, b, blend_extent):
        if axis == "h":  # the same code on transposed tiles
            out = blend_variant("v", bug)(a.transpose(2, 3), b.transpose(2, 3), blend_extent)
            return None if out is None else out.transpose(2, 3)
        e = blend_extent if bug == "no_clamp" else min(a.shape[2], b.shape[2], blend_extent)
        if bug in (None, "in_place_none"):  # diffusers' loop, in place
            for y in range(e):
                b[:, :, y, :] = a[:, :, -e + y, :] * (1 - y / e) + b[:, :, y, :] * (y / e)
            return None if bug == "in_place_none" else b
        if bug == "in_place_a":
            a.mul_(1.0)
            a[:, :, 0] += 1
            return blend_variant("v")(a, b, blend_extent)
        y = torch.arange(e, dtype=torch.float32 if bug == "float32_weights" else torch.float64).view(1, 1, -1, 1)
        w = {"swapped": 1 - y / max(e, 1), "ramp_plus_one": (y + 1) / (e + 1), "ramp_minus_one": y / max(e - 1, 1),
             "ramp_shift": (y + 1) / max(e, 1)}.get(bug, y / max(e, 1)).to(b.dtype)
        rows = {"first_rows": a[:, :, :e], "reversed": a[:, :, a.shape[2] - e:].flip(2),
                "minus_slice": a[:, :, -e:]}.get(bug, a[:, :, a.shape[2] - e:])
        out = b if bug == "vector_in_place" else b.clone()
        if bug == "lerp":
            out[:, :, :e] = torch.lerp(rows, b[:, :, :e], w)
        elif bug == "complement":
            out[:, :, :e] = rows * ((e - y) / max(e, 1)).to(b.dtype) + b[:, :, :e] * w
        else:
            out[:, :, :e] = rows * (1 - w) + b[:, :, :e] * w
        return out
    return fn


EQUIVALENT_BLENDS = [None, "float32_weights", "lerp", "complement", "vector_in_place"]


@pytest.mark.parametrize("axis", ["v", "h"])
@pytest.mark.parametrize("bug", EQUIVALENT_BLENDS)
def test_blend_equivalent_forms_pass_30_seeds(axis, bug):
    for seed in range(30):
        run(f"blend_{axis}", blend_variant(axis, bug), seed)


@pytest.mark.parametrize("axis", ["v", "h"])
@pytest.mark.parametrize("bug,phrase", [
    ("swapped", "the weights are swapped"),
    ("ramp_plus_one", "(y + 1) / (e + 1)"),
    ("ramp_minus_one", "not y / (e - 1)"),
    ("ramp_shift", "not (y + 1) / e"),
    ("first_rows", "you read a's FIRST rows"),
    ("reversed", "in reverse order"),
    ("minus_slice", "the WHOLE tensor"),
    ("no_clamp", "clamp it"),
    ("in_place_a", "changed its input `a` in place"),
    ("in_place_none", "returned nothing"),
])
def test_blend_bugs(axis, bug, phrase):
    fails(f"blend_{axis}", blend_variant(axis, bug), phrase)


def test_blend_on_the_wrong_axis_fails():
    fails("blend_h", blend_variant("v"), "blend_h(")  # blend_v's code where blend_h is asked


def tiled_variant(bug=None):
    """tiled_decode as diffusers writes it (its in-place blends), with vae.decode per tile, and planted bugs."""
    def fn(vae, z):
        T, P, r = vae.tile_latent_min_size, vae.tile_sample_min_size, vae.tile_overlap_factor
        stride = int((P if bug == "pixel_stride" else T) * (1 - r))
        extent = int((T if bug == "latent_extent" else P) * r)
        keep = P if bug == "no_crop" else P - extent

        def blend(kind, a, b):  # diffusers' blends write into b (the lab's copy returns a new tensor)
            out = (ref.blend_v if kind == "v" else ref.blend_h)(a, b, extent)
            if bug == "raw_neighbours":
                return out
            b.copy_(out)
            return b

        rows = []
        for i in range(0, z.shape[2], stride):
            row = []
            for j in range(0, z.shape[3], stride):
                tile = z[:, :, i:i + T, j:j + T]
                if bug == "vae_decode":
                    row.append(vae.decode(tile).sample)
                    continue
                if bug != "no_post_quant" and vae.config.use_post_quant_conv:
                    tile = vae.post_quant_conv(tile)
                row.append(vae.decoder(tile))
            rows.append(row)
        result = []
        for i, row in enumerate(rows):
            kept = []
            for j, tile in enumerate(row):
                for kind in ("hv" if bug == "h_first" else "vh"):
                    if kind == "v" and i > 0:
                        tile = blend("v", rows[i - 1][j], tile)
                    if kind == "h" and j > 0:
                        tile = blend("h", row[j - 1], tile)
                kept.append(tile[:, :, :keep, :keep])
            result.append(torch.cat(kept, dim=3))
        out = torch.cat(result, dim=2)
        return type("DecoderOutput", (), {"sample": out})() if bug == "output" else out
    return fn


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("bug", [None, "vae_decode"])
def test_tiled_decode_equivalent_forms_pass(bug, seed):
    run("tiled_decode", tiled_variant(bug), seed)


@pytest.mark.parametrize("first", [0, 10, 20])
def test_tiled_decode_diffusers_form_passes_30_seeds(monkeypatch, first):
    """Seeds 0-29 (three tests of ten, each within the per-test timeout on a busy machine) of random
    VAEs and tile sizes; tiny-sd's case left out (the seeds above run it)."""
    monkeypatch.setattr(checks, "TINY_SD_VAE", checks.TINY_SD_VAE / "absent")
    for seed in range(first, first + 10):
        run("tiled_decode", tiled_variant(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("raw_neighbours", "AFTER their own blending"),
    ("h_first", "left neighbour first"),
    ("no_post_quant", "skipped post_quant_conv"),
    ("latent_extent", "your blend extent is in latents"),
    ("no_crop", "you kept whole tiles"),
    ("pixel_stride", "your stride is in pixels"),
    ("output", "output object"),
])
def test_tiled_decode_bugs(bug, phrase):
    fails("tiled_decode", tiled_variant(bug), phrase, seeds=(0,))


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name,answer", [
    ("encode", lambda *a, **k: torch.zeros(2, 4, 8, 8)),
    ("decode", lambda *a, **k: torch.zeros(2, 3, 64, 64)),
    ("estimate_scaling_factor", lambda *a, **k: 0.18215),
    ("blend_v", lambda a, b, e: b),
    ("blend_h", lambda a, b, e: b),
    ("tiled_decode", lambda vae, z: vae.decode(z).sample),
    ("compression_ratio", lambda *a, **k: 48.0),
])
def test_hard_coded_answer_fails(name, answer):
    for seed in (0, 1, 2):
        with pytest.raises(CheckFailed):
            run(name, answer, seed)


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
