"""Checks of Lab 04 (classifier-free guidance): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (shapes, ranks, guidance scales, rescale factors,
timesteps, a small randomly initialised ``UNet2DConditionModel``) and compares the learner's
output with the reference solution AND with diffusers on the same inputs: the pipeline's CFG
line, diffusers' own ``rescale_noise_cfg``, and two separate UNet forwards. When the output
matches what a typical bug returns, the message names that bug (the ``diagnose`` candidates
below are those bugs, computed on the same inputs).
"""
import torch
from diffusers import UNet2DConditionModel
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer
from diffusers.guiders.adaptive_projected_guidance import normalized_guidance as diffusers_apg
# diffusers' rescale_noise_cfg, from guider_utils: the same code as the pipeline's copy (a test compares
# their source), without importing the pipeline module, whose transformers imports print a torchvision warning.
from diffusers.guiders.guider_utils import rescale_noise_cfg as diffusers_rescale

from helpers.checks._core import (CheckFailed, assert_close, choice, describe, describe_exception, randint, randn,
                                  require_unchanged, uniform)
from helpers.solutions import lab04_cfg as ref

LAB = "lab04"

# Tolerances, |got - expected| <= atol + rtol * |expected| elementwise.
# The CFG line rewritten ((1 - w) u + w c, ...) differs by float32 rounding times w (<= 15).
TOL_CFG = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}
# Rescale: std computed another way (sqrt of var, biased) differs by rounding only.
TOL_RESCALE = dict(atol=1e-5, rtol=1e-5)
# One batched forward vs two separate ones: convolution algorithms may differ by ~1e-6, times w.
TOL_UNET = dict(atol=1e-4, rtol=1e-4)

EQ6 = ("Ho & Salimans 2022, eq. 6, in diffusers' convention (guidance_scale is the paper's 1 + w': w = 1 "
       "returns eps_text, w = 0 returns eps_uncond); read the line under \"perform guidance\" in "
       "StableDiffusionPipeline.__call__.")
RESCALE_EQ = ("Lin et al. 2023, sec. 3.4, as diffusers' rescale_noise_cfg (pipeline_stable_diffusion.py): one "
              "std per sample over every dim but the batch one, kept as size-1 dims; the rescaled prediction "
              "gets eps_text's std; guidance_rescale is the weight of the rescaled prediction in the final "
              "blend with noise_cfg.")
BATCH_HINT = ("one UNet forward on the doubled batch, in StableDiffusionPipeline's order [uncond, cond]: read "
              "__call__'s step 3 (where prompt_embeds is joined with negative_prompt_embeds) and its denoising "
              "loop, step 7 (latent_model_input, the unet call, the split of noise_pred into two halves).")
TIMESTEP_HINT = ("a (B,) timestep tensor gives one t per sample; the doubled batch needs (2B,) timesteps in "
                 "the same [uncond, cond] order as the latents and embeddings. (An int or a 0-d tensor, what "
                 "the pipeline passes, the UNet broadcasts by itself: UNet2DConditionModel.get_time_embed.)")


# --------------------------------------------------------------------------- random inputs

def _shape(gen, rank):
    """(B, d1, ..., d_{rank-1}) with every size >= 2 and B different from the other sizes, so
    a std or a broadcast over the wrong dims cannot pass silently."""
    batch = randint(gen, 2, 4)
    sizes = [s for s in range(2, 8) if s != batch]
    return (batch,) + tuple(choice(gen, sizes) for _ in range(rank - 1))


def _scale(gen):
    """A guidance scale > 1, never an integer (so no bug coincides by accident)."""
    return round(uniform(gen, 1.6, 14.4), 2)


def _predictions(gen, shape, dtype=torch.float32):
    """(eps_uncond, eps_text): two correlated predictions with a different size per sample,
    like two calls of one denoiser."""
    scales = uniform(gen, 0.5, 1.5) + torch.rand(shape[0], generator=gen, dtype=torch.float64)
    scales = scales.reshape(-1, *[1] * (len(shape) - 1))  # (B, 1, ..., 1)
    base = randn(gen, shape, torch.float64)
    uncond = (base + 0.4 * randn(gen, shape, torch.float64)) * scales
    text = (base + 0.4 * randn(gen, shape, torch.float64)) * scales
    return uncond.to(dtype), text.to(dtype)


# --------------------------------------------------------------------------- classifier_free_guidance

