"""Checks of Lab 01 (forward noise process): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (schedule, T in [50, 1000], beta range, sample
rank 1..5 with random sizes, batch, timesteps, dtype) and compares the learner's output
with the reference solution AND with ``diffusers.DDPMScheduler`` on the same inputs. When
the output matches what a typical bug returns, the message names that bug (the
``diagnose`` candidates below are those bugs, computed on the same inputs).
"""
import math

import mpmath  # a dependency of torch (through sympy): the 40-digit ground truth of the rescaling
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from helpers.checks._core import (META_NOTE, require_raises, CheckFailed, assert_close, choice, describe, describe_exception,
                                  device_case, device_timesteps, other_device, randint, randn, require_unchanged, uniform)
from helpers.solutions import lab01_forward_noise as ref

LAB = "lab01"

SCHEDULES = ("linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2", "laplace")

# Tolerances, |got - expected| <= atol + rtol * |expected| elementwise.
# betas: the cosine ratio computed in float32 torch instead of Python floats (as diffusers
# does) is off by up to 1.3e-4 relative beyond 1e-6 absolute; the cap bug is off by 1e-3.
# abar: exp(cumsum(log(1 - beta))) in float32 drifts up to ~1e-4 relative over 1000 steps.
# Every typical bug is off by far more.
TOL_BETAS = dict(atol=1e-6, rtol=5e-4)
TOL_ABAR = dict(atol=1e-7, rtol=1e-4)
# x_t: float32 / float64 / float16 samples (float16 keeps ~3 significant digits).
TOL_XT = {torch.float32: dict(atol=1e-5, rtol=1e-5),
          torch.float64: dict(atol=1e-6, rtol=1e-6),  # abar itself is float32
          torch.float16: dict(atol=1e-2, rtol=1e-2)}
# SNR: 1/(1/abar - 1) and similar rewrites lose up to ~2e-3 relative in float32 near t = 0.
TOL_SNR = {torch.float32: dict(atol=1e-7, rtol=5e-3),
           torch.float64: dict(atol=1e-12, rtol=1e-8)}

SCHEDULE_HINTS = {  # shown on any failure: the definition and where to read it, not the code
    "linear": "'linear' spaces T betas evenly from beta_start to beta_end (DDPM Sec. 4; the first branch "
              "of DDPMScheduler.__init__).",
    "scaled_linear": "'scaled_linear' spaces sqrt(beta) evenly from sqrt(beta_start) to sqrt(beta_end) and "
                     "squares (the second branch of DDPMScheduler.__init__).",
    "sigmoid": "'sigmoid' is the GeoDiff schedule of DDPMScheduler.__init__: the sigmoid of T points evenly "
               "spaced from -6 to 6, stretched onto [beta_start, beta_end].",
    "squaredcos_cap_v2": "'squaredcos_cap_v2' is betas_for_alpha_bar in scheduling_ddpm.py: for t = 0..T-1, one "
                         "minus the ratio of f((t+1)/T) to f(t/T), capped at 0.999 (Nichol & Dhariwal 2021, "
                         "eq. 17), computed with Python floats (math.cos) and converted to float32 at the end.",
    "laplace": "'laplace' is betas_for_alpha_bar(T, alpha_transform_type='laplace') in scheduling_ddpm.py: the "
               "cosine loop (ratios, cap 0.999, Python floats) with diffusers' laplace alpha_bar_fn.",
}
EQ4 = "DDPM eq. 4, with one abar_t = alphas_cumprod[t] per sample (DDPMScheduler.add_noise)"
RESHAPE_HINT = (
    "one abar_t per sample has shape (B,); give it one trailing size-1 dimension per dimension "
    "of the samples after the batch one, so it broadcasts for samples of ANY rank ((B, D), "
    "(B, C, H, W), (B, C, F, H, W)); a fixed number of new axes only works for one rank "
    "(see how DDPMScheduler.add_noise does it)."
)


# --------------------------------------------------------------------------- random inputs

def _random_schedule(gen, schedule=None):
    """(schedule, T, beta_start, beta_end), rounded so a message can be retyped."""
    schedule = schedule or choice(gen, SCHEDULES)
    T = randint(gen, 50, 1000)
    beta_start = float(f"{10 ** uniform(gen, math.log10(5e-5), -3):.3g}")  # 5e-5 .. 1e-3
    beta_end = float(f"{uniform(gen, 0.005, 0.03):.3g}")
    return schedule, T, beta_start, beta_end


