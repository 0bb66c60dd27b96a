"""Lab 12 (flow matching): the reference equals diffusers, passes its checks, and every check
is proven able to fail: each planted bug below fails with its specific hint; equivalent
correct forms pass."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_calculate_shift

from helpers.checks import lab12_flow_matching as checks
from helpers.checks._core import CheckFailed
from helpers.solutions import lab12_flow_matching as ref
from labtools import checker, write_pristine_starter

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["flow_interpolate", "flow_velocity_target", "shift_sigmas", "calculate_shift", "time_shift_exponential",
         "flow_euler_step"]

run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference vs diffusers

def test_reference_passes_every_check():
    for name in NAMES:
        for seed in SEEDS:
            run(name, getattr(ref, name), seed)


def test_flow_interpolate_is_scale_noise_bit_for_bit():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x, e = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    idx = torch.tensor([0, 3, 5, 9])
    assert torch.equal(ref.flow_interpolate(x, e, sched.sigmas[idx]), sched.scale_noise(x, sched.timesteps[idx], e))


def test_shift_sigmas_is_the_schedulers_table_and_grid():
    base = FlowMatchEulerDiscreteScheduler().sigmas
    assert torch.equal(ref.shift_sigmas(base, 3.0), FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas)
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(25)
    grid = np.linspace(s.sigma_max, s.sigma_min, 25)          # set_timesteps's grid: numpy, like the scheduler
    torch.testing.assert_close(torch.as_tensor(ref.shift_sigmas(grid, 3.0), dtype=torch.float32), s.sigmas[:-1])


@pytest.mark.parametrize("n", [16, 256, 1024, 4096, 10_000])
def test_calculate_shift_equals_flux(n):
    assert ref.calculate_shift(n) == flux_calculate_shift(n)
    assert ref.calculate_shift(n, 64, 8192, 0.3, 2.0) == flux_calculate_shift(n, 64, 8192, 0.3, 2.0)


def test_time_shift_is_the_dynamic_schedule_and_an_sd3_shift():
    mu = flux_calculate_shift(4096)
    s = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    s.set_timesteps(20, mu=mu)
    grid = np.linspace(1.0, 1e-3, 20)
    torch.testing.assert_close(torch.as_tensor(ref.time_shift_exponential(mu, 1.0, grid), dtype=torch.float32),
                               s.sigmas[:-1])
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)     # FLUX's mu is the log of an SD3 shift
    torch.testing.assert_close(ref.time_shift_exponential(mu, 1.0, t), ref.shift_sigmas(t, math.exp(mu)))


def test_flow_euler_step_loop_equals_scheduler():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(8)
    x = y = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(s.timesteps):
        v = torch.randn_like(x)
        x = s.step(v, t, x).prev_sample
        y = ref.flow_euler_step(v, s.sigmas[i], s.sigmas[i + 1], y)
        assert torch.equal(x, y)


def test_one_euler_step_of_the_true_velocity_lands_on_the_sample():
    """A straight path: the exact velocity takes any x_sigma to x_0 in one Euler step."""
    x0, e = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for s in (0.9, 0.5, 1.0):
        xs = ref.flow_interpolate(x0, e, s)
        out = ref.flow_euler_step(ref.flow_velocity_target(x0, e), s, 0.0, xs)
        torch.testing.assert_close(out, x0, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- equivalent correct forms pass

def interp_einsum(sample, noise, sigmas):
    s = torch.as_tensor(sigmas, dtype=sample.dtype)
    return sample + torch.einsum("b,b...->b...", s, noise - sample)


def interp_lerp(sample, noise, sigmas):
    s = torch.as_tensor(sigmas, dtype=sample.dtype).view(-1, *([1] * (sample.ndim - 1)))
    return torch.lerp(sample, noise, s)


def shift_odds(sigmas, shift):
    return sigmas / (sigmas + (1 - sigmas) / shift)


def mu_two_point(n, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    w = (n - base_seq_len) / (max_seq_len - base_seq_len)
    return base_shift + w * (max_shift - base_shift)


def tshift_sigmoid(mu, sigma, t):
    t = torch.as_tensor(t)
    return torch.sigmoid(mu - sigma * torch.log((1 - t) / t))


def step_lerp(model_output, sigma, sigma_next, sample):
    return (sample.float() - (sigma - sigma_next) * model_output).to(model_output.dtype)


@pytest.mark.parametrize("name,fn", [("flow_interpolate", interp_einsum), ("flow_interpolate", interp_lerp),
                                     ("flow_velocity_target", lambda x, e: -(x - e)),
                                     ("shift_sigmas", shift_odds), ("calculate_shift", mu_two_point),
                                     ("time_shift_exponential", tshift_sigmoid), ("flow_euler_step", step_lerp)])
def test_equivalent_forms_pass(name, fn):
    for seed in SEEDS:
        run(name, fn, seed)


# --------------------------------------------------------------------------- planted bugs fail with their hint

def _per_sample(sigmas, like):
    return torch.as_tensor(sigmas, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


INTERP = {
    "swapped": (lambda x, e, s: _per_sample(s, x) * x + (1 - _per_sample(s, x)) * e, "sample and noise swapped"),
    "ddpm": (lambda x, e, s: (1 - _per_sample(s, x)).sqrt() * x + _per_sample(s, x).sqrt() * e, "square roots"),
    "noise_only": (lambda x, e, s: _per_sample(s, x) * e, "the sample's weight is missing"),
    "first_sigma": (lambda x, e, s: torch.as_tensor(s, dtype=x.dtype)[0] * (e - x) + x, "one sigma for the whole"),
}


@pytest.mark.parametrize("bug", list(INTERP))
def test_flow_interpolate_bugs(bug):
    fn, phrase = INTERP[bug]
    fails("flow_interpolate", fn, phrase)


def test_flow_interpolate_fixed_rank_fails():
    """sigmas reshaped for 4-D latents only: the check draws other ranks."""
    def rank4(x, e, s):
        s = torch.as_tensor(s, dtype=x.dtype).view(-1, 1, 1, 1)
        return s * e + (1 - s) * x
    with pytest.raises(CheckFailed):
        for seed in SEEDS:
            run("flow_interpolate", rank4, seed)


@pytest.mark.parametrize("fn,phrase", [(lambda x, e: x - e, "sign flipped"), (lambda x, e: e.clone(), "the noise"),
                                       (lambda x, e: x.clone(), "the sample (x0")])
def test_flow_velocity_target_bugs(fn, phrase):
    fails("flow_velocity_target", fn, phrase)


@pytest.mark.parametrize("fn,phrase", [
    (lambda s, k: s / (k - (k - 1) * s), "inverse shift"),
    (lambda s, k: k * s / (1 + k * s), "1 + (shift - 1) * sigma"),
    (lambda s, k: s ** (1 / k), "a power of sigma"),
])
def test_shift_sigmas_bugs(fn, phrase):
    fails("shift_sigmas", fn, phrase)


def _mu(bug):
    return lambda n, a=256, b=4096, s0=0.5, s1=1.15: checks._mu_variant(n, a, b, s0, s1, bug)


@pytest.mark.parametrize("bug,phrase", [("swapped", "two points swapped"), ("no_intercept", "intercept missing"),
                                        ("plus_intercept", "intercept sign"), ("inverted_slope", "upside down")])
def test_calculate_shift_bugs(bug, phrase):
    fails("calculate_shift", _mu(bug), phrase)


def test_calculate_shift_clamped_fails():
    fails("calculate_shift", _mu("clamped"), "extrapolates")


@pytest.mark.parametrize("fn,phrase", [
    (lambda mu, sg, t: mu / (mu + (1 / t - 1) ** sg), "_time_shift_linear"),
    (lambda mu, sg, t: math.exp(-mu) / (math.exp(-mu) + (1 / t - 1) ** sg), "e^-mu"),
    (lambda mu, sg, t: math.exp(mu) / (math.exp(mu) + (1 / t - 1) * sg), "EXPONENT"),
    (lambda mu, sg, t: math.exp(mu) / (math.exp(mu) + (t / (1 - t)) ** sg), "odds inverted"),
])
def test_time_shift_exponential_bugs(fn, phrase):
    fails("time_shift_exponential", fn, phrase)


@pytest.mark.parametrize("fn,phrase", [
    (lambda v, s, sn, x: (x.float() + (s - sn) * v).to(v.dtype), "wrong direction"),
    (lambda v, s, sn, x: (x.float() + sn * v).to(v.dtype), "CHANGE in sigma"),
    (lambda v, s, sn, x: (x.float() - s * v).to(v.dtype), "predicted clean sample"),
])
def test_flow_euler_step_bugs(fn, phrase):
    fails("flow_euler_step", fn, phrase)


def test_flow_euler_step_wrong_dtype_fails():
    """Computed and returned in the sample's float32 for a float16 model output."""
    def keep_float32(v, s, sn, x):
        return x.float() + (sn - s) * v.float()
    fails("flow_euler_step", keep_float32, "dtype")


@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name):
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: torch.zeros(3, 2))


@pytest.mark.parametrize("name", ["flow_interpolate", "flow_velocity_target", "shift_sigmas", "flow_euler_step"])
def test_identity_answer_fails(name):
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: a[-1] if name == "flow_euler_step" else a[0])


# --------------------------------------------------------------------------- machinery

@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab12", tmp_path, monkeypatch)


def test_pristine_starter_is_all_todo_and_notebook_falls_back(pristine_starters):
    from helpers.exercise import exercise

    ex = exercise("lab12", seed=0)
    assert set(ex.status.values()) == {"todo"}
    assert ex.flow_velocity_target(torch.zeros(1), torch.ones(1)).item() == 1.0   # the reference stands in


def test_a_learner_exception_names_the_learners_line(pristine_starters, capsys):
    from helpers.exercise import check

    src = pristine_starters.read_text().replace('raise NotImplementedError("TODO(lab12): calculate_shift")',
                                                "return undefined_mu")
    pristine_starters.write_text(src)
    check("lab12", seed=0)
    out = capsys.readouterr().out
    assert "NameError" in out and "undefined_mu" in out and f"{pristine_starters.name} line" in out
