"""Checks of Lab 05 (VAE latent space): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen``: small randomly initialised ``AutoencoderKL``s
(1 to 3 blocks, so factor 1, 2 or 4; 2 to 16 latent channels; with or without the mid-block
attention), random images, latents, scaling factors (never 1, and never the VAE's own config
value, so a missing or misplaced factor cannot pass), and tiny-sd's real VAE (the weights
shipped in ``helpers/assets/tiny-sd/vae``, loaded without ``from_pretrained``). Outputs are
compared with the reference AND with diffusers: ``retrieve_latents(vae.encode(x), generator,
sample_mode) * scaling_factor`` (what ``StableDiffusionImg2ImgPipeline.prepare_latents``
does) and ``vae.decode(latents / scaling_factor, return_dict=False)[0]`` (the line of
``StableDiffusionPipeline.__call__``). When an output matches what a typical bug returns,
the message names the bug. The blends and the tiled decode are compared with diffusers'
``AutoencoderKL.blend_v`` / ``blend_h`` / ``tiled_decode`` themselves, on random tiles, VAEs and
tile sizes, with tolerances scaled to the magnitudes involved (float32 rounding of the weights).
"""
import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
from safetensors.torch import load_file

from helpers.checks._core import (CheckFailed, as_number, assert_close, choice, describe, distinct, randint,
                                 random_seed, uniform)
from helpers.solutions import lab05_vae_latents as ref

LAB = "lab05"

TINY_SD_VAE = Path(__file__).resolve().parents[1] / "assets" / "tiny-sd" / "vae"

# Tolerances. The learner calls the same VAE on the same input as the reference, so the
# tensors agree to a few float32 ulps (z * s vs s * z, latents / s vs (1 / s) * latents,
# posterior.mean vs posterior.mode()); every typical bug below is off by a factor s != 1 or more.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}
TOL_CUDA = dict(atol=1e-4, rtol=1e-3)  # the same kernels run twice; room for non-deterministic ones
# estimate_scaling_factor: the docstring asks for the unbiased std (LDM's code); on the n >= 512
# elements of the large cases the 1 / n estimator is within sqrt(n / (n - 1)) - 1 < 1e-3 of it and
# passes, on the tiny case (6 to 12 elements) it is 4 % or more off and fails, named.
RTOL_SCALE = 2e-3
RTOL_SMALL = 1e-5  # 6 to 12 elements: float32 rounding is 1e-7; the 1 / n estimator is >= 4 % off
RTOL_RATIO = 1e-6  # float32 arithmetic (a tensor of the shapes) is fine

EQ_ENCODE = ("the latents the diffusion model sees: the VAE posterior's mean (sample=False) or a draw from it with "
             "`generator` (sample=True), scaled by the scaling_factor argument (LDM appendix D.1). Read "
             "diffusers' retrieve_latents (its sample_mode 'argmax' and 'sample' branches) and where "
             "StableDiffusionImg2ImgPipeline.prepare_latents scales init_latents.")
EQ_DECODE = ("undo encode's scaling, then decode: the vae.decode line of StableDiffusionPipeline.__call__ (after the "
             "denoising loop, when output_type is not 'latent'); no clipping, no mapping to [0, 1] (the image "
             "processor's postprocess does that afterwards).")
EQ_SCALE = ("LDM (Rombach et al. 2022), appendix D.1: the factor that gives the latents unit "
            "variance; ONE scalar over every element of the unscaled latents (batch, channels, height, width), "
            "from the std with the unbiased n - 1 estimator (torch's default); float32 arithmetic is precise enough.")
EQ_RATIO = ("how many numbers the image holds per number of the latent: every dimension of each shape counts "
            "(channels too, not only LDM's per-side factor f); a float, not necessarily an integer.")


# --------------------------------------------------------------------------- random inputs

def _factor(gen, avoid=()):
    """A scaling factor in [0.15, 0.9] or [1.2, 2.5], at least 0.05 from every value of ``avoid``."""
    while True:
        s = round(uniform(gen, 0.15, 0.9) if randint(gen, 0, 2) else uniform(gen, 1.2, 2.5), 4)
        if all(abs(s - a) > 0.05 for a in avoid):
            return s


def _random_vae(gen, dtype=torch.float32, post_quant_conv=True):
    """A small random AutoencoderKL (factor 1, 2 or 4) and a description; its config's
    scaling_factor is random too (the checks pass another one as the argument)."""
    n = randint(gen, 1, 3)
    channels = tuple(choice(gen, (8, 16)) for _ in range(n))
    c = choice(gen, (2, 3, 4, 4, 8, 16))
    attention = bool(randint(gen, 0, 1))
    config_factor = _factor(gen)
    seed = randint(gen, 0, 2**31 - 1)
    with torch.random.fork_rng(devices=[]):  # the notebook's global RNG is left alone
        torch.manual_seed(seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                            up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=channels,
                            layers_per_block=1, latent_channels=c, norm_num_groups=4, sample_size=32,
                            mid_block_add_attention=attention, scaling_factor=config_factor,
                            use_post_quant_conv=post_quant_conv)
    with torch.no_grad():  # outputs well beyond [-1, 1], so a clipped decode cannot pass
        vae.decoder.conv_out.weight.mul_(3.0)
        vae.decoder.conv_out.bias.mul_(3.0)
    if dtype == torch.float64:
        vae = vae.double()  # not .to(dtype): diffusers' ModelMixin.to warns on any dtype cast
    vae = vae.eval().requires_grad_(False)
    desc = (f"random AutoencoderKL(block_out_channels={channels}, latent_channels={c}, factor {2 ** (n - 1)}, "
            f"config.scaling_factor={config_factor}, {_dt(dtype)})")
    return vae, desc, 2 ** (n - 1)