def _call_str(schedule, T, beta_start, beta_end):
    return (f"make_betas({schedule!r}, num_train_timesteps={T}, "
            f"beta_start={beta_start:g}, beta_end={beta_end:g})")


def _diffusers(schedule, T, beta_start, beta_end):
    return DDPMScheduler(beta_schedule=schedule, num_train_timesteps=T,
                         beta_start=beta_start, beta_end=beta_end)


def _shape(gen, rank, batch):
    """(batch, d1, ..., d_{rank-1}); every later size differs from batch and from 1, so an
    abar_t shaped for one rank cannot broadcast silently into another."""
    sizes = [s for s in range(2, 8) if s != batch]
    return (batch,) + tuple(choice(gen, sizes) for _ in range(rank - 1))


# --------------------------------------------------------------------------- make_betas

def _cosine_f(u, s=0.008):
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def _make_betas_bugs(schedule, T, beta_start, beta_end):
    """What typical wrong make_betas return on these arguments."""
    f32 = dict(dtype=torch.float32)
    lin = torch.linspace(beta_start, beta_end, T, **f32)
    sqrt_lin = torch.linspace(beta_start**0.5, beta_end**0.5, T, **f32)
    bugs = []
    if schedule == "scaled_linear":
        bugs += [
            ("you returned the plain linear schedule. 'scaled_linear' spaces sqrt(beta) evenly "
             "from sqrt(beta_start) to sqrt(beta_end) and squares the result.", lin),
            ("you spaced sqrt(beta) evenly but did not square it at the end.", sqrt_lin),
        ]
    if schedule == "linear":
        bugs += [("you returned 'scaled_linear' (evenly spaced sqrt(beta), squared); 'linear' "
                  "spaces beta itself evenly: torch.linspace(beta_start, beta_end, T).", sqrt_lin**2)]
    if schedule == "sigmoid":
        v = torch.linspace(-6, 6, T, **f32)
        bugs += [
            ("you returned the bare sigmoid: stretch it onto the range, beta_start + (beta_end - "
             "beta_start) * sigmoid(v).", torch.sigmoid(v)),
            ("the sigmoid's argument runs over the wrong range: DDPMScheduler spaces it from -6 to 6 "
             "(torch.linspace(-6, 6, T)), not over [0, 1].",
             torch.sigmoid(torch.linspace(0, 1, T, **f32)) * (beta_end - beta_start) + beta_start),
            ("you returned the plain linear schedule; 'sigmoid' passes evenly spaced points from -6 to 6 "
             "through the sigmoid first.", lin),
        ]
    if schedule == "laplace":
        def lam(u):
            return -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * abs(0.5 - u) + 1e-6)

        def from_g(g):
            return torch.tensor([min(1 - g((t + 1) / T) / g(t / T), 0.999) for t in range(T)], **f32)

        bugs += [
            ("no square root: diffusers' laplace alpha_bar_fn returns sqrt(snr / (1 + snr)), and the betas "
             "are built from ratios of that.", from_g(lambda u: 1 / (1 + math.exp(-lam(u))))),
            ("the sign of the log-SNR is flipped: it must be large at u = 0 (clean) and negative at u = 1; "
             "lam = -0.5 * copysign(1, 0.5 - u) * log(...).", from_g(lambda u: math.sqrt(1 / (1 + math.exp(lam(u)))))),
            ("you used the cosine f for 'laplace': betas_for_alpha_bar picks its alpha_bar_fn by "
             "alpha_transform_type.", from_g(_cosine_f)),
        ]
    if schedule == "squaredcos_cap_v2":
        raw = [1 - _cosine_f((t + 1) / T) / _cosine_f(t / T) for t in range(T)]
        bugs += [
            ("no cap at 0.999: your last beta is 1.0. Nichol & Dhariwal (text after eq. 17) and "
             "diffusers' betas_for_alpha_bar clip every beta to min(beta, 0.999); beta = 1 would make "
             "abar_{T-1} exactly 0.", torch.tensor(raw, **f32)),
            ("beta_t is shifted by one step: diffusers' beta_t = 1 - f((t+1)/T) / f(t/T) for "
             "t = 0..T-1 (the paper's t+1 and t, since the paper counts 1..T).",
             torch.tensor([min(1 - _cosine_f(t / T) / _cosine_f((t - 1) / T), 0.999) for t in range(T)], **f32)),
            ("you returned abar_t = f(t)/f(0), not beta_t. Turn abar into betas with "
             "beta_t = 1 - abar_{t+1}/abar_t, i.e. 1 - f((t+1)/T) / f(t/T), capped at 0.999.",
             torch.tensor([_cosine_f((t + 1) / T) / _cosine_f(0) for t in range(T)], **f32)),
            ("the offset s = 0.008 is missing: f(u) = cos((u + 0.008) / 1.008 * pi / 2) ** 2.",
             torch.tensor([min(1 - _cosine_f((t + 1) / T, 0) / max(_cosine_f(t / T, 0), 1e-300), 0.999)
                           for t in range(T)], **f32)),
        ]
    return bugs


