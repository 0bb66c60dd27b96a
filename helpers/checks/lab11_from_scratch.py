"""Checks of Lab 11 (train a diffusion model from scratch): one ``check_<name>(fn, gen)`` per
exercise.

Every check draws fresh inputs from ``gen`` (widths, resolutions, schedules, timesteps,
prediction types, gamma, dropout probabilities, guidance scales) and compares with diffusers
on the same inputs: ``ResnetBlock2D`` loaded with the learner's block's weights,
``DDPMScheduler.get_velocity``, ``training_utils.compute_snr`` and the text-to-image example's
Min-SNR lines, a ``DDIMScheduler`` loop with classifier-free guidance. The UNet has no single
right answer, so its check tests what every correct one does: shapes, the given timestep
embedding called, the output changing with t and with the label, every resolution reached,
skips concatenated, every parameter used. When an output matches what a typical bug returns,
the message names that bug (the ``diagnose`` candidates, computed on the same inputs).
"""
import types

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.resnet import ResnetBlock2D
from diffusers.training_utils import compute_snr
from torch import nn

from helpers.checks._core import (CheckFailed, assert_close, choice, describe, randint, random_seed, require,
                                  require_raises, require_unchanged, uniform)
from helpers.solutions import lab11_from_scratch as ref

LAB = "lab11"

EQ_RES = ("diffusers' ResnetBlock2D (diffusers/models/resnet.py) for the default settings: norm1, SiLU, conv1; "
          "the embedding through SiLU and time_emb_proj, added as one value per channel; norm2, SiLU, conv2; "
          "plus the input (through conv_shortcut when the widths differ)")
EQ_UNET = ("the docstring's diagram (UNet2DModel in diffusers/models/unets/unet_2d.py does the same with blocks): "
           "one embedding of t and the label given to every ResBlock, a down path that halves the resolution, "
           "a middle block, an up path that concatenates the matching skip")
EQ_TARGET = ("the 'Get the target for loss depending on the prediction type' lines of diffusers' "
             "examples/text_to_image/train_text_to_image.py; v as DDPMScheduler.get_velocity "
             "(schedulers/scheduling_ddpm.py): sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample")
EQ_SNR = ("compute_snr (diffusers/training_utils.py) gives SNR_t = abar_t / (1 - abar_t); the `args.snr_gamma` "
          "branch of examples/text_to_image/train_text_to_image.py takes min(SNR_t, gamma) and divides it by SNR_t "
          "(epsilon) or SNR_t + 1 (v_prediction); Hang et al. 2023, eq. 8")
EQ_STEP = ("the docstring's recipe (train_text_to_image.py's training loop): draws t, eps, u from the generator in "
           "that order; x_t by the given add_noise; labels replaced by null_label where u < p_uncond; target by "
           "diffusion_target; the per-sample MSE (mean over all but the batch) times the Min-SNR weight when "
           "snr_gamma is given; then the mean")
EQ_CFG = ("the denoising loop of StableDiffusionPipeline.__call__: both predictions in one call on a doubled batch, "
          "eps_u + w * (eps_c - eps_u) (Ho & Salimans 2022, eq. 6), then step(eps, t, t', x) with t' the next "
          "timestep of the list, -1 after the last")


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _schedule(gen, T=None):
    """A random DDPM schedule's alphas_cumprod (float32, T steps) and its scheduler."""
    T = T or choice(gen, [50, 100, 1000])
    kind = choice(gen, ["linear", "scaled_linear", "squaredcos_cap_v2"])
    if kind == "squaredcos_cap_v2":
        sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, clip_sample=False)
    else:
        start = uniform(gen, 1e-4, 2e-3)
        sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=start, clip_sample=False,
                              beta_end=start + uniform(gen, 0.01, 0.03) * 1000 / T)
    return sched.alphas_cumprod.clone(), sched


def _timesteps(gen, B, T):
    t = torch.randint(0, T, (B,), generator=gen)
    t[0], t[-1] = 0, T - 1          # both ends of the schedule, every time
    return t


# --------------------------------------------------------------------------------- ResBlock

