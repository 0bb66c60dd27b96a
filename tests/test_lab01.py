"""Lab 01 (forward noise): the reference equals diffusers, passes its checks, and every
check is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from helpers.checks import lab01_forward_noise as checks
from labtools import checker, write_pristine_starter
from helpers.checks._core import CheckFailed
from helpers.solutions import lab01_forward_noise as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["make_betas", "alphas_cumprod", "add_noise", "snr", "rescale_zero_terminal_snr"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace"])
@pytest.mark.parametrize("T", [1, 2, 10, 50, 999, 1000, 4000])
@pytest.mark.parametrize("betas", [(1e-4, 0.02), (0.00085, 0.012), (3e-5, 0.031)])
def test_reference_equals_diffusers(schedule, T, betas):
    sched = DDPMScheduler(beta_schedule=schedule, num_train_timesteps=T, beta_start=betas[0], beta_end=betas[1])
    b = ref.make_betas(schedule, T, *betas)
    assert b.dtype == torch.float32 and b.shape == (T,)
    assert torch.equal(b, sched.betas)
    abar = ref.alphas_cumprod(b)
    assert torch.equal(abar, sched.alphas_cumprod)
    g = torch.Generator().manual_seed(T)
    for shape in [(3,), (3, 5), (3, 2, 4), (3, 2, 4, 4), (3, 2, 2, 3, 4)]:
        for dtype in (torch.float16, torch.float32, torch.float64):
            x = torch.randn(shape, generator=g).to(dtype)
            eps = torch.randn(shape, generator=g).to(dtype)
            t = torch.randint(0, T, (3,), generator=g)
            got = ref.add_noise(x, eps, t, abar)
            assert got.dtype == dtype and torch.equal(got, sched.add_noise(x, eps, t))


def test_snr_equals_diffusers_compute_snr():
    from diffusers.training_utils import compute_snr

    for schedule in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
        sched = DDPMScheduler(beta_schedule=schedule)
        t = torch.arange(1000)
        got = ref.snr(ref.alphas_cumprod(ref.make_betas(schedule)))
        torch.testing.assert_close(got, compute_snr(sched, t), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2"])
@pytest.mark.parametrize("T", [2, 10, 50, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rescale_equals_diffusers(schedule, T, dtype):
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    betas = ref.make_betas(schedule, T, 0.00085, 0.012).to(dtype)
    before = betas.clone()
    got = ref.rescale_zero_terminal_snr(betas)
    assert torch.equal(betas, before) and got.dtype == dtype and got.shape == (T,)
    assert torch.equal(got, rescale_zero_terminal_snr(betas.clone()))
    sched = DDPMScheduler(beta_schedule=schedule, num_train_timesteps=T, beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True)
    if dtype == torch.float32:
        assert torch.equal(got, sched.betas)
    assert got[-1] == 1 and torch.cumprod(1 - got, 0)[-1] == 0


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        ref.make_betas("cosine")


def test_reference_keeps_device_on_meta():
    abar = ref.alphas_cumprod(ref.make_betas("linear", 10))
    x = torch.empty(2, 3, device="meta", dtype=torch.float16)
    y = ref.add_noise(x, x, torch.tensor([0, 9]), abar)
    assert y.device.type == "meta" and y.dtype == torch.float16 and y.shape == x.shape


# --------------------------------------------------------------------------- correct variants pass

def betas_other_way(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    T = num_train_timesteps
    if schedule == "linear":
        return beta_start + (beta_end - beta_start) * torch.arange(T, dtype=torch.float32) / (T - 1)
    if schedule == "scaled_linear":
        s, e = math.sqrt(beta_start), math.sqrt(beta_end)
        return (s + (e - s) * torch.arange(T, dtype=torch.float32) / (T - 1)) ** 2
    if schedule == "sigmoid":  # the logistic function written out, on float64 points
        v = -6 + 12 * torch.arange(T, dtype=torch.float64) / (T - 1)
        return (beta_start + (beta_end - beta_start) / (1 + torch.exp(-v))).float()
    if schedule == "laplace":  # the log-SNR in torch float64, sigmoid via torch
        u = torch.arange(T + 1, dtype=torch.float64) / T
        lam = 0.5 * torch.sign(u - 0.5) * torch.log(1 - 2 * (u - 0.5).abs() + 1e-6)
        g = torch.sigmoid(lam).sqrt()
        return (1 - g[1:] / g[:-1]).clamp(max=0.999).float()
    if schedule == "squaredcos_cap_v2":  # all in float32 torch
        u = torch.arange(T + 1, dtype=torch.float32) / T
        f = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(schedule)


def abar_via_logs(betas):
    return torch.exp(torch.cumsum(torch.log1p(-betas), dim=0))


def add_noise_diffusers_style(original_samples, noise, timesteps, alphas_cumprod):
    a = alphas_cumprod.to(original_samples.device)[timesteps.to(original_samples.device)]  # float32
    a = a.flatten()
    while a.ndim < original_samples.ndim:
        a = a.unsqueeze(-1)
    return (a.sqrt() * original_samples.float() + (1 - a).sqrt() * noise.float()).to(original_samples.dtype)


def snr_other_way(alphas_cumprod):
    return 1 / (1 / alphas_cumprod - 1)


def rescale_in_float64(betas):
    """Algorithm 1 in float64, rounded back at the end (more accurate than diffusers in float32)."""
    r = torch.cumprod(1 - betas.double(), 0).sqrt()
    r = (r - r[-1]) * r[0] / (r[0] - r[-1])
    abar = r**2
    return (1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])).to(betas.dtype)


def rescale_affine_form(betas):
    """r' = a r + b with a, b solved from the two end conditions; betas from 1 - abar'_t / abar'_{t-1}."""
    r = torch.cumprod(1 - betas, 0) ** 0.5
    a = r[0] / (r[0] - r[-1])
    abar = (a * r - a * r[-1]) ** 2
    prev = torch.cat([torch.ones_like(abar[:1]), abar[:-1]])  # abar'_{-1} = 1
    return 1 - abar / prev