def check_make_betas(fn, gen):
    """All five schedules with random T and beta range; an unknown name must raise ValueError."""
    for schedule in SCHEDULES:
        schedule, T, beta_start, beta_end = _random_schedule(gen, schedule)
        name = _call_str(schedule, T, beta_start, beta_end)
        try:
            got = fn(schedule, T, beta_start, beta_end)
        except ValueError as exc:
            if schedule == "laplace" and "math domain error" in str(exc):
                raise CheckFailed(
                    f"Likely bug: log(0) in the laplace log-SNR: diffusers adds 1e-6 inside the logarithm.\n"
                    f"{name} raised {describe_exception(exc)}\nHint: at u = 0 and u = 1, 1 - 2|0.5 - u| is 0; "
                    f"read the laplace alpha_bar_fn of betas_for_alpha_bar.") from exc
            raise
        expected = ref.make_betas(schedule, T, beta_start, beta_end)
        if isinstance(got, torch.Tensor) and got.ndim == 1 and abs(got.shape[0] - T) == 1:
            raise CheckFailed(
                f"Likely bug: off-by-one length: expected T = {T} betas, got {got.shape[0]}.\n"
                f"{name}: one beta per timestep t = 0..T-1. torch.linspace(a, b, T) gives exactly T "
                f"values; the cosine loop runs over range(T).")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype != torch.float32:
            raise CheckFailed(
                f"Likely bug: wrong dtype: betas must be float32 (like DDPMScheduler.betas), got {got.dtype}.\n"
                f"{name}: create the tensor with dtype=torch.float32 (numpy arrays and torch.float64 "
                f"math give float64).")
        assert_close(name, got, expected, **TOL_BETAS, diagnose=_make_betas_bugs(schedule, T, beta_start, beta_end),
                     hint=SCHEDULE_HINTS[schedule])
        assert_close(f"{name} vs diffusers DDPMScheduler(beta_schedule={schedule!r}, ...).betas", got,
                     _diffusers(schedule, T, beta_start, beta_end).betas, **TOL_BETAS)
    bad = choice(gen, ["cosine", "quadratic", "Linear", "sigmoid_v9", "Laplace"])
    call = f"make_betas({bad!r}, 100, 1e-4, 0.02)"
    require_raises(call, lambda: fn(bad, 100, 1e-4, 0.02), "an unknown schedule name", passthrough=(),
                   note=" (DDPMScheduler raises NotImplementedError here; this exercise asks for a ValueError.)")


# --------------------------------------------------------------------------- alphas_cumprod

def _alphas_cumprod_bugs(betas):
    abar = torch.cumprod(1 - betas, 0)
    return [
        ("you returned alpha_t = 1 - beta_t, the fraction kept in ONE step. abar_t is the product "
         "alpha_0 * ... * alpha_t: torch.cumprod(1 - betas, dim=0).", 1 - betas),
        ("you multiplied the betas, not the alphas: use torch.cumprod(1 - betas, dim=0).",
         torch.cumprod(betas, 0)),
        ("you returned 1 - abar_t (the noise variance), not abar_t.", 1 - abar),
        ("you summed where you should multiply: cumprod, not cumsum.", torch.cumsum(1 - betas, 0)),
        ("abar_t is shifted by one: abar_0 must already include alpha_0 (it is 1 - beta_0, not 1).",
         torch.cat([torch.ones_like(abar[:1]), abar[:-1]])),
        ("you returned sqrt(abar_t); abar_t itself is the cumulative product (the square root comes "
         "later, in add_noise).", abar.sqrt()),
    ]


