"""Checks of Lab 03 (scheduler reading): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (T in [50, 1000], n, spacing, steps_offset, beta
schedule, prediction type, eta, set_alpha_to_one, shapes) and compares the learner's output
with the reference solution AND with diffusers (``DDIMScheduler.set_timesteps`` / ``.step``,
``EulerDiscreteScheduler.sigmas``) on the same inputs. When the output matches what a typical
bug returns, the message names that bug (the ``diagnose`` candidates below are those bugs,
computed on the same inputs). Where a "trailing" or "linspace" timestep is exactly halfway between
two integers, diffusers' float64 arithmetic decides the rounding by a hair, so the timesteps check
accepts either neighbour there (``_ties``) and compares exactly everywhere else. ``karras_sigmas`` and ``euler_step`` are checked against a float64
ground truth (the reference on float64 inputs) with tolerances scaled to the magnitudes involved,
and against ``EulerDiscreteScheduler._convert_to_karras`` / ``.step`` on the same inputs.
"""
import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from helpers.checks._core import (require_raises, CheckFailed, assert_close, choice, describe, describe_exception, randint,
                                  uniform)
from helpers.solutions import lab03_scheduler_reading as ref

LAB = "lab03"

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}

# Tolerances, |got - expected| <= atol + rtol * |expected| elementwise.
# DDIM step in float32: timesteps are drawn where abar_t >= 1e-3, so x0_hat = (x - ...) / sqrt(abar)
# amplifies float32 rounding by at most ~30; equivalent rewrites stay well inside 1e-4.
TOL_STEP = dict(atol=1e-4, rtol=1e-4)
# sigmas: sqrt((1 - a) / a) vs sqrt(1/a - 1) or sqrt(1 - a) / sqrt(a) differ by a few float32 ulps,
# except where abar is close to 1 (1 - a loses digits); 1e-3 relative covers every rewrite.
TOL_SIGMA = {torch.float32: dict(atol=1e-6, rtol=1e-3), torch.float64: dict(atol=1e-12, rtol=1e-9)}

EQ12 = ("DDIM eq. 12 (its three terms) with eq. 16's sigma, as DDIMScheduler.step's steps 1-7; "
        "abar of prev_timestep < 0 is final_alpha_cumprod, never alphas_cumprod[-1].")


# --------------------------------------------------------------------------- ddim_timesteps

def _diffusers_timesteps(n, T, spacing, offset):
    s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    s.set_timesteps(n)
    return s.timesteps