def rescale_via_logs(betas):
    """alpha'_t from differences of log abar' (the last is log 0 = -inf, so alpha' = 0, beta' = 1)."""
    r = torch.exp(0.5 * torch.cumsum(torch.log1p(-betas), 0))
    r = (r - r[-1]) / (r[0] - r[-1]) * r[0]
    log_abar = 2 * torch.log(r)
    return 1 - torch.exp(torch.diff(log_abar, prepend=torch.zeros_like(log_abar[:1])))


def rescale_diffusers_copy(betas):
    """diffusers' own code, in-place ops and all, on a copy."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    a0, aT = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= aT
    alphas_bar_sqrt *= a0 / (a0 - aT)
    alphas_bar = alphas_bar_sqrt**2
    return 1 - torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,fn", [("make_betas", betas_other_way), ("alphas_cumprod", abar_via_logs),
                                     ("add_noise", add_noise_diffusers_style), ("snr", snr_other_way),
                                     ("rescale_zero_terminal_snr", rescale_affine_form)])
def test_correct_variants_pass(name, fn, seed):
    run(name, fn, seed)


@pytest.mark.parametrize("fn", [rescale_in_float64, rescale_affine_form, rescale_via_logs, rescale_diffusers_copy])
def test_rescale_equivalent_forms_pass_every_seed(fn):
    """Equivalent correct forms pass 40 seeds: the tolerance comes from a float64 ground truth."""
    for seed in range(40):
        run("rescale_zero_terminal_snr", fn, seed)


def betas_numpy_float64(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """Every schedule in NumPy float64, rounded to float32 once at the end."""
    import numpy as np

    T = num_train_timesteps
    u = np.arange(T) / max(T - 1, 1)
    if schedule == "linear":
        b = beta_start + (beta_end - beta_start) * u
    elif schedule == "scaled_linear":
        b = (np.sqrt(beta_start) + (np.sqrt(beta_end) - np.sqrt(beta_start)) * u) ** 2
    elif schedule == "sigmoid":
        b = beta_start + (beta_end - beta_start) / (1 + np.exp(-(12 * u - 6)))
    elif schedule == "laplace":
        v = np.arange(T + 1) / T
        lam = -0.5 * np.sign(0.5 - v) * np.log(1 - 2 * np.abs(0.5 - v) + 1e-6)
        g = np.sqrt(np.exp(lam) / (1 + np.exp(lam)))
        b = np.minimum(1 - g[1:] / g[:-1], 0.999)
    elif schedule == "squaredcos_cap_v2":
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        b = np.minimum(1 - f[1:] / f[:-1], 0.999)
    else:
        raise ValueError(schedule)
    return torch.from_numpy(b).float()


def abar_in_float64(betas):
    return torch.cumprod(1 - betas.double(), 0).to(betas.dtype)


def add_noise_in_float64(original_samples, noise, timesteps, alphas_cumprod):
    """Textbook eq. 4 in float64 with the timesteps as a Python loop, cast back at the end."""
    x = original_samples
    out = torch.empty_like(x)
    for i, t in enumerate(timesteps.tolist()):
        a = float(alphas_cumprod[t])
        out[i] = (math.sqrt(a) * x[i].double().cpu() + math.sqrt(1 - a) * noise[i].double().cpu()).to(x.dtype)
    return out  # on the meta device (the checks' stand-in for a GPU) .cpu() cannot copy: not judged there


def add_noise_checks_its_inputs(original_samples, noise, timesteps, alphas_cumprod):
    """Right, and reads the samples' values first (a finite check): meta tensors have none."""
    if not bool(torch.isfinite(original_samples).all()):
        raise ValueError("non-finite samples")
    return add_noise_diffusers_style(original_samples, noise, timesteps, alphas_cumprod)