def check_alphas_cumprod(fn, gen):
    """A random schedule (float32, vs diffusers) and random non-monotone betas (float64)."""
    schedule, T, beta_start, beta_end = _random_schedule(gen)
    betas = ref.make_betas(schedule, T, beta_start, beta_end)  # (T,) float32
    name = f"alphas_cumprod(betas of {_call_str(schedule, T, beta_start, beta_end)})"
    betas_in = betas.clone()
    got = fn(betas_in)
    if not torch.equal(betas_in, betas):
        raise CheckFailed(f"{name}: your function changed its input `betas` in place; compute a new "
                          f"tensor instead (e.g. 1 - betas, not betas.mul_(-1).add_(1)).")
    assert_close(name, got, ref.alphas_cumprod(betas), **TOL_ABAR, diagnose=_alphas_cumprod_bugs(betas),
                 hint="the product of the alphas up to t (DDPM, the definitions above eq. 4).")
    assert_close(f"{name} vs diffusers DDPMScheduler(...).alphas_cumprod", got,
                 _diffusers(schedule, T, beta_start, beta_end).alphas_cumprod, **TOL_ABAR)

    T = randint(gen, 20, 300)
    betas = (torch.rand(T, generator=gen, dtype=torch.float64) * 0.05 + 1e-4)  # (T,) float64, random order
    name = f"alphas_cumprod(random float64 betas of shape ({T},))"
    got = fn(betas)
    if isinstance(got, torch.Tensor) and got.shape == betas.shape and got.dtype != betas.dtype:
        raise CheckFailed(f"Likely bug: dtype not kept: float64 betas must give float64 abar, got {got.dtype}.\n"
                          f"{name}: expected {betas.dtype} (the dtype of "
                          f"betas), got {got.dtype}. Do not pass a dtype; 1 - betas keeps it.")
    assert_close(name, got, ref.alphas_cumprod(betas), **TOL_ABAR, diagnose=_alphas_cumprod_bugs(betas),
                 hint="the product of the alphas up to t (DDPM, the definitions above eq. 4).")


# --------------------------------------------------------------------------- add_noise

def _add_noise_bugs(x, eps, t, abar):
    """Typical wrong x_t on these inputs (computed in float64, compared at the check's tolerance)."""
    x, eps, abar = x.double(), eps.double(), abar.double()
    shape = (-1,) + (1,) * (x.ndim - 1)

    def xt(a_signal, a_noise):  # a_*: (B,) coefficients
        return a_signal.reshape(shape) * x + a_noise.reshape(shape) * eps

    a = abar[t]  # (B,)
    bugs = [
        ("missing square root on the signal coefficient: it is sqrt(abar_t) * x_0, not abar_t * x_0.",
         xt(a, (1 - a).sqrt())),
        ("missing square root on the noise coefficient: it is sqrt(1 - abar_t) * eps, not "
         "(1 - abar_t) * eps. (1 - abar_t) is the noise VARIANCE; the standard deviation multiplies eps.",
         xt(a.sqrt(), 1 - a)),
        ("missing square roots on both coefficients: abar_t and 1 - abar_t are variances; x_t uses "
         "their square roots.", xt(a, 1 - a)),
        ("the two coefficients are swapped: the clean sample gets sqrt(abar_t) and the noise "
         "sqrt(1 - abar_t).", xt((1 - a).sqrt(), a.sqrt())),
    ]
    prev = torch.cat([abar.new_ones(1), abar[:-1]])  # abar_{t-1}, with abar_{-1} = 1
    alpha = abar / prev  # alpha_t = 1 - beta_t
    bugs.append(("you used the one-step alpha_t = 1 - beta_t where the closed form needs the cumulative "
                 "abar_t = alpha_0 * ... * alpha_t: index alphas_cumprod, do not divide it.",
                 xt(alpha[t].sqrt(), (1 - alpha[t]).sqrt())))
    a_prev = abar[t - 1]  # t = 0 wraps to abar[-1], as the bug does
    bugs.append(("timesteps are off by one: you used abar_{t-1} (alphas_cumprod[t - 1]). Timesteps "
                 "are 0-based indices: use alphas_cumprod[t].", xt(a_prev.sqrt(), (1 - a_prev).sqrt())))
    if int(t.max()) + 1 < abar.shape[0]:
        a_next = abar[t + 1]
        bugs.append(("timesteps are off by one: you used abar_{t+1} (alphas_cumprod[t + 1]). Timesteps "
                     "are 0-based indices: use alphas_cumprod[t].", xt(a_next.sqrt(), (1 - a_next).sqrt())))
    return bugs