def _resblock_variant(block, x, emb, bug=None):
    """diffusers' ResnetBlock2D forward from its own weights, with one typical bug on."""
    act = F.silu
    h = block.conv1(act(block.norm1(x)))
    e = block.time_emb_proj(emb if bug == "no_emb_act" else act(emb))[:, :, None, None]
    if bug != "emb_after_conv2":
        h = h + e
    h = block.conv2(act(block.norm2(h)))
    if bug == "emb_after_conv2":
        h = h + e
    skip = x if block.conv_shortcut is None else block.conv_shortcut(x)
    return h if bug == "no_residual" else skip + h


def _one_block(cls, gen, cin, cout, emb_dim, groups):
    torch.manual_seed(random_seed(gen))
    try:
        block = cls(cin, cout, emb_dim, groups)
    except NotImplementedError:
        raise
    require(isinstance(block, nn.Module), f"ResBlock({cin}, {cout}, {emb_dim}, {groups}) is not an nn.Module: "
                                          f"{describe(block)}.")
    theirs = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=emb_dim, groups=groups, eps=1e-6)
    with torch.no_grad():                   # random norms and biases too: every term shows
        for p in block.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.2)
    sd = block.state_dict()
    expected_keys = set(theirs.state_dict())
    missing, extra = sorted(expected_keys - set(sd)), sorted(set(sd) - expected_keys)
    require(not missing and not extra,
            f"ResBlock({cin} -> {cout}, emb {emb_dim}): its parameters are not ResnetBlock2D's. Missing: {missing}; "
            f"not in ResnetBlock2D: {extra}.\nHint: the attribute names of the docstring; conv_shortcut only when "
            f"the widths differ ({'they do' if cin != cout else 'they do not'} here).")
    bad = [f"{k}: {tuple(v.shape)}, ResnetBlock2D has {tuple(theirs.state_dict()[k].shape)}"
           for k, v in sd.items() if tuple(v.shape) != tuple(theirs.state_dict()[k].shape)]
    require(not bad, f"ResBlock({cin} -> {cout}, emb {emb_dim}): wrong parameter shapes: {bad}.\nHint: {EQ_RES}")
    theirs.load_state_dict(sd)
    for name, m in (("norm1", block.norm1), ("norm2", block.norm2)):
        require(isinstance(m, nn.GroupNorm) and abs(m.eps - 1e-6) < 1e-12 and m.num_groups == groups,
                f"ResBlock.{name}: expected GroupNorm({groups}, ..., eps=1e-6) as ResnetBlock2D's, got {m}.")
    B, H, W = randint(gen, 1, 3), randint(gen, 3, 9), randint(gen, 3, 9)
    x, emb = _randn(gen, B, cin, H, W), _randn(gen, B, emb_dim)
    with torch.no_grad():
        got = block(x, emb)
        expected = theirs(x, emb)
        diag = [(hint, _resblock_variant(theirs, x, emb, bug)) for bug, hint in (
            ("no_emb_act", "the embedding goes through SiLU before time_emb_proj (ResnetBlock2D: "
                           "temb = self.nonlinearity(temb))."),
            ("emb_after_conv2", "the embedding is added after conv1, before norm2, not at the end."),
            ("no_residual", "the input (through conv_shortcut when the widths differ) is added to the output."))]
    assert_close(f"ResBlock({cin} -> {cout}) output", got, expected, atol=2e-5, rtol=2e-5, hint=EQ_RES,
                 diagnose=diag)


def check_ResBlock(cls, gen):
    """Two blocks (widths that differ, then equal ones) against diffusers' ResnetBlock2D with the
    same (randomised) weights: parameter names and shapes, GroupNorm settings, output."""
    if not isinstance(cls, type):
        raise CheckFailed(f"ResBlock: expected a class (an nn.Module subclass), got {describe(cls)}.")
    groups = choice(gen, [4, 8])
    cin, cout = choice(gen, [(groups, 2 * groups), (2 * groups, groups), (groups * 3, groups * 2)])
    _one_block(cls, gen, cin, cout, randint(gen, 8, 40), groups)
    c = choice(gen, [groups, 2 * groups])
    _one_block(cls, gen, c, c, randint(gen, 8, 40), groups)


# --------------------------------------------------------------------------------- TinyUNet

