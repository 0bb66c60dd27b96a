"""Lab 03 (scheduler reading): the reference equals diffusers, passes its checks, and every
check is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from helpers.checks import lab03_scheduler_reading as checks
from labtools import checker, write_pristine_starter
from helpers.checks._core import CheckFailed
from helpers.solutions import lab03_scheduler_reading as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["ddim_timesteps", "ddim_step", "sigmas_from_alphas_cumprod", "karras_sigmas", "euler_step"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T", [50, 999, 1000, 1001])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_equal_diffusers(spacing, T, offset):
    for n in sorted({*range(1, min(T, 60) + 1), T // 3, T // 2, T - 1, T}):
        s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        s.set_timesteps(n)
        got = ref.ddim_timesteps(n, T, spacing, offset)
        assert got.dtype == torch.int64 and torch.equal(got, s.timesteps), (n, got, s.timesteps)


def test_reference_passes_the_timesteps_check_on_many_seeds():
    """Regression: seed 746532 once drew T = 567, n = 60, where diffusers' float np.arange keeps
    n + 1 'trailing' timesteps (the last -1); the check now draws n away from that edge."""
    assert len(ref.ddim_timesteps(60, 567, "trailing", 0)) == 61  # the edge itself, as diffusers
    for seed in range(300):
        run("ddim_timesteps", ref.ddim_timesteps, seed)


def trailing_from_integers(n, T=1000, spacing="leading", offset=0):
    """A correct reading of Lin et al.'s 'trailing' spacing from integer step indices, exact at
    the halves (numpy's round-half-to-even of T - i * T / n); linspace likewise from i * (T - 1) / (n - 1)."""
    if spacing == "trailing":
        return torch.from_numpy(np.round(T - np.arange(n) * T / n).astype(np.int64) - 1)
    if spacing == "linspace":
        return torch.from_numpy(np.round(np.arange(n) * (T - 1) / max(n - 1, 1))[::-1].astype(np.int64))
    return ref.ddim_timesteps(n, T, spacing, offset)


def trailing_round_offset(n, T=1000, spacing="leading", offset=0):
    """Another: round the distance from T (i * T / n) instead of the timestep; ties go the other way."""
    if spacing == "trailing":
        return torch.from_numpy(T - np.round(np.arange(n) * T / n).astype(np.int64) - 1)
    return ref.ddim_timesteps(n, T, spacing, offset)


@pytest.mark.parametrize("fn", [trailing_from_integers, trailing_round_offset])
def test_tie_rounding_forms_pass_many_seeds(fn):
    """T = 1000, n = 48: T - 3 * T / n = 937.5 exactly; diffusers' float arange gives 936 (937.49...
    rounded), the integer form 937 (half to even). 49 values of n at T = 1000 and about 15 % of the
    (T, n) the check draws have such a tie: those learners must pass, as long as every other
    timestep equals diffusers'."""
    assert ref.ddim_timesteps(48, 1000, "trailing")[3] == 936 and trailing_from_integers(48, 1000, "trailing")[3] == 937
    differed = []

    def recording(n, T=1000, spacing="leading", offset=0):
        out = fn(n, T, spacing, offset)
        differed.append(out.shape == (n,) and not torch.equal(out, ref.ddim_timesteps(n, T, spacing, offset)))
        return out

    for seed in range(200):
        run("ddim_timesteps", recording, seed)
    assert sum(differed) >= 10, sum(differed)  # the seeds did draw ties


def test_a_tie_rounded_to_neither_neighbour_fails():
    expected = ref.ddim_timesteps(48, 1000, "trailing")
    tie, low = checks._ties(48, 1000, "trailing")
    assert tie.nonzero().flatten().tolist() == [3, 9, 15, 21, 27, 33, 39, 45] and low[3] == 936  # 937.5 - 1, ...
    for wrong in (low - 1, low + 2):
        answer = torch.where(tie, wrong, expected)
        with pytest.raises(CheckFailed):
            checks._check_timesteps_case(lambda *a, out=answer: out.clone(), 48, 1000, "trailing", 0)
    checks._check_timesteps_case(lambda *a: torch.where(tie, low + 1, expected), 48, 1000, "trailing", 0)
    checks._check_timesteps_case(lambda *a: expected.clone(), 48, 1000, "trailing", 0)


def test_timesteps_errors():
    with pytest.raises(ValueError):
        ref.ddim_timesteps(10, 1000, "uniform")
    with pytest.raises(ValueError):
        ref.ddim_timesteps(1001, 1000)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_step_equals_diffusers_over_a_whole_loop(ptype, eta, set_alpha_to_one):
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      prediction_type=ptype, set_alpha_to_one=set_alpha_to_one, steps_offset=1)
    s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    mine = x.clone()
    for t in s.timesteps.tolist():
        e = torch.randn(2, 4, 8, 8, generator=g)
        z = torch.randn(2, 4, 8, 8, generator=g)
        x = s.step(e, t, x, eta=eta, variance_noise=z).prev_sample
        mine = ref.ddim_step(e, t, t - 100, mine, s.alphas_cumprod, s.final_alpha_cumprod, eta, z, ptype)
        torch.testing.assert_close(mine, x, atol=1e-5, rtol=1e-5)