def _noise_inputs(gen, rank, dtype, T, edges):
    B = randint(gen, 2, 6)
    shape = _shape(gen, rank, B)
    x, eps = randn(gen, shape, dtype), randn(gen, shape, dtype)
    if edges:  # 0 and T-1 always present
        t = torch.randint(0, T, (B,), generator=gen)
        t[0], t[-1] = 0, T - 1
    else:  # interior only, so every off-by-one bug gives finite, distinguishable values
        t = torch.randint(1, T - 1, (B,), generator=gen)
    return x, eps, t


def _describe_inputs(x, t):
    return (f"add_noise(original_samples {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} "
            f"on {x.device}, timesteps {t.tolist()})")


def _run_add_noise(fn, x, eps, t, abar, reshape_hint_on_error=False):
    """Call the learner; turn the errors we can explain into CheckFailed with a hint."""
    name = _describe_inputs(x, t)
    try:
        return name, fn(x, eps, t, abar)
    except NotImplementedError:
        raise
    except IndexError as exc:
        if int(t.max()) == abar.shape[0] - 1:
            raise CheckFailed(
                f"Likely bug: timesteps off by one (t + 1?): t = T-1 indexes past the end.\n"
                f"{name} raised {describe_exception(exc)}\n"
                f"Hint: timesteps run 0..T-1 = 0..{abar.shape[0] - 1}: index alphas_cumprod[timesteps] "
                f"directly.") from exc
        raise
    except RuntimeError as exc:
        if reshape_hint_on_error or "size of tensor" in str(exc):
            raise CheckFailed(f"Likely bug: abar_t broadcasts for one rank only: reshape it to (B, 1, ..., 1).\n"
                              f"{name} raised {describe_exception(exc)}\nHint: {RESHAPE_HINT}") from exc
        raise


def _compare_add_noise(name, got, x, eps, t, abar, sched, diagnose=True):
    dtype = x.dtype
    expected = ref.add_noise(x, eps, t, abar)
    if isinstance(got, torch.Tensor) and got.shape != x.shape:
        raise CheckFailed(f"Likely bug: abar_t broadcasts for one rank only: reshape it to (B, 1, ..., 1).\n"
                          f"{name}: expected shape {tuple(x.shape)} (the samples' shape), got "
                          f"{tuple(got.shape)}.\nHint: {RESHAPE_HINT}")
    if isinstance(got, torch.Tensor) and got.dtype != dtype:
        raise CheckFailed(
            f"Likely bug: dtype not kept: cast alphas_cumprod to the samples' dtype.\n"
            f"{name}: expected {dtype} (the samples' dtype), got {got.dtype}.\nHint: alphas_cumprod is "
            f"float32; cast it first, like diffusers: "
            f"alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype).")
    if dtype == torch.float16 and isinstance(got, torch.Tensor) and got.shape == x.shape:
        # diffusers computes in float16, where abar_t ~ 0.9999 rounds to 1 and the noise
        # coefficient of small t to 0; computing in float32/64 and casting at the end is more
        # accurate and also correct: accept either.
        precise = ref.add_noise(x.double(), eps.double(), t, abar).to(dtype)
        if torch.allclose(got.double(), precise.double(), **TOL_XT[dtype]):
            return
    bugs = _add_noise_bugs(x, eps, t, abar) if diagnose else None
    assert_close(name, got, expected, **TOL_XT[dtype], diagnose=bugs, hint=EQ4 + ".")
    assert_close(f"{name} vs diffusers DDPMScheduler.add_noise", got, sched.add_noise(x, eps, t), **TOL_XT[dtype])