def check_TinyUNet(cls, gen):
    """A random small configuration: the output's shape and dtype; the given time_embedding is
    used; every parameter gets a gradient; the ResBlocks run at every resolution, the up path's
    take the concatenated skips; the output changes with t, with the label, and the null label
    K works."""
    if not isinstance(cls, type):
        raise CheckFailed(f"TinyUNet: expected a class (an nn.Module subclass), got {describe(cls)}.")
    K = randint(gen, 2, 7)
    groups = 4
    channels = choice(gen, [(8, 16), (8, 16, 16), (16, 8), (8, 8, 16)])
    emb_dim = choice(gen, [16, 24, 32])
    calls = []

    def spy(t, dim):
        calls.append((tuple(t.shape), dim))
        return ref.sinusoidal(t, dim)

    torch.manual_seed(random_seed(gen))
    model = cls(K, channels, emb_dim, time_embedding=spy, groups=groups)
    require(isinstance(model, nn.Module), f"TinyUNet(...) is not an nn.Module: {describe(model)}.")
    with torch.no_grad():      # a zero-initialised head would hide every dependence below
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.05)
    levels = len(channels)
    side = 4 * 2 ** (levels - 1) * choice(gen, [1, 2])
    B = randint(gen, 2, 4)
    x = _randn(gen, B, 3, side, side)
    t = torch.randint(0, 1000, (B,), generator=gen)
    y = torch.randint(0, K, (B,), generator=gen)
    seen = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append((inp[0].shape, out.shape)))
             for m in model.modules() if hasattr(m, "time_emb_proj")]
    out = model(x, t, y)
    for h in hooks:
        h.remove()
    name = f"TinyUNet({K}, channels={channels}, emb_dim={emb_dim})"
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == (B, 3, side, side),
            f"{name}: forward on x {tuple(x.shape)} returned {describe(out)}; expected shape {(B, 3, side, side)}.")
    require(out.dtype == x.dtype and torch.isfinite(out).all(), f"{name}: the output is {describe(out)} with "
            f"{int((~torch.isfinite(out)).sum())} non-finite values; expected finite float32.")
    require(len(calls) >= 1, f"{name}: the time_embedding function given to __init__ was never called.\n"
                             "Hint: embed t with self.time_embedding (the notebook passes your Lab 07 function).")
    require(len(seen) >= 2 * levels + 1,
            f"{name}: {len(seen)} ResBlock(s) ran in forward; expected at least {2 * levels + 1} (one per resolution "
            f"down, one per resolution up, one in the middle).\nHint: {EQ_UNET}")
    lowest = min(s[0][-1] for s in seen)
    require(lowest == side // 2 ** (levels - 1),
            f"{name}: the smallest resolution a ResBlock saw is {lowest}x{lowest}; with {levels} resolutions and a "
            f"{side}x{side} input it should be {side // 2 ** (levels - 1)}.\nHint: halve H and W after every "
            "resolution but the last (a stride-2 conv), double them on the way up.")
    for i in range(levels):
        res = side // 2 ** i
        require(any(s[0][-1] == res and s[0][1] > s[1][1] for s in seen),
                f"{name}: no ResBlock at {res}x{res} takes more channels than it gives: the up path should take the "
                "concatenation of its input and the matching skip (torch.cat on dim 1) at every resolution.\n"
                "Hint: " + EQ_UNET)
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    require(not unused, f"{name}: these parameters get no gradient, so forward does not use them: {unused[:6]}"
                        f"{' ...' if len(unused) > 6 else ''}.\nHint: {EQ_UNET}")
    with torch.no_grad():
        base = model(x, t, y)
        t2 = (t + torch.randint(200, 800, (B,), generator=gen)) % 1000
        dt = (model(x, t2, y) - base).abs().amax()
        y2 = (y + torch.randint(1, K, (B,), generator=gen)) % K
        dy = (model(x, t, y2) - base).abs().amax()
        null = model(x, t, torch.full_like(y, K))
    scale = base.abs().amax() + 1e-12
    require(dt > 1e-4 * scale, f"{name}: the output does not change when t does (max change {float(dt):.2e}).\n"
                               "Hint: add the embedding of t to every ResBlock (emb).")
    require(dy > 1e-4 * scale, f"{name}: the output does not change when the label does (max change "
                               f"{float(dy):.2e}).\nHint: add the label's embedding (a table of K + 1 rows) to emb.")
    require(torch.isfinite(null).all() and (null - base).abs().amax() > 1e-4 * scale,
            f"{name}: the null label K = {K} must be a label of its own (the table has K + 1 rows).")