def _cfg_bugs(u, c, w):
    """What typical wrong CFG lines return on (eps_uncond, eps_text, w)."""
    return [
        ("branches swapped: you moved from eps_text towards eps_uncond, eps_text + w * (eps_uncond - eps_text). "
         "Guidance starts from the UNconditional prediction and extrapolates towards (and past) the "
         "conditional one (Ho & Salimans eq. 6).", c + w * (u - c)),
        ("you used Ho & Salimans' (1 + w) convention, (1 + w) * eps_text - w * eps_uncond = eps_text + "
         "w * (eps_text - eps_uncond). diffusers' guidance_scale is the paper's w' + 1, so w = 1 means no "
         "guidance (read the pipeline's \"perform guidance\" line).", c + w * (c - u)),
        ("you subtracted 1 from w: eps_uncond + (w - 1) * (eps_text - eps_uncond). diffusers' guidance_scale "
         "already is the paper's 1 + w'; use it as it is.", u + (w - 1) * (c - u)),
        ("sign error in w * eps_text + (1 - w) * eps_uncond: you wrote w * eps_text - (1 - w) * eps_uncond. "
         "The two weights must add up to 1; check w = 1 (eps_text) and w = 0 (eps_uncond) by hand.",
         w * c - (1 - w) * u),
        ("sign error in w * eps_text + (1 - w) * eps_uncond: you wrote w * eps_text + (w - 1) * eps_uncond. "
         "The two weights must add up to 1; check w = 1 (eps_text) and w = 0 (eps_uncond) by hand.",
         w * c + (w - 1) * u),
        ("sign of the difference flipped: eps_uncond - w * (eps_text - eps_uncond) guides AWAY from the prompt, "
         "not towards it.", u - w * (c - u)),
        ("the unconditional base is missing: you returned w * (eps_text - eps_uncond), only the guidance "
         "direction, without the prediction it starts from.", w * (c - u)),
        ("you scaled eps_text by w; CFG extrapolates along the DIFFERENCE eps_text - eps_uncond, starting "
         "from eps_uncond.", w * c),
        ("you returned eps_text unchanged (no guidance, as if w were 1).", c.clone()),
        ("you returned eps_uncond unchanged (as if w were 0).", u.clone()),
    ]


def _cfg_call(shape, dtype, w):
    return f"classifier_free_guidance(<{dtype} (B, ...) = {shape}>, <same shape>, guidance_scale={w})"


def check_classifier_free_guidance(fn, gen):
    """A random rank-2..5 float32 batch at a random non-integer w > 1, then w = 1 (must return
    eps_text), w = 0 (eps_uncond) and float64 inputs; each compared with the pipeline's line."""
    cases = [(randint(gen, 3, 5), torch.float32, _scale(gen)),
             (randint(gen, 2, 5), torch.float32, 1.0),
             (randint(gen, 2, 5), torch.float32, 0.0),
             (randint(gen, 2, 5), torch.float64, _scale(gen))]
    for rank, dtype, w in cases:
        shape = _shape(gen, rank)
        u, c = _predictions(gen, shape, dtype)
        u_in, c_in = u.clone(), c.clone()
        name = _cfg_call(shape, dtype, w)
        got = fn(u_in, c_in, w)
        if not (torch.equal(u_in, u) and torch.equal(c_in, c)):
            raise CheckFailed(f"{name}: your function changed its inputs in place; build a new tensor "
                              f"(out-of-place arithmetic, not a.add_(...)): the pipeline still needs them.")
        extra = {1.0: " At w = 1 the result must be eps_text itself (no guidance).",
                 0.0: " At w = 0 the result must be eps_uncond itself."}.get(w, "")
        # The pipeline's own line (StableDiffusionPipeline.__call__, "perform guidance"):
        pipeline_line = u + w * (c - u)
        assert_close(name, got, ref.classifier_free_guidance(u, c, w), **TOL_CFG[dtype],
                     diagnose=_cfg_bugs(u, c, w), hint=EQ6 + extra)
        assert_close(f"{name} vs the pipeline's guidance line (StableDiffusionPipeline.__call__, "
                     f"\"perform guidance\")", got, pipeline_line, **TOL_CFG[dtype])


# --------------------------------------------------------------------------- rescale_noise_cfg

def _std(x, dims):
    return x.std(dim=dims, keepdim=True)


def _mix(phi, rescaled, cfg):
    return phi * rescaled + (1 - phi) * cfg