def test_sigmas_equal_euler_before_interpolation():
    for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        e = EulerDiscreteScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
        sig = ref.sigmas_from_alphas_cumprod(e.alphas_cumprod)
        assert torch.equal(torch.cat([sig.flip(0), torch.zeros(1)]), e.sigmas)
        e.set_timesteps(7)  # set_timesteps interpolates the same values at its timesteps
        t = e.timesteps.numpy()
        expected = np.interp(t, np.arange(1000), sig.numpy())
        np.testing.assert_allclose(e.sigmas[:-1].numpy(), expected, rtol=1e-6)


# --------------------------------------------------------------------------- correct variants pass

def timesteps_in_torch(n, T=1000, spacing="leading", offset=0):
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1, dtype=torch.int64) * (T // n) + offset
    if spacing == "trailing":
        return torch.from_numpy(np.round(np.arange(T, 0, -T / n))).long() - 1
    if spacing == "linspace":
        return torch.from_numpy(np.linspace(0, T - 1, n).round()).long().flip(0)
    raise ValueError(spacing)


def step_rewritten(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
    a = abar[t].double()
    ap = (abar[prev] if prev >= 0 else torch.as_tensor(final)).double()
    if ptype == "v_prediction":
        x0, eps = a.sqrt() * x - (1 - a).sqrt() * e, a.sqrt() * e + (1 - a).sqrt() * x
    else:
        x0, eps = (x - (1 - a).sqrt() * e) / a.sqrt(), e
    sigma = eta * torch.sqrt((1 - ap) / (1 - a)) * torch.sqrt(1 - a / ap)
    out = ap.sqrt() * x0 + torch.sqrt(1 - ap - sigma**2) * eps
    if eta > 0:
        out = out + sigma * z
    return out.to(x.dtype)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,fn", [("ddim_timesteps", timesteps_in_torch), ("ddim_step", step_rewritten),
                                     ("sigmas_from_alphas_cumprod", lambda a: (1 / a - 1).sqrt())])
def test_correct_variants_pass(name, fn, seed):
    run(name, fn, seed)


# --------------------------------------------------------------------------- planted bugs: ddim_timesteps