def snr_via_logs(alphas_cumprod):
    return torch.exp(torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod))


EQUIVALENT_FORMS = [("make_betas", betas_other_way), ("make_betas", betas_numpy_float64),
                    ("alphas_cumprod", abar_via_logs), ("alphas_cumprod", abar_in_float64),
                    ("add_noise", add_noise_diffusers_style), ("add_noise", add_noise_in_float64),
                    ("add_noise", add_noise_checks_its_inputs),
                    ("snr", snr_other_way), ("snr", snr_via_logs)]


@pytest.mark.parametrize("name,fn", EQUIVALENT_FORMS, ids=[f.__name__ for _, f in EQUIVALENT_FORMS])
def test_equivalent_forms_pass_every_seed(name, fn):
    """No false negative: correct textbook forms (other op orders, float64 then rounded) pass 40 seeds."""
    for seed in range(40):
        run(name, fn, seed)


# --------------------------------------------------------------------------- planted bugs: make_betas

def betas_linear_for_scaled(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "scaled_linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps)
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_scaled_not_squared(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps)
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_no_clip(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "squaredcos_cap_v2":
        T = num_train_timesteps
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([1 - f((t + 1) / T) / f(t / T) for t in range(T)], dtype=torch.float32)
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_cosine_returns_abar(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "squaredcos_cap_v2":
        T = num_train_timesteps
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float32)
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_sigmoid_bare(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps))
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_sigmoid_unit_range(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(0, 1, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def _laplace_betas(T, g):
    return torch.tensor([min(1 - g((t + 1) / T) / g(t / T), 0.999) for t in range(T)], dtype=torch.float32)


def _lam(u, eps=1e-6):
    return -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * abs(0.5 - u) + eps)


def betas_laplace_no_sqrt(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "laplace":
        return _laplace_betas(num_train_timesteps, lambda u: 1 / (1 + math.exp(-_lam(u))))
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_laplace_no_eps(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "laplace":
        return _laplace_betas(num_train_timesteps, lambda u: math.sqrt(1 / (1 + math.exp(-_lam(u, 0)))))
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_laplace_sign_flipped(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule == "laplace":
        return _laplace_betas(num_train_timesteps, lambda u: math.sqrt(1 / (1 + math.exp(_lam(u)))))
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_float64(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end).double()


def betas_one_too_many(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    return torch.linspace(beta_start, beta_end, num_train_timesteps + 1)


def betas_diffusers_error(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule not in ("linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace"):
        raise NotImplementedError(f"{schedule} is not implemented")
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


def betas_no_error(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    if schedule not in ("linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace"):
        return torch.zeros(num_train_timesteps)
    return ref.make_betas(schedule, num_train_timesteps, beta_start, beta_end)


@pytest.mark.parametrize("fn,phrase", [
    (betas_linear_for_scaled, "plain linear schedule"),
    (betas_scaled_not_squared, "did not square"),
    (betas_no_clip, "no cap at 0.999"),
    (betas_cosine_returns_abar, "you returned abar_t = f(t)/f(0)"),
    (betas_sigmoid_bare, "bare sigmoid"),
    (betas_sigmoid_unit_range, "from -6 to 6"),
    (betas_laplace_no_sqrt, "no square root"),
    (betas_laplace_no_eps, "adds 1e-6"),
    (betas_laplace_sign_flipped, "sign of the log-SNR"),
    (betas_float64, "wrong dtype"),
    (betas_one_too_many, "off-by-one length"),
    (betas_diffusers_error, "expected a ValueError"),
    (betas_no_error, "expected a ValueError"),
])
def test_make_betas_bugs(fn, phrase):
    fails("make_betas", fn, phrase)


# --------------------------------------------------------------------------- planted bugs: alphas_cumprod

@pytest.mark.parametrize("fn,phrase", [
    (lambda betas: 1 - betas, "alpha_t = 1 - beta_t"),
    (lambda betas: torch.cumprod(betas, 0), "multiplied the betas"),
    (lambda betas: torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, 0)[:-1]]),
     "shifted by one"),
    (lambda betas: torch.cumprod(1 - betas, 0).sqrt(), "sqrt(abar_t)"),
    (lambda betas: torch.cumprod(1 - betas.float(), 0), "dtype not kept"),
])
def test_alphas_cumprod_bugs(fn, phrase):
    fails("alphas_cumprod", fn, phrase)


def test_alphas_cumprod_in_place_is_caught():
    def in_place(betas):
        return torch.cumprod(betas.mul_(-1).add_(1), 0)

    fails("alphas_cumprod", in_place, "in place")


# --------------------------------------------------------------------------- planted bugs: add_noise

def _abar_t(x, t, abar):
    a = abar.to(device=x.device, dtype=x.dtype)[t.to(x.device)]
    return a.reshape(-1, *[1] * (x.ndim - 1))


def noise_alpha_for_abar(x, eps, t, abar):
    alphas = abar / torch.cat([abar.new_ones(1), abar[:-1]])  # alpha_t = 1 - beta_t
    a = _abar_t(x, t, alphas)
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_no_sqrt_signal(x, eps, t, abar):
    a = _abar_t(x, t, abar)
    return a * x + (1 - a).sqrt() * eps


def noise_no_sqrt_noise(x, eps, t, abar):
    a = _abar_t(x, t, abar)
    return a.sqrt() * x + (1 - a) * eps


def noise_swapped(x, eps, t, abar):
    a = _abar_t(x, t, abar)
    return (1 - a).sqrt() * x + a.sqrt() * eps


def noise_t_minus_1(x, eps, t, abar):
    a = _abar_t(x, t - 1, abar)
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_t_plus_1(x, eps, t, abar):
    a = _abar_t(x, t + 1, abar)
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_4d_only(x, eps, t, abar):
    a = abar.to(device=x.device, dtype=x.dtype)[t][:, None, None, None]
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_4d_view(x, eps, t, abar):
    a = abar.to(device=x.device, dtype=x.dtype)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_no_reshape(x, eps, t, abar):
    a = abar.to(device=x.device, dtype=x.dtype)[t]
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_no_cast(x, eps, t, abar):
    a = abar.to(x.device)[t].reshape(-1, *[1] * (x.ndim - 1))
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_no_device(x, eps, t, abar):
    a = abar.to(dtype=x.dtype)[t].reshape(-1, *[1] * (x.ndim - 1))
    return a.sqrt() * x + (1 - a).sqrt() * eps


def noise_output_on_cpu(x, eps, t, abar):
    return ref.add_noise(x, eps, t, abar).to("cpu") if x.device.type != "meta" else torch.zeros(x.shape)


@pytest.mark.parametrize("fn,phrase", [
    (noise_alpha_for_abar, "one-step alpha_t"),
    (noise_no_sqrt_signal, "missing square root on the signal coefficient"),
    (noise_no_sqrt_noise, "missing square root on the noise coefficient"),
    (noise_swapped, "swapped"),
    (noise_t_minus_1, "abar_{t-1}"),
    (noise_t_plus_1, "abar_{t+1}"),
    (noise_4d_only, "(B, 1, ..., 1)"),
    (noise_4d_view, "(B, 1, ..., 1)"),
    (noise_no_reshape, "(B, 1, ..., 1)"),
    (noise_no_cast, "dtype not kept"),
    (noise_no_device, "device not kept"),
    (noise_output_on_cpu, "device not kept"),
])
def test_add_noise_bugs(fn, phrase):
    fails("add_noise", fn, phrase)


def test_add_noise_t_plus_1_at_the_last_step_is_explained():
    """With only edge timesteps (case 2 onwards), t + 1 raises IndexError: the check explains it."""
    abar = ref.alphas_cumprod(ref.make_betas("linear", 20))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(CheckFailed, match=r"t \+ 1\?"):
        checks._run_add_noise(noise_t_plus_1, x, x, torch.tensor([0, 19]), abar)


def test_add_noise_message_names_equation_and_index():
    with pytest.raises(CheckFailed) as info:
        run("add_noise", noise_no_sqrt_noise)
    msg = str(info.value)
    assert msg.startswith("Likely bug:") and "DDPM eq. 4" in msg and "first at index" in msg


def test_add_noise_in_place_is_caught():
    def in_place(x, eps, t, abar):
        a = _abar_t(x, t, abar.sqrt_())
        return a * x + (1 - a * a).sqrt() * eps

    fails("add_noise", in_place, "in place")


# --------------------------------------------------------------------------- planted bugs: snr

@pytest.mark.parametrize("fn,phrase", [
    (lambda abar: (1 - abar) / abar, "the inverse"),
    (lambda abar: torch.log(abar / (1 - abar)), "log SNR"),
    (lambda abar: (abar / (1 - abar)).sqrt(), "ratio of standard deviations"),
    (lambda abar: (abar.float() / (1 - abar.float())), "dtype not kept"),
])
def test_snr_bugs(fn, phrase):
    fails("snr", fn, phrase)


# --------------------------------------------------------------------------- planted bugs: rescale_zero_terminal_snr

def _r(betas):
    return torch.cumprod(1 - betas, 0).sqrt()


def _to_betas(abar):
    return 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


def rescale_no_scale(betas):
    r = _r(betas)
    return _to_betas((r - r[-1]) ** 2)


def rescale_views_not_clones(betas):
    """diffusers' in-place code without the .clone() of the two ends."""
    r = _r(betas)
    r0, rT = r[0], r[-1]
    r -= rT
    r *= r0 / (r0 - rT)
    return _to_betas(r**2)


def rescale_abar_not_sqrt(betas):
    a = torch.cumprod(1 - betas, 0)
    return _to_betas((a - a[-1]) * a[0] / (a[0] - a[-1]))


def rescale_first_alpha_one(betas):
    r = _r(betas)
    abar = ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2
    return 1 - torch.cat([torch.ones_like(abar[:1]), abar[1:] / abar[:-1]])


def rescale_returns_abar(betas):
    r = _r(betas)
    return ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2


def rescale_scale_inverted(betas):
    r = _r(betas)
    return _to_betas(((r - r[-1]) * (r[0] - r[-1]) / r[0]) ** 2)


def rescale_missing_first(betas):
    r = _r(betas)
    abar = ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2
    return 1 - abar[1:] / abar[:-1]


def rescale_float32(betas):
    return ref.rescale_zero_terminal_snr(betas.float())


def rescale_in_place(betas):
    out = ref.rescale_zero_terminal_snr(betas)
    betas.copy_(out)
    return out


@pytest.mark.parametrize("fn,phrase", [
    (rescale_no_scale, "did not scale it back"),
    (rescale_abar_not_sqrt, "rescaled abar itself"),
    (rescale_first_alpha_one, "the first alpha is wrong"),
    (rescale_returns_abar, "you returned abar'"),
    (rescale_scale_inverted, "upside down"),
    (rescale_missing_first, "one beta missing"),
    (rescale_float32, "dtype not kept"),
    (rescale_in_place, "in place"),
    (lambda betas: betas.clone(), "rescale_zero_terminal_snr("),
])
def test_rescale_bugs(fn, phrase):
    fails("rescale_zero_terminal_snr", fn, phrase)


def test_rescale_small_bugs_fail_on_every_seed():
    """The bugs that change only beta'_0 (by as little as beta_start ~ 5e-5) are caught on 30 seeds."""
    fails("rescale_zero_terminal_snr", rescale_first_alpha_one, "the first alpha is wrong", seeds=range(30))
    fails("rescale_zero_terminal_snr", rescale_no_scale, "did not scale it back", seeds=range(30))


def test_rescale_without_clones_is_stopped_by_torch():
    """The in-place code of diffusers without its .clone(): torch itself refuses, and says clone()."""
    with pytest.raises(RuntimeError, match="clone"):
        run("rescale_zero_terminal_snr", rescale_views_not_clones)


# --------------------------------------------------------------------------- hard-coded answers

def _hard_coded(name):
    """Compute the reference answer once, on one fixed input, and always return it."""
    g = torch.Generator().manual_seed(0)
    if name == "make_betas":
        fixed = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).betas
        return lambda *a, **k: fixed.clone()
    abar = DDPMScheduler().alphas_cumprod
    if name == "alphas_cumprod":
        return lambda betas: abar.clone()
    if name == "snr":
        fixed = ref.snr(abar)
        return lambda a: fixed.clone()
    if name == "rescale_zero_terminal_snr":
        fixed = ref.rescale_zero_terminal_snr(DDPMScheduler().betas)
        return lambda b: fixed.clone()
    x = torch.randn(4, 3, 8, 8, generator=g)
    fixed = ref.add_noise(x, torch.randn_like(x), torch.tensor([0, 10, 500, 999]), abar)
    return lambda *a: fixed.clone()


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name, seed):
    with pytest.raises(CheckFailed):
        run(name, _hard_coded(name), seed)


def test_inputs_are_fresh_per_seed():
    """Two seeds draw different schedules/shapes: record what the learner's function sees."""
    seen = {}
    for seed in (0, 1):
        calls = []
        run("add_noise", lambda x, eps, t, abar, calls=calls: (calls.append((tuple(x.shape), t.tolist())),
                                                               ref.add_noise(x, eps, t, abar))[1], seed)
        seen[seed] = calls
    assert seen[0] != seen[1]


# --------------------------------------------------------------------------- with the machinery

@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab01", tmp_path, monkeypatch)


def test_exercise_keeps_a_correct_learner_function(pristine_starters, capsys):
    from helpers.exercise import exercise

    src = pristine_starters.read_text().replace(
        'raise NotImplementedError("TODO(lab01): snr")', "return alphas_cumprod / (1 - alphas_cumprod)")
    pristine_starters.write_text(src)
    ex = exercise("lab01", seed=0)
    assert ex.origin["snr"] == "yours" and ex.status["snr"] == "passed"
    assert ex.origin["add_noise"] == "reference"


def test_exercise_replaces_a_buggy_learner_function(pristine_starters, capsys):
    from helpers.exercise import exercise

    src = pristine_starters.read_text().replace(
        'raise NotImplementedError("TODO(lab01): snr")', "return (1 - alphas_cumprod) / alphas_cumprod")
    pristine_starters.write_text(src)
    ex = exercise("lab01", seed=0)
    assert ex.status["snr"] == "failed" and ex.snr is ref.snr
    assert "the inverse" in ex.results["snr"].message


def test_a_learner_exception_names_the_learners_line(pristine_starters, capsys):
    """Issue 15: the traceback of a learner's error pointed at "(not in your file)" in lab 01."""
    from helpers.exercise import check

    src = pristine_starters.read_text().replace(
        'raise NotImplementedError("TODO(lab01): snr")', "return alphas_cumprod.numpy() / undefined_name")
    pristine_starters.write_text(src)
    check("lab01", seed=0)
    out = capsys.readouterr().out
    assert "NameError" in out and "undefined_name" in out and "(not in your file)" not in out
    assert f"{pristine_starters.name} line" in out


# --------------------------------------------------------------------------- the page's helpers

def test_show_source_slices_by_markers(capsys):
    from helpers.reading import show_source, source_lines

    first, lines, note = source_lines(DDPMScheduler.add_noise, start="sqrt_alpha_prod = alphas_cumprod",
                                      stop="noisy_samples =")
    assert not note and "sqrt_alpha_prod" in lines[0] and lines[-1].strip().startswith("noisy_samples")
    show_source(DDPMScheduler.__init__, start="if trained_betas", stop='elif beta_schedule == "linear"')
    out = capsys.readouterr().out
    assert out.startswith("# diffusers/schedulers/scheduling_ddpm.py, lines ")  # unwrapped, not configuration_utils
    assert "trained_betas" in out and out.count("\n") == 4
    show_source(DDPMScheduler.add_noise, start="this marker does not exist")
    assert "not found in this version" in capsys.readouterr().out


def test_plot_helpers_make_figures():
    import matplotlib.pyplot as plt

    from helpers.plot import image_grid, plot_curves, to_image

    assert to_image(torch.zeros(3, 4, 5)).shape == (4, 5, 3) and to_image(torch.zeros(1, 4, 5)).shape == (4, 5, 3)
    assert float(to_image(torch.full((3, 2, 2), 5.0)).max()) == 1.0  # clipped
    fig = image_grid([[torch.zeros(3, 8, 8)] * 3, [torch.ones(3, 8, 8)] * 2], row_labels=["a", "b"],
                     col_labels=["x", "y", "z"])
    assert len(fig.axes) == 6
    ax = plot_curves({"one": torch.arange(5.0), "two": (torch.arange(3), torch.ones(3))}, xlabel="t", ylabel="y")
    assert len(ax.lines) == 2 and ax.get_xlabel() == "t"
    plt.close("all")


def test_interactive_figure_degrades_to_a_static_figure(monkeypatch):
    import matplotlib.pyplot as plt

    from helpers import widgets

    calls = []

    def draw(t, schedule):
        calls.append((t, schedule))
        return plt.figure()

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    assert not widgets.widgets_available()  # plain pytest: no IPython kernel
    assert widgets.interactive_figure(draw, t=(0, 999, 1, 250), schedule=["linear", "cosine"]) is None
    assert calls == [(250, "linear")]
    with pytest.raises(TypeError):
        widgets.interactive_figure(draw, t=5)
    plt.close("all")


def test_interactive_figure_controls_redraw_only_on_change(monkeypatch):
    """With widgets, nothing is drawn inside a widget until a control changes (a headless run
    never draws into an Output widget: that can hang nbconvert), then each change redraws."""
    import IPython.display
    import matplotlib.pyplot as plt

    from helpers import widgets

    calls, shown = [], []
    monkeypatch.setattr(widgets, "widgets_available", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.extend(a))
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    widgets.interactive_figure(lambda t, schedule: (calls.append((t, schedule)), plt.figure())[1],
                               t=(0, 999, 1, 250), schedule=["linear", "cosine"])
    assert calls == [(250, "linear")]  # the static figure only
    slider, dropdown = shown[0].children[1].children
    slider.value = 10
    dropdown.value = "cosine"
    assert calls == [(250, "linear"), (10, "linear"), (10, "cosine")]
    plt.close("all")