def _rescale_bugs(cfg, text, phi):
    """What typical wrong rescales return on (noise_cfg, noise_pred_text, phi)."""
    nd = cfg.ndim
    per_sample = list(range(1, nd))
    ratio = _std(text, per_sample) / _std(cfg, per_sample)
    bugs = [
        ("std over the wrong dimensions: you took one std over ALL dims, the batch included (x.std()). "
         "Each sample gets its own std, over every dim but the batch one, kept as size-1 dims: shape "
         "(B, 1, ..., 1).",
         _mix(phi, cfg * (text.std() / cfg.std()), cfg)),
        ("std over the wrong dimensions: you took the std over the channels only (dim=1). It is one std per "
         "sample, over every dim but the batch one (read rescale_noise_cfg's std lines).",
         _mix(phi, cfg * (_std(text, [1]) / _std(cfg, [1])), cfg)),
        ("std over the wrong dimensions: you took one std per channel (over the spatial dims only). It is one "
         "std per sample, over every dim but the batch one, channels included.",
         _mix(phi, cfg * (_std(text, list(range(2, nd))) / _std(cfg, list(range(2, nd)))), cfg)),
        ("mixing factor inverted: you returned (1 - phi) * rescaled + phi * noise_cfg. guidance_rescale = phi "
         "is the weight of the RESCALED prediction (phi = 0: no change), as in rescale_noise_cfg's last line.",
         _mix(1 - phi, cfg * ratio, cfg)),
        ("variance instead of standard deviation: you rescaled by var(eps_text) / var(eps_cfg). Rescale by the "
         "ratio of standard deviations, not of variances.",
         _mix(phi, cfg * (text.var(dim=per_sample, keepdim=True) / cfg.var(dim=per_sample, keepdim=True)), cfg)),
        ("ratio inverted: you multiplied by std(eps_cfg) / std(eps_text), which makes the guided prediction "
         "even larger. The rescaled prediction must get eps_text's std.",
         _mix(phi, cfg * (1 / ratio), cfg)),
        ("you mixed the rescaled prediction with noise_pred_text; the mix is with the guided prediction, "
         "noise_cfg (rescale_noise_cfg's last line).", _mix(phi, cfg * ratio, text)),
    ]
    if phi != 1:
        bugs.append(("guidance_rescale ignored in the mix: you returned the fully rescaled prediction. Blend it "
                     "with noise_cfg, weighted by guidance_rescale (rescale_noise_cfg's last line).", cfg * ratio))
    if phi != 0:
        bugs.append(("you returned noise_cfg unchanged: the rescale is missing.", cfg.clone()))
    if nd != 4:
        bugs.append(("std over the wrong dimensions: dims (1, 2, 3) are right only for 4-D tensors. Use every "
                     "dim but the batch one, whatever the rank.",
                     _mix(phi, cfg * (_std(text, [1, 2, 3][:nd - 1]) / _std(cfg, [1, 2, 3][:nd - 1])), cfg)))
    return bugs


def _rescale_inputs(gen, rank):
    shape = _shape(gen, rank)
    u, c = _predictions(gen, shape)
    w = _scale(gen)
    return shape, ref.classifier_free_guidance(u, c, w), c, w


def check_rescale_noise_cfg(fn, gen):
    """4-D guided predictions at a random phi (never 0.5, where phi and 1 - phi coincide), then
    ranks 3 and 5, then phi = 0 and phi = 1; each compared with diffusers' rescale_noise_cfg."""
    phis = [round(choice(gen, [0.2, 0.3, 0.4, 0.6, 0.7, 0.75, 0.8, 0.9]) + uniform(gen, -0.04, 0.04), 3)
            for _ in range(3)]
    cases = [(4, phis[0]), (3, phis[1]), (5, phis[2]), (randint(gen, 3, 5), 0.0), (4, 1.0)]
    for rank, phi in cases:
        shape, cfg, text, w = _rescale_inputs(gen, rank)
        cfg_in, text_in = cfg.clone(), text.clone()
        name = (f"rescale_noise_cfg(noise_cfg (B, ...) = {shape} guided at w = {w}, noise_pred_text, "
                f"guidance_rescale={phi})")
        got = fn(cfg_in, text_in, phi)
        require_unchanged(name, (cfg, text), (cfg_in, text_in))
        extra = {0.0: " At guidance_rescale = 0 the result must be noise_cfg itself.",
                 1.0: " At guidance_rescale = 1 the result is the fully rescaled prediction."}.get(phi, "")
        assert_close(name, got, ref.rescale_noise_cfg(cfg, text, phi), **TOL_RESCALE,
                     diagnose=_rescale_bugs(cfg, text, phi), hint=RESCALE_EQ + extra)
        assert_close(f"{name} vs diffusers' rescale_noise_cfg", got, diffusers_rescale(cfg, text, phi), **TOL_RESCALE)
        if isinstance(got, torch.Tensor) and phi == 1.0:
            std_got = got.std(dim=list(range(1, rank))).tolist()
            std_text = text.std(dim=list(range(1, rank))).tolist()
            if not all(abs(a - b) <= 1e-4 * (1 + abs(b)) for a, b in zip(std_got, std_text)):
                raise CheckFailed(f"{name}: at guidance_rescale = 1 each sample must have eps_text's std "
                                  f"{std_text}, got {std_got}.")