def ts_bug(kind):
    def fn(n, T=1000, spacing="leading", offset=0):
        if kind == "no_error" and spacing not in ("leading", "trailing", "linspace"):
            return torch.zeros(n, dtype=torch.int64)
        r = ref.ddim_timesteps(n, T, spacing, offset)
        if kind == "ascending":
            return r.flip(0)
        if kind == "float":
            return r.float()
        if spacing == "leading" and kind == "no_offset":
            return r - offset
        if spacing == "trailing" and kind == "trailing_no_minus_one":
            return r + 1
        if spacing == "trailing" and kind == "trailing_truncate":
            return torch.from_numpy(np.arange(T, 0, -T / n).astype(np.int64) - 1)
        if spacing == "trailing" and kind == "trailing_float":
            return torch.from_numpy(np.arange(T, 0, -T / n) - 1)
        if spacing == "linspace" and kind == "linspace_to_T":
            return torch.from_numpy(np.linspace(0, T, n).round()[::-1].copy()).long()
        if spacing == "linspace" and kind == "linspace_truncate":
            return torch.from_numpy(np.linspace(0, T - 1, n)[::-1].astype(np.int64))
        if spacing == "linspace" and kind == "linspace_ascending":
            return r.flip(0)
        if spacing != "leading" and kind == "offset_everywhere":
            return r + offset
        return r
    return fn


@pytest.mark.parametrize("kind,phrase", [
    ("ascending", "wrong order"),
    ("float", "float timesteps"),
    ("no_offset", "'leading' without steps_offset"),
    ("trailing_no_minus_one", "off-by-one"),
    ("trailing_truncate", "rounding"),
    ("trailing_float", "float timesteps"),
    ("linspace_to_T", "off-by-one"),
    ("linspace_truncate", "rounding"),
    ("linspace_ascending", "wrong order"),
    ("offset_everywhere", "steps_offset is added only for 'leading'"),
    ("no_error", "expected a ValueError"),
])
def test_timesteps_bugs(kind, phrase):
    fails("ddim_timesteps", ts_bug(kind), phrase)


def test_timesteps_leading_float_ratio_is_named():
    def float_ratio(n, T=1000, spacing="leading", offset=0):
        if spacing == "leading":
            return torch.from_numpy(np.round(np.arange(n) * (T / n))[::-1].copy()).long() + offset
        return ref.ddim_timesteps(n, T, spacing, offset)

    fails("ddim_timesteps", float_ratio, "INTEGER step ratio")


# --------------------------------------------------------------------------- planted bugs: ddim_step