def check_add_noise(fn, gen):
    """Rank 4 (interior t, then t = 0 and T-1), ranks 1, 2, 3, 5, float64 and float16, and a
    second device (CUDA when present, with the timesteps on the CPU and on CUDA; else PyTorch's
    'meta' device, timesteps on the CPU)."""
    schedule, T, beta_start, beta_end = _random_schedule(gen)
    sched = _diffusers(schedule, T, beta_start, beta_end)
    abar = ref.alphas_cumprod(ref.make_betas(schedule, T, beta_start, beta_end))  # (T,) float32, CPU
    abar_in = abar.clone()

    # 1. 4-D float32, interior timesteps: the value bugs.
    x, eps, t = _noise_inputs(gen, 4, torch.float32, T, edges=False)
    name, got = _run_add_noise(fn, x, eps, t, abar_in)
    if not torch.equal(abar_in, abar):
        raise CheckFailed(f"{name}: your function changed `alphas_cumprod` in place; build new tensors "
                          f"(abar_t ** 0.5, not abar_t.sqrt_()).")
    _compare_add_noise(name, got, x, eps, t, abar, sched)

    # 2. 4-D float32 with t = 0 and t = T-1 in the batch.
    x, eps, t = _noise_inputs(gen, 4, torch.float32, T, edges=True)
    name, got = _run_add_noise(fn, x, eps, t, abar)
    _compare_add_noise(name, got, x, eps, t, abar, sched)

    # 3. Every other rank: (B,), (B, D), (B, C, L), (B, C, F, H, W).
    ranks = [1, 2, 3, 5]
    ranks = [ranks[i] for i in torch.randperm(4, generator=gen).tolist()]
    for rank in ranks:
        x, eps, t = _noise_inputs(gen, rank, torch.float32, T, edges=True)
        name, got = _run_add_noise(fn, x, eps, t, abar, reshape_hint_on_error=True)
        _compare_add_noise(name, got, x, eps, t, abar, sched)

    # 4. float64 and float16 samples (alphas_cumprod stays float32).
    for dtype in (torch.float64, torch.float16):
        x, eps, t = _noise_inputs(gen, randint(gen, 1, 5), dtype, T, edges=True)
        name, got = _run_add_noise(fn, x, eps, t, abar)
        _compare_add_noise(name, got, x, eps, t, abar, sched, diagnose=False)

    # 5. Samples on another device while alphas_cumprod stays on the CPU; on a GPU, the timesteps
    # both on the CPU and on the samples' device (where a training loop draws them, and where
    # set_timesteps(device=...) puts a sampler's), as DDPMScheduler.add_noise accepts both.
    device = other_device()
    x, eps, t = _noise_inputs(gen, randint(gen, 1, 5), torch.float32, T, edges=True)
    x, eps = x.to(device), eps.to(device)
    device_hint = ("move alphas_cumprod (and timesteps) to the samples' device, and cast it to their "
                   "dtype, before indexing, as the first lines of DDPMScheduler.add_noise do.")
    for t_in in device_timesteps(t, device):
        name = _describe_inputs(x, t) + (f", timesteps on {t_in.device}" if device == "cuda" else "")
        got = device_case(name, fn, (x, eps, t_in, abar), device, hint=device_hint, like=x)
        if device == "cuda":
            _compare_add_noise(name, got, x, eps, t, abar, sched, diagnose=False)
        elif got is not None and got.dtype != x.dtype:
            raise CheckFailed(f"{name}{META_NOTE}: expected {describe(x)}, got {describe(got)}.")


# --------------------------------------------------------------------------- snr

def _snr_bugs(abar):
    ratio = abar / (1 - abar)
    return [
        ("you returned the inverse, (1 - abar_t) / abar_t: noise over signal. SNR is signal power "
         "over noise power, abar_t / (1 - abar_t); it should be large at t = 0 and tiny at T-1.", 1 / ratio),
        ("you returned log SNR. The exercise asks for the ratio itself; take the log only when "
         "plotting (torch.log(snr(...))).", torch.log(ratio)),
        ("you returned sqrt(abar_t / (1 - abar_t)), a ratio of standard deviations. SNR compares "
         "powers (variances): abar_t / (1 - abar_t).", ratio.sqrt()),
        ("you returned abar_t itself; divide by the noise variance 1 - abar_t.", abar.clone()),
    ]