# ------------------------------------------------------------------------- diffusion_target

def check_diffusion_target(fn, gen):
    """The three targets against diffusers (the noise, DDPMScheduler.get_velocity, the sample)
    on random shapes, schedules and dtypes, and a ValueError for an unknown prediction type."""
    acp, sched = _schedule(gen)
    T = len(acp)
    for dtype in (torch.float32, torch.float64):
        B = randint(gen, 3, 6)
        shape = choice(gen, [(B, 3, 4, 4), (B, randint(gen, 2, 9)), (B, 2, 3, 4, 5)])
        x0, eps = _randn(gen, *shape, dtype=dtype), _randn(gen, *shape, dtype=dtype)
        t = _timesteps(gen, B, T)
        before = (x0.clone(), eps.clone(), t.clone(), acp.clone())
        tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
        for ptype in ("epsilon", "v_prediction", "sample"):
            got = fn(x0, eps, t, acp, ptype)
            expected = {"epsilon": eps, "sample": x0}.get(ptype)
            if expected is None:
                expected = sched.get_velocity(x0, eps, t)
            a = acp.to(dtype)[t].reshape(-1, *([1] * (len(shape) - 1)))
            diag = [("v = sqrt(abar) * noise - sqrt(1 - abar) * sample: the sign or the order is swapped.",
                     a.sqrt() * x0 - (1 - a).sqrt() * eps),
                    ("v = sqrt(abar) * noise - sqrt(1 - abar) * sample: the coefficients are swapped.",
                     (1 - a).sqrt() * eps - a.sqrt() * x0),
                    ("the square roots of abar_t and 1 - abar_t are missing.", a * eps - (1 - a) * x0),
                    ("epsilon's target is the noise, sample's is x_0: they are swapped.", eps if ptype == "sample" else x0)]
            if dtype != torch.float32:  # abar_t's roots taken in float32, then promoted: off by ~1e-7
                a32 = acp[t].reshape(-1, *([1] * (len(shape) - 1)))
                diag.append(("abar_t stayed float32: its square roots lose digits a float64 sample keeps. Cast "
                             "alphas_cumprod to the sample's dtype (and device) before indexing, as get_velocity does.",
                             a32.sqrt() * eps - (1 - a32).sqrt() * x0))
            assert_close(f"diffusion_target({ptype!r}, {dtype})", got, expected, hint=EQ_TARGET, diagnose=diag, **tol)
        require_unchanged("diffusion_target", before, (x0, eps, t, acp))
    require_raises("diffusion_target(prediction_type='velocity')",
                   lambda: fn(x0, eps, t, acp, "velocity"), "an unknown prediction type, as the training script")


# ------------------------------------------------------------------------ min_snr_loss_weights