# --------------------------------------------------------------------------- guided_noise_pred

def _tiny_unet(gen, cross_dim):
    """A small randomly initialised UNet2DConditionModel (cross-attention, like SD's), seeded
    from ``gen`` without touching the global random state."""
    seed = randint(gen, 0, 2**31 - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=8)
    return unet.eval().requires_grad_(False)


class _RecordingUNet:
    """Calls the real UNet and records what each call received (batch, timestep, embeddings).
    Every attribute (config, dtype, device, ...) is the real UNet's."""

    def __init__(self, unet):
        self._unet = unet
        self.calls = []

    def __call__(self, sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        self.calls.append(dict(
            sample=sample.detach().clone() if isinstance(sample, torch.Tensor) else sample,
            timestep=timestep.detach().clone() if isinstance(timestep, torch.Tensor) else timestep,
            embeds=(encoder_hidden_states.detach().clone()
                    if isinstance(encoder_hidden_states, torch.Tensor) else encoder_hidden_states)))
        return self._unet(sample, timestep, encoder_hidden_states, *args, **kwargs)

    forward = __call__

    def __getattr__(self, name):
        return getattr(self._unet, name)


def _timestep_str(t):
    if isinstance(t, torch.Tensor):
        return f"tensor({t.tolist()})" if t.ndim else f"tensor({t.item()}) (0-d)"
    return repr(t)


def _order_of(call, uncond, text):
    """"uncond-first", "cond-first" or None: the order of the embeddings batch in one call."""
    e = call["embeds"]
    B = uncond.shape[0]
    if not isinstance(e, torch.Tensor) or e.shape[0] != 2 * B:
        return None
    if torch.equal(e[:B], uncond) and torch.equal(e[B:], text):
        return "uncond-first"
    if torch.equal(e[:B], text) and torch.equal(e[B:], uncond):
        return "cond-first"
    return None


def _one(unet, x, t, emb):
    return unet(x, t, encoder_hidden_states=emb).sample


def _guided_bugs(unet, x, t, text, uncond, w, phi, calls):
    """What typical wrong guided_noise_pred return on these inputs (two separate forwards)."""
    B = x.shape[0]
    eu, ec = _one(unet, x, t, uncond), _one(unet, x, t, text)

    def finish(u, c):
        out = u + w * (c - u)
        return diffusers_rescale(out, c, phi) if phi > 0 else out

    batched = [c for c in calls if isinstance(c["sample"], torch.Tensor) and c["sample"].shape[0] == 2 * B]
    order = _order_of(batched[0], uncond, text) if len(batched) == 1 else None
    if order == "cond-first":
        swap_hint = ("chunk order: you built the batch cond first, [text, uncond], but split it as (uncond, text). "
                     "chunk returns the halves in the order of the batch; build it in the pipeline's order, "
                     "uncond FIRST (step 3 of StableDiffusionPipeline.__call__).")
    else:
        swap_hint = ("chunk order: the two halves of noise_pred.chunk(2) are swapped. With the batch [uncond, cond] "
                     "(the pipeline's order) the first half is eps_uncond.")
    bugs = [(swap_hint, finish(ec, eu))]
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        bugs += [
            ("timestep not broadcast correctly: you used one timestep (the first) for the whole batch. "
             + TIMESTEP_HINT, finish(_one(unet, x, t[0], uncond), _one(unet, x, t[0], text))),
            ("timestep not broadcast correctly: t.repeat_interleave(2) gives [t0, t0, t1, t1, ...], which does not "
             "match the batch [uncond_0, uncond_1, ..., cond_0, cond_1, ...]. " + TIMESTEP_HINT,
             _batched_with(unet, x, t.repeat_interleave(2), text, uncond, w, phi)),
        ]
    if phi > 0:
        bugs.append(("guidance_rescale ignored: with guidance_rescale > 0 the pipeline applies rescale_noise_cfg after "
                     "the guidance line (the guidance_rescale branch of step 7).",
                     eu + w * (ec - eu)))
    bugs += [("you returned eps_text, the conditional prediction alone: the guidance line is missing.", ec),
             ("you returned eps_uncond alone: the guidance line is missing.", eu)]
    return bugs, finish(eu, ec)


def _batched_with(unet, x, t2, text, uncond, w, phi):
    out = _one(unet, torch.cat([x, x]), t2, torch.cat([uncond, text]))
    u, c = out.chunk(2)
    g = u + w * (c - u)
    return diffusers_rescale(g, c, phi) if phi > 0 else g


def _run_guided(fn, rec, x, t, text, uncond, w, phi, name, after_scalar_ok=False):
    """Call fn; turn the errors of the typical bugs (timestep or latents not doubled) into hints."""
    B = x.shape[0]
    try:
        with torch.no_grad():
            return fn(rec, x, t, text, uncond, w, phi)
    except NotImplementedError:
        raise
    except Exception as exc:
        for call in rec.calls:
            s, ts, e = call["sample"], call["timestep"], call["embeds"]
            if not isinstance(s, torch.Tensor):
                continue
            if isinstance(ts, torch.Tensor) and ts.ndim == 1 and ts.numel() != s.shape[0]:
                raise CheckFailed(
                    f"Likely bug: timestep not broadcast: the UNet got {s.shape[0]} samples but "
                    f"{ts.numel()} timesteps.\n{name} raised {describe_exception(exc)}\nHint: {TIMESTEP_HINT}"
                ) from exc
            if isinstance(e, torch.Tensor) and e.shape[0] != s.shape[0]:
                what = ("the latents were not doubled" if s.shape[0] == B and e.shape[0] == 2 * B
                        else "the batch sizes of the latents and the embeddings differ")
                raise CheckFailed(
                    f"Likely bug: {what}: the UNet got sample {tuple(s.shape)} with encoder_hidden_states "
                    f"{tuple(e.shape)}.\n{name} raised {describe_exception(exc)}\nHint: {BATCH_HINT}") from exc
        if isinstance(t, torch.Tensor) and t.ndim == 1 and after_scalar_ok:
            raise CheckFailed(
                f"Likely bug: timestep not broadcast: your function ran with an int or 0-d timestep but fails "
                f"with one timestep per sample.\n{name} raised {describe_exception(exc)}\n"
                f"Hint: {TIMESTEP_HINT}") from exc
        raise


def check_guided_noise_pred(fn, gen):
    """A small random UNet; an int timestep, a 0-d tensor timestep with guidance_rescale > 0, and
    a (B,) tensor of different timesteps. The output must equal two separate forwards combined
    by the pipeline's lines, computed with ONE UNet call on the batch [uncond, cond]."""
    cross_dim = choice(gen, [16, 32])
    unet = _tiny_unet(gen, cross_dim)
    B = randint(gen, 2, 3)
    L = randint(gen, 3, 6)
    side = choice(gen, [8, 16])
    T = 1000
    ts = torch.randperm(T, generator=gen)[:B + 2]
    cases = [
        (int(ts[0]), _scale(gen), 0.0),
        (ts[1].clone(), _scale(gen), round(uniform(gen, 0.55, 0.9), 2)),
        (ts[2:2 + B].clone(), _scale(gen), 0.0),
    ]
    for t, w, phi in cases:
        x = randn(gen, (B, 4, side, side))
        text, uncond = randn(gen, (B, L, cross_dim)), randn(gen, (B, L, cross_dim))
        rec = _RecordingUNet(unet)
        name = (f"guided_noise_pred(unet, latents {tuple(x.shape)}, timestep={_timestep_str(t)}, text_embeddings "
                f"{tuple(text.shape)}, uncond_embeddings {tuple(uncond.shape)}, guidance_scale={w}, "
                f"guidance_rescale={phi})")
        got = _run_guided(fn, rec, x, t, text, uncond, w, phi, name, after_scalar_ok=True)
        with torch.no_grad():
            bugs, two_forwards = _guided_bugs(unet, x, t, text, uncond, w, phi, rec.calls)
            expected = ref.guided_noise_pred(unet, x, t, text, uncond, w, phi)
        hint = (BATCH_HINT + " Then guide: " + EQ6
                + (" Then rescale_noise_cfg (the guidance_rescale branch of step 7)." if phi > 0 else ""))
        assert_close(name, got, expected, **TOL_UNET, diagnose=bugs, hint=hint)
        assert_close(f"{name} vs two separate forwards (uncond, then cond) combined by the pipeline's lines",
                     got, two_forwards, **TOL_UNET)
        # Right numbers: now the way they were computed.
        n = len(rec.calls)
        batched = [c for c in rec.calls if isinstance(c["sample"], torch.Tensor) and c["sample"].shape[0] == 2 * B]
        if n != 1 or len(batched) != 1:
            sizes = [tuple(c["sample"].shape) if isinstance(c["sample"], torch.Tensor) else describe(c["sample"])
                     for c in rec.calls]
            raise CheckFailed(
                f"Likely bug: {n} UNet forwards (samples {sizes}); the exercise asks for ONE forward on the "
                f"doubled batch, like StableDiffusionPipeline (one forward of 2B is cheaper than two of B on a "
                f"GPU).\n{name}: your numbers are right.\nHint: {BATCH_HINT}")
        order = _order_of(batched[0], uncond, text)
        if order == "cond-first":
            raise CheckFailed(
                f"Likely bug: chunk order: your batch is [cond, uncond]; StableDiffusionPipeline builds "
                f"[uncond, cond] (step 3 of __call__, where negative_prompt_embeds come first), and "
                f"callbacks, IP-Adapter image embeddings and ControlNet residuals rely on that order.\n{name}: "
                f"your numbers are right because you also split in that order.\nHint: {BATCH_HINT}")


# --------------------------------------------------------------------------- normalized_guidance (APG)

# Tolerance: |got - truth| <= TOL_APG[dtype] * scale, scale = max |truth| + |w| * max |d| of the case,
# truth computed in float64 from the same (rounded) inputs. A float32 implementation that projects
# in float32, or rounds in another order, stays within a few dozen ulps of the values involved.
TOL_APG = {torch.float32: 64 * torch.finfo(torch.float32).eps, torch.float64: 64 * torch.finfo(torch.float64).eps}

APG_EQ = ("Sadat et al. 2024 (APG), as diffusers' normalized_guidance (diffusers/guiders/"
          "adaptive_projected_guidance.py) with use_original_formulation=False: norms and inner products per "
          "sample over every dim but the batch one (norm_dim=None); the order momentum (MomentumBuffer.update) "
          "-> norm threshold (shrinks, never grows) -> split of the difference into the parts parallel and "
          "orthogonal to pred_cond -> eta weights the parallel part; the result starts from pred_uncond.")


def _norm(x, dims):
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


def _apg64(c, u, w, eta, r, running=0, beta=None, variant="right"):
    """APG in float64 on float64 inputs: (output, new running average). ``variant`` names a typical
    bug; "right" is the reference formula. ``running``/``beta``: the momentum buffer's state."""
    nd = c.ndim
    dims = {"all_dims": list(range(nd)), "spatial_dims": list(range(2, nd)),
            "channel_dim": [1]}.get(variant, list(range(1, nd)))
    d = c - u
    new_running = running
    if beta is not None and variant != "no_momentum":
        if variant == "ema_momentum":
            new_running = beta * running + (1 - beta) * d
        else:
            new_running = d + beta * running
        d = new_running
    if beta is not None and variant == "threshold_before_momentum" and r > 0:
        d0 = c - u
        d0 = d0 * torch.clamp(r / _norm(d0, dims), max=1.0)
        new_running = d0 + beta * running
        d = new_running
    elif r > 0 and variant not in ("no_threshold", "threshold_on_update"):
        k = r / _norm(d, dims)
        d = d * (k if variant == "threshold_always" else torch.clamp(k, max=1.0))
    onto = u if variant == "onto_uncond" else c
    if variant == "not_normalised":
        par = (d * onto).sum(dim=dims, keepdim=True) * onto
    else:
        e = onto / _norm(onto, dims)
        par = (d * e).sum(dim=dims, keepdim=True) * e
    perp = d - par
    upd = {"eta_swapped": eta * perp + par, "no_perp": eta * par, "plain_cfg": d}.get(variant, perp + eta * par)
    if variant == "threshold_on_update" and r > 0:
        upd = upd * torch.clamp(r / _norm(upd, dims), max=1.0)
    if variant == "original":
        return c + w * upd, new_running
    if variant == "paper_form":
        return c + (w - 1) * upd, new_running
    return u + w * upd, new_running


_APG_BUGS = [
    ("onto_uncond", "you projected onto eps_uncond; APG splits the update into the parts parallel and orthogonal "
                    "to the CONDITIONAL prediction (v1 = normalize(pred_cond) in diffusers)."),
    ("not_normalised", "you projected onto eps_c without normalising it: the parallel part is ||eps_c||^2 times "
                       "too long. Project onto the unit vector along eps_c, per sample (v1 in diffusers)."),
    ("all_dims", "norms over the wrong dimensions: you took one norm / inner product over the whole batch. Each "
                 "sample gets its own: dim = every dim but the batch one, keepdim=True."),
    ("spatial_dims", "norms over the wrong dimensions: you took one norm per channel (spatial dims only). diffusers' "
                     "default (norm_dim=None) uses every dim but the batch one, channels included."),
    ("channel_dim", "norms over the wrong dimensions: you took the norm over the channels only (dim=1). diffusers' "
                    "default (norm_dim=None) uses every dim but the batch one."),
    ("eta_swapped", "eta weights the wrong part: you returned eta * d_perp + d_par. eta down-weights the PARALLEL "
                    "part and leaves the orthogonal one whole."),
    ("no_perp", "the orthogonal part is missing: you returned eta * d_par alone; the update keeps d_perp whole."),
    ("plain_cfg", "you returned plain CFG, eps_u + w * d: the projection is missing (eta must weight the part of d "
                  "parallel to eps_c)."),
    ("original", "you started from eps_c (use_original_formulation=True). diffusers' default starts from eps_u "
                 "(the last lines of normalized_guidance)."),
    ("paper_form", "you used the paper's form eps_c + (w - 1) * (...); diffusers' normalized_guidance (default "
                   "use_original_formulation=False) starts from eps_u with guidance_scale as it is (its last lines)."),
    ("no_threshold", "norm_threshold ignored: with r > 0 each sample's d is shrunk to norm r where it is longer "
                     "(the norm_threshold branch of normalized_guidance)."),
    ("threshold_always", "the threshold rescales every sample to norm r; it only SHRINKS those longer than r "
                         "(read how diffusers caps the scale factor at 1)."),
    ("threshold_on_update", "the threshold is applied to the final update; diffusers applies it to d, before the "
                            "projection."),
    ("no_momentum", "the momentum is not applied: you used the raw d = pred_cond - pred_uncond. With a buffer, d is "
                    "the buffer's running average after this call's update (the momentum_buffer lines at the top "
                    "of normalized_guidance)."),
    ("ema_momentum", "momentum as an exponential moving average (beta * m + (1 - beta) * d); read diffusers' "
                     "MomentumBuffer.update: there is no 1 - beta."),
    ("threshold_before_momentum", "order: you thresholded d before the momentum; diffusers averages first "
                                  "(MomentumBuffer.update), then thresholds the running average."),
]


def _apg_predictions(gen, shape, dtype, sizes):
    """(eps_c, eps_u) with eps_u = lam * eps_c + noise per sample, so d = eps_c - eps_u has a large part
    parallel to eps_c (eta's effect is large), and per-sample sizes ``sizes`` (B,) (a norm threshold
    between them shrinks some samples by a large factor and leaves the others alone)."""
    size = sizes.reshape(-1, *[1] * (len(shape) - 1))  # (B, 1, ..., 1)
    lam = uniform(gen, 0.3, 0.7)
    c = randn(gen, shape, torch.float64) * size
    u = lam * c + 0.6 * randn(gen, shape, torch.float64) * size
    return c.to(dtype), u.to(dtype)


def _which_apg_bug(got, outs, scale, dtype):
    """The label of the typical bug whose output ``got`` matches, each judged within rounding noise
    of its OWN magnitude (a bug may return values far larger than the right ones), or None."""
    if not isinstance(got, torch.Tensor) or not got.is_floating_point():
        return None
    g = got.detach().double().cpu()
    for variant, label in _APG_BUGS:
        cand = outs[variant][0]
        if cand.shape != g.shape:
            continue
        tol = 4 * TOL_APG[dtype] * (scale + float(cand.abs().max()))
        if float((g - cand).abs().max()) <= tol and float((cand - outs["right"][0]).abs().max()) > tol:
            return label
    return None


def _check_buffer(name, state, previous, expected, d, beta, r, scale, dtype):
    """The learner's buffer after the call must hold d + beta * previous (one MomentumBuffer.update)."""
    if _running_close(state, expected, scale, dtype):
        return
    if isinstance(state, int) and state == 0:
        what = "still 0: the buffer was never updated"
    elif _running_close(state, d + beta * expected, scale, dtype):
        what = "what TWO updates give: update it once per call"
    elif r > 0 and _running_close(state, d * torch.clamp(r / _norm(d, list(range(1, d.ndim))), max=1.0) + beta * previous,
                                  scale, dtype):
        what = ("the thresholded d plus momentum: diffusers averages first (MomentumBuffer.update with the raw "
                "d), then thresholds the running average")
    elif _running_close(state, beta * previous + (1 - beta) * d, scale, dtype):
        what = ("beta * m + (1 - beta) * d, an exponential moving average; read diffusers' MomentumBuffer.update: "
                "there is no 1 - beta")
    else:
        what = f"{describe(state)}, not one MomentumBuffer.update of its previous value"
    raise CheckFailed(f"Likely bug: momentum: after your call the buffer's running_average is {what}.\n{name}: "
                      f"update the buffer once per call with the raw difference of the predictions and use its new "
                      f"running_average as d (the momentum_buffer lines of normalized_guidance).\nHint: {APG_EQ}")


def _running_close(got, expected, scale, dtype):
    if isinstance(expected, int):
        return isinstance(got, int) and got == expected
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    return float((got.double() - expected).abs().max()) <= 10 * TOL_APG[dtype] * scale


def check_normalized_guidance(fn, gen):
    """Random ranks 2..5, w > 1, eta in [0, 1) (never 1, where the projection vanishes), float32 and
    float64: no extras; a norm threshold between the samples' norms (some shrunk, some not); and a
    3-step run with that threshold and a momentum buffer (diffusers' MomentumBuffer, beta < 0 or > 0), the learner's
    buffer and diffusers' each fed their own function's calls. Each output compared with a float64
    ground truth (tolerance scaled to the values) and with diffusers' normalized_guidance."""
    eta = lambda: round(choice(gen, [0.0, uniform(gen, 0.05, 0.9)]), 3)  # noqa: E731
    cases = [  # (rank, dtype, eta, threshold?, momentum beta or None, steps)
        (randint(gen, 3, 5), torch.float32, eta(), False, None, 1),
        (randint(gen, 2, 5), torch.float64, eta(), False, None, 1),
        (randint(gen, 3, 5), torch.float32, eta(), True, None, 1),
        (randint(gen, 3, 5), torch.float32, eta(), True, round(choice(gen, [-0.75, -0.5, -0.25, 0.5]) + uniform(gen, -0.05, 0.05), 3), 3),
    ]
    for rank, dtype, e, use_r, beta, steps in cases:
        shape = _shape(gen, rank)
        w = _scale(gen)
        sizes = torch.linspace(0.5, 3.0, shape[0], dtype=torch.float64)[torch.randperm(shape[0], generator=gen)]
        trajectory = [_apg_predictions(gen, shape, dtype, sizes) for _ in range(steps)]
        r = 0.0
        if use_r:  # between the shortest and the longest sample's ||d|| (first step): some shrunk, some not
            norms = (trajectory[0][0] - trajectory[0][1]).double().flatten(1).norm(dim=1)
            r = round(float((norms.min() * norms.max()).sqrt()), 4)
        mine = MomentumBuffer(beta) if beta is not None else None
        theirs = MomentumBuffer(beta) if beta is not None else None
        running = {v: 0 for v, _ in _APG_BUGS} | {"right": 0}
        for step, (c, u) in enumerate(trajectory):
            c_in, u_in = c.clone(), u.clone()
            extras = (f", momentum_buffer=MomentumBuffer(momentum={beta}) at step {step + 1} of {steps}"
                      if beta is not None else "")
            name = (f"normalized_guidance(pred_cond <{dtype} (B, ...) = {shape}>, pred_uncond, guidance_scale={w}, "
                    f"eta={e}, norm_threshold={r}{extras})")
            try:
                got = fn(c_in, u_in, w, e, r, momentum_buffer=mine) if mine is not None else fn(c_in, u_in, w, e, r)
            except RuntimeError as exc:
                if "matrix_norm" not in str(exc):
                    raise
                raise CheckFailed(
                    f"Likely bug: x.norm(dim=dims) with more than two dims: without p, Tensor.norm computes the "
                    f"Frobenius MATRIX norm, which takes at most two dims. Use a vector norm "
                    f"(read how normalized_guidance calls .norm, or see torch.linalg.vector_norm).\n{name} raised {describe_exception(exc)}") from exc
            require_unchanged(name, (c, u), (c_in, u_in))
            c64, u64 = c.double(), u.double()
            outs = {v: _apg64(c64, u64, w, e, r, running[v], beta, v) for v in running}
            truth, new_running = outs["right"]
            d_max = float((new_running if beta is not None else c64 - u64).abs().max())
            scale = float(truth.abs().max()) + abs(w) * d_max
            tol = TOL_APG[dtype] * scale
            if mine is not None:
                _check_buffer(name, mine.running_average, running["right"], new_running, c64 - u64, beta, r,
                              scale, dtype)
            bug = _which_apg_bug(got, outs, scale, dtype)
            diagnose = [(bug, got.detach().clone())] if bug else None  # matched below, on its own scale
            assert_close(name, got, truth.to(dtype), atol=tol, rtol=0.0, diagnose=diagnose, hint=APG_EQ)
            with torch.no_grad():
                theirs_out = diffusers_apg(c, u, w, theirs, e, r)
            assert_close(f"{name} vs diffusers' normalized_guidance", got, theirs_out, atol=2 * tol, rtol=0.0)
            running = {v: outs[v][1] for v in running}