def _tiny_sd_vae():
    """tiny-sd's real VAE, built from its config and safetensors weights (no from_pretrained:
    no hub code path, and a fresh object on every call, so a learner cannot leave state behind)."""
    config = json.loads((TINY_SD_VAE / "config.json").read_text())
    with torch.random.fork_rng(devices=[]):
        vae = AutoencoderKL.from_config(config)
    vae.load_state_dict(load_file(str(TINY_SD_VAE / "diffusion_pytorch_model.safetensors")))
    return vae.eval().requires_grad_(False), f"tiny-sd's AutoencoderKL (scaling_factor {vae.config.scaling_factor:.6g})"


def _images(gen, batch, height, width, dtype=torch.float32):
    """Smooth random images in [-1, 1]: coarse noise upsampled, plus a little fine noise."""
    coarse = torch.rand((batch, 3, max(1, height // 8), max(1, width // 8)), generator=gen, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand((batch, 3, height, width), generator=gen, dtype=torch.float64)
    return (x.clamp(0, 1) * 2 - 1).to(dtype)


def _dt(dtype):
    return str(dtype).replace("torch.", "")


def _not_tensor(name, got, what):
    """Specific messages for the objects diffusers returns around the tensor."""
    kind = type(got).__name__
    if kind == "DiagonalGaussianDistribution":
        raise CheckFailed(f"Likely bug: you returned the posterior itself.\n{name}: expected a tensor, got a "
                          f"DiagonalGaussianDistribution. Take the tensor out of it the way retrieve_latents "
                          f"does for each sample_mode, then scale it.\nHint: {EQ_ENCODE}")
    if kind in ("AutoencoderKLOutput", "DecoderOutput", "tuple"):
        field = {"AutoencoderKLOutput": ".latent_dist", "DecoderOutput": ".sample"}.get(kind, "[0]")
        raise CheckFailed(f"Likely bug: you returned diffusers' output object, not the tensor inside it.\n{name}: "
                          f"expected a tensor, got {describe(got)}; the {what} is its {field}.")


def _unchanged(name, before, after, what):
    if not torch.equal(before, after):
        raise CheckFailed(f"Likely bug: your function changed its input `{what}` in place.\n{name}: `{what}` differs "
                          f"after the call (an in-place `/=`, `*=`, `.mul_()` or `.clamp_()`?). Build a new tensor "
                          f"(out-of-place arithmetic, not `{what} /= s`): the caller still needs its own tensor.")


# --------------------------------------------------------------------------- encode

def _noise_like(got, mean, std, s):
    """(got / s - mean) / std when that looks like N(0, 1) noise, else None."""
    if not (isinstance(got, torch.Tensor) and got.shape == mean.shape):
        return None
    r = (got.detach().double().cpu() / s - mean.double()) / std.double()
    if not torch.isfinite(r).all():
        return None
    ms, m = float(r.pow(2).mean()), float(r.mean())
    return r if (0.5 < ms < 2.0 and abs(m) < 0.3 and r.numel() >= 64) else None


def _encode_bugs(vae, images, s, sample, seed):
    """(hint, what the bug returns) for the typical encode bugs, on the same inputs."""
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        draw = posterior.sample(torch.Generator().manual_seed(seed))
        z, other = (draw, posterior.mean) if sample else (posterior.mean, draw)
        bugs = [
            ("missing scaling factor: you returned the VAE's own latents z; the diffusion model's latents are "
             "scaled by scaling_factor.", z),
            ("you divided by the scaling factor: encode is the scaling that decode undoes (read prepare_latents).",
             z / s),
            ("you used vae.config.scaling_factor, not the scaling_factor argument (the check passes another one).",
             z * vae.config.scaling_factor),
            ("you returned the posterior's std, not its mean or a sample.", posterior.std * s),
        ]
        if sample:
            bugs.insert(0, ("sample=True was ignored: you returned the posterior mean; draw "
                            "from the posterior with `generator` (retrieve_latents, sample_mode='sample').",
                            other * s))
        pick = (lambda p: p.sample(torch.Generator().manual_seed(seed))) if sample else (lambda p: p.mode())
        bugs += [
            ("the images are already in [-1, 1]: you mapped them to [0, 1] ((x + 1) / 2) before encoding.",
             pick(vae.encode((images + 1) / 2).latent_dist) * s),
            ("the images are already in [-1, 1]: you mapped them again (2x - 1) before encoding.",
             pick(vae.encode(images * 2 - 1).latent_dist) * s),
        ]
    return bugs


def _encode_case(fn, gen, vae, desc, images, s, sample, *, diagnose=True, diffusers_too=True, tol=None):
    """Run the learner's encode on one input and compare (reference, typical bugs, diffusers)."""
    seed = random_seed(gen)
    name = (f"encode(vae=<{desc}>, images {tuple(images.shape)} {_dt(images.dtype)} in [-1, 1], "
            f"scaling_factor={s}, sample={sample}" + (f", generator=torch.Generator().manual_seed({seed}))" if sample
                                                      else ")"))
    x_in = images.clone()
    config_before = vae.config.scaling_factor
    with torch.no_grad():
        got = fn(vae, x_in, s, sample=sample, generator=torch.Generator().manual_seed(seed) if sample else None)
    _unchanged(name, images, x_in, "images")
    if vae.config.scaling_factor != config_before:
        raise CheckFailed(f"Likely bug: your encode changed vae.config.scaling_factor.\n{name}: it was "
                          f"{config_before}, now {vae.config.scaling_factor}. Scale by the "
                          f"argument; leave the VAE's config alone.")
    _not_tensor(name, got, "latent distribution")
    with torch.no_grad():
        expected = ref.encode(vae, images, s, sample=sample,
                              generator=torch.Generator().manual_seed(seed) if sample else None)
    tol = tol or TOL[images.dtype]
    if isinstance(got, torch.Tensor) and got.ndim == 4 and got.shape[1] == 2 * expected.shape[1] \
            and got.shape[0] == expected.shape[0]:
        raise CheckFailed(f"Likely bug: you returned the encoder's raw output (mean and log-variance stacked).\n{name}: "
                          f"expected {tuple(expected.shape)}, got {tuple(got.shape)}: twice the latent channels. "
                          f"The latent_dist of vae.encode's output splits them (see retrieve_latents).\n"
                          f"Hint: {EQ_ENCODE}")
    right = isinstance(got, torch.Tensor) and got.shape == expected.shape and \
        torch.allclose(got.detach().double().cpu(), expected.double().cpu(), **tol)
    bugs = _encode_bugs(vae, images, s, sample, seed) if diagnose and not right else None
    if bugs and isinstance(got, torch.Tensor) and got.shape == expected.shape \
            and not any(torch.allclose(got.detach().double().cpu(), c.double().cpu(), **tol) for _, c in bugs):
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
        r = _noise_like(got, posterior.mean, posterior.std, s)
        if r is not None and not sample:
            raise CheckFailed(f"Likely bug: you sampled the posterior, but sample=False asks for its mean "
                              f"(what retrieve_latents returns for sample_mode='argmax', "
                              f"as StableDiffusionImg2ImgPipeline uses it).\n{name}: (got / scaling_factor - mean) / std looks like N(0, 1) noise.\n"
                              f"Hint: {EQ_ENCODE}")
        if r is not None and sample:
            raise CheckFailed(f"Likely bug: your sample is not drawn from `generator` the way diffusers draws it.\n"
                              f"{name}: (got / scaling_factor - mean) / std is N(0, 1) noise, but not the noise "
                              f"DiagonalGaussianDistribution.sample draws from `generator` (read it in "
                              f"diffusers' autoencoders/vae.py); the same seed must give the same latents "
                              f"as the pipeline's.\nHint: {EQ_ENCODE}")
    assert_close(name, got, expected, **tol, diagnose=bugs, hint=EQ_ENCODE)
    if diffusers_too:
        with torch.no_grad():
            theirs = retrieve_latents(vae.encode(images), generator=torch.Generator().manual_seed(seed),
                                      sample_mode="sample" if sample else "argmax") * s
        assert_close(f"{name} vs diffusers' retrieve_latents(..., sample_mode="
                     f"{'sample' if sample else 'argmax'!r}), scaled", got, theirs, **tol)


def check_encode(fn, gen):
    """Random VAEs (mean, then a seeded sample), factors never 1 nor the config's; tiny-sd's VAE
    with its own factor (mean and sample); float64; slicing on; CUDA when there is one. Compared
    with the reference and with diffusers' retrieve_latents(...) * scaling_factor, as img2img does."""
    # 1. random VAE, the mean, then a sample with a seeded generator
    vae, desc, f = _random_vae(gen)
    size = f * 4 * randint(gen, 2, 3)  # 8 .. 48 pixels, a multiple of the factor
    images = _images(gen, randint(gen, 2, 3), size, f * 4 * randint(gen, 2, 3))
    s = _factor(gen, avoid=(1.0, vae.config.scaling_factor))
    _encode_case(fn, gen, vae, desc, images, s, sample=False)
    _encode_case(fn, gen, vae, desc, images, s, sample=True)
    # 2. tiny-sd's real VAE with its own scaling factor: exactly what the pipelines compute
    if TINY_SD_VAE.exists():
        tiny, tiny_desc = _tiny_sd_vae()
        h, w = 8 * randint(gen, 4, 8), 8 * randint(gen, 4, 8)
        images = _images(gen, 2, h, w)
        for sample in (False, True):
            _encode_case(fn, gen, tiny, tiny_desc, images, tiny.config.scaling_factor, sample=sample,
                         diagnose=not sample)
    # 3. float64, and slicing on (diffusers then encodes one image at a time)
    vae, desc, f = _random_vae(gen, torch.float64)
    images = _images(gen, 3, 8 * f, 8 * f, torch.float64)
    _encode_case(fn, gen, vae, desc, images, _factor(gen, avoid=(1.0, vae.config.scaling_factor)),
                 sample=bool(randint(gen, 0, 1)), diagnose=False)
    vae.enable_slicing()
    _encode_case(fn, gen, vae, desc + " with enable_slicing()", images,
                 _factor(gen, avoid=(1.0, vae.config.scaling_factor)), sample=True, diagnose=False)
    # 4. CUDA, when there is one: the output stays on the VAE's device (a CPU generator, as pipelines pass)
    if torch.cuda.is_available():
        vae, desc, f = _random_vae(gen)
        images = _images(gen, 2, 8 * f, 8 * f)
        _encode_case(fn, gen, vae.cuda(), desc + " on cuda", images.cuda(),
                     _factor(gen, avoid=(1.0, vae.config.scaling_factor)), sample=True, diagnose=False, tol=TOL_CUDA)


# --------------------------------------------------------------------------- decode

def _decode_case(fn, gen, vae, desc, latents, s, *, diagnose=True, pipeline_line=False, tol=None):
    name = (f"decode(vae=<{desc}>, latents {tuple(latents.shape)} {_dt(latents.dtype)} "
            f"(std {latents.std().item():.2f}), scaling_factor={s})")
    z_in = latents.clone()
    with torch.no_grad():
        got = fn(vae, z_in, s)
    _unchanged(name, latents, z_in, "latents")
    _not_tensor(name, got, "image")
    with torch.no_grad():
        expected = ref.decode(vae, latents, s)
    tol = tol or TOL[latents.dtype]
    right = isinstance(got, torch.Tensor) and got.shape == expected.shape and \
        torch.allclose(got.detach().double().cpu(), expected.double().cpu(), **tol)
    bugs = None
    if diagnose and not right:
        with torch.no_grad():
            bugs = [
                ("missing scaling factor: you decoded the scaled latents as they are; undo encode's scaling "
                 "first.", vae.decode(latents).sample),
                ("you multiplied by the scaling factor: decode undoes encode's scaling, it does not apply it again.",
                 vae.decode(latents * s).sample),
                ("you used vae.config.scaling_factor, not the scaling_factor argument (the check passes another one).",
                 vae.decode(latents / vae.config.scaling_factor).sample),
                ("you clipped the images to [-1, 1]: the pipeline's decode returns them unclipped; the image "
                 "processor clips later.", expected.clamp(-1, 1)),
                ("you mapped the images to [0, 1] (x / 2 + 0.5, clipped): that is the image processor's "
                 "postprocess, after decode; decode returns about [-1, 1].", (expected / 2 + 0.5).clamp(0, 1)),
                ("you mapped the images to [0, 1] (x / 2 + 0.5): that is the image processor's postprocess, "
                 "after decode; decode returns about [-1, 1].", expected / 2 + 0.5),
            ]
    assert_close(name, got, expected, **tol, diagnose=bugs, hint=EQ_DECODE)
    if pipeline_line:
        with torch.no_grad():
            theirs = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        assert_close(f"{name} vs diffusers' decode line (StableDiffusionPipeline.__call__)", got, theirs,
                     **tol)


def check_decode(fn, gen):
    """Random VAEs with factors never 1 nor the config's; tiny-sd's VAE with its own factor,
    compared with the pipeline's decode line; float64; slicing on; CUDA when there is one; the
    latents must not be changed in place."""
    vae, desc, f = _random_vae(gen)
    c = vae.config.latent_channels
    s = _factor(gen, avoid=(1.0, vae.config.scaling_factor))
    latents = torch.randn((randint(gen, 2, 3), c, randint(gen, 2, 6), randint(gen, 2, 6)), generator=gen) * 1.5
    _decode_case(fn, gen, vae, desc, latents, s)
    if TINY_SD_VAE.exists():
        tiny, tiny_desc = _tiny_sd_vae()
        latents = torch.randn((2, 4, randint(gen, 4, 8), randint(gen, 4, 8)), generator=gen)  # unit variance
        _decode_case(fn, gen, tiny, tiny_desc, latents, tiny.config.scaling_factor, pipeline_line=True)
    vae, desc, f = _random_vae(gen, torch.float64)
    latents = torch.randn((3, vae.config.latent_channels, 3, 4), generator=gen, dtype=torch.float64)
    vae.enable_slicing()
    _decode_case(fn, gen, vae, desc + " with enable_slicing()", latents,
                 _factor(gen, avoid=(1.0, vae.config.scaling_factor)), diagnose=False)
    if torch.cuda.is_available():  # the output stays on the VAE's device
        vae, desc, f = _random_vae(gen)
        latents = torch.randn((2, vae.config.latent_channels, 3, 3), generator=gen)
        _decode_case(fn, gen, vae.cuda(), desc + " on cuda", latents.cuda(),
                     _factor(gen, avoid=(1.0, vae.config.scaling_factor)), diagnose=False, tol=TOL_CUDA)


# --------------------------------------------------------------------------- estimate_scaling_factor

def _scalar_close(name, got, expected, rtol, bugs, hint):
    if math.isfinite(got) and abs(got - expected) <= rtol * abs(expected):
        return
    lead = ""
    for label, cand in bugs:
        if math.isfinite(cand) and abs(got - cand) <= rtol * abs(cand):
            lead = f"Likely bug: {label}\n"
            break
    shown_got, shown_expected = distinct(got, expected)
    raise CheckFailed(f"{lead}{name}: expected {shown_expected}, got {shown_got} (relative error "
                      f"{abs(got - expected) / abs(expected):.3g}, tolerance {rtol:g}).\nHint: {hint}")


def _random_latents(gen, dtype):
    """(N, c, h, w) unscaled-latent-like values: per-channel means and stds that differ, a
    global offset (so the mean matters), n >= 512 elements."""
    c, h, w = randint(gen, 2, 8), randint(gen, 8, 12), randint(gen, 8, 12)
    N = choice(gen, [n for n in range(4, 10) if n != c])  # a per-image answer cannot pass for a per-channel one
    scale = uniform(gen, 0.8, 8.0)  # SD 1.x latents have std ~5.5, tiny-sd's ~2.3
    means = (torch.rand((1, c, 1, 1), generator=gen, dtype=torch.float64) * 2 - 1) * scale + uniform(gen, 0.3, 1.0) * scale
    stds = (0.3 + torch.rand((1, c, 1, 1), generator=gen, dtype=torch.float64) * 1.5) * scale
    z = means + stds * torch.randn((N, c, h, w), generator=gen, dtype=torch.float64)
    return z.to(dtype)


def _small_latents(gen):
    """A few elements (6 to 12), where the unbiased and the 1 / n estimators differ by 4 % or more."""
    shape = choice(gen, [(1, 2, 2, 2), (2, 3, 1, 2), (1, 1, 2, 3), (3, 2, 1, 2), (1, 2, 3, 2)])
    z = torch.randn(shape, generator=gen, dtype=torch.float64) * uniform(gen, 0.5, 5.0) + uniform(gen, -2, 2)
    return z.float()


def check_estimate_scaling_factor(fn, gen):
    """Random (N, c, h, w) latents (float32, float64) with per-channel means and stds that
    differ and a non-zero global mean, and one tiny batch (6 to 12 elements). The answer is
    1 / (one unbiased std over all elements): within a relative 2e-3 on the large batches,
    1e-5 on the tiny one (where the 1 / n estimator is 4 % or more off and fails). A number of
    any kind passes (Python, NumPy, a one-element tensor)."""
    cases = [(_random_latents(gen, dtype), RTOL_SCALE) for dtype in (torch.float32, torch.float64)]
    cases.append((_small_latents(gen), RTOL_SMALL))
    for z, rtol in cases:
        name = f"estimate_scaling_factor(latents {tuple(z.shape)} {_dt(z.dtype)}, mean {z.mean().item():.3g}, " \
               f"std {z.std().item():.3g})"
        z_in = z.clone()
        got = fn(z_in)
        _unchanged(name, z, z_in, "latents")
        expected = ref.estimate_scaling_factor(z)
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            per = {z.shape[1]: "per channel", z.shape[0]: "per image"}.get(got.numel(), "not over all elements")
            raise CheckFailed(f"Likely bug: you computed one value {per} ({got.numel()} values): the scaling "
                              f"factor is ONE scalar over every element.\n{name}: expected a number, got "
                              f"{describe(got)}.\nHint: {EQ_SCALE}")
        got = as_number(name, got)
        zz = z.double()
        std = float(zz.std())
        rms = float(zz.pow(2).mean().sqrt())
        per_channel = zz.std(dim=(0, 2, 3)) if zz.shape[0] * zz.shape[2] * zz.shape[3] > 1 else None
        bugs = [
            ("you divided by n (the biased std, LDM appendix D.1's formula): the docstring asks for the unbiased "
             "std, 1 / (n - 1), what LDM's code (torch's default std) computed; it matters on few elements.",
             1 / float(zz.std(correction=0))),
            ("you returned the std itself; the scaling factor is what brings the latents to unit std.", std),
            ("you used the variance: the scaling factor comes from the standard deviation.",
             1 / float(zz.var())),
            ("you returned the variance; the scaling factor is what brings the latents to unit std.", float(zz.var())),
            ("you used the root mean square sqrt(mean(z^2)); the std subtracts the mean first (LDM's sigma).",
             1 / rms),
            ("you used the mean absolute value; the scaling factor comes from the std.", 1 / float(zz.abs().mean())),
            ("you scaled by the largest |z| (to fit [-1, 1]); latent diffusion scales to unit VARIANCE.",
             1 / float(zz.abs().max())),
        ]
        if per_channel is not None and zz.shape[1] > 1:
            bugs += [
                ("you averaged per-channel stds (a per-channel scaling factor, then one mean); the std is over all "
                 "elements at once (it includes the differences between the channels' means).",
                 1 / float(per_channel.mean())),
                ("you averaged per-channel scaling factors; the scaling factor is ONE value from the std over all "
                 "elements at once.", float((1 / per_channel).mean())),
                ("you used the first channel only (a per-channel scaling factor); the std is over all channels.",
                 1 / float(zz[:, 0].std())),
            ]
        if zz.shape[0] > 1 and zz[0].numel() > 1:
            bugs.append(("you used the first image only; the std is over the whole batch.", 1 / float(zz[0].std())))
        _scalar_close(name, got, expected, rtol, [(k, v) for k, v in bugs if math.isfinite(v)], EQ_SCALE)


# --------------------------------------------------------------------------- compression_ratio

def _shape_cases(gen):
    """(image_shape, latent_shape) pairs: SD's, SD3's, tiny-sd's, and random ones (a
    non-integer ratio among them), as tuples, lists and torch.Size."""
    cases = [((3, 512, 512), (4, 64, 64)), ((3, 1024, 1024), (16, 128, 128)), ((3, 64, 64), (4, 8, 8))]
    for _ in range(3):
        C, c, f = choice(gen, (1, 3, 4)), choice(gen, (3, 4, 8, 16, 32)), choice(gen, (2, 4, 8, 16))
        h, w = randint(gen, 2, 32), randint(gen, 2, 32)
        cases.append(((C, f * h, f * w), (c, h, w)))
    h, w = randint(gen, 2, 12), randint(gen, 2, 12)
    cases.append(((1, 8 * h, 8 * w), (3, h, w)))  # 64 / 3: not an integer
    kinds = [tuple, list, lambda s: torch.empty(0, *s).shape[1:]]
    return [(choice(gen, kinds)(a), choice(gen, kinds)(b)) for a, b in cases]


def check_compression_ratio(fn, gen):
    """SD (48), SD3/FLUX (12), tiny-sd, random shapes (non-square, non-integer ratios) given as
    tuples, lists or torch.Size; within a relative 1e-6 (float32 arithmetic passes)."""
    for image_shape, latent_shape in _shape_cases(gen):
        name = f"compression_ratio({image_shape!r}, {latent_shape!r})"
        got = fn(image_shape, latent_shape)
        got = as_number(name, got)
        expected = ref.compression_ratio(image_shape, latent_shape)
        C, H, W = (int(d) for d in image_shape)
        c, h, w = (int(d) for d in latent_shape)
        bugs = [
            (f"you counted the pixels only (H * W / (h * w) = {H * W / (h * w):g}): the channels count too "
             f"(C = {C} image channels, c = {c} latent channels).", H * W / (h * w)),
            (f"you returned the downsampling factor per side (H / h = {H / h:g}); the ratio counts every number "
             f"of each shape, channels included.", H / h),
            ("inverted: the ratio is image over latent, larger than 1 when the latent is "
             "smaller.", c * h * w / (C * H * W)),
            ("you divided the channels only (C / c); every dimension of each shape counts.", C / c),
            ("you added the dimensions; the number of values in a tensor is the PRODUCT of its dimensions.",
             (C + H + W) / (c + h + w)),
            ("you ignored the latent's channels: they count too.", C * H * W / (h * w)),
            ("integer division (//): the ratio need not be an integer; use /.", float((C * H * W) // (c * h * w))),
        ]
        _scalar_close(name, got, expected, RTOL_RATIO, [(k, v) for k, v in bugs if v != expected], EQ_RATIO)


# --------------------------------------------------------------------------- blend_v, blend_h

EQ_BLEND = ("AutoencoderKL.blend_v (blend_h: the same along the width) in diffusers' autoencoders/"
            "autoencoder_kl.py: a linear cross-fade over an overlap of blend_extent rows, clamped to both tiles "
            "(its first line); read its loop for which rows of a meet which rows of b and the ramp of the weights "
            "(where it starts, whether it reaches 1); b's other rows stay as they are; it returns b.")
# The blends are a weighted sum of two values with weights in [0, 1]: diffusers rounds each weight to the
# tensors' dtype (a Python float times a float32 tensor), a vectorised version may build them in float32
# or float64 and write 1 - y/e or (e - y)/e: a few float32 ulps of the larger input. Every bug below is
# off by 1 / (e (e + 1)) of |a - b| or more (e <= 12 here): thousands of times more.
BLEND_ULPS = 8 * torch.finfo(torch.float32).eps


def _diffusers_blend(axis, a, b, e):
    method = AutoencoderKL.blend_v if axis == "v" else AutoencoderKL.blend_h
    return method(None, a.clone(), b.clone(), e)  # it writes into b: a copy; `self` is unused


def _blend_bugs(axis, a, b, e):
    """What typical wrong blends return on (a, b, e), in the orientation of blend_v (dim 2);
    blend_h's inputs are transposed in and its candidates transposed back."""
    if axis == "h":
        return [(k, v.transpose(2, 3)) for k, v in _blend_bugs("v", a.transpose(2, 3), b.transpose(2, 3), e)]
    a64, b64 = a.double(), b.double()
    ha = a.shape[2]
    k = min(ha, b.shape[2], e)
    y = torch.arange(k, dtype=torch.float64).view(1, 1, k, 1)

    def mix(w_b, rows_a=None, kk=k):
        out = b64.clone()
        if kk:
            rows = a64[:, :, ha - kk:] if rows_a is None else rows_a
            out[:, :, :kk] = rows * (1 - w_b) + b64[:, :, :kk] * w_b
        return out.to(b.dtype)

    bugs = []
    if k:
        bugs += [
            ("the weights are swapped: in diffusers the first row of the overlap is all a's, and b's share grows "
             "along the overlap.", mix(1 - y / k)),
            ("your ramp is not diffusers': b's weight is not (y + 1) / (e + 1); diffusers' ramp starts at 0 and never "
             "reaches 1 (read blend_v's loop).", mix((y + 1) / (k + 1))),
            ("your ramp is not diffusers': b's weight is not y / (e - 1), which reaches 1 on the last row; diffusers' "
             "never does (read blend_v's loop).",
             mix(y / (k - 1)) if k > 1 else None),
            ("your ramp is not diffusers': b's weight is not (y + 1) / e; diffusers' ramp starts at 0 (read "
             "blend_v's loop).", mix((y + 1) / k)),
            ("you read a's FIRST rows; the overlap is a's LAST e rows.",
             mix(y / k, a64[:, :, :k])),
            ("you read a's last rows in reverse order; they meet b's first rows in the same order.",
             mix(y / k, a64[:, :, ha - k:].flip(2))),
        ]
    return [(label, cand) for label, cand in bugs if cand is not None]


def _blend_case(fn, axis, a, b, e, where):
    fname = "blend_v" if axis == "v" else "blend_h"
    name = (f"{fname}(a {tuple(a.shape)} {_dt(a.dtype)}, b {tuple(b.shape)}, blend_extent={e}) [{where}]")
    a_in, b_in = a.clone(), b.clone()
    try:
        got = fn(a_in, b_in, e)
    except (NotImplementedError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a crash only some extents trigger: name the extent
        dim, size = (2, "H") if axis == "v" else (3, "W")
        k = min(a.shape[dim], b.shape[dim], e)
        why = ""
        if k == 0:
            why = (" With an overlap of 0, a slice `-e:` is `0:`, the WHOLE tensor; with no overlap b "
                   "comes back unchanged.")
        elif e > min(a.shape[dim], b.shape[dim]):
            why = (f" blend_extent {e} is larger than a tile ({size}_a = {a.shape[dim]}, {size}_b = "
                   f"{b.shape[dim]}): clamp it to both tiles, as the first line of diffusers' {fname} does.")
        raise CheckFailed(f"{name}: your function raised {type(exc).__name__}: {exc}.{why}\nHint: {EQ_BLEND}") from exc
    _unchanged(name, a, a_in, "a")
    if got is None:
        lead = "Likely bug: you blended into b in place but returned nothing; diffusers returns b.\n" \
            if not torch.equal(b, b_in) else ""
        raise CheckFailed(f"{lead}{name}: expected a tensor, got None.\nHint: {EQ_BLEND}")
    expected = ref.blend_v(a, b, e) if axis == "v" else ref.blend_h(a, b, e)
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    tol = dict(atol=BLEND_ULPS * scale, rtol=0.0)
    assert_close(name, got, expected, **tol, diagnose=_blend_bugs(axis, a, b, e), hint=EQ_BLEND)
    theirs = _diffusers_blend(axis, a, b, e)
    assert_close(f"{name} vs diffusers' AutoencoderKL.{fname}", got, theirs, **tol, hint=EQ_BLEND)


def _blend_cases(gen):
    """(a, b, e, where) in blend_v's orientation: ordinary overlaps, a short edge tile below, an
    extent larger than both tiles, an extent of 0, float64, large magnitudes."""
    def t(h, w, dtype=torch.float32, scale=1.0, batch=None, ch=None):
        return torch.randn((batch, ch, h, w), generator=gen, dtype=torch.float64).mul(scale).to(dtype)

    cases = []
    batch, ch = randint(gen, 1, 2), choice(gen, (3, 4))
    w = randint(gen, 3, 9)
    ha, hb, e = randint(gen, 6, 12), randint(gen, 6, 12), randint(gen, 2, 5)
    cases.append((t(ha, w, batch=batch, ch=ch), t(hb, w, batch=batch, ch=ch), e, "tiles taller than the overlap"))
    ha, hb = randint(gen, 6, 10), randint(gen, 1, 3)
    cases.append((t(ha, w, batch=batch, ch=ch), t(hb, w, batch=batch, ch=ch), randint(gen, hb + 1, 6),
                  "a short edge tile below: e is clamped to H_b"))
    ha, hb = randint(gen, 1, 4), randint(gen, 5, 8)
    cases.append((t(ha, w, batch=batch, ch=ch), t(hb, w, batch=batch, ch=ch), randint(gen, ha + 1, 8),
                  "a short tile above: e is clamped to H_a"))
    cases.append((t(4, w, batch=batch, ch=ch), t(5, w, batch=batch, ch=ch), 0, "blend_extent 0: b unchanged"))
    dtype, scale = choice(gen, [(torch.float64, 1.0), (torch.float32, 1e3), (torch.float64, 1e-3)])
    ha, hb, e = randint(gen, 4, 12), randint(gen, 4, 12), randint(gen, 2, 12)
    cases.append((t(ha, w, dtype, scale, batch, ch), t(hb, w, dtype, scale, batch, ch), e,
                  f"{_dt(dtype)}, values of size {scale:g}"))
    return cases


def check_blend_v(fn, gen):
    """Random tile pairs (B, C, H, W) with fresh sizes and extents: ordinary overlaps, a short
    tile above or below (the extent is clamped), extent 0, float64, large and small values;
    compared with the reference and with diffusers' AutoencoderKL.blend_v (it writes into b:
    both that and a new tensor pass), within 8 float32 ulps of the larger input."""
    for a, b, e, where in _blend_cases(gen):
        _blend_case(fn, "v", a, b, e, where)


def check_blend_h(fn, gen):
    """blend_v's cases turned 90 degrees (a, b of shape (B, C, H, W_a), (B, C, H, W_b)), compared
    with the reference and with diffusers' AutoencoderKL.blend_h."""
    for a, b, e, where in _blend_cases(gen):
        _blend_case(fn, "h", a.transpose(2, 3).contiguous(), b.transpose(2, 3).contiguous(), e,
                    where.replace("above", "on the left").replace("below", "on the right")
                    .replace("H_b", "W_b").replace("H_a", "W_a").replace("taller", "wider"))


# --------------------------------------------------------------------------- tiled_decode

EQ_TILED = ("AutoencoderKL.tiled_decode in diffusers' autoencoders/autoencoder_kl.py: read how its first lines "
            "derive the tile stride (in latents), the blend extent and the row limit (in pixels) from "
            "tile_latent_min_size, tile_sample_min_size and tile_overlap_factor; every latent tile goes through "
            "post_quant_conv (when vae.config.use_post_quant_conv), then the decoder; then read the blending loop: "
            "which tiles each tile is blended with, in which order, and what those neighbours ARE by then; "
            "hint(\"lab05\", \"tiled_decode\") gives more.")


def _tiled_bugs(vae, z):
    """What typical wrong tiled decodes return on (vae, z)."""
    T, P, r = vae.tile_latent_min_size, vae.tile_sample_min_size, vae.tile_overlap_factor

    def run(stride=None, extent=None, keep=None, raw_neighbours=False, h_first=False, pqc=True, crop_last=True):
        stride = stride or int(T * (1 - r))
        extent = int(P * r) if extent is None else extent
        keep = keep or P - extent
        grid = []
        for i in range(0, z.shape[2], stride):
            grid.append([])
            for j in range(0, z.shape[3], stride):
                tile = z[:, :, i:i + T, j:j + T]
                if pqc and vae.post_quant_conv is not None:
                    tile = vae.post_quant_conv(tile)
                grid[-1].append(vae.decoder(tile))
        raw = [list(row) for row in grid]
        rows = []
        for i, tiles in enumerate(grid):
            for j in range(len(tiles)):
                above = raw[i - 1][j] if raw_neighbours and i > 0 else (grid[i - 1][j] if i > 0 else None)
                left = raw[i][j - 1] if raw_neighbours and j > 0 else (tiles[j - 1] if j > 0 else None)
                steps = [("h", left), ("v", above)] if h_first else [("v", above), ("h", left)]
                for kind, nb in steps:
                    if nb is not None:
                        tiles[j] = (ref.blend_v if kind == "v" else ref.blend_h)(nb, tiles[j], extent)
            rows.append(torch.cat([t[:, :, :keep, :keep] for t in tiles], dim=3))
        return torch.cat(rows, dim=2)

    f = P // T
    bugs = [
        ("you blended with the neighbours as they were decoded; diffusers blends each tile with the tile above "
         "and the tile on the left AFTER their own blending (its blend_v / blend_h write into the tiles): store "
         "each blended tile back in your grid.", lambda: run(raw_neighbours=True)),
        ("you blended with the left neighbour first; diffusers blends with the tile above (blend_v), then with "
         "the one on the left (blend_h).", lambda: run(h_first=True)),
        ("you skipped post_quant_conv: diffusers runs it on each latent tile before the decoder (when "
         "vae.config.use_post_quant_conv is True).", lambda: run(pqc=False)),
        ("your blend extent is in latents (int(T * r)); the blend happens on decoded tiles, in pixels (read how "
         "tiled_decode computes blend_extent).", lambda: run(extent=int(T * r), keep=P - int(T * r))),
        ("you kept whole tiles (or cropped by the latent overlap); diffusers crops each tile to its row_limit of "
         "pixel rows and columns (read how tiled_decode computes it).", lambda: run(keep=P - int(T * r) if int(T * r) != int(P * r) else P)),
    ]
    if f > 1:
        bugs.append(("your stride is in pixels: tiles start at a stride counted in LATENTS (overlap_size in tiled_decode).",
                     lambda: run(stride=int(P * (1 - r)))))
    out = []
    for label, make in bugs:
        try:
            with torch.no_grad():
                out.append((label, make()))
        except Exception:  # noqa: BLE001 - a candidate that cannot be built on these sizes is no candidate
            pass
    return out


def check_tiled_decode(fn, gen):
    """A random small AutoencoderKL (factor 1 to 4, with or without post_quant_conv), random tile
    sizes (4 to 6 latents; overlap 0.25 as diffusers sets it, or 0.5) and a latent 1.3 to 2.2
    tiles wide that does not split evenly (edge tiles cut short); then tiny-sd's VAE with its own
    8-latent, 64-pixel tiles on a latent of about 10 x 12. Compared with `vae.tiled_decode(z).sample`
    (and, on a failure, with the reference, which equals it); the tolerance is float32 rounding of
    the blends, relative to the largest |pixel|."""
    configs = []
    pqc = bool(randint(gen, 0, 1))
    vae, desc, f = _random_vae(gen, post_quant_conv=pqc)
    desc += "" if pqc else " without post_quant_conv"
    T = randint(gen, 4, 6)
    vae.tile_latent_min_size, vae.tile_sample_min_size = T, T * f
    vae.tile_overlap_factor = choice(gen, (0.25, 0.25, 0.5))
    h, w = randint(gen, T + 2, 2 * T + 1), randint(gen, T + 2, 2 * T + 1)
    configs.append((vae, desc, torch.randn((randint(gen, 1, 2), vae.config.latent_channels, h, w), generator=gen) * 2))
    if TINY_SD_VAE.exists():
        tiny, tiny_desc = _tiny_sd_vae()
        z = torch.randn((1, 4, randint(gen, 9, 12), randint(gen, 9, 12)), generator=gen) / tiny.config.scaling_factor
        configs.append((tiny, tiny_desc, z))
    for vae, desc, z in configs:
        name = (f"tiled_decode(vae=<{desc}, tiles of {vae.tile_latent_min_size} latents = "
                f"{vae.tile_sample_min_size} px, overlap {vae.tile_overlap_factor}>, z {tuple(z.shape)})")
        z_in = z.clone()
        with torch.no_grad():
            got = fn(vae, z_in)
        _unchanged(name, z, z_in, "z")
        _not_tensor(name, got, "image")
        with torch.no_grad():
            theirs = vae.tiled_decode(z).sample
        scale = max(float(theirs.abs().max()), 1e-30)
        tol = dict(atol=BLEND_ULPS * scale * 4, rtol=0.0)  # two blends per pixel, on decoder outputs
        right = isinstance(got, torch.Tensor) and got.shape == theirs.shape and \
            torch.allclose(got.detach().double(), theirs.double(), **tol)
        if not right:
            with torch.no_grad():
                expected = ref.tiled_decode(vae, z)
            assert_close(name, got, expected, **tol, diagnose=_tiled_bugs(vae, z), hint=EQ_TILED)
        assert_close(f"{name} vs diffusers' vae.tiled_decode", got, theirs, **tol, hint=EQ_TILED)