def check_snr(fn, gen):
    """abar of a random schedule (float32, vs diffusers' compute_snr formula), and the float64
    abar of random betas, gathered at random timesteps (a (B,) input)."""
    schedule, T, beta_start, beta_end = _random_schedule(gen)
    abar = ref.alphas_cumprod(ref.make_betas(schedule, T, beta_start, beta_end))  # (T,) float32
    name = f"snr(alphas_cumprod of {_call_str(schedule, T, beta_start, beta_end)})"
    got = fn(abar.clone())
    hint = ("Kingma et al. 2021 (Variational Diffusion Models), eq. 2-3: the signal's variance over the "
            "noise's, with their alpha_t and sigma_t read off DDPM eq. 4.")
    assert_close(name, got, ref.snr(abar), **TOL_SNR[torch.float32], diagnose=_snr_bugs(abar), hint=hint)
    # diffusers.training_utils.compute_snr, inlined (importing training_utils takes seconds):
    # (sqrt(abar) / sqrt(1 - abar)) ** 2 on the scheduler's own alphas_cumprod.
    ac = _diffusers(schedule, T, beta_start, beta_end).alphas_cumprod
    assert_close(f"{name} vs diffusers' compute_snr", got, (ac**0.5 / (1.0 - ac) ** 0.5) ** 2,
                 **TOL_SNR[torch.float32])

    T = randint(gen, 20, 300)
    abar = torch.cumprod(1 - (torch.rand(T, generator=gen, dtype=torch.float64) * 0.05 + 1e-4), 0)
    t = torch.randint(0, T, (randint(gen, 3, 9),), generator=gen)
    name = f"snr(float64 alphas_cumprod[timesteps] for timesteps {t.tolist()})"
    got = fn(abar[t])
    if isinstance(got, torch.Tensor) and got.shape == t.shape and got.dtype != abar.dtype:
        raise CheckFailed(f"Likely bug: dtype not kept: float64 input must give float64 SNR.\n"
                          f"{name}: expected {abar.dtype} (the input's "
                          f"dtype), got {got.dtype}.")
    assert_close(name, got, ref.snr(abar[t]), **TOL_SNR[torch.float64], diagnose=_snr_bugs(abar[t]), hint=hint)


# --------------------------------------------------------------------------- rescale_zero_terminal_snr

LIN_ALG1 = ("Lin et al. 2023, Algorithm 1 (rescale_zero_terminal_snr in diffusers/schedulers/scheduling_ddpm.py): "
            "shift and scale r = sqrt(abar) so that r'_{T-1} = 0 and r'_0 = r_0, then go back to betas.")


def _rescale_bugs(betas):
    """Typical wrong rescalings, computed in float64 (compared at the check's tolerance)."""
    b = betas.double()
    abar = torch.cumprod(1 - b, 0)
    r = abar.sqrt()

    def to_betas(abar_new):
        return 1 - torch.cat([abar_new[:1], abar_new[1:] / abar_new[:-1]])

    shifted = r - r[-1]
    scaled = shifted * (r[0] / (r[0] - r[-1]))
    a_shift = (abar - abar[-1]) * (abar[0] / (abar[0] - abar[-1]))
    return [
        ("you shifted r = sqrt(abar) but did not scale it back: the first step must keep its signal, "
         "r'_0 = r_0 (multiply by r_0 / (r_0 - r_{T-1})).", to_betas(shifted**2)),
        ("you rescaled abar itself; Algorithm 1 shifts and scales its square root r = sqrt(abar_t), "
         "then squares.", to_betas(a_shift)),
        ("the first alpha is wrong: undoing the cumulative product, alpha'_0 = abar'_0 (not 1), so "
         "beta'_0 stays beta_0.", 1 - torch.cat([torch.ones_like(abar[:1]), (scaled**2)[1:] / (scaled**2)[:-1]])),
        ("you returned abar' (the rescaled alphas_cumprod), not betas: undo the cumulative product, then "
         "take 1 - alpha'.", scaled**2),
        ("you returned alpha' = 1 - beta', not beta'.", 1 - to_betas(scaled**2)),
        ("you returned r' = sqrt(abar'), not betas: square it, undo the cumulative product, then take "
         "1 - alpha'.", scaled),
        ("the scale is upside down: multiply by r_0 / (r_0 - r_{T-1}), not (r_0 - r_{T-1}) / r_0.",
         to_betas((shifted * ((r[0] - r[-1]) / r[0])) ** 2)),
    ]