def step_bug(**kw):
    def fn(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
        return checks._step_variant(e, t, prev, x, abar, final, eta, z, ptype, **kw)
    return fn


def step_swapped(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
    ap = abar[prev] if prev >= 0 else torch.as_tensor(final)
    return checks._step_variant(e, t, prev, x, abar, final, eta, z, ptype, a_t=ap, a_prev=abar[t])


def step_t_minus_1(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
    return ref.ddim_step(e, t, t - 1, x, abar, final, eta, z, ptype)


def step_wraps_around(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
    return checks._step_variant(e, t, prev, x, abar, final, eta, z, ptype, a_prev=abar[prev])


def step_ignores_eta(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
    return ref.ddim_step(e, t, prev, x, abar, final, 0.0, None, ptype)


@pytest.mark.parametrize("fn,phrase", [
    (step_swapped, "are swapped"),
    (step_t_minus_1, "prev_timestep off by the step ratio"),
    (step_wraps_around, "final_alpha_cumprod ignored at the last step"),
    (step_bug(std="no_sqrt"), "missing its square root"),
    (step_bug(std="no_factor"), "missing the factor (1 - a / a')"),
    (step_bug(direction="no_sigma"), "direction term uses the wrong std"),
    (step_bug(direction="std_t"), "direction term uses the wrong std"),
    (step_bug(direction="sigma_not_squared"), "sigma squared vs sigma"),
    (step_bug(noise="variance"), "sigma squared vs sigma"),
    (step_bug(v="as_eps"), "v_prediction treated as epsilon"),
    (step_bug(v="sign"), "v_prediction signs"),
    (step_ignores_eta, "DDIM eq. 12"),
])
def test_ddim_step_bugs(fn, phrase):
    fails("ddim_step", fn, phrase)


def test_final_alpha_variants_are_named():
    """Always 1.0, or always abar_0, at the last step: caught whichever set_alpha_to_one was drawn."""
    def always(value):
        def fn(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
            return ref.ddim_step(e, t, prev, x, abar, abar[0] if value == "abar0" else torch.tensor(1.0),
                                 eta, z, ptype)
        return fn

    for value in ("one", "abar0"):
        msgs = []
        for seed in range(8):
            try:
                run("ddim_step", always(value), seed)
            except CheckFailed as exc:
                msgs.append(str(exc))
        assert msgs and all("final_alpha_cumprod ignored" in m for m in msgs), "\n\n".join(msgs)


def step_math_sqrt(wrap):
    """A textbook DDIM step in Python floats (math.sqrt); ``wrap``: alphas_cumprod[prev_timestep] even
    when prev_timestep < 0 (the index wraps around to the end of the schedule)."""
    import math

    def fn(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
        a = float(abar[t])
        ap = float(abar[prev]) if (prev >= 0 or wrap) else float(final)
        if ptype == "v_prediction":
            x0, eps = math.sqrt(a) * x - math.sqrt(1 - a) * e, math.sqrt(a) * e + math.sqrt(1 - a) * x
        else:
            x0, eps = (x - math.sqrt(1 - a) * e) / math.sqrt(a), e
        sigma = eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)
        out = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eps
        return out + sigma * z if eta > 0 else out
    return fn


def test_wrap_around_math_domain_error_is_named():
    """Issue 15: alphas_cumprod[-1] with math.sqrt surfaced as 'ValueError: math domain error'."""
    fails("ddim_step", step_math_sqrt(wrap=True), "final_alpha_cumprod ignored at the last step")
    fails("ddim_step", step_math_sqrt(wrap=True), "math domain error")


def test_python_float_step_passes_many_seeds():
    for seed in range(40):
        run("ddim_step", step_math_sqrt(wrap=False), seed)


def test_step_prev_double_ratio_is_named():
    def double(e, t, prev, x, abar, final, eta=0.0, z=None, ptype="epsilon"):
        return ref.ddim_step(e, t, prev - (t - prev), x, abar, final, eta, z, ptype)

    fails("ddim_step", double, "off by the step ratio")


# --------------------------------------------------------------------------- planted bugs: sigmas

@pytest.mark.parametrize("fn,phrase", [
    (lambda a: (1 - a) / a, "sigma squared vs sigma"),
    (lambda a: (a / (1 - a)).sqrt(), "the inverse"),
    (lambda a: (1 - a).sqrt(), "sqrt(1 - abar_t)"),
    (lambda a: ((1 - a) / a).sqrt().flip(0), "wrong order"),
    (lambda a: torch.cat([((1 - a) / a).sqrt().flip(0), a.new_zeros(1)]), "appended the final 0"),
    (lambda a: ((1 - a.float()) / a.float()).sqrt(), "dtype not kept"),
])
def test_sigma_bugs(fn, phrase):
    fails("sigmas_from_alphas_cumprod", fn, phrase)


# --------------------------------------------------------------------------- karras_sigmas

@pytest.mark.parametrize("n", [1, 2, 10, 25])
def test_karras_equals_diffusers_in_set_timesteps(n):
    """What set_timesteps(n) stores with use_karras_sigmas=True: our n sigmas (between the ends
    of the interpolated schedule), cast to float32, with the final 0 appended."""
    e = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               use_karras_sigmas=True)
    e.set_timesteps(n)
    plain = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    plain.set_timesteps(n)
    smax, smin = float(plain.sigmas[0]), float(plain.sigmas[-2])
    if n == 1:  # one step: the interpolated schedule is the largest sigma alone
        smin = smax
    ours = ref.karras_sigmas(smin, smax, n)
    assert ours.dtype == torch.float64 and ours.shape == (n,)
    torch.testing.assert_close(torch.cat([ours.float(), torch.zeros(1)]), e.sigmas, atol=1e-6, rtol=1e-6)


def karras_torch32(smin, smax, n, rho=7.0):
    """A correct float32 form: torch.linspace and a reversed ramp, the powers in torch."""
    lo, hi = torch.tensor(smin) ** (1 / rho), torch.tensor(smax) ** (1 / rho)
    w = torch.linspace(1, 0, n) if n > 1 else torch.ones(1)
    return (lo + w * (hi - lo)) ** rho


def karras_list(smin, smax, n, rho=7.0):
    """A correct Python-float form (k-diffusion's get_sigmas_karras without the appended 0), step by step."""
    a, b = smax ** (1 / rho), smin ** (1 / rho)
    return torch.tensor([(a + (i / (n - 1) if n > 1 else 0.0) * (b - a)) ** rho for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("fn", [karras_torch32, karras_list])
def test_karras_equivalent_forms_pass_many_seeds(fn):
    for seed in range(40):
        run("karras_sigmas", fn, seed)


@pytest.mark.parametrize("fn,phrase", [
    (lambda a, b, n, rho=7.0: ref.karras_sigmas(a, b, n, rho).flip(0), "wrong order"),
    (lambda a, b, n, rho=7.0: torch.from_numpy((b**rho + np.linspace(0, 1, n) * (a**rho - b**rho)) ** (1 / rho)),
     "power is inverted"),
    (lambda a, b, n, rho=7.0: torch.linspace(b, a, n, dtype=torch.float64), "spaced the sigmas evenly"),
    (lambda a, b, n, rho=7.0: torch.linspace(np.log(b), np.log(a), n, dtype=torch.float64).exp(), "_convert_to_exponential"),
    (lambda a, b, n, rho=7.0: ((b ** (1 / rho) + torch.arange(n, dtype=torch.float64) / n * (a ** (1 / rho) - b ** (1 / rho)))
                               ** rho), "ramp misses its end"),
    (lambda a, b, n, rho=7.0: ref.karras_sigmas(a, b, n, 7.0), "rho ignored"),
    (lambda a, b, n, rho=7.0: torch.cat([ref.karras_sigmas(a, b, n, rho), torch.zeros(1, dtype=torch.float64)]),
     "appends the final 0"),
    (lambda a, b, n, rho=7.0: ref.karras_sigmas(a, b, n, rho).half(), "float32 or float64"),
])
def test_karras_bugs(fn, phrase):
    fails("karras_sigmas", fn, phrase)


# --------------------------------------------------------------------------- euler_step

@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("karras", [False, True])
def test_euler_step_equals_diffusers_over_a_whole_loop(ptype, karras):
    s = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               prediction_type=ptype, use_karras_sigmas=karras, timestep_spacing="leading",
                               steps_offset=1)
    s.set_timesteps(12)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g) * s.init_noise_sigma
    mine = x.clone()
    for i, t in enumerate(s.timesteps):
        s.scale_model_input(x, t)
        e = torch.randn(2, 4, 8, 8, generator=g)
        x = s.step(e, t, x).prev_sample
        mine = ref.euler_step(e, s.sigmas[i], s.sigmas[i + 1], mine, ptype)
        torch.testing.assert_close(mine, x, atol=1e-5, rtol=1e-5)


def euler_as_ddim(e, s, sn, x, ptype="epsilon"):
    """A correct form through the variance-preserving view: abar = 1 / (1 + sigma^2), x_vp = sqrt(abar) x,
    x0_hat and eps_hat as in DDIM, then x_next = x0_hat + sigma_next * eps_hat (DDIM at eta = 0 in sigma)."""
    s, sn = torch.tensor(float(s), dtype=torch.float64), torch.tensor(float(sn), dtype=torch.float64)
    a = 1 / (1 + s**2)
    xv = a.sqrt() * x.double()
    if ptype == "v_prediction":
        x0, eps = a.sqrt() * xv - (1 - a).sqrt() * e, a.sqrt() * e + (1 - a).sqrt() * xv
    elif ptype == "epsilon":
        x0, eps = (xv - (1 - a).sqrt() * e) / a.sqrt(), e
    else:
        raise ValueError(ptype)
    return (x0 + sn * eps).float()


def euler_textbook32(e, s, sn, x, ptype="epsilon"):
    """A correct float32 form with math.sqrt and the derivative written out (Karras Algorithm 1)."""
    import math
    if ptype == "epsilon":
        d = e
    elif ptype == "v_prediction":
        denoised = x / (s**2 + 1) - e * s / math.sqrt(s**2 + 1)
        d = (x - denoised) / s
    else:
        raise ValueError(ptype)
    return x + d * (sn - s)


@pytest.mark.parametrize("fn", [euler_as_ddim, euler_textbook32])
def test_euler_equivalent_forms_pass_many_seeds(fn):
    for seed in range(40):
        run("euler_step", fn, seed)


def euler_bug(kind):
    def fn(e, s, sn, x, ptype="epsilon"):
        s, sn = float(s), float(sn)
        if kind == "backwards":
            return ref.euler_step(e, s, 2 * s - sn, x, ptype)
        if kind == "denoised":
            return ref.euler_step(e, s, 0.0, x, ptype)
        if kind == "scaled":
            return ref.euler_step(e, s, sn, x / (s * s + 1) ** 0.5, ptype)
        if kind == "v_as_eps":
            return ref.euler_step(e, s, sn, x, "epsilon" if ptype == "v_prediction" else ptype)
        if kind == "v_ddim_scale" and ptype == "v_prediction":
            c = 1 / (s * s + 1) ** 0.5
            return x + (sn - s) * (x - (c * x - s * c * e)) / s
        if kind == "v_sign" and ptype == "v_prediction":
            return ref.euler_step(-e, s, sn, x, ptype)
        if kind == "dt_next":
            return ref.euler_step(e, s, s + sn, x, ptype)
        if kind == "no_error" and ptype not in ("epsilon", "v_prediction"):
            return x
        return ref.euler_step(e, s, sn, x, ptype)
    return fn


@pytest.mark.parametrize("kind,phrase", [
    ("backwards", "wrong way"),
    ("denoised", "denoised estimate"),
    ("scaled", "scale_model_input"),
    ("v_as_eps", "v_prediction treated as epsilon"),
    ("v_ddim_scale", "DDIM's scale"),
    ("v_sign", "v_prediction sign"),
    ("dt_next", "sigma_next alone"),
    ("no_error", "expected a ValueError"),
])
def test_euler_bugs(kind, phrase):
    fails("euler_step", euler_bug(kind), phrase)


def test_euler_in_place_and_float64_are_named():
    def in_place(e, s, sn, x, ptype="epsilon"):
        out = ref.euler_step(e, s, sn, x, ptype)
        x.copy_(out)
        return out

    fails("euler_step", in_place, "in place")
    fails("euler_step", lambda e, s, sn, x, p="epsilon": ref.euler_step(e.double(), s, sn, x.double(), p),
          "model_output's dtype")


# --------------------------------------------------------------------------- hard-coded answers

def test_hard_coded_answers_fail():
    fixed_ts = ref.ddim_timesteps(10, 1000, "leading", 1)
    s = DDIMScheduler(clip_sample=False)
    fixed_sig = ref.sigmas_from_alphas_cumprod(s.alphas_cumprod)
    for seed in (0, 5):
        for name, fn in [("ddim_timesteps", lambda *a, **k: fixed_ts.clone()),
                         ("sigmas_from_alphas_cumprod", lambda a: fixed_sig.clone()),
                         ("ddim_step", lambda e, *a, **k: torch.zeros_like(e))]:
            with pytest.raises(CheckFailed):
                run(name, fn, seed)


# --------------------------------------------------------------------------- with the machinery

@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab03", tmp_path, monkeypatch)


def test_exercise_replaces_a_buggy_learner_function(pristine_starters, capsys):
    from helpers.exercise import exercise

    src = pristine_starters.read_text().replace(
        'raise NotImplementedError("TODO(lab03): sigmas_from_alphas_cumprod")',
        "return (1 - alphas_cumprod) / alphas_cumprod")
    pristine_starters.write_text(src)
    ex = exercise("lab03", seed=0)
    assert ex.status["sigmas_from_alphas_cumprod"] == "failed"
    assert ex.sigmas_from_alphas_cumprod is ref.sigmas_from_alphas_cumprod
    assert "sigma squared vs sigma" in ex.results["sigmas_from_alphas_cumprod"].message


# --------------------------------------------------------------------------- the study's helpers

def test_colour_error_is_measured_against_the_world():
    """evaluate.colour_error (Lab 03's reference-neutral fidelity): real renders score their own
    colour jitter; a shape of another palette colour scores that colour's distance; a missing
    shape scores the background's distance to the asked colour."""
    from helpers import evaluate, shapes

    attrs = shapes.sample_attributes(24, seed=5)
    real = torch.stack([shapes.render(a, seed=i)[0] for i, a in enumerate(attrs)])
    err = evaluate.colour_error(shapes.judge(real), attrs)
    assert err.shape == (24,) and err.dtype == torch.float32
    assert err.max() < 20 and err.mean() < 12, err                                 # jitter: +-8 per channel
    names = list(shapes.COLORS)
    other = shapes.Attributes(attrs[0].shape, names[(names.index(attrs[0].color) + 1) % len(names)],
                              attrs[0].size, attrs[0].position)
    recoloured = shapes.render(other, seed=0)[0][None]
    want = np.linalg.norm(np.subtract(shapes.COLORS[other.color], shapes.COLORS[attrs[0].color]))
    assert abs(evaluate.colour_error(shapes.judge(recoloured), attrs[:1]).item() - want) < 20
    blank = torch.ones(1, 3, 64, 64) * torch.tensor(shapes.BACKGROUND).view(1, 3, 1, 1) / 255
    gone = np.linalg.norm(np.subtract(shapes.BACKGROUND, shapes.COLORS[attrs[0].color]))
    assert abs(evaluate.colour_error(shapes.judge(blank), attrs[:1]).item() - gone) < 1e-3
    with pytest.raises(ValueError, match="targets"):
        evaluate.colour_error(shapes.judge(real[:2]), attrs[:3])


def test_pareto_knee_reads_another_cost():
    from helpers.evaluate import pareto_knee

    runs = [dict(sampler=s, unet_calls=c, seconds=t, distance=d, accuracy=1.0)
            for s, c, t, d in [("a", 5, 9.0, 1.0), ("b", 10, 1.0, 0.2), ("c", 20, 3.0, 0.15), ("d", 50, 5.0, 0.1)]]
    knee, front = pareto_knee(runs, 0.9, cost="unet_calls")
    assert [r["sampler"] for r in front] == ["a", "b", "c", "d"] and knee["sampler"] == "b"
    knee, front = pareto_knee(runs, 0.9)                                           # by seconds: "a" is slowest
    assert [r["sampler"] for r in front] == ["b", "c", "d"]


def test_generate_runs_equals_one_run_at_a_time():
    from helpers import evaluate, zoo

    pipe = zoo.load_pipeline("tiny-sd", device="cpu")
    config = pipe.scheduler.config
    caps = ["a small blue circle at the center", "a large red square at the top left"]
    many = evaluate.generate_runs(pipe, [("DDIM", 2), ("Euler a", 3)], caps, 4.0, seed=1)
    assert list(many) == [("DDIM", 2), ("Euler a", 3)]
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    for (name, steps), (images, seconds) in many.items():
        one, _ = evaluate.generate_with_sampler(pipe, name, caps, steps, 4.0, seed=1, config=config)
        assert seconds > 0 and torch.equal(images, one), (name, (images - one).abs().max())
    assert (many["DDIM", 2][0] - many["Euler a", 3][0]).abs().max() > 0.05       # the runs differ