def _timesteps_bugs(n, T, spacing, offset, expected):
    """What typical wrong ddim_timesteps return on these arguments (int64, like the answer)."""
    i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))  # noqa: E731
    bugs = [("wrong order: the timesteps are ascending. Sampling runs from noise to image, so "
             "set_timesteps returns them in DESCENDING order (diffusers: [::-1]).", expected.flip(0))]
    if spacing == "leading":
        bugs += [
            (f"'leading' without steps_offset: every timestep must be shifted by steps_offset={offset} "
             f"(Stable Diffusion's config uses steps_offset=1, so 10 steps start at 901, not 900).",
             i64((np.arange(n) * (T // n))[::-1])),
            ("'leading' uses the INTEGER step ratio T // n (diffusers: num_train_timesteps // num_inference_steps); "
             "you used the float ratio T / n.", i64(np.round(np.arange(n) * (T / n))[::-1] + offset)),
        ]
    else:
        bugs += [(f"steps_offset is added only for 'leading' spacing (DDIMScheduler ignores it for "
                  f"'{spacing}'); you added {offset}.", expected + offset)]
    if spacing == "trailing":
        ratio = T / n
        bugs += [
            ("off-by-one: 'trailing' is np.round(np.arange(T, 0, -T / n)) - 1; without the '- 1' the "
             "first timestep is T, which does not exist (timesteps are 0 .. T-1).",
             i64(np.round(np.arange(T, 0, -ratio)))),
            ("rounding: you truncated (astype(int) / int()) instead of rounding with np.round before "
             "casting: 'trailing' is np.round(np.arange(T, 0, -T / n)) - 1.",
             i64(np.arange(T, 0, -ratio).astype(np.int64) - 1)),
            ("off-by-one: you started from T - 1 and subtracted the ratio; 'trailing' starts from T, "
             "rounds, THEN subtracts 1: np.round(np.arange(T, 0, -T / n)) - 1.",
             i64(np.round(np.arange(T - 1, -1, -ratio))[:n])),
        ]
    if spacing == "linspace":
        bugs += [
            ("off-by-one: 'linspace' spans 0 .. T-1 (np.linspace(0, T - 1, n)), not 0 .. T.",
             i64(np.linspace(0, T, n).round()[::-1])),
            ("rounding: you truncated (astype(int)) instead of rounding: "
             "np.linspace(0, T - 1, n).round()[::-1], then cast to int64.",
             i64(np.linspace(0, T - 1, n)[::-1].astype(np.int64))),
        ]
    return bugs


def _ties(n, T, spacing):
    """Where the exact (rational) timestep is halfway between two integers, in output order:
    (tie mask (n,) bool, the lower of the two candidates (n,) int64). 'trailing' rounds
    T - i * T / n (then - 1), 'linspace' rounds i * (T - 1) / (n - 1); diffusers computes both in
    float64, which lands a hair to one side of an exact half, so either neighbour is a correct
    reading there. 'leading' has no ties (integer multiples)."""
    i = np.arange(n, dtype=np.int64)
    if spacing == "trailing":
        num, den, shift = T * n - i * T, n, -1  # value * n, exact
    elif spacing == "linspace" and n > 1:
        num, den, shift = (n - 1 - i) * (T - 1), n - 1, 0  # descending
    else:
        return torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int64)
    tie = ((2 * num) % den == 0) & (num % den != 0)
    return torch.from_numpy(tie), torch.from_numpy(num // den + shift)


def _check_timesteps_case(fn, n, T, spacing, offset):
    call = (f"ddim_timesteps({n}, num_train_timesteps={T}, timestep_spacing={spacing!r}, "
            f"steps_offset={offset})")
    got = fn(n, T, spacing, offset)
    expected = ref.ddim_timesteps(n, T, spacing, offset)
    if isinstance(got, torch.Tensor) and got.dtype != torch.int64:
        kind = "float" if got.is_floating_point() else str(got.dtype)
        values = "" if got.shape != expected.shape else (
            " (the values are right once cast)" if torch.equal(got.round().to(torch.int64), expected)
            else " (and the values differ too)")
        raise CheckFailed(
            f"Likely bug: {kind} timesteps: expected int64 like DDIMScheduler.timesteps, got {got.dtype}{values}.\n"
            f"{call}: round, then convert to int64; a UNet embeds integer timesteps and "
            f"alphas_cumprod[t] needs integer indices.")
    if isinstance(got, torch.Tensor) and got.ndim == 1 and abs(got.shape[0] - expected.shape[0]) == 1:
        raise CheckFailed(f"Likely bug: off-by-one length: expected n = {n} timesteps, got {got.shape[0]}.\n"
                          f"{call}: each spacing gives exactly n timesteps; count what your range produces.")
    theirs = _diffusers_timesteps(n, T, spacing, offset)
    bugs = _timesteps_bugs(n, T, spacing, offset, expected)
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == torch.int64:
        tie, low = _ties(n, T, spacing)
        either = tie & ((got.cpu() == low) | (got.cpu() == low + 1))  # a correct rounding of an exact half
        expected, theirs = torch.where(either, got.cpu(), expected), torch.where(either, got.cpu(), theirs)
    hint = {"leading": "'leading': the branch of DDIMScheduler.set_timesteps for it (integer step ratio, "
                       "order, steps_offset).",
            "trailing": "'trailing': the branch of DDIMScheduler.set_timesteps for it (float step ratio "
                        "counted down from T, rounding, the - 1), int64.",
            "linspace": "'linspace': the branch of DDIMScheduler.set_timesteps for it (n points over "
                        "0 .. T-1, rounding, order), int64."}[spacing]
    assert_close(call, got, expected, atol=0, rtol=0, hint=hint, diagnose=bugs)
    assert_close(f"{call} vs diffusers DDIMScheduler.set_timesteps", got, theirs, atol=0, rtol=0, hint=hint)


def _random_n(gen, T):
    """An n in 3 .. T//2 that does not divide T (so rounding matters) when one exists, away from
    the float edge where diffusers' np.arange(T, 0, -T / n) keeps n + 1 values (lab page)."""
    for _ in range(50):
        n = randint(gen, 3, min(60, T // 2))
        if T % n and len(np.arange(T, 0, -T / n)) == n:
            return n
    return n


def check_ddim_timesteps(fn, gen):
    """Each spacing with random T, n (not a divisor of T) and steps_offset (1 or 2 for 'leading',
    2 or 3 otherwise, where it must be ignored; 2 or 3 so that adding it is not mistaken for +1), then the edges n = 1 and n = T, then an unknown spacing (ValueError)."""
    for spacing in SPACINGS:
        T = randint(gen, 50, 1000)
        offset = randint(gen, 1, 2) if spacing == "leading" else randint(gen, 2, 3)
        _check_timesteps_case(fn, _random_n(gen, T), T, spacing, offset)
    for spacing in SPACINGS:
        T = randint(gen, 50, 1000)
        _check_timesteps_case(fn, choice(gen, (1, T)), T, spacing, 0)
    require_raises("ddim_timesteps(10, 1000, 'uniform')", lambda: fn(10, 1000, "uniform", 0), "an unknown spacing")


# --------------------------------------------------------------------------- ddim_step

def _step_variant(e, t, prev, x, abar, final, eta, z, ptype, *, a_t=None, a_prev=None,
                  std="ok", direction="ok", noise="ok", v="ok"):
    """DDIM eq. 12/16 with optional planted mistakes (to recognise a learner's bug)."""
    a = abar[t] if a_t is None else a_t
    ap = (abar[prev] if prev >= 0 else final) if a_prev is None else a_prev
    ap = torch.as_tensor(ap, dtype=abar.dtype)
    b = 1 - a
    if ptype == "v_prediction" and v == "ok":
        x0 = a**0.5 * x - b**0.5 * e
        eps = a**0.5 * e + b**0.5 * x
    elif ptype == "v_prediction" and v == "sign":
        x0 = a**0.5 * x + b**0.5 * e
        eps = a**0.5 * e - b**0.5 * x
    else:  # epsilon, or v treated as epsilon
        x0 = (x - b**0.5 * e) / a**0.5
        eps = e
    var = (1 - ap) / b * (1 - a / ap)
    sd = {"ok": eta * var**0.5, "no_sqrt": eta * var,
          "no_factor": eta * ((1 - ap) / b) ** 0.5}[std]
    d = {"ok": (1 - ap - sd**2), "no_sigma": (1 - ap), "sigma_not_squared": (1 - ap - sd),
         "std_t": (1 - a - sd**2)}[direction]
    out = ap**0.5 * x0 + d.clamp(min=0) ** 0.5 * eps
    if eta > 0:
        out = out + (sd**2 if noise == "variance" else sd) * z
    return out


def _step_bugs(e, t, prev, x, abar, final, eta, z, ptype, step_ratio):
    args = (e, t, prev, x, abar, final, eta, z, ptype)
    V = lambda **kw: _step_variant(*args, **kw)  # noqa: E731
    a_prev_ok = abar[prev] if prev >= 0 else torch.as_tensor(final)
    bugs = []
    if prev < 0:  # first: at the last step these explain a NaN better than a swap would
        bugs += [
            ("final_alpha_cumprod ignored at the last step: prev_timestep < 0 here, so alphas_cumprod"
             "[prev_timestep] wraps around to the END of the schedule (almost pure noise). Use "
             "final_alpha_cumprod when prev_timestep < 0.", V(a_prev=abar[prev])),
            ("final_alpha_cumprod ignored at the last step: you used alphas_cumprod[0]; when "
             "prev_timestep < 0, a' is final_alpha_cumprod (1.0 with set_alpha_to_one=True).", V(a_prev=abar[0])),
            ("final_alpha_cumprod ignored at the last step: you used 1.0; when prev_timestep < 0, a' is "
             "final_alpha_cumprod (alphas_cumprod[0] with set_alpha_to_one=False, SD's config).",
             V(a_prev=torch.tensor(1.0))),
        ]
    bugs += [
        ("abar_t and abar_{t-1} are swapped: a = alphas_cumprod[timestep] (the current, noisier step) "
         "goes into x0_hat; a' = alphas_cumprod[prev_timestep] scales x0_hat and the direction.",
         V(a_t=a_prev_ok, a_prev=abar[t])),
        (f"prev_timestep off by the step ratio: you used alphas_cumprod[timestep - 1] (DDPM's t-1), but "
         f"DDIM jumps by the step ratio ({step_ratio} here): use the given prev_timestep.",
         V(a_prev=abar[t - 1])),
    ]
    if prev - step_ratio >= 0:
        bugs.append((f"prev_timestep off by the step ratio: you used alphas_cumprod[prev_timestep - "
                     f"{step_ratio}] (one step ratio too far); prev_timestep is already the previous step.",
                     V(a_prev=abar[prev - step_ratio])))
    if eta > 0:
        bugs += [
            ("eta's sigma is missing its square root: eq. 16 gives a standard deviation, "
             "sigma = eta * sqrt((1 - a') / (1 - a) * (1 - a / a')); you used eta * (variance).",
             V(std="no_sqrt")),
            ("eta's sigma is missing the factor (1 - a / a'): eq. 16 is "
             "sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a').", V(std="no_factor")),
            ("the direction term uses the wrong std: it is sqrt(1 - a' - sigma^2) * eps_hat (eq. 12), so "
             "the noise you add (sigma) is taken out of the direction; you used sqrt(1 - a').",
             V(direction="no_sigma")),
            ("sigma squared vs sigma: the direction term is sqrt(1 - a' - sigma**2) * eps_hat; you "
             "subtracted sigma itself, not its square.", V(direction="sigma_not_squared")),
            ("sigma squared vs sigma: the fresh noise is sigma * z (a standard deviation times N(0, I)); "
             "you multiplied z by the variance sigma**2.", V(noise="variance")),
        ]
    bugs.append(("the direction term uses the wrong std: sqrt(1 - a' - sigma^2) with a' = abar at "
                 "prev_timestep, not sqrt(1 - a) at the current timestep.", V(direction="std_t")))
    if ptype == "v_prediction":
        bugs += [
            ("v_prediction treated as epsilon: with v = sqrt(a) eps - sqrt(1 - a) x_0, "
             "x0_hat = sqrt(a) x_t - sqrt(1 - a) v and eps_hat = sqrt(a) v + sqrt(1 - a) x_t.", V(v="as_eps")),
            ("v_prediction signs: x0_hat = sqrt(a) * x_t - sqrt(1 - a) * v and "
             "eps_hat = sqrt(a) * v + sqrt(1 - a) * x_t.", V(v="sign")),
        ]
    return bugs


def _diagnose_nan(call, got, expected, bugs):
    """Several typical bugs take the square root of a negative number (1 - a / a' < 0 when a' < a)
    and return NaN; assert_close only compares finite candidates, so name those here."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()):
        return
    if torch.isfinite(got).all() or not torch.isfinite(expected).all():
        return
    for label, cand in bugs:
        if torch.allclose(got.detach().double().cpu(), cand.double(), equal_nan=True, **TOL_STEP):
            raise CheckFailed(
                f"Likely bug: {label}\n{call}: got {int((~torch.isfinite(got)).sum())} NaN/inf values where "
                f"the answer is finite: with a' < a, (1 - a / a') is negative and its square root is NaN.")


def _random_ddim(gen, ptype=None):
    schedule = choice(gen, SCHEDULES)
    T = randint(gen, 50, 1000)
    n = _random_n(gen, T)
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule=schedule, beta_start=BETAS[schedule][0],
                          beta_end=BETAS[schedule][1], clip_sample=False,
                          set_alpha_to_one=bool(randint(gen, 0, 1)),
                          prediction_type=ptype or choice(gen, ("epsilon", "v_prediction")),
                          steps_offset=randint(gen, 0, 1))
    sched.set_timesteps(n)
    return sched, schedule


def _step_case(fn, gen, sched, schedule, eta, last=False):
    T, n = sched.config.num_train_timesteps, sched.num_inference_steps
    ratio = T // n
    ts = sched.timesteps.tolist()
    abar = sched.alphas_cumprod
    if last:
        t = ts[-1]
        if t - ratio >= 0:  # make sure this is a real last step
            t = randint(gen, 1, ratio - 1)
    else:
        ok = [s for s in ts if s - ratio >= 1 and float(abar[s]) >= 1e-3]
        t = choice(gen, ok) if ok else ts[len(ts) // 2]
    prev = t - ratio
    shape = (randint(gen, 1, 3), 4, randint(gen, 2, 6), randint(gen, 2, 6))
    x = torch.randn(shape, generator=gen)
    e = torch.randn(shape, generator=gen)
    z = torch.randn(shape, generator=gen)
    ptype = sched.config.prediction_type
    final = sched.final_alpha_cumprod.clone()
    call = (f"ddim_step(model_output, timestep={t}, prev_timestep={prev}, sample {tuple(shape)}, "
            f"alphas_cumprod of DDIMScheduler(num_train_timesteps={T}, beta_schedule={schedule!r}), "
            f"final_alpha_cumprod={float(final):.6g}, eta={eta:g}, variance_noise, "
            f"prediction_type={ptype!r})")
    abar_in = abar.clone()
    try:
        got = fn(e.clone(), t, prev, x.clone(), abar_in, final.clone(), eta, z.clone(), ptype)
    except ValueError as exc:  # math.sqrt of a negative number: name the bug behind it
        if "math domain error" not in str(exc):
            raise
        why = (f"Likely bug: final_alpha_cumprod ignored at the last step: prev_timestep = {prev} < 0, so "
               f"alphas_cumprod[prev_timestep] wraps around to the END of the schedule (almost pure noise), "
               f"a' < a, and the square root of (1 - a / a') is taken of a negative number. Use "
               f"final_alpha_cumprod when prev_timestep < 0.") if prev < 0 else (
               "Likely bug: a square root of a negative number: with the right a = alphas_cumprod[timestep] "
               "and a' = alphas_cumprod[prev_timestep], a' > a, so 1 - a / a' > 0 and 1 - a' - sigma^2 >= 0; "
               "check which abar goes where (swapped?).")
        raise CheckFailed(f"{why}\n{call}: {describe_exception(exc)}") from exc
    if not torch.equal(abar_in, abar):
        raise CheckFailed(f"{call}: your function changed `alphas_cumprod` in place.")
    expected = ref.ddim_step(e, t, prev, x, abar, final, eta, z, ptype)
    bugs = _step_bugs(e, t, prev, x, abar, final, eta, z, ptype, ratio)
    _diagnose_nan(call, got, expected, bugs)
    assert_close(call, got, expected, **TOL_STEP, hint=EQ12, diagnose=bugs)
    diff = sched.step(e, t, x, eta=eta, variance_noise=z if eta > 0 else None).prev_sample
    assert_close(f"{call} vs diffusers DDIMScheduler.step", got, diff, **TOL_STEP, hint=EQ12)


def check_ddim_step(fn, gen):
    """Against the reference and DDIMScheduler.step (clip_sample=False, like SD): epsilon with
    eta = 0, epsilon with eta in [0.3, 1], v_prediction (eta 0 and > 0), then the last step
    (prev_timestep < 0) with set_alpha_to_one drawn at random, both prediction types."""
    sched, schedule = _random_ddim(gen, "epsilon")
    _step_case(fn, gen, sched, schedule, 0.0)
    _step_case(fn, gen, sched, schedule, round(uniform(gen, 0.3, 1.0), 3))
    sched, schedule = _random_ddim(gen, "v_prediction")
    _step_case(fn, gen, sched, schedule, 0.0)
    _step_case(fn, gen, sched, schedule, round(uniform(gen, 0.3, 1.0), 3))
    for ptype in ("epsilon", "v_prediction"):
        sched, schedule = _random_ddim(gen, ptype)
        _step_case(fn, gen, sched, schedule, round(uniform(gen, 0.3, 1.0), 3), last=True)


# --------------------------------------------------------------------------- sigmas

def _sigma_bugs(abar):
    s2 = (1 - abar) / abar
    return [
        ("sigma squared vs sigma: you returned (1 - abar) / abar = sigma^2 = 1 / SNR. sigma is a "
         "standard deviation: take the square root.", s2),
        ("you returned the inverse, sqrt(abar / (1 - abar)) = sqrt(SNR); sigma is the NOISE level: "
         "sqrt((1 - abar) / abar).", (1 / s2) ** 0.5),
        ("you returned sqrt(1 - abar_t), the noise std of the variance-preserving x_t. The k-diffusion "
         "sigma is that std divided by the signal scale sqrt(abar_t): sqrt((1 - abar) / abar).",
         (1 - abar) ** 0.5),
        ("wrong order: you flipped the sigmas (largest first). EulerDiscreteScheduler STORES them "
         "flipped (sampling order, with a 0 appended), but this function returns them in the order "
         "of t, like alphas_cumprod.", (s2**0.5).flip(0)),
        ("you returned log(sigma); return sigma itself.", torch.log(s2**0.5)),
    ]


def check_sigmas_from_alphas_cumprod(fn, gen):
    """A random float32 schedule against the reference and against what EulerDiscreteScheduler
    stores (its .sigmas, flipped back, without the appended 0), then float64 abar at random t."""
    schedule = choice(gen, SCHEDULES)
    T = randint(gen, 50, 1000)
    euler = EulerDiscreteScheduler(num_train_timesteps=T, beta_schedule=schedule,
                                   beta_start=BETAS[schedule][0], beta_end=BETAS[schedule][1])
    abar = euler.alphas_cumprod.clone()
    call = f"sigmas_from_alphas_cumprod(alphas_cumprod of a {schedule!r} schedule, T={T})"
    got = fn(abar.clone())
    if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] == T + 1:
        raise CheckFailed(f"Likely bug: you appended the final 0 (shape ({T + 1},)). EulerDiscreteScheduler "
                          f"stores cat([sigmas.flip(0), 0]) for sampling; this function returns the {T} "
                          f"sigmas in the order of t, nothing appended.\n{call}: expected {describe(abar)}.")
    hint = ("the noise level of x_t / sqrt(abar_t) (the page's Euler section; EulerDiscreteScheduler.__init__), "
            "elementwise, same order as abar.")
    assert_close(call, got, ref.sigmas_from_alphas_cumprod(abar), **TOL_SIGMA[torch.float32], hint=hint,
                 diagnose=_sigma_bugs(abar))
    assert_close(f"{call} vs EulerDiscreteScheduler(...).sigmas[:-1].flip(0)", got,
                 euler.sigmas[:-1].flip(0), **TOL_SIGMA[torch.float32], hint=hint)
    T = randint(gen, 20, 300)
    abar = torch.cumprod(1 - (torch.rand(T, generator=gen, dtype=torch.float64) * 0.05 + 1e-4), 0)
    t = torch.randint(0, T, (randint(gen, 3, 9),), generator=gen)
    call = f"sigmas_from_alphas_cumprod(float64 alphas_cumprod[timesteps] for timesteps {t.tolist()})"
    got = fn(abar[t])
    if isinstance(got, torch.Tensor) and got.shape == t.shape and got.dtype != abar.dtype:
        raise CheckFailed(f"Likely bug: dtype not kept: float64 input must give float64 sigmas.\n"
                          f"{call}: expected {abar.dtype}, got {got.dtype}.")
    assert_close(call, got, ref.sigmas_from_alphas_cumprod(abar[t]), **TOL_SIGMA[torch.float64],
                 hint=hint, diagnose=_sigma_bugs(abar[t]))


# --------------------------------------------------------------------------- karras_sigmas

KARRAS_HINT = ("EDM eq. 5 as EulerDiscreteScheduler._convert_to_karras computes it: n values, both ends "
               "included, largest first.")
# float32 answers: (a + u (b - a))^rho amplifies the base's rounding (a few ulps of sigma_max^(1/rho),
# relative to sigma_min^(1/rho) >= 0.37) by rho <= 12: below 5e-6 relative; bugs move values by >> 1e-3.
TOL_KARRAS = dict(atol=0.0, rtol=2e-5)


def _log_uniform(gen, lo, hi):
    return float(np.exp(uniform(gen, np.log(lo), np.log(hi))))


def _karras_bugs(smin, smax, n, rho):
    f64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    ramp = np.linspace(0, 1, n)
    right = ref.karras_sigmas(smin, smax, n, rho)
    bugs = [
        ("wrong order: the sigmas go from sigma_max DOWN to sigma_min (sampling runs from noise to "
         "image); you returned them ascending.", right.flip(0)),
        ("the power is inverted: interpolate sigma^(1/rho) evenly, then raise to the power rho "
         "(you interpolated sigma^rho and took the rho-th root).",
         f64((smax**rho + ramp * (smin**rho - smax**rho)) ** (1 / rho))),
        ("you spaced the sigmas evenly (that is rho = 1); Karras spaces sigma^(1/rho) evenly, which "
         "puts more steps at low noise.", f64(smax + ramp * (smin - smax))),
        ("you spaced the sigmas evenly in log(sigma): that is _convert_to_exponential, not "
         "_convert_to_karras (EDM eq. 5 spaces sigma^(1/rho) evenly).",
         f64(np.exp(np.log(smax) + ramp * (np.log(smin) - np.log(smax))))),
        ("the ramp misses its end: it runs over n points from 0 to 1 INCLUDED (np.linspace(0, 1, n)), "
         "so the last sigma is sigma_min itself.",
         f64((smax ** (1 / rho) + np.arange(n) / n * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho)),
    ]
    if rho != 7.0:
        bugs.append((f"rho ignored: you used 7 (diffusers hard-codes it), but this call passes rho={rho:g}.",
                     ref.karras_sigmas(smin, smax, n, 7.0)))
    return bugs


def _karras_case(fn, smin, smax, n, rho):
    call = f"karras_sigmas(sigma_min={smin:.6g}, sigma_max={smax:.6g}, num_inference_steps={n}, rho={rho:g})"
    got = fn(smin, smax, n) if rho == 7.0 else fn(smin, smax, n, rho)
    expected = ref.karras_sigmas(smin, smax, n, rho)
    if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape[0] == n + 1:
        raise CheckFailed(f"Likely bug: {n + 1} values for n = {n}: set_timesteps appends the final 0 "
                          f"AFTER _convert_to_karras; this function returns the n sigmas only.\n{call}")
    if isinstance(got, torch.Tensor) and got.dtype in (torch.float32, torch.float64):
        got = got.double()  # float32 or float64: values are compared (tolerance above)
    assert_close(call, got, expected, **TOL_KARRAS, hint=KARRAS_HINT + " A float32 or float64 tensor.",
                 diagnose=_karras_bugs(smin, smax, n, rho))
    return got


def check_karras_sigmas(fn, gen):
    """Random sigma_min (log-uniform in [1e-3, 0.5]), sigma_max ([2, 160]) and n ([2, 60]): with the
    default rho (against the reference and EulerDiscreteScheduler(sigma_min, sigma_max)._convert_to_karras),
    with a random rho in [1.5, 12], then n = 1 (sigma_max alone)."""
    smin, smax, n = _log_uniform(gen, 1e-3, 0.5), _log_uniform(gen, 2.0, 160.0), randint(gen, 2, 60)
    got = _karras_case(fn, smin, smax, n, 7.0)
    theirs = torch.from_numpy(np.asarray(
        EulerDiscreteScheduler(sigma_min=smin, sigma_max=smax)._convert_to_karras(None, n), dtype=np.float64))
    assert_close(f"karras_sigmas({smin:.6g}, {smax:.6g}, {n}) vs diffusers EulerDiscreteScheduler._convert_to_karras",
                 got, theirs, **TOL_KARRAS, hint=KARRAS_HINT)
    rho = round(choice(gen, (uniform(gen, 1.5, 6.5), uniform(gen, 7.5, 12.0))), 3)
    _karras_case(fn, _log_uniform(gen, 1e-3, 0.5), _log_uniform(gen, 2.0, 160.0), randint(gen, 2, 60), rho)
    _karras_case(fn, _log_uniform(gen, 1e-3, 0.5), _log_uniform(gen, 2.0, 160.0), 1, 7.0)


# --------------------------------------------------------------------------- euler_step

EULER_HINT = ("EulerDiscreteScheduler.step with s_churn = 0: the denoised sample for the prediction type "
              "(step 1 there), the ODE derivative, one Euler step to sigma_next, all on the UNSCALED sample.")


def _euler_bugs(e, s, sn, x, ptype):
    R = ref.euler_step
    f64 = lambda t: t.double()  # noqa: E731
    e, x = f64(e), f64(x)
    bugs = [
        ("the step goes the wrong way: dt = sigma_next - sigma (negative: the noise level falls); "
         "you used sigma - sigma_next.", R(e, s, 2 * s - sn, x, ptype)),
        ("you returned the denoised estimate D (pred_original_sample); step() returns the sample "
         "moved from sigma to sigma_next.", R(e, s, 0.0, x, ptype)),
        ("dt is sigma_next - sigma; you moved by sigma_next alone.", R(e, s, s + sn, x, ptype)),
        ("you divided the sample by sqrt(sigma^2 + 1): that is scale_model_input, applied to the UNet's "
         "input only; step() works on the unscaled sample x = x_0 + sigma * eps.",
         R(e, s, sn, x / (s * s + 1) ** 0.5, ptype)),
    ]
    if ptype == "v_prediction":
        c = 1 / (s * s + 1) ** 0.5
        bugs += [
            ("v_prediction treated as epsilon: D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v.",
             R(e, s, sn, x, "epsilon")),
            ("v_prediction with DDIM's scale: the Euler sample is NOT divided by sqrt(sigma^2 + 1), so "
             "c_skip = 1 / (sigma^2 + 1), not 1 / sqrt(sigma^2 + 1).",
             x + (sn - s) * (x - (c * x - s * c * e)) / s),
            ("v_prediction sign: c_out = -sigma / sqrt(sigma^2 + 1) (D = x / (sigma^2 + 1) MINUS "
             "sigma / sqrt(sigma^2 + 1) * v).", R(-e, s, sn, x, ptype)),
        ]
    return bugs


def _euler_case(fn, gen, ptype, last=False):
    schedule = choice(gen, SCHEDULES)
    T, n = randint(gen, 50, 1000), randint(gen, 4, 40)
    karras = bool(randint(gen, 0, 1))
    sched = EulerDiscreteScheduler(num_train_timesteps=T, beta_schedule=schedule, beta_start=BETAS[schedule][0],
                                   beta_end=BETAS[schedule][1], prediction_type=ptype,
                                   timestep_spacing=choice(gen, SPACINGS), steps_offset=randint(gen, 0, 1),
                                   use_karras_sigmas=karras)
    sched.set_timesteps(n)
    i = n - 1 if last else randint(gen, 0, n - 2)
    s, sn = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
    shape = (randint(gen, 1, 3), 4, randint(gen, 2, 6), randint(gen, 2, 6))
    x = torch.randn(shape, generator=gen) * (s * s + 1) ** 0.5  # a latent at noise level sigma
    e = torch.randn(shape, generator=gen)
    call = (f"euler_step(model_output {tuple(shape)}, sigma={s:.6g}, sigma_next={sn:.6g}, sample, "
            f"prediction_type={ptype!r}) (step {i} of {n}, EulerDiscreteScheduler(num_train_timesteps={T}, "
            f"beta_schedule={schedule!r}, use_karras_sigmas={karras}))")
    x_in, e_in = x.clone(), e.clone()
    got = fn(e_in, s, sn, x_in, ptype)
    if not (torch.equal(x_in, x) and torch.equal(e_in, e)):
        raise CheckFailed(f"{call}: your function changed `sample` or `model_output` in place.")
    truth = ref.euler_step(e.double(), s, sn, x.double(), ptype)  # float64 ground truth
    # float32 rounding: a few ulps of the largest term (|x| or sigma * |model_output|), whatever the form.
    scale = float(x.abs().max()) + s * float(e.abs().max())
    tol = dict(atol=2e-6 * scale, rtol=1e-6)
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32 and got.is_floating_point():
        raise CheckFailed(f"{call}: expected model_output's dtype torch.float32, got {got.dtype}.")
    assert_close(call, got, truth.float(), **tol, hint=EULER_HINT, diagnose=[
        (label, cand.float()) for label, cand in _euler_bugs(e, s, sn, x, ptype)])
    sched._step_index, sched.is_scale_input_called = i, True  # step() reads sigmas[step_index]
    theirs = sched.step(e, sched.timesteps[i], x).prev_sample
    assert_close(f"{call} vs diffusers EulerDiscreteScheduler.step", got, theirs, **tol, hint=EULER_HINT)


def check_euler_step(fn, gen):
    """Against a float64 ground truth and EulerDiscreteScheduler.step (s_churn = 0) on a random config
    (T, beta schedule, spacing, Karras sigmas or not): epsilon and v_prediction at a random step, then
    both at the last step (sigma_next = 0), then an unknown prediction_type (ValueError)."""
    for ptype in ("epsilon", "v_prediction"):
        _euler_case(fn, gen, ptype)
    for ptype in ("epsilon", "v_prediction"):
        _euler_case(fn, gen, ptype, last=True)
    x = torch.randn(1, 4, 2, 2, generator=gen)
    require_raises("euler_step(..., prediction_type='sample_v2')", lambda: fn(x.clone(), 1.0, 0.5, x.clone(), "sample_v2"),
                   "an unknown prediction type")
