"""Checks of Lab 12 (flow matching): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (ranks, batch sizes, sigmas, shifts, mu, step
counts) and compares the learner's output with the reference AND with diffusers on the same
inputs: ``FlowMatchEulerDiscreteScheduler.scale_noise``, its sigmas with ``shift=`` in the
config, its ``time_shift`` with dynamic shifting, ``set_timesteps(mu=...)``, its ``step``,
and ``diffusers.pipelines.flux.pipeline_flux.calculate_shift``. When the output matches what a
typical bug returns, the message names that bug (the ``diagnose`` candidates below).
"""
import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift

from helpers.checks._core import (CheckFailed, as_number, assert_close, choice, describe, describe_exception, distinct,
                                  randint, randn, require_unchanged, uniform)
from helpers.solutions import lab12_flow_matching as ref

LAB = "lab12"

EQ_INTERP = ("the forward path of rectified flow, as the last lines of FlowMatchEulerDiscreteScheduler.scale_noise "
             "(scheduling_flow_match_euler_discrete.py) compute it: the sample at sigma = 0, the noise at sigma = 1, "
             "straight in between; one sigma per batch element, broadcast over every other axis")
EQ_TARGET = ("the velocity of the point on the path as sigma grows (the derivative of flow_interpolate by sigma): "
             "what FlowMatchEulerDiscreteScheduler.step multiplies by (sigma_next - sigma)")
EQ_SHIFT = ("the line after `if not use_dynamic_shifting` in FlowMatchEulerDiscreteScheduler.__init__ (the same line "
            "in step 2 of set_timesteps): it keeps 0 and 1 fixed and is the identity for shift = 1")
EQ_MU = "the three lines of calculate_shift in diffusers/pipelines/flux/pipeline_flux.py"
EQ_TSHIFT = ("FlowMatchEulerDiscreteScheduler._time_shift_exponential (end of scheduling_flow_match_euler_discrete.py), "
             "which set_timesteps reaches through self.time_shift(mu, 1.0, sigmas) when use_dynamic_shifting is on")
EQ_STEP = ("the deterministic branch of FlowMatchEulerDiscreteScheduler.step: the sample upcast to float32, moved by "
           "(sigma_next - sigma) times the model output, cast back to the model output's dtype")