def _rescale_truth(betas):
    """Algorithm 1 on these betas in 40-digit arithmetic, rounded to float64: the ground truth."""
    with mpmath.workdps(40):
        abar, r = mpmath.mpf(1), []
        for b in betas.double().tolist():
            abar *= 1 - mpmath.mpf(b)
            r.append(mpmath.sqrt(abar))
        r0, rT = r[0], r[-1]
        a = [((x - rT) * r0 / (r0 - rT)) ** 2 for x in r]
        alphas = [a[0]] + [a[i] / a[i - 1] for i in range(1, len(a))]
        return torch.tensor([float(1 - x) for x in alphas], dtype=torch.float64)


def _rescale_case(fn, betas, label):
    """One comparison, judged against a 40-digit ground truth. Near the end r_t - r_{T-1} cancels,
    so an order of operations other than diffusers' may lose up to ~eps * r_t / (r_t - r_{T-1}) at
    step t (about 2 eps / beta_{T-1} at t = T-2) and nothing like it earlier. So the steps are judged
    in two parts, the well-conditioned ones (that factor under 4) and the last ones, each with
    the rounding error the reference and diffusers make there (times 4) plus 8 times that factor:
    every correct form passes, and a "likely bug" is named only outside rounding noise."""
    name = f"rescale_zero_terminal_snr({label})"
    before = betas.clone()
    got = fn(betas)
    require_unchanged(name, [before], [betas], "its input `betas`")
    if isinstance(got, torch.Tensor) and got.shape == betas.shape and got.dtype != betas.dtype:
        raise CheckFailed(f"Likely bug: dtype not kept: {betas.dtype} betas must give {betas.dtype} betas, got "
                          f"{got.dtype}.\n{name}: compute from `betas` without a dtype argument (1 - betas keeps it).")
    if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] == betas.shape[0] - 1:
        raise CheckFailed(f"Likely bug: one beta missing: expected {betas.shape[0]} betas, got {got.shape[0]}.\n"
                          f"{name}: abar'[1:] / abar'[:-1] gives T-1 ratios; the first alpha is abar'_0 "
                          f"itself, put in front.")
    truth = _rescale_truth(betas)  # (T,) float64, correct to its last bit
    expected = ref.rescale_zero_terminal_snr(betas.clone())
    theirs = diffusers_rescale(betas.clone())
    eps = torch.finfo(betas.dtype).eps
    r = torch.cumprod(1 - betas.double(), 0).sqrt()
    cond = (r / (r - r[-1])).clamp(min=1.0)  # (T,), inf at T-1 where beta' = 1 exactly
    cond[-1] = cond[-2] if len(cond) > 1 else 1.0
    k = int((cond < 4).sum())  # cond grows with t: steps 0..k-1 are well conditioned
    bugs = _rescale_bugs(betas)
    for part in (slice(0, k), slice(k, len(betas))):
        if part.start == part.stop:
            continue
        rounding = max((expected[part].double() - truth[part]).abs().max().item(),
                       (theirs[part].double() - truth[part]).abs().max().item())
        tol = dict(atol=4 * rounding + 8 * eps * cond[part].max().item(), rtol=8 * eps)
        where = f"{name}, steps t = {part.start}..{part.stop - 1}"
        g = got[part] if isinstance(got, torch.Tensor) and got.shape == betas.shape else got
        assert_close(where, g, expected[part], **tol, hint=LIN_ALG1,
                     diagnose=[(label_, cand[part]) for label_, cand in bugs if cand.shape == betas.shape])
        assert_close(f"{where} vs diffusers' rescale_zero_terminal_snr", g, theirs[part], **tol)


def check_rescale_zero_terminal_snr(fn, gen):
    """A random schedule of make_betas (float32, T in [50, 1000]), then random float64 betas in
    random order (T in [20, 300]); each against the reference and diffusers' own function, with
    tolerances from a float64 ground truth. The input must not change."""
    schedule, T, beta_start, beta_end = _random_schedule(gen)
    betas = ref.make_betas(schedule, T, beta_start, beta_end)  # (T,) float32
    _rescale_case(fn, betas, f"betas of {_call_str(schedule, T, beta_start, beta_end)}")
    T = randint(gen, 20, 300)
    betas = torch.rand(T, generator=gen, dtype=torch.float64) * 0.05 + 1e-4  # (T,) float64, random order
    _rescale_case(fn, betas, f"random float64 betas of shape ({T},)")