def check_min_snr_loss_weights(fn, gen):
    """The weights of the three prediction types against compute_snr and the text-to-image
    example's lines, random schedules, timesteps (both ends included) and gamma."""
    for _ in range(2):
        acp, sched = _schedule(gen)
        T = len(acp)
        t = _timesteps(gen, randint(gen, 4, 12), T)
        gamma = choice(gen, [1.0, 5.0, uniform(gen, 0.5, 20.0)])
        snr = compute_snr(types.SimpleNamespace(alphas_cumprod=acp), t)                 # (B,)
        base = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]      # the example's line
        expected = {"epsilon": base / snr, "v_prediction": base / (snr + 1), "sample": base}
        for ptype in ("epsilon", "v_prediction", "sample"):
            got = fn(t, acp, gamma, ptype)
            a = acp[t].double()
            diag = [("min(SNR, gamma), not max.", (torch.maximum(snr, torch.full_like(snr, gamma))
                                                   / {"epsilon": snr, "v_prediction": snr + 1, "sample": 1}[ptype])),
                    ("v_prediction divides by SNR_t + 1, epsilon by SNR_t.", base / snr if ptype != "epsilon"
                     else base / (snr + 1)),
                    ("SNR_t = abar_t / (1 - abar_t), the squared ratio of the two coefficients of x_t: here it is "
                     "not squared.", (torch.minimum((a / (1 - a)).sqrt(), torch.full_like(a, gamma))
                                      / {"epsilon": (a / (1 - a)).sqrt(), "v_prediction": (a / (1 - a)).sqrt() + 1,
                                         "sample": 1}[ptype]).float()),
                    ("the weights are gamma / SNR_t: the min with SNR_t is missing.",
                     gamma / {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[ptype])]
            assert_close(f"min_snr_loss_weights({ptype!r}, gamma={gamma:g})", got, expected[ptype],
                         atol=1e-6, rtol=1e-5, hint=EQ_SNR, diagnose=diag)
    require_raises("min_snr_loss_weights(prediction_type='x0')", lambda: fn(t, acp, 5.0, "x0"),
                   "an unknown prediction type")


# ----------------------------------------------------------------------------- training_step

class _Toy(nn.Module):
    """A tiny deterministic conditional denoiser: a conv, plus a per-label and a per-t channel shift."""

    def __init__(self, K, T, C=3):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.label = nn.Embedding(K + 1, C)
        self.time = nn.Embedding(T, C)

    def forward(self, x, t, y):
        return self.conv(x) + (self.label(y) + self.time(t))[:, :, None, None]


def _step_variant(model, x0, labels, acp, seed, p, null, ptype, gamma, bug=None):
    """The training loss of the docstring, written independently of the reference, one bug on."""
    g = torch.Generator().manual_seed(seed)
    B, T = x0.shape[0], len(acp)
    t = torch.randint(1 if bug == "t_from_1" else 0, T, (B,), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    u = torch.rand(B, generator=g)
    drop = (u >= p) if bug == "drop_inverted" else (u < p)
    y = labels if bug == "no_drop" else torch.where(drop, torch.full_like(labels, null), labels)
    a = acp[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = model(xt, t, y)
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[
        "epsilon" if bug == "target_always_eps" else ptype]
    per = ((pred - target) ** 2).flatten(1).mean(1)
    if gamma is not None and bug != "no_weights":
        snr = a.flatten() / (1 - a.flatten())
        w = snr.clamp(max=gamma)
        w = {"epsilon": w / snr, "v_prediction": w / (snr + 1), "sample": w}[ptype]
        per = per * w
    return per.mean()


def _recording_add_noise(used):
    """DDPM's q(x_t | x_0) sample (Lab 01's add_noise) that records each call in `used`."""
    def add_noise(original_samples, noise, timesteps, alphas_cumprod):
        used.append(tuple(timesteps.shape))
        a = alphas_cumprod.to(original_samples)[timesteps].view(-1, 1, 1, 1)
        return a.sqrt() * original_samples + (1 - a).sqrt() * noise
    return add_noise


def check_training_step(fn, gen):
    """Three random configurations (prediction type, Min-SNR on or off, p_uncond among 0, a
    fraction and 1) against an independent computation from the same generator seed: the loss,
    its gradient, the given add_noise being used, the labels left unchanged."""
    configs = [("epsilon", None, 0.0), (choice(gen, ["v_prediction", "sample"]), uniform(gen, 1.0, 8.0), 1.0),
               (choice(gen, ["epsilon", "v_prediction"]), 5.0, uniform(gen, 0.2, 0.6))]
    for ptype, gamma, p in configs:
        acp, _ = _schedule(gen, T=choice(gen, [50, 100]))
        K = randint(gen, 2, 6)
        torch.manual_seed(random_seed(gen))
        model = _Toy(K, len(acp))
        B = randint(gen, 6, 12)
        x0 = _randn(gen, B, 3, 6, 6)
        labels = torch.randint(0, K, (B,), generator=gen)
        seed = random_seed(gen)
        used = []
        add_noise = _recording_add_noise(used)

        before = (x0.clone(), labels.clone(), acp.clone())
        got = fn(model, x0, labels, acp, add_noise, torch.Generator().manual_seed(seed), p_uncond=p,
                 null_label=K, prediction_type=ptype, snr_gamma=gamma)
        require_unchanged("training_step", before, (x0, labels, acp), "x0, labels or alphas_cumprod")
        require(len(used) >= 1, "training_step: the add_noise given as an argument was never called.\n"
                                "Hint: make x_t with the add_noise passed in (your Lab 01 function in the notebook).")
        name = f"training_step({ptype!r}, snr_gamma={gamma}, p_uncond={p:.2f})"
        require(isinstance(got, torch.Tensor) and got.numel() == 1,
                f"{name}: expected a 0-dim tensor (the loss), got {describe(got)}.")
        with torch.no_grad():
            expected = _step_variant(model, x0, labels, acp, seed, p, K, ptype, gamma)
            diag = [(hint, _step_variant(model, x0, labels, acp, seed, p, K, ptype, gamma, bug)) for bug, hint in (
                ("no_drop", "no label is replaced by the null label (u < p_uncond)."),
                ("drop_inverted", "the label is replaced where u < p_uncond (with probability p_uncond), not where "
                                  "u >= p_uncond."),
                ("no_weights", "with snr_gamma given, each sample's MSE is multiplied by its Min-SNR weight."),
                ("target_always_eps", "the target depends on the prediction type (diffusion_target)."),
                ("t_from_1", "t is drawn from 0 .. T-1 (torch.randint(0, T, ...)), not from 1."))]
        assert_close(name, got.detach().reshape(()).to(torch.float32), expected.to(torch.float32),
                     atol=1e-6, rtol=1e-4, hint=EQ_STEP, diagnose=diag)
        require(got.requires_grad, f"{name}: the loss has no gradient with respect to the model's weights "
                                   "(detached, or computed under torch.no_grad?).")
        model.zero_grad()
        got.backward()
        require(model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0,
                f"{name}: the loss has no gradient with respect to the model's weights (detached?).")


# -------------------------------------------------------------------------------- sample_cfg

def _ddim_step_fn(acp, calls):
    """A DDIM step (eta 0, final abar 1) that records the (t, t') it is called with."""
    def step(eps, t, prev_t, x):
        calls.append((int(t), int(prev_t)))
        a = acp[int(t)]
        a_prev = acp[int(prev_t)] if prev_t >= 0 else torch.tensor(1.0)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return step


def check_sample_cfg(fn, gen):
    """Random schedules, step counts, labels and guidance scales (one of them 1, conditional
    only): the result against a diffusers DDIMScheduler loop with CFG, and the (t, t') pairs the
    given step was called with."""
    for w in (uniform(gen, 1.5, 8.0), 1.0):
        acp, sched = _schedule(gen, T=choice(gen, [100, 1000]))
        K = randint(gen, 2, 6)
        torch.manual_seed(random_seed(gen))
        model = _Toy(K, len(acp)).eval()
        B = randint(gen, 2, 5)
        x_T = _randn(gen, B, 3, 6, 6)
        labels = torch.randint(0, K, (B,), generator=gen)
        ddim = DDIMScheduler.from_config(sched.config)
        ddim.set_timesteps(randint(gen, 3, 8))
        calls = []
        before = (x_T.clone(), labels.clone())
        got = fn(model, x_T, labels, ddim.timesteps, _ddim_step_fn(acp, calls), w, K)
        require_unchanged("sample_cfg", before, (x_T, labels), "x_T or labels")
        steps = [int(s) for s in ddim.timesteps]
        pairs = list(zip(steps, steps[1:] + [-1]))
        require(calls == pairs, f"sample_cfg: step was called with (t, t') = {calls}; expected {pairs}.\n"
                                "Hint: t' is the next timestep of the list, and -1 after the last one.")
        with torch.no_grad():
            x, cond, rev = x_T.clone(), x_T.clone(), x_T.clone()
            null = torch.full_like(labels, K)
            for t in ddim.timesteps:
                tb = torch.full((B,), int(t))
                e_u, e_c = model(x, tb, null), model(x, tb, labels)
                x = ddim.step(e_u + w * (e_c - e_u), t, x).prev_sample
                cond = ddim.step(model(cond, tb, labels), t, cond).prev_sample
                r_u, r_c = model(rev, tb, null), model(rev, tb, labels)
                rev = ddim.step(r_c + w * (r_u - r_c), t, rev).prev_sample
        diag = [("guidance pushes away from the unconditional prediction: eps_u + w (eps_c - eps_u), not "
                 "eps_c + w (eps_u - eps_c) (or the labels and the null labels are swapped).", rev)]
        if w != 1.0:
            diag.append(("the guided combination is missing: only the conditional prediction is used.", cond))
        assert_close(f"sample_cfg(guidance_scale={w:.2f}, {len(steps)} steps)", got, x, atol=1e-4, rtol=1e-4,
                     hint=EQ_CFG, diagnose=diag)