def _call(name, fn, *args, hint=""):
    """Call the learner; turn a shape or type error into a message that says what to fix."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckFailed(f"{name} raised {describe_exception(exc)}\nHint: {hint}") from exc


def _shape(gen):
    """A random shape of rank 2 to 5 (2-D points, tokens, latents, video latents)."""
    rank = randint(gen, 2, 5)
    return (randint(gen, 2, 5),) + tuple(randint(gen, 1, 5) for _ in range(rank - 1))


def _bcast(s, like):
    return s.reshape(-1, *([1] * (like.ndim - 1)))


# --------------------------------------------------------------------------- flow_interpolate

INTERP_BUGS = [
    ("swapped", "sample and noise swapped: at sigma = 0 the point is the SAMPLE (scale_noise returns "
                "sigma * noise + ... ; read which tensor sigma multiplies)."),
    ("ddpm", "square roots of the weights (DDPM's sqrt(alpha_bar) / sqrt(1 - alpha_bar) form): the flow's path is "
             "straight, its weights are linear in sigma."),
    ("vp", "variance-preserving weights (cos/sin or sqrt(1 - sigma^2)): the flow's weights are linear in sigma "
           "and sum to 1."),
    ("noise_only", "the sample's weight is missing: at sigma = 0 the point must be the sample itself."),
    ("first_sigma", "one sigma for the whole batch (the first): each batch element has its own sigma."),
]


def _interp_variant(sample, noise, sigmas, bug):
    s = _bcast(sigmas.to(torch.float64), sample)
    x, e = sample.double(), noise.double()
    if bug == "swapped":
        out = s * x + (1 - s) * e
    elif bug == "ddpm":
        out = (1 - s).sqrt() * x + s.sqrt() * e
    elif bug == "vp":
        out = (1 - s ** 2).sqrt() * x + s * e
    elif bug == "noise_only":
        out = s * e + x * 0
    else:  # first_sigma
        out = s[:1] * e + (1 - s[:1]) * x
    return out.to(sample.dtype)


def check_flow_interpolate(fn, gen):
    """Random ranks 2-5 and batch sizes, one sigma per element in (0, 1) plus 0 and 1,
    float32 and float64; the sigmas picked from a scheduler's table (random shift and step
    count) and compared with its scale_noise at those timesteps."""
    for dtype in (torch.float32, torch.float64):
        shape = _shape(gen)
        B = shape[0]
        shift = choice(gen, [1.0, 3.0, uniform(gen, 1.5, 6.0)])
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(randint(gen, B + 2, 40))
        idx = torch.randperm(len(sched.timesteps), generator=gen)[:B]
        idx[0] = 0                                     # sigma = 1 (pure noise) for the first element
        sigmas = sched.sigmas[idx].to(dtype)
        if B > 2:
            sigmas[1] = 0.0                            # the clean sample for the second
        sample, noise = randn(gen, shape, dtype), randn(gen, shape, dtype)
        ins = [sample.clone(), noise.clone(), sigmas.clone()]
        name = f"flow_interpolate(sample={describe(sample)}, noise=..., sigmas={describe(sigmas)})"
        got = _call(name, fn, *ins, hint=EQ_INTERP)
        require_unchanged(name, [sample, noise, sigmas], ins)
        tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
        diag = [(label, _interp_variant(sample, noise, sigmas, b)) for b, label in INTERP_BUGS]
        assert_close(name, got, ref.flow_interpolate(sample, noise, sigmas), **tol, diagnose=diag, hint=EQ_INTERP)
        if B <= 2:
            continue
        t = sched.timesteps[idx]                     # the same points through diffusers
        if dtype == torch.float32:
            want = sched.scale_noise(sample, t, noise)
            want[1] = sample[1]                        # the element set to sigma = 0 above
            assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler.scale_noise", got, want, **tol)
    # a plain list of sigmas, on a rank-2 batch (2-D points)
    B = randint(gen, 3, 6)
    pts, eps = randn(gen, (B, 2)), randn(gen, (B, 2))
    sig = [round(uniform(gen, 0.0, 1.0), 3) for _ in range(B)]
    name = f"flow_interpolate(sample={describe(pts)}, noise=..., sigmas=list {sig})"
    got = _call(name, fn, pts, eps, sig, hint=EQ_INTERP)
    assert_close(name, got, ref.flow_interpolate(pts, eps, torch.tensor(sig)), atol=1e-6, rtol=1e-6,
                 hint="accept a list of numbers as sigmas (torch.as_tensor).")


# --------------------------------------------------------------------------- flow_velocity_target

TARGET_BUGS = [
    ("sign", "sign flipped: the velocity points from the sample (sigma = 0) to the noise (sigma = 1), "
             "d/dsigma of your flow_interpolate."),
    ("eps", "that is the noise (epsilon prediction's target), not the velocity: the sample enters too."),
    ("x0", "that is the sample (x0 prediction's target), not the velocity."),
    ("v_ddpm", "a v-prediction target of the DDPM family (Salimans & Ho 2022) at sigma = 1/2; the flow's "
               "velocity does not depend on sigma."),
]


def check_flow_velocity_target(fn, gen):
    """Random ranks and dtypes; the target must be the sigma-derivative of the path, checked
    against the reference and by a finite difference of the reference path."""
    for dtype in (torch.float32, torch.float64):
        shape = _shape(gen)
        sample, noise = randn(gen, shape, dtype), randn(gen, shape, dtype)
        ins = [sample.clone(), noise.clone()]
        name = f"flow_velocity_target(sample={describe(sample)}, noise=...)"
        got = _call(name, fn, *ins, hint=EQ_TARGET)
        require_unchanged(name, [sample, noise], ins)
        r = math.sqrt(0.5)   # DDPM's v = sqrt(abar) eps - sqrt(1 - abar) x0 at abar = 1/2
        diag = [(label, cand) for (_, label), cand in
                zip(TARGET_BUGS, [sample - noise, noise, sample, r * noise - r * sample])]
        tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
        assert_close(name, got, ref.flow_velocity_target(sample, noise), **tol, diagnose=diag, hint=EQ_TARGET)
        if dtype == torch.float64:                   # the derivative of the path, by a central difference
            s, h = uniform(gen, 0.2, 0.8), 1e-4
            B = shape[0]
            fd = (ref.flow_interpolate(sample, noise, torch.full((B,), s + h, dtype=dtype))
                  - ref.flow_interpolate(sample, noise, torch.full((B,), s - h, dtype=dtype))) / (2 * h)
            assert_close(f"{name} vs d x_sigma / d sigma (finite difference)", got, fd, atol=1e-8, rtol=1e-8)


# --------------------------------------------------------------------------- shift_sigmas

SHIFT_BUGS = [
    ("inverse", "the inverse shift (toward LOW noise): shift > 1 must move every sigma UP, toward 1."),
    ("no_minus_one", "denominator 1 + shift * sigma: it is 1 + (shift - 1) * sigma, so that sigma = 1 stays 1."),
    ("power", "a power of sigma: SD3's shift is a ratio of linear terms (read the line in __init__)."),
    ("times", "shift times sigma, not clipped and not a ratio: sigma = 1 must stay 1."),
]


def _shift_variant(s, shift, bug):
    s = s.double()
    if bug == "inverse":
        return s / (shift - (shift - 1) * s)
    if bug == "no_minus_one":
        return shift * s / (1 + shift * s)
    if bug == "power":
        return s ** (1 / shift)
    return shift * s


def check_shift_sigmas(fn, gen):
    """Random shifts (SD3's 3.0, values below and above 1), on the scheduler's 1000 training
    sigmas (compared with a scheduler built with shift= in its config) and on a random grid of
    inference sigmas in float64 (compared with set_timesteps)."""
    shift = choice(gen, [3.0, round(uniform(gen, 1.2, 8.0), 3), round(uniform(gen, 0.3, 0.9), 3)])
    base = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas.clone()       # (1000,) unshifted, float32
    ins = base.clone()
    name = f"shift_sigmas(sigmas={describe(base)} (the scheduler's 1000 training sigmas), shift={shift})"
    got = _call(name, fn, ins, shift, hint=EQ_SHIFT)
    require_unchanged(name, [base], [ins])
    diag = [(label, _shift_variant(base, shift, b).float()) for b, label in SHIFT_BUGS]
    assert_close(name, got, ref.shift_sigmas(base, shift), atol=1e-6, rtol=1e-6, diagnose=diag, hint=EQ_SHIFT)
    assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler(shift={shift}).sigmas", got,
                 FlowMatchEulerDiscreteScheduler(shift=shift).sigmas, atol=1e-6, rtol=1e-6)
    # the inference grid of set_timesteps, before its shift (from sigma_max to sigma_min of the shifted table)
    n = randint(gen, 2, 30)
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    grid = torch.linspace(sched.sigma_max, sched.sigma_min, n, dtype=torch.float64)
    name = f"shift_sigmas(sigmas={describe(grid)}, shift={shift})"
    got = _call(name, fn, grid.clone(), shift, hint=EQ_SHIFT)
    diag = [(label, _shift_variant(grid, shift, b)) for b, label in SHIFT_BUGS]
    assert_close(name, got, ref.shift_sigmas(grid, shift), atol=1e-12, rtol=1e-12, diagnose=diag, hint=EQ_SHIFT)
    sched.set_timesteps(n)
    assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler(shift={shift}).set_timesteps({n}).sigmas[:-1]",
                 got.float(), sched.sigmas[:-1], atol=2e-6, rtol=2e-6)


# --------------------------------------------------------------------------- calculate_shift

MU_BUGS = [
    ("swapped", "the two points swapped (max_shift at base_seq_len): mu grows with the number of tokens."),
    ("no_intercept", "intercept missing: the line must pass through (base_seq_len, base_shift)."),
    ("plus_intercept", "intercept sign: b = base_shift - m * base_seq_len."),
    ("inverted_slope", "slope upside down: rise in shift over rise in tokens."),
    ("clamped", "clamped to [base_shift, max_shift]: diffusers' line extrapolates outside the two points."),
]


def _mu_variant(n, a, b_, s0, s1, bug):
    if bug == "swapped":
        s0, s1 = s1, s0
    m = (b_ - a) / (s1 - s0) if bug == "inverted_slope" else (s1 - s0) / (b_ - a)
    if bug == "no_intercept":
        return n * m
    b = s0 + m * a if bug == "plus_intercept" else s0 - m * a
    mu = n * m + b
    if bug == "clamped":
        mu = min(max(mu, min(s0, s1)), max(s0, s1))
    return mu


def check_calculate_shift(fn, gen):
    """FLUX's defaults at its resolutions (256 and 1024 px), a token count outside the line (it
    extrapolates), and random configs (SD3.5's and FLUX's scheduler configs differ); each
    compared with diffusers.pipelines.flux.pipeline_flux.calculate_shift."""
    px = choice(gen, [256, 512, 768])
    cases = [((px // 16) ** 2, {}), (4096, {}), (randint(gen, 4, 200), {}),
             (randint(gen, 64, 6000), dict(base_seq_len=choice(gen, [64, 256]), max_seq_len=choice(gen, [4096, 8192]),
                                           base_shift=round(uniform(gen, 0.2, 0.8), 3),
                                           max_shift=round(uniform(gen, 1.0, 3.0), 3)))]
    for n, kw in cases:
        name = f"calculate_shift({n}{''.join(f', {k}={v}' for k, v in kw.items())})"
        got = as_number(name, _call(name, fn, n, *kw.values(), hint=EQ_MU))
        want = diffusers_calculate_shift(n, **kw)
        if abs(got - want) > 1e-9 + 1e-9 * abs(want):
            a = kw.get("base_seq_len", 256), kw.get("max_seq_len", 4096), kw.get("base_shift", 0.5), \
                kw.get("max_shift", 1.15)
            lead = next((f"Likely bug: {label}\n" for b, label in MU_BUGS
                         if abs(_mu_variant(n, *a, b) - got) <= 1e-9 + 1e-9 * abs(got)), "")
            g, w = distinct(got, want)
            raise CheckFailed(f"{lead}{name}: got {g}, expected {w} (diffusers' calculate_shift).\nHint: {EQ_MU}")


# --------------------------------------------------------------------------- time_shift_exponential

TSHIFT_BUGS = [
    ("linear", "no exponential: that is _time_shift_linear (mu / (mu + ...)); FLUX's default type is "
               "\"exponential\": e^mu."),
    ("neg_mu", "e^-mu: a positive mu must move the levels UP (more noise), like an SD3 shift > 1."),
    ("times_sigma", "sigma multiplies the odds; it is their EXPONENT (read _time_shift_exponential)."),
    ("odds_inverted", "odds inverted: the scheduler raises (1 / t - 1), the signal-to-noise odds of t, to the "
                      "power sigma."),
    ("one_minus_t", "applied to 1 - t: the scheduler shifts the noise levels t themselves."),
]


def _tshift_variant(mu, sigma, t, bug):
    t = t.double()
    if bug == "linear":
        return mu / (mu + (1 / t - 1) ** sigma)
    if bug == "neg_mu":
        return math.exp(-mu) / (math.exp(-mu) + (1 / t - 1) ** sigma)
    if bug == "times_sigma":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) * sigma)
    if bug == "odds_inverted":
        return math.exp(mu) / (math.exp(mu) + (t / (1 - t)) ** sigma)
    u = 1 - t
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1) ** sigma)


def check_time_shift_exponential(fn, gen):
    """Random mu (FLUX's values at several resolutions) and exponents sigma on random levels in
    (0, 1) plus t = 1, float64 and float32, compared with the scheduler's time_shift; then the
    whole schedule of set_timesteps(n, mu=mu) with dynamic shifting."""
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    exponents = [choice(gen, [round(uniform(gen, 0.5, 0.9), 3), round(uniform(gen, 1.1, 2.0), 3)]), 1.0]
    for dtype, sigma in zip((torch.float64, torch.float32), exponents):
        mu = choice(gen, [round(uniform(gen, 0.3, 1.5), 4), diffusers_calculate_shift(randint(gen, 16, 4096))])
        t = torch.rand(randint(gen, 5, 20), generator=gen, dtype=torch.float64).clamp(1e-3, 1.0).to(dtype)
        t[0] = 1.0
        ins = t.clone()
        name = f"time_shift_exponential(mu={mu:.6g}, sigma={sigma}, t={describe(t)})"
        got = _call(name, fn, mu, sigma, ins, hint=EQ_TSHIFT)
        require_unchanged(name, [t], [ins])
        tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-6)
        diag = [(label, _tshift_variant(mu, sigma, t, b).to(dtype)) for b, label in TSHIFT_BUGS]
        assert_close(name, got, ref.time_shift_exponential(mu, sigma, t), **tol, diagnose=diag, hint=EQ_TSHIFT)
        assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler.time_shift", got, sched.time_shift(mu, sigma, t),
                     **tol)
    # the schedule a FLUX pipeline gets: set_timesteps(n, mu=mu) shifts a numpy grid with sigma = 1.0
    n, mu = randint(gen, 2, 30), diffusers_calculate_shift(choice(gen, [256, 1024, 4096]))
    sched.set_timesteps(n, mu=mu)
    grid = torch.linspace(sched.sigma_max, sched.sigma_min, n, dtype=torch.float64)  # unshifted: 1 .. 0.001
    name = f"time_shift_exponential(mu={mu:.6g}, 1.0, linspace(1, 0.001, {n}))"
    got = _call(name, fn, mu, 1.0, grid, hint=EQ_TSHIFT)
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{name}: expected a tensor (t was one), got {describe(got)}.")
    assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps({n}, mu=...)"
                 ".sigmas[:-1]", got.float(), sched.sigmas[:-1], atol=2e-6, rtol=2e-6, hint=EQ_TSHIFT)


# --------------------------------------------------------------------------- flow_euler_step

STEP_BUGS = [
    ("sign", "step in the wrong direction: dt = sigma_next - sigma (negative while denoising)."),
    ("sigma_only", "moved by sigma_next times the velocity: the step is the CHANGE in sigma."),
    ("x0", "returned the predicted clean sample (sample - sigma * v): one step moves only to sigma_next."),
    ("eps", "treated the model output as a noise prediction (DDIM-style): it is a velocity."),
]


def _step_variant(v, s, s_next, x, bug):
    x64, v64 = x.double(), v.double()
    if bug == "sign":
        out = x64 + (s - s_next) * v64
    elif bug == "sigma_only":
        out = x64 + s_next * v64
    elif bug == "x0":
        out = x64 - s * v64
    else:  # eps: x0 = (x - s eps) / (1 - s), then re-noised to s_next
        x0 = (x64 - s * v64) / (1 - s) if s < 1 else x64 * 0
        out = (1 - s_next) * x0 + s_next * v64
    return out.to(v.dtype)


def check_flow_euler_step(fn, gen):
    """Every step of a random schedule (random shift, 2-30 steps) against
    FlowMatchEulerDiscreteScheduler.step, with sigma given as the scheduler's 0-d tensors or
    as Python floats; a float16 model output (the dtype rule)."""
    sched = FlowMatchEulerDiscreteScheduler(shift=choice(gen, [1.0, 3.0, round(uniform(gen, 1.5, 6.0), 3)]))
    n = randint(gen, 2, 30)
    sched.set_timesteps(n)
    shape = _shape(gen)
    x = randn(gen, shape)
    as_float = choice(gen, [True, False])
    picks = sorted({0, n - 1, randint(gen, 0, n - 1)})
    for i in range(n):
        v = randn(gen, shape)
        s, s_next = sched.sigmas[i], sched.sigmas[i + 1]
        args = (float(s), float(s_next)) if as_float else (s.clone(), s_next.clone())
        ins = [v.clone(), args[0], args[1], x.clone()]
        name = (f"flow_euler_step(model_output={describe(v)}, sigma={float(s):.6g}, sigma_next={float(s_next):.6g} "
                f"({'floats' if as_float else '0-d tensors'}), sample=...) at step {i} of {n}")
        got = _call(name, fn, *ins, hint=EQ_STEP)
        require_unchanged(name, [v, x], [ins[0], ins[3]])
        want = sched.step(v, sched.timesteps[i], x).prev_sample
        if i in picks:
            diag = [(label, _step_variant(v, float(s), float(s_next), x, b)) for b, label in STEP_BUGS]
            assert_close(name, got, ref.flow_euler_step(v, s, s_next, x), atol=1e-6, rtol=1e-6, diagnose=diag,
                         hint=EQ_STEP)
        assert_close(f"{name} vs FlowMatchEulerDiscreteScheduler.step", got, want, atol=1e-6, rtol=1e-6,
                     hint=EQ_STEP)
        x = want
    # float16 model output: computed in float32 on the upcast sample, returned in float16
    v16, x32 = randn(gen, shape, torch.float16), randn(gen, shape)
    s, s_next = sorted([uniform(gen, 0.05, 1.0), uniform(gen, 0.0, 0.95)], reverse=True)
    name = f"flow_euler_step(model_output={describe(v16)}, sigma={s:.4g}, sigma_next={s_next:.4g}, sample={describe(x32)})"
    got = _call(name, fn, v16, s, s_next, x32, hint=EQ_STEP)
    assert_close(name, got, ref.flow_euler_step(v16, s, s_next, x32), atol=1e-3, rtol=1e-3,
                 hint="the result has the model output's dtype (the last line of step's deterministic branch).")
