"""Lab 02 (denoising step): the reference equals diffusers, passes its checks, and every
check is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from helpers.checks import lab02_denoising_step as checks
from labtools import checker, fill_exercise, write_pristine_starter
from helpers.checks._core import CheckFailed
from helpers.solutions import lab02_denoising_step as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["pred_original_sample", "get_velocity", "ddpm_step"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

def test_exercise_names_in_order():
    assert ref.__all__ == NAMES
    assert checks.LAB == "lab02"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, seed):
    run(name, getattr(ref, name), seed)


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("n", [1, 7, 50])
def test_reference_equals_diffusers_bit_for_bit(ptype, spacing, offset, n):
    """Every step of a whole schedule, float32: identical to DDPMScheduler(clip_sample=False).step."""
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          prediction_type=ptype, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, 4, 3, 3, generator=g)
    for t in sched.timesteps:
        mo = torch.randn(x.shape, generator=g)
        prev = sched.previous_timestep(t)
        z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(int(t)))
        out = sched.step(mo, t, x, generator=torch.Generator().manual_seed(int(t)))
        assert torch.equal(ref.ddpm_step(mo, t, prev, x, sched.alphas_cumprod, z, ptype), out.prev_sample)
        x0 = ref.pred_original_sample(mo, torch.full((2,), int(t)), x, sched.alphas_cumprod, ptype)
        assert torch.equal(x0, out.pred_original_sample)
        x = out.prev_sample


def test_velocity_equals_diffusers_and_identities_hold():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0, eps = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 400, 800, 998])
    v = ref.get_velocity(x0, eps, t, sched.alphas_cumprod)
    assert torch.equal(v, sched.get_velocity(x0, eps, t))
    x_t = sched.add_noise(x0, eps, t)
    for ptype, out in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        torch.testing.assert_close(ref.pred_original_sample(out, t, x_t, sched.alphas_cumprod, ptype), x0,
                                   rtol=1e-6, atol=1e-6)


def test_unknown_prediction_type_raises():
    with pytest.raises(ValueError, match="unknown prediction_type"):
        ref.pred_original_sample(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1, 2), torch.ones(5), "flow")


# --------------------------------------------------------------------------- a step with knobs (planted bugs)

def _abar_t(abar, t, x):
    return abar.to(device=x.device, dtype=x.dtype)[t.to(x.device)].reshape(-1, *[1] * (x.ndim - 1))


def step_variant(mo, t, prev, x, abar, z, ptype="epsilon", *, use_prev=None, xt_abar=False, swap=False,
                 var="tilde", sign=1, noise_at_0=False, wrap=False, one_step=False, clip=False,
                 ignore_ptype=False, no_noise=False, eq11=False, f64=False, x0_abar=False):
    """A DDPM step written independently of the reference, with one bug switched on."""
    dtype = x.dtype
    if f64:
        mo, x, z = mo.double(), x.double(), z.double()
    t, prev = int(t), int(prev)
    if use_prev is not None:
        prev = use_prev(t, prev)
    ac = abar.to(torch.float64 if f64 else torch.float32)
    a_t = ac[t]
    a_p = ac[prev] if (prev >= 0 or wrap) else torch.tensor(1.0, dtype=ac.dtype)
    if swap:
        a_t, a_p = a_p, a_t
    alpha = a_t / a_p if not one_step else ac[t] / ac[t - 1]
    beta = 1 - alpha
    x0 = ref.pred_original_sample(mo, torch.full((x.shape[0],), t), x, ac,
                                  "epsilon" if ignore_ptype else ptype)
    if clip:
        x0 = x0.clamp(-1, 1)
    if eq11 and ptype == "epsilon":  # DDPM eq. 11, the same mean written with eps
        mean = (x - beta / (1 - a_t).sqrt() * mo) / alpha.sqrt()
    else:
        mean = a_p.sqrt() * ((1 - a_t) if x0_abar else beta) / (1 - a_t) * x0 + (a_t.sqrt() if xt_abar else alpha.sqrt()) * (1 - a_p) / (1 - a_t) * x
    if (t > 0 or noise_at_0) and not no_noise:
        v = (1 - a_p) / (1 - a_t) * beta
        scale = {"tilde": v.sqrt(), "beta": beta.sqrt(), "var": v, "quarter": v.sqrt().sqrt()}[var]
        mean = mean + sign * scale * z
    return mean.to(dtype)


def knob(**kw):
    return lambda mo, t, prev, x, abar, z, ptype="epsilon": step_variant(mo, t, prev, x, abar, z, ptype, **kw)


def noise_at_t0(mo, t, prev, x, abar, z, ptype="epsilon"):
    """Right everywhere, except that the last step (t = 0) adds sqrt(beta_0) * noise."""
    out = ref.ddpm_step(mo, t, prev, x, abar, z, ptype)
    return out + (1 - abar[0]).sqrt() * z if int(t) == 0 else out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fn", [knob(), knob(eq11=True), knob(f64=True)], ids=["independent", "eq11", "float64"])
def test_correct_step_variants_pass(fn, seed):
    run("ddpm_step", fn, seed)


@pytest.mark.parametrize("fn,phrase", [
    (knob(xt_abar=True), "you used abar_t where DDPM eq. 7 needs alpha_t"),
    (knob(x0_abar=True), "you used 1 - abar_t where DDPM eq. 7 needs beta_t"),
    (knob(xt_abar=True, x0_abar=True), "you mixed up alpha_t and abar_t"),
    (knob(swap=True), "abar_t and abar_prev are swapped"),
    (knob(var="beta"), "wrong variance: you used beta_t"),
    (knob(var="var"), "missing square root"),
    (knob(var="quarter"), "square root twice"),
    (noise_at_t0, "noise added at t = 0"),
    (knob(use_prev=lambda t, prev: t - 1 if t > 0 else -1), "off by the step ratio"),
    (knob(one_step=True), "one-step beta_t"),
    (knob(sign=-1), "wrong sign"),
    (knob(wrap=True), "alphas_cumprod[-1]"),
    (knob(clip=True), "clipped x0_hat"),
    (knob(ignore_ptype=True), "prediction_type ignored"),
    (knob(no_noise=True), "no noise added"),
])
def test_ddpm_step_bugs(fn, phrase):
    fails("ddpm_step", fn, phrase)


# --------------------------------------------------------------------------- planted bugs: pred_original_sample

def x0_variant(bug):
    def fn(model_output, timesteps, sample, alphas_cumprod, prediction_type="epsilon"):
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            if bug == "no_error":
                return sample
            raise ValueError(prediction_type)
        if bug == "4d":
            a = alphas_cumprod.to(sample.dtype)[timesteps][:, None, None, None]
        elif bug == "no_cast":
            a = alphas_cumprod.to(sample.device)[timesteps.to(sample.device)].reshape(-1, *[1] * (sample.ndim - 1))
        elif bug == "t_minus_1":
            a = _abar_t(alphas_cumprod, timesteps - 1, sample)
        elif bug == "one_step":
            ac = alphas_cumprod
            a = _abar_t(ac / torch.cat([ac.new_ones(1), ac[:-1]]), timesteps, sample)
        else:
            a = _abar_t(alphas_cumprod, timesteps, sample)
        al, s = a.sqrt(), (1 - a).sqrt()
        if prediction_type == "epsilon":
            if bug == "eps_no_sqrt":
                return (sample - (1 - a) * model_output) / al
            if bug == "eps_sign":
                return (sample + s * model_output) / al
            return (sample - s * model_output) / al
        if prediction_type == "sample":
            return (sample - s * model_output) / al if bug == "sample_as_eps" else model_output
        if bug == "v_swapped":
            return s * sample - al * model_output
        if bug == "v_sign":
            return al * sample + s * model_output
        return al * sample - s * model_output
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("eps_no_sqrt", "missing square root on the noise coefficient"),
    ("eps_sign", "wrong sign"),
    ("one_step", "one-step alpha_t"),
    ("t_minus_1", "abar_{t-1}"),
    ("v_swapped", "alpha and sigma are swapped"),
    ("v_sign", "wrong sign"),
    ("sample_as_eps", "IS x_0"),
    ("4d", "(B, 1, ..., 1)"),
    ("no_cast", "dtype not kept"),
    ("no_error", "expected a ValueError"),
])
def test_pred_original_sample_bugs(bug, phrase):
    fails("pred_original_sample", x0_variant(bug), phrase)


def test_pred_original_sample_correct_variant_passes():
    for seed in SEEDS:
        run("pred_original_sample", x0_variant(None), seed)


# --------------------------------------------------------------------------- planted bugs: get_velocity

def v_variant(bug):
    def fn(sample, noise, timesteps, alphas_cumprod):
        a = _abar_t(alphas_cumprod, timesteps, sample)
        al, s = a.sqrt(), (1 - a).sqrt()
        return {"swapped": s * noise - al * sample, "sign": al * noise + s * sample,
                "negated": s * sample - al * noise, "x_t": al * sample + s * noise,
                "no_sqrt": a * noise - (1 - a) * sample, None: al * noise - s * sample}[bug]
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("swapped", "alpha and sigma are swapped"),
    ("sign", "wrong sign"),
    ("negated", "opposite sign"),
    ("x_t", "you returned x_t"),
    ("no_sqrt", "missing square roots"),
])
def test_get_velocity_bugs(bug, phrase):
    fails("get_velocity", v_variant(bug), phrase)


def test_get_velocity_correct_variant_passes():
    for seed in SEEDS:
        run("get_velocity", v_variant(None), seed)


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name):
    fixed = torch.zeros(2, 4, 3, 3)
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: fixed.clone())


@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab02", tmp_path, monkeypatch)


def test_ddpm_step_is_judged_on_its_own_code(pristine_starters, capsys):
    """The learner's ddpm_step calls their (TODO) pred_original_sample: the reference is
    substituted for it, so a right ddpm_step passes."""
    from helpers.exercise import exercise

    fill_exercise(pristine_starters, "lab02", "ddpm_step")
    ex = exercise("lab02", seed=0)
    assert ex.status["ddpm_step"] == "passed" and ex.origin["ddpm_step"] == "yours"
    assert ex.status["pred_original_sample"] == "todo"
