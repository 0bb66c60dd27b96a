"""Checks of Lab 02 (denoising step): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (beta schedule, T, prediction type, sample rank
1..5 with random sizes, batch, timesteps, the number of inference steps n and the timestep
spacing of ``set_timesteps(n)``, dtype) and compares the learner's output with the reference
solution AND with ``diffusers.DDPMScheduler`` on the same inputs (``step`` gets the same
noise through a generator seeded like the one that drew ``variance_noise``). When the output
matches what a typical bug returns, the message names that bug: the ``diagnose`` candidates
below are those bugs, computed in float64 on the same inputs.
"""

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from helpers.checks._core import (require_raises, CheckFailed, as_number, assert_close, choice, describe, describe_exception,
                                 device_case, device_timesteps, distinct, other_device, randint, randn)
from helpers.solutions import lab02_denoising_step as ref

LAB = "lab02"

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")

# Tolerances, |got - expected| <= atol + rtol * |expected| elementwise. The reference computes
# like diffusers, in the samples' dtype with float32 schedule scalars; a correct rewrite
# (rsqrt, DDPM eq. 11 for the mean, float64 then cast) differs by a few float32 ulps, far
# below every typical bug (the smallest, an off-by-one timestep, changes abar_t by beta_t ~ 1e-4
# relative at interior t).
EPS32 = 2.0**-24  # float32's unit roundoff: |fl(x) - x| <= EPS32 |x|
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.float64: dict(atol=1e-6, rtol=1e-6),  # the schedule itself is float32
       torch.float16: dict(atol=2e-2, rtol=2e-2)}

EQ_X0 = ("DDPM eq. 4 solved for x_0, one form per prediction type (eq. 15 for 'epsilon'; Salimans & Ho "
         "2022 for 'v_prediction'), as step 2 of DDPMScheduler.step")
EQ_V = "Salimans & Ho 2022, Sec. 4: v from x_0 and eps, as DDPMScheduler.get_velocity (`sample` being x_0)"
EQ_STEP = ("DDPM eq. 6-7 with this jump's alpha_t and beta_t (abar_prev = 1 when prev_timestep < 0), as "
           "DDPMScheduler.step's steps 1, 4, 5 and 6; no noise when t = 0")
RESHAPE_HINT = ("one abar_t per sample has shape (B,); give it one trailing size-1 dimension per dimension of "
                "the samples after the batch one, so it broadcasts for samples of ANY rank (as "
                "DDPMScheduler.add_noise does).")


# --------------------------------------------------------------------------- random inputs

def _random_scheduler(gen, prediction_type="epsilon", **extra):
    """A DDPMScheduler (clip_sample=False) with a random schedule and T, and its description."""
    schedule = choice(gen, SCHEDULES)
    T = randint(gen, 100, 1000)
    kw = dict(beta_schedule=schedule, num_train_timesteps=T, clip_sample=False, prediction_type=prediction_type)
    if schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's
    kw.update(extra)
    sched = DDPMScheduler(**kw)
    desc = f"DDPMScheduler({', '.join(f'{k}={v!r}' for k, v in kw.items())})"
    return sched, desc


def _shape(gen, rank, batch):
    sizes = [s for s in range(2, 7) if s != batch]
    return (batch,) + tuple(choice(gen, sizes) for _ in range(rank - 1))


def _timesteps(gen, B, T, edges):
    if edges:  # 0 and T-1 always present
        t = torch.randint(0, T, (B,), generator=gen)
        t[0], t[-1] = 0, T - 1
    else:  # interior: every off-by-one candidate is defined and distinct
        t = torch.randint(1, T - 1, (B,), generator=gen)
    return t


def _dt(x):
    return str(x.dtype).replace("torch.", "")


def _bshape(abar_t, x):
    return abar_t.reshape(-1, *[1] * (x.ndim - 1))


def _call(fn, name, *args, rank=4):
    """Call the learner; explain a broadcasting error."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        if rank != 4 or "size of tensor" in str(exc):
            raise CheckFailed(f"Likely bug: abar_t broadcasts for one rank only: reshape it to (B, 1, ..., 1).\n"
                              f"{name} raised {describe_exception(exc)}\nHint: {RESHAPE_HINT}") from exc
        raise


def _shape_dtype(name, got, x):
    if isinstance(got, torch.Tensor) and got.shape != x.shape:
        raise CheckFailed(f"Likely bug: abar_t broadcasts for one rank only: reshape it to (B, 1, ..., 1).\n"
                          f"{name}: expected shape {tuple(x.shape)} (the samples' shape), got "
                          f"{tuple(got.shape)}.\nHint: {RESHAPE_HINT}")
    if isinstance(got, torch.Tensor) and got.dtype != x.dtype:
        raise CheckFailed(f"Likely bug: dtype not kept: cast alphas_cumprod to the samples' dtype.\n"
                          f"{name}: expected {x.dtype} (the samples' dtype), got {got.dtype}.\nHint: "
                          f"alphas_cumprod is float32; alphas_cumprod.to(device=sample.device, dtype=sample.dtype) "
                          f"before indexing, as in Lab 01's add_noise.")


# --------------------------------------------------------------------------- another device

DEVICE_HINT = "move alphas_cumprod (and timesteps) to sample.device before indexing, as in Lab 01's add_noise."


# --------------------------------------------------------------------------- pred_original_sample

def _x0_64(mo, t, x, abar, ptype):
    """The reference in float64 (abar_t of shape (B,) or a 0-d tensor)."""
    return ref.pred_original_sample(mo.double(), t, x.double(), abar.double(), ptype)


def _x0_bugs(mo, t, x, abar, ptype):
    """Typical wrong x0_hat on these inputs, in float64."""
    mo, x, abar = mo.double(), x.double(), abar.double()
    T = abar.shape[0]
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    one_step_alpha = abar / prev
    a = _bshape(abar[t], x)
    s, al = (1 - a).sqrt(), a.sqrt()
    al1 = _bshape(one_step_alpha[t], x)

    def eps_x0(ab):
        return (x - (1 - ab).sqrt() * mo) / ab.sqrt()

    def v_x0(ab):
        return ab.sqrt() * x - (1 - ab).sqrt() * mo

    bugs = []
    if ptype == "epsilon":
        bugs += [
            ("you used the one-step alpha_t = 1 - beta_t where eq. 15 needs the cumulative abar_t = "
             "alphas_cumprod[t] (x_t was made from x_0 in one jump with abar_t).", eps_x0(al1)),
            ("missing square root on the noise coefficient: subtract sqrt(1 - abar_t) * eps, not (1 - abar_t) * eps.",
             (x - (1 - a) * mo) / al),
            ("missing square root on the signal coefficient: divide by sqrt(abar_t), not abar_t.", (x - s * mo) / a),
            ("wrong sign: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): the noise is SUBTRACTED.",
             (x + s * mo) / al),
            ("you multiplied by sqrt(abar_t); solving x_t = sqrt(abar_t) x_0 + ... for x_0 DIVIDES by it.",
             (x - s * mo) * al),
            ("the coefficients are swapped: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).", (x - al * mo) / s),
            ("you returned the model output itself: that is x_0 only for prediction_type='sample'; for "
             "'epsilon' it is the predicted noise.", mo.clone()),
            ("you used the v_prediction formula for 'epsilon'.", v_x0(a)),
            ("timesteps are off by one: you used abar_{t-1} (alphas_cumprod[t - 1]); use alphas_cumprod[t].",
             eps_x0(_bshape(abar[t - 1], x))),
        ]
        if int(t.max()) + 1 < T:
            bugs.append(("timesteps are off by one: you used abar_{t+1}; use alphas_cumprod[t].",
                         eps_x0(_bshape(abar[t + 1], x))))
    elif ptype == "v_prediction":
        bugs += [
            ("cos(phi_t) and sin(phi_t) are swapped: with cos(phi_t) = sqrt(abar_t) and sin(phi_t) = "
             "sqrt(1 - abar_t), x_0 = cos(phi_t) x_t - sin(phi_t) v, not sin(phi_t) x_t - cos(phi_t) v.",
             s * x - al * mo),
            ("wrong sign: x_0 = sqrt(abar_t) x_t MINUS sqrt(1 - abar_t) v (v = cos(phi_t) eps - sin(phi_t) x_0).",
             al * x + s * mo),
            ("you returned eps = sin(phi_t) x_t + cos(phi_t) v, not x_0 = cos(phi_t) x_t - sin(phi_t) v.", s * x + al * mo),
            ("missing square roots: cos(phi_t) = sqrt(abar_t), sin(phi_t) = sqrt(1 - abar_t).", a * x - (1 - a) * mo),
            ("you used the one-step alpha_t = 1 - beta_t where the formula needs abar_t = alphas_cumprod[t].",
             v_x0(al1)),
            ("you used the epsilon formula for 'v_prediction': x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v.",
             eps_x0(a)),
            ("you returned the model output itself: for 'v_prediction' it is v, not x_0.", mo.clone()),
            ("timesteps are off by one: you used abar_{t-1} (alphas_cumprod[t - 1]); use alphas_cumprod[t].",
             v_x0(_bshape(abar[t - 1], x))),
        ]
        if int(t.max()) + 1 < T:
            bugs.append(("timesteps are off by one: you used abar_{t+1}; use alphas_cumprod[t].",
                         v_x0(_bshape(abar[t + 1], x))))
    else:
        bugs += [
            ("for prediction_type='sample' the model output IS x_0: return it unchanged.", eps_x0(a)),
            ("for prediction_type='sample' the model output IS x_0: return it unchanged (not x_t).", x.clone()),
            ("for prediction_type='sample' the model output IS x_0: return it unchanged.", v_x0(a)),
        ]
    return bugs


def _diffusers_x0(sched, mo, t, x):
    """diffusers' pred_original_sample, one `step` per sample (step takes one timestep)."""
    rows = []
    for i in range(x.shape[0]):
        ti = int(t[i])
        out = sched.step(mo[i:i + 1], ti, x[i:i + 1], generator=torch.Generator().manual_seed(0))
        rows.append(out.pred_original_sample)
    return torch.cat(rows)


def check_pred_original_sample(fn, gen):
    """Each prediction type on 4-D float32 samples (interior t, then t = 0 and T-1), every
    other rank, float64 and float16, a second device, and an unknown type (ValueError)."""
    order = [PREDICTION_TYPES[i] for i in torch.randperm(3, generator=gen).tolist()]
    for ptype in order:
        sched, desc = _random_scheduler(gen, ptype)
        abar = sched.alphas_cumprod.clone()  # (T,) float32
        T = abar.shape[0]
        for edges in (False, True):
            B = randint(gen, 2, 6)
            x = randn(gen, _shape(gen, 4, B))
            mo = randn(gen, x.shape)
            t = _timesteps(gen, B, T, edges)
            name = (f"pred_original_sample(model_output, timesteps {t.tolist()}, sample {tuple(x.shape)} "
                    f"{_dt(x)}, alphas_cumprod of {desc}, prediction_type={ptype!r})")
            abar_in = abar.clone()
            got = _call(fn, name, mo, t, x, abar_in, ptype)
            if not torch.equal(abar_in, abar):
                raise CheckFailed(f"{name}: your function changed `alphas_cumprod` in place; build new tensors.")
            _shape_dtype(name, got, x)
            assert_close(name, got, ref.pred_original_sample(mo, t, x, abar, ptype), **TOL[torch.float32],
                         diagnose=_x0_bugs(mo, t, x, abar, ptype) if not edges else None, hint=EQ_X0 + ".")
            assert_close(f"{name} vs diffusers DDPMScheduler.step(...).pred_original_sample", got,
                         _diffusers_x0(sched, mo, t, x), **TOL[torch.float32])

    # Every other rank, every type.
    sched, desc = _random_scheduler(gen)
    abar = sched.alphas_cumprod
    T = abar.shape[0]
    for rank in (1, 2, 3, 5):
        ptype = choice(gen, PREDICTION_TYPES)
        B = randint(gen, 2, 6)
        x = randn(gen, _shape(gen, rank, B))
        mo, t = randn(gen, x.shape), _timesteps(gen, B, T, edges=True)
        name = (f"pred_original_sample(model_output, timesteps {t.tolist()}, sample {tuple(x.shape)} "
                f"{_dt(x)}, prediction_type={ptype!r})")
        got = _call(fn, name, mo, t, x, abar, ptype, rank=rank)
        _shape_dtype(name, got, x)
        assert_close(name, got, ref.pred_original_sample(mo, t, x, abar, ptype), **TOL[torch.float32],
                     hint=EQ_X0 + ".")

    # float64 and float16 (the schedule stays float32).
    for dtype in (torch.float64, torch.float16):
        ptype = choice(gen, ("epsilon", "v_prediction"))  # 'sample' returns model_output: any dtype bug hides
        B = randint(gen, 2, 6)
        x = randn(gen, _shape(gen, randint(gen, 1, 5), B), dtype)
        mo = randn(gen, x.shape, dtype)
        t = torch.randint(0, T // 2, (B,), generator=gen)  # float16 x_0 of the last steps overflows
        name = (f"pred_original_sample(model_output, timesteps {t.tolist()}, sample {tuple(x.shape)} "
                f"{_dt(x)}, prediction_type={ptype!r})")
        got = _call(fn, name, mo, t, x, abar, ptype, rank=x.ndim)
        _shape_dtype(name, got, x)
        expected = ref.pred_original_sample(mo, t, x, abar, ptype)
        if dtype == torch.float16 and isinstance(got, torch.Tensor):
            precise = _x0_64(mo, t, x, abar, ptype).to(dtype)
            if torch.allclose(got.double(), precise.double(), **TOL[dtype]):
                continue
        assert_close(name, got, expected, **TOL[dtype], hint=EQ_X0 + ".")

    # Another device (CUDA, else 'meta': shape and dtype without data).
    device = other_device()
    x = randn(gen, _shape(gen, 4, 3)).to(device)
    t = torch.tensor([0, T // 2, T - 1])
    for t_in in device_timesteps(t, device):
        name = f"pred_original_sample(sample on {device}, timesteps on {t_in.device}, alphas_cumprod on the CPU)"
        got = device_case(name, fn, (x, t_in, x, abar, "epsilon"), device, hint=DEVICE_HINT, like=x)
        if device == "cuda":
            assert_close(name, got, ref.pred_original_sample(x, t, x, abar, "epsilon"), **TOL[torch.float32],
                         hint=EQ_X0 + ".")

    # An unknown prediction type must raise ValueError (diffusers raises ValueError too).
    x = randn(gen, (2, 3))
    require_raises("pred_original_sample(..., prediction_type='flow')",
                   lambda: fn(x, torch.tensor([1, 2]), x, abar, "flow"),
                   "an unknown prediction_type: like DDPMScheduler.step, for anything but 'epsilon', 'sample', "
                   "'v_prediction'")


# --------------------------------------------------------------------------- get_velocity

def _v_bugs(x0, eps, t, abar):
    x0, eps, abar = x0.double(), eps.double(), abar.double()
    a = _bshape(abar[t], x0)
    al, s = a.sqrt(), (1 - a).sqrt()
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    a1 = _bshape((abar / prev)[t], x0)
    return [
        ("cos(phi_t) and sin(phi_t) are swapped: v = cos(phi_t) eps - sin(phi_t) x_0 with "
         "cos(phi_t) = sqrt(abar_t), sin(phi_t) = sqrt(1 - abar_t); you wrote sqrt(1 - abar_t) eps - sqrt(abar_t) x_0.",
         s * eps - al * x0),
        ("wrong sign: v = sqrt(abar_t) eps MINUS sqrt(1 - abar_t) x_0.", al * eps + s * x0),
        ("v has the opposite sign: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, not "
         "sqrt(1 - abar_t) x_0 - sqrt(abar_t) eps.", -(al * eps - s * x0)),
        ("you returned x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, not v.", al * x0 + s * eps),
        ("missing square roots: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0.", a * eps - (1 - a) * x0),
        ("you used the one-step alpha_t = 1 - beta_t; v uses abar_t = alphas_cumprod[t].",
         a1.sqrt() * eps - (1 - a1).sqrt() * x0),
        ("the swapped and negated form: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0.", al * x0 - s * eps),
    ]


def check_get_velocity(fn, gen):
    """4-D float32 (interior t, then t = 0 and T-1), ranks 1, 2, 3, 5, float64, vs
    DDPMScheduler.get_velocity; then a second device (CUDA when present, else 'meta')."""
    sched, desc = _random_scheduler(gen, "v_prediction")
    abar = sched.alphas_cumprod.clone()
    T = abar.shape[0]
    cases = [(4, False), (4, True)] + [(r, True) for r in (1, 2, 3, 5)]
    for rank, edges in cases:
        B = randint(gen, 2, 6)
        x0 = randn(gen, _shape(gen, rank, B))
        eps, t = randn(gen, x0.shape), _timesteps(gen, B, T, edges)
        name = f"get_velocity(sample {tuple(x0.shape)} {_dt(x0)}, noise, timesteps {t.tolist()}, alphas_cumprod of {desc})"
        got = _call(fn, name, x0, eps, t, abar, rank=rank)
        _shape_dtype(name, got, x0)
        assert_close(name, got, ref.get_velocity(x0, eps, t, abar), **TOL[torch.float32],
                     diagnose=_v_bugs(x0, eps, t, abar), hint=EQ_V + ".")
        assert_close(f"{name} vs diffusers DDPMScheduler.get_velocity", got, sched.get_velocity(x0, eps, t),
                     **TOL[torch.float32])
    x0 = randn(gen, _shape(gen, randint(gen, 1, 5), 3), torch.float64)
    eps, t = randn(gen, x0.shape, torch.float64), _timesteps(gen, 3, T, True)
    name = f"get_velocity(sample {tuple(x0.shape)} float64, noise, timesteps {t.tolist()})"
    got = _call(fn, name, x0, eps, t, abar, rank=x0.ndim)
    _shape_dtype(name, got, x0)
    assert_close(name, got, ref.get_velocity(x0, eps, t, abar), **TOL[torch.float64], hint=EQ_V + ".")
    # Another device (CUDA, else 'meta'), alphas_cumprod on the CPU, as the notebook calls it on a GPU.
    device = other_device()
    x0 = randn(gen, _shape(gen, 4, 3)).to(device)
    eps, t = randn(gen, x0.shape).to(device), torch.tensor([0, T // 2, T - 1])
    for t_in in device_timesteps(t, device):
        name = f"get_velocity(sample on {device}, noise, timesteps on {t_in.device}, alphas_cumprod on the CPU)"
        got = device_case(name, fn, (x0, eps, t_in, abar), device, hint=DEVICE_HINT, like=x0)
        if device == "cuda":
            assert_close(name, got, ref.get_velocity(x0, eps, t, abar), **TOL[torch.float32], hint=EQ_V + ".")


# --------------------------------------------------------------------------- ddpm_step

def _step64(mo, t, prev, x, abar, z, ptype, *, swap=False, xt_alpha="jump", x0_beta="jump",
            var="tilde", sign=1.0, noise_at_0=False, one_step=False, wrap=False, as_ptype=None,
            clip=False, swap_coeffs=False, prev_override=None, no_noise=False):
    """A DDPM step in float64 with one typical bug switched on (all off: the right step)."""
    mo, x, z, abar = mo.double(), x.double(), z.double(), abar.double()
    prev = prev if prev_override is None else prev_override
    a_t = abar[t]
    a_p = abar[prev] if (prev >= 0 or wrap) else abar.new_ones(())
    if swap:
        a_t, a_p = a_p, a_t
    alpha = a_t / a_p
    if one_step:  # the single-step alpha of a training step, whatever the stride
        alpha = abar[t] / (abar[t - 1] if t >= 1 else abar.new_ones(()))
    beta = 1 - alpha
    B = x.shape[0]
    tt = torch.full((B,), t, dtype=torch.long)
    x0 = _x0_64(mo, tt, x, abar, as_ptype or ptype)
    if clip:
        x0 = x0.clamp(-1, 1)
    c0 = a_p.sqrt() * (beta if x0_beta == "jump" else 1 - a_t) / (1 - a_t)
    ct = (alpha.sqrt() if xt_alpha == "jump" else a_t.sqrt()) * (1 - a_p) / (1 - a_t)
    if swap_coeffs:
        c0, ct = ct, c0
    mean = c0 * x0 + ct * x
    if (t > 0 or noise_at_0) and not no_noise:
        v = (1 - a_p) / (1 - a_t) * beta
        v = v.clamp(min=1e-20) if v >= 0 else v  # a negative variance (swapped abars) gives NaN, as in the bug
        scale = {"tilde": v.sqrt(), "beta": beta.sqrt(), "nosqrt": v, "quarter": v ** 0.25,
                 "beta_nosqrt": beta}[var]
        mean = mean + sign * scale * z
    return mean


def _step_tol(mo, t, prev, x, abar, z, ptype, dtype):
    """Elementwise (float64) distance a CORRECT step may have from the float64 truth ``_step64``.

    Every correct form (diffusers' float32 scalars, DDPM eq. 11 with Python-float coefficients,
    float64 then cast, ...) rounds its intermediates to the samples' dtype (unit roundoff u), so
    the error is bounded by u times the magnitudes of the terms summed, not of the result (which
    may cancel): |c_0| |x_0 terms| + |c_t x_t| + |std z|. On top, beta_t = 1 - abar_t / abar_prev
    is known only to an ABSOLUTE few float32 ulps (the ratio is rounded first in one form, not in
    another), which moves c_0 by sqrt(abar_prev) / (1 - abar_t) and the variance by
    (1 - abar_prev) / (1 - abar_t) times that. K = 32 covers the roundings per term with a margin
    (measured: with K = 16 a textbook eq. 11 step, or diffusers itself, went up to 1.3 times past
    the bound in 4 of 180 check runs; with K = 32 in none of 300)."""
    u = {torch.float64: 2.0**-53, torch.float32: EPS32}.get(dtype, EPS32)
    K, db = 32.0, 8 * EPS32  # roundings per term; beta_t's absolute uncertainty (float32 schedule)
    # |x0_hat| from the signed model output (with |model_output| its terms could cancel into a
    # bound near 0 where x0_hat is not: a v-prediction step at prev_t = 0 failed at 1.24 times it)
    x0 = _x0_64(mo, torch.full((x.shape[0],), t, dtype=torch.long), x, abar, ptype).abs()
    mo, x, z, abar = mo.double().abs(), x.double(), z.double().abs(), abar.double()
    a_t = abar[t]
    a_p = abar[prev] if prev >= 0 else abar.new_ones(())
    beta = 1 - a_t / a_p
    c0 = (a_p.sqrt() * beta / (1 - a_t)).abs()
    ct = ((a_t / a_p).sqrt() * (1 - a_p) / (1 - a_t)).abs()
    x0_terms = {"epsilon": (x.abs() + (1 - a_t).sqrt() * mo) / a_t.sqrt(),
                "v_prediction": a_t.sqrt() * x.abs() + (1 - a_t).sqrt() * mo, "sample": mo}[ptype]
    tol = K * u * (c0 * x0_terms + ct * x.abs())  # rounding of the terms in the samples' dtype
    tol = tol + (K * EPS32 * c0 + a_p.sqrt() / (1 - a_t) * db) * x0  # c_0's own error
    tol = tol + K * EPS32 * ct * x.abs()  # c_t's own error (float32 schedule)
    if t > 0:
        var = ((1 - a_p) / (1 - a_t) * beta).clamp(min=1e-20)
        std = var.sqrt()
        dstd = (1 - a_p) / (1 - a_t) * db / (2 * std) + K * EPS32 * std
        tol = tol + (K * u * std + dstd) * z
    return tol + 1e-30


def _elementwise_fail(name, got, truth, tol, hint, lead=""):
    """CheckFailed for the first element of ``got`` outside ``truth`` +- ``tol`` (float64 tensors)."""
    err = (got - truth).abs()
    wrong = (err > tol) | (torch.isnan(got) & ~torch.isnan(truth))
    idx = tuple(int(i) for i in wrong.nonzero()[0])
    g, e = distinct(got[idx].item(), truth[idx].item())
    worst = float((err / tol)[wrong].nan_to_num(nan=float("inf")).max())
    return CheckFailed(f"{lead}{name}: {int(wrong.sum())} of {err.numel()} values differ from the float64 truth "
                       f"by more than rounding can explain (up to {worst:.3g} times the rounding bound); "
                       f"first at index {idx}: got {g}, expected {e} (+- {tol[idx].item():.3g})\nHint: {hint}")


def _step_bugs(mo, t, prev, x, abar, z, ptype):
    S = lambda **k: _step64(mo, t, prev, x, abar, z, ptype, **k)  # noqa: E731
    bugs = [
        ("you used abar_t where DDPM eq. 7 needs alpha_t = abar_t / abar_prev (the signal kept by THIS step): "
         "the x_t coefficient is sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t).", S(xt_alpha="abar")),
        ("you used 1 - abar_t where DDPM eq. 7 needs beta_t = 1 - alpha_t = 1 - abar_t / abar_prev: the x_0 "
         "coefficient is sqrt(abar_prev) beta_t / (1 - abar_t).", S(x0_beta="abar")),
        ("you mixed up alpha_t and abar_t: alpha_t = abar_t / abar_prev is this step's, abar_t = "
         "alphas_cumprod[t] the cumulative one; eq. 7 uses sqrt(alpha_t) on x_t and beta_t = 1 - alpha_t.",
         S(xt_alpha="abar", x0_beta="abar")),
        ("abar_t and abar_prev are swapped: abar_t = alphas_cumprod[timestep] (the noisier, smaller one), "
         "abar_prev = alphas_cumprod[prev_timestep].", S(swap=True)),
        ("the x_0 and x_t coefficients are swapped: x0_hat gets sqrt(abar_prev) beta_t / (1 - abar_t), "
         "x_t gets sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t).", S(swap_coeffs=True)),
        ("wrong variance: you used beta_t (DDPM's sigma_t^2 = beta_t, diffusers' 'fixed_large'); "
         "'fixed_small' uses the posterior variance beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta_t.",
         S(var="beta")),
        ("missing square root: the noise is multiplied by the STANDARD DEVIATION sqrt(beta_tilde); you "
         "multiplied it by the variance beta_tilde.", S(var="nosqrt")),
        ("wrong noise scale: you took the square root twice (beta_tilde ** 0.25): beta_tilde is already "
         "the variance, multiply the noise by sqrt(beta_tilde) once.", S(var="quarter")),
        ("wrong variance and missing square root: you multiplied the noise by beta_t; it is "
         "sqrt(beta_tilde) * noise.", S(var="beta_nosqrt")),
        ("wrong sign: x_prev = mean PLUS sqrt(variance) * variance_noise.", S(sign=-1.0)),
        ("no noise added: x_prev = mean + sqrt(beta_tilde) * variance_noise for every t > 0 (only t = 0 "
         "gets none).", S(no_noise=True)),
        ("you clipped x0_hat to [-1, 1]: diffusers' default clip_sample=True does that (for pixel DDPMs), "
         "but this step is DDPMScheduler(clip_sample=False), Stable Diffusion's setting: latents are not in [-1, 1].",
         S(clip=True)),
    ]
    if prev != t - 1 and t >= 1:
        bugs += [
            (f"prev_timestep off by the step ratio: you used t - 1 = {t - 1}, but the step goes from t = {t} to "
             f"prev_timestep = {prev} (after set_timesteps(n) the steps are T/n apart): use the prev_timestep "
             f"argument.", S(prev_override=t - 1)),
            (f"you used the one-step beta_t = 1 - abar_t / abar_(t-1) (t - 1 = {t - 1}); this step jumps to "
             f"prev_timestep = {prev}, so alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t.", S(one_step=True)),
        ]
    if ptype != "epsilon":
        bugs.append((f"prediction_type ignored: you treated the output as 'epsilon'; pass prediction_type="
                     f"{ptype!r} on to pred_original_sample.", S(as_ptype="epsilon")))
    if prev < 0:
        bugs.append(("abar_prev at the last step: prev_timestep = -1 must give abar_prev = 1 (diffusers' "
                     "self.one), but alphas_cumprod[-1] is the LAST entry, abar_{T-1}.", S(wrap=True)))
        bugs.append(("abar_prev at the last step: prev_timestep = -1 must give abar_prev = 1 (diffusers' "
                     "self.one), but alphas_cumprod[-1] is the LAST entry, abar_{T-1}.", S(wrap=True, noise_at_0=True)))
    return bugs


def _near(got, cand, tol):
    """got matches a candidate: elementwise within tol, or within 1e-4 of the candidate's largest
    value (a float32 bug with huge, cancelling terms, e.g. abar_prev = alphas_cumprod[-1]); NaN
    where the candidate has NaN."""
    if not (isinstance(got, torch.Tensor) and cand.shape == got.shape):
        return False
    g = got.detach().double().cpu()
    if not torch.equal(torch.isnan(g), torch.isnan(cand)):
        return False
    ok = ~torch.isnan(cand)
    if not ok.any():
        return True
    err = (g[ok] - cand[ok]).abs().max()
    return bool(torch.allclose(g[ok], cand[ok], **tol) or err <= tol["atol"] + 1e-4 * cand[ok].abs().max())


def _noise_residual(got, expected, z, atol, rtol):
    """If got - expected is c * z for a scalar c != 0, return c; else None."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
        return None
    r, zz = (got.detach().double().cpu() - expected.double()), z.double()
    c = float((r * zz).sum() / (zz * zz).sum())
    if abs(c) < 1e-4:
        return None
    fit = torch.allclose(r, c * zz, atol=atol, rtol=rtol) or bool(((r - c * zz).abs().max()) < 1e-3 * abs(c))
    return c if fit else None


def _diffusers_step(sched, mo, t, x, seed):
    out = sched.step(mo, t, x, generator=torch.Generator().manual_seed(seed))
    return out.prev_sample


def _one_step_case(fn, gen, sched, desc, n, t_index, rank=4, dtype=torch.float32, diagnose=True, as_tensor=False):
    """Run the learner's ddpm_step at scheduler.timesteps[t_index] after set_timesteps(n)."""
    ptype = sched.config.prediction_type
    t = int(sched.timesteps[t_index])
    prev = int(sched.previous_timestep(sched.timesteps[t_index]))
    abar = sched.alphas_cumprod.clone()
    B = randint(gen, 2, 5)
    x = randn(gen, _shape(gen, rank, B), dtype)
    mo = randn(gen, x.shape, dtype)
    seed = randint(gen, 0, 2**31 - 1)
    z = randn_tensor(x.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)  # diffusers' draw
    t_arg, prev_arg = (torch.tensor(t), torch.tensor(prev)) if as_tensor else (t, prev)
    name = (f"ddpm_step(model_output, timestep={t}, prev_timestep={prev}, sample {tuple(x.shape)} {_dt(x)}, "
            f"alphas_cumprod, variance_noise, prediction_type={ptype!r}) "
            f"[{desc}, set_timesteps({n}), timesteps {sched.timesteps[:3].tolist()}...{sched.timesteps[-2:].tolist()}]")
    abar_in = abar.clone()
    got = _call(fn, name, mo, t_arg, prev_arg, x, abar_in, z.clone(), ptype, rank=rank)
    if not torch.equal(abar_in, abar):
        raise CheckFailed(f"{name}: your function changed `alphas_cumprod` in place; build new tensors.")
    _shape_dtype(name, got, x)
    expected = ref.ddpm_step(mo, t, prev, x, abar, z, ptype)
    tol = TOL[dtype]
    if dtype == torch.float16:
        # float16 loses digits in (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) near t = 0; diffusers
        # (float32 scalars) and a float16 cast of alphas_cumprod round differently: accept either,
        # or the float64 result cast to float16.
        exact = _step64(mo, t, prev, x, abar, z, ptype)
        diff = _diffusers_step(sched, mo, t, x, seed) if rank > 1 else expected
        if isinstance(got, torch.Tensor) and got.shape == x.shape and any(
                torch.allclose(got.double(), e.double(), **tol) for e in (exact, expected, diff)):
            return
        assert_close(name, got, exact.to(dtype), **tol, hint=EQ_STEP + ".")
        return
    # float32 / float64: judged against the float64 truth, within the rounding bound of _step_tol;
    # a "Likely bug" is named only for an output outside that bound.
    truth = _step64(mo, t, prev, x, abar, z, ptype)
    tolt = _step_tol(mo, t, prev, x, abar, z, ptype, dtype)
    if not isinstance(got, torch.Tensor):
        assert_close(name, got, expected, **tol, hint=EQ_STEP + ".")
    g64 = got.detach().double().cpu()
    if not bool(((g64 - truth).abs() <= tolt).all()):
        for label, cand in (_step_bugs(mo, t, prev, x, abar, z, ptype) if diagnose else []):
            if _near(got, cand, tol):
                raise _elementwise_fail(name, g64, truth, tolt, EQ_STEP + ".", lead=f"Likely bug: {label}\n")
        c = _noise_residual(got, truth, z, **tol)
        if c is not None and t == 0:
            raise CheckFailed(
                f"Likely bug: noise added at t = 0. DDPMScheduler.step adds noise only when t > 0: the last "
                f"step (t = 0) returns the mean itself (you added {c:.4g} * variance_noise).\n{name}\nHint: {EQ_STEP}.")
        if c is not None:
            a_t = abar[t].double()
            a_p = abar[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
            want = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt().item()
            raise CheckFailed(
                f"Likely bug: the mean is right but the noise scale is wrong: you added {c:.4g} * variance_noise, "
                f"expected sqrt(beta_tilde) = {want:.4g} (beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta_t).\n"
                f"{name}\nHint: {EQ_STEP}.")
        raise _elementwise_fail(name, g64, truth, tolt, EQ_STEP + ".")
    if rank == 1:  # DDPMScheduler.step reads model_output.shape[1]: it needs rank >= 2
        return
    theirs = _diffusers_step(sched, mo, torch.tensor(t) if t_index % 2 else t, x, seed).double()
    both = tolt + _step_tol(mo, t, prev, x, abar, z, ptype, torch.float32)  # diffusers' float32 scalars
    if not bool(((g64 - theirs).abs() <= both).all()):
        raise _elementwise_fail(f"{name} vs diffusers DDPMScheduler.step (same noise)", g64, theirs, both,
                                EQ_STEP + ".")


def check_ddpm_step(fn, gen):
    """Epsilon steps after set_timesteps(n) (strided, so t - 1 is wrong) at an interior
    timestep, at the last one with t = 0 (no noise) and t = 1 ('leading' with steps_offset=1,
    prev_timestep = -1); 'sample' and 'v_prediction'; ranks 1..5; float64 and float16;
    timesteps given as ints and as 0-d tensors (as `for t in scheduler.timesteps` gives them).
    Every result is compared with the reference and with DDPMScheduler.step on the same noise."""
    # 1. epsilon, interior timestep, strided: the value bugs.
    sched, desc = _random_scheduler(gen, "epsilon", timestep_spacing=choice(gen, SPACINGS))
    n = randint(gen, 5, 50)
    sched.set_timesteps(n)
    _one_step_case(fn, gen, sched, desc, n, randint(gen, 1, n - 2))
    _one_step_case(fn, gen, sched, desc, n, 0, as_tensor=True)  # the first step: t near T - 1
    # 2. the last step at t = 0: 'linspace' (or 'leading' with steps_offset=0) ends at t = 0.
    sched, desc = _random_scheduler(gen, "epsilon", timestep_spacing="linspace")
    n = randint(gen, 5, 50)
    sched.set_timesteps(n)
    _one_step_case(fn, gen, sched, desc, n, n - 1)
    # 3. the last step at t = 1, prev_timestep = -1 (SD's 'leading' + steps_offset=1).
    sched, desc = _random_scheduler(gen, "epsilon", timestep_spacing="leading", steps_offset=1)
    n = randint(gen, 5, 50)
    sched.set_timesteps(n)
    _one_step_case(fn, gen, sched, desc, n, n - 1, as_tensor=True)
    _one_step_case(fn, gen, sched, desc, n, n - 2)
    # 4. the other prediction types, interior steps.
    for ptype in ("sample", "v_prediction"):
        sched, desc = _random_scheduler(gen, ptype, timestep_spacing=choice(gen, SPACINGS))
        n = randint(gen, 5, 50)
        sched.set_timesteps(n)
        _one_step_case(fn, gen, sched, desc, n, randint(gen, 1, n - 2))
    # 5. ranks 1, 2, 3, 5, and every step of a short schedule.
    sched, desc = _random_scheduler(gen, choice(gen, PREDICTION_TYPES), timestep_spacing=choice(gen, SPACINGS))
    n = randint(gen, 4, 8)
    sched.set_timesteps(n)
    for i, rank in enumerate((1, 2, 3, 5)):
        _one_step_case(fn, gen, sched, desc, n, randint(gen, 0, n - 1), rank=rank, as_tensor=bool(i % 2))
    for i in range(n):
        _one_step_case(fn, gen, sched, desc, n, i, diagnose=False)
    # 6. float64 and float16 samples (the schedule stays float32).
    for dtype in (torch.float64, torch.float16):
        _one_step_case(fn, gen, sched, desc, n, randint(gen, 1, n - 1), rank=randint(gen, 1, 5), dtype=dtype,
                       diagnose=False)
    # 7. CUDA, when there is one.
    if torch.cuda.is_available():
        t = int(sched.timesteps[1])
        prev = int(sched.previous_timestep(sched.timesteps[1]))
        x = randn(gen, (2, 4, 3, 3))
        mo, z = randn(gen, x.shape), randn(gen, x.shape)
        ptype = sched.config.prediction_type
        expected = ref.ddpm_step(mo, t, prev, x, sched.alphas_cumprod, z, ptype)
        # the timesteps as ints, then as 0-d CUDA tensors (what a loop over
        # set_timesteps(device="cuda")'s timesteps hands over, as the notebook's sampler does)
        for t_in, prev_in, kind in ((t, prev, "ints"), (torch.tensor(t, device="cuda"),
                                                        torch.tensor(prev, device="cuda"), "0-d tensors on cuda")):
            name = f"ddpm_step(samples on cuda, alphas_cumprod on the CPU, timestep={t}, prev_timestep={prev} as {kind})"
            got = device_case(name, fn, (mo.cuda(), t_in, prev_in, x.cuda(), sched.alphas_cumprod, z.cuda(), ptype),
                              "cuda", like=x.cuda(), hint="move alphas_cumprod (and any timesteps tensor) to sample.device.")
            assert_close(name, got.cpu(), expected, **TOL[torch.float32])


# --------------------------------------------------------------------------- ddpm_variance

VARIANCE_TYPES = ref.VARIANCE_TYPES
EQ_VAR = ("DDPMScheduler._get_variance: the jump's beta_t and DDPM eq. 7's posterior variance, clamped as "
          "there, then one branch per type: what each returns (a variance, a standard deviation or a "
          "log-variance) is written in that branch")


def _variance64(t, prev, abar, vtype, pv, *, wrap=False, one_step=False, no_clamp=False, frac_raw=False,
                frac_swapped=False, as_variance=None):
    """_get_variance in float64 from the float32 schedule, with one typical bug switched on.
    as_variance: the value a type returns when mistaken for another ("log", "var", "std", ...)."""
    abar = abar.double()
    a_t = abar[t]
    a_p = abar[prev] if (prev >= 0 or wrap) else abar.new_ones(())
    if one_step:
        a_p = abar[t - 1] if t >= 1 else abar.new_ones(())
    beta = 1 - a_t / a_p
    var = (1 - a_p) / (1 - a_t) * beta
    if not no_clamp:
        var = var.clamp(min=1e-20)
    if as_variance is not None:
        return {"log_small": var.log(), "small": var, "std_small": var.sqrt(), "large": beta,
                "log_large": beta.log(), "std_large": beta.sqrt(), "exp_range": None}[as_variance]
    if vtype == "fixed_small":
        return var
    if vtype == "fixed_small_log":
        return var.sqrt()
    if vtype == "fixed_large":
        return beta
    if vtype == "fixed_large_log":
        return beta.log()
    pv = pv.double()
    if vtype == "learned":
        return pv
    frac = pv if frac_raw else (pv + 1) / 2
    lo, hi = (beta.log(), var.log()) if frac_swapped else (var.log(), beta.log())
    return frac * hi + (1 - frac) * lo


def _variance_tol(t, prev, abar, vtype, pv):
    """How far a correct float32 computation may be from the float64 truth (elementwise, float64).

    beta_t = 1 - abar_t / abar_prev rounds the ratio first, an ABSOLUTE error of a few EPS32
    whatever beta_t's size; a form that subtracts first, (abar_prev - abar_t) / abar_prev, is
    exact to a few EPS32 RELATIVE. Both are correct, so beta_t and beta_tilde_t (which carries the
    same factor) are known only to a relative error r = 8 EPS32 / beta_t + 8 EPS32; a log of
    them to r (absolute), a square root to r / 2 (relative). The clamp at 1e-20 matters only
    under a log: returning 0 instead of 1e-20 (or a standard deviation of 0 instead of 1e-10) is
    no noise either way, so those two types get an absolute floor of twice the clamped value."""
    abar = abar.double()
    a_t = abar[t]
    a_p = abar[prev] if prev >= 0 else abar.new_ones(())
    beta = 1 - a_t / a_p
    var = ((1 - a_p) / (1 - a_t) * beta).clamp(min=1e-20)
    r = 8 * EPS32 / float(beta) + 8 * EPS32  # relative error of beta_t and of beta_tilde_t
    if vtype == "fixed_small":
        return torch.tensor(r * float(var) + 2e-20, dtype=torch.float64)
    if vtype == "fixed_small_log":
        return torch.tensor(r * float(var.sqrt()) + 2e-10, dtype=torch.float64)
    if vtype == "fixed_large":
        return torch.tensor(r * float(beta), dtype=torch.float64)
    if vtype == "fixed_large_log":
        return torch.tensor(r + 8 * EPS32 * abs(float(beta.log())), dtype=torch.float64)
    pv = pv.double()
    if vtype == "learned":
        return torch.zeros_like(pv)
    frac = (pv + 1) / 2
    logs = abs(float(beta.log())) + abs(float(var.log()))
    return (frac.abs() + (1 - frac).abs()) * (r + 8 * EPS32 * logs) + 8 * EPS32 * logs


def _variance_bugs(t, prev, abar, vtype, pv):
    """Typical wrong answers for this type, in float64 (None entries: not defined here)."""
    V = lambda **k: _variance64(t, prev, abar, vtype, pv, **k)  # noqa: E731
    bugs = []
    if vtype == "fixed_small":
        bugs += [("fixed_small is the posterior variance beta_tilde_t = (1 - abar_prev) / (1 - abar_t) * beta_t; "
                  "you returned beta_t, which is 'fixed_large'.", V(as_variance="large")),
                 ("fixed_small returns the VARIANCE beta_tilde_t itself, not its square root.",
                  V(as_variance="std_small"))]
    if vtype == "fixed_small_log":
        bugs += [("you returned the log-variance log(beta_tilde_t), but despite its name diffusers' "
                  "fixed_small_log does not return a log: read the two lines of its branch in _get_variance, "
                  "then its case in step's '6. Add noise' (what does step do with the value before it meets "
                  "the noise?).", V(as_variance="log_small")),
                 ("you returned the variance beta_tilde_t itself: read the two lines of the fixed_small_log "
                  "branch in _get_variance again (what does the second do to the first's log?).",
                  V(as_variance="small")),
                 ("fixed_small_log is built on the posterior variance beta_tilde_t, not on beta_t.",
                  V(as_variance="std_large"))]
    if vtype == "fixed_large":
        bugs += [("fixed_large is beta_t = 1 - abar_t / abar_prev, the jump's beta; you returned the posterior "
                  "variance beta_tilde_t ('fixed_small').", V(as_variance="small"))]
    if vtype == "fixed_large_log":
        bugs += [("fixed_large_log is the log of beta_t (GLIDE's max_log); you returned the log of the posterior "
                  "variance beta_tilde_t.", V(as_variance="log_small")),
                 ("you returned beta_t itself: read the line of the fixed_large_log branch in _get_variance "
                  "(what does it do to current_beta_t?).", V(as_variance="large")),
                 ("you returned the standard deviation sqrt(beta_t): read the line of the fixed_large_log "
                  "branch in _get_variance (one function of current_beta_t, nothing else).", V(as_variance="std_large"))]
    if vtype == "learned_range":
        bugs += [("the interpolation weights are swapped: f = (predicted_variance + 1) / 2 weighs the LARGE "
                  "log-variance log(beta_t), 1 - f the small one log(beta_tilde_t).", V(frac_swapped=True)),
                 ("predicted_variance is in [-1, 1]: map it to f = (predicted_variance + 1) / 2 in [0, 1] "
                  "before interpolating.", V(frac_raw=True)),
                 ("the interpolation is right but you returned its exp: read where the learned_range branch of "
                  "_get_variance stops, and its case in step's '6. Add noise'.",
                  V().exp()),
                 ("the log of an unclamped variance: at the last step beta_tilde_t = 0 and log(0) = -inf; "
                  "clamp beta_tilde_t at 1e-20 BEFORE taking its log, as diffusers does.", V(no_clamp=True))]
    if vtype != "learned":
        if prev != t - 1 and t >= 1:
            bugs.append((f"you used t - 1 = {t - 1} as the previous timestep; this step jumps to prev_t = {prev} "
                         f"(after set_timesteps(n) the steps are T/n apart): use the prev_t argument.",
                         V(one_step=True)))
        if prev < 0:
            bugs.append(("abar_prev at the last step: prev_t = -1 must give abar_prev = 1 (diffusers' self.one), "
                         "but alphas_cumprod[-1] is the LAST entry, abar_{T-1}.", V(wrap=True)))
    return [(label, cand) for label, cand in bugs if cand is not None]


def _variance_case(fn, gen, sched, desc, n, index, vtype):
    """The learner's ddpm_variance at scheduler.timesteps[index] after set_timesteps(n), against
    the float64 truth (tolerance from _variance_tol), diffusers' _get_variance and the reference."""
    t = int(sched.timesteps[index])
    prev = int(sched.previous_timestep(sched.timesteps[index]))
    abar = sched.alphas_cumprod.clone()
    pv = None
    if vtype in ("learned", "learned_range"):
        pv = (2 * torch.rand(_shape(gen, randint(gen, 2, 4), randint(gen, 1, 3)), generator=gen,
                             dtype=torch.float64) - 1).float()  # the model's output in [-1, 1]
    name = (f"ddpm_variance(t={t}, prev_t={prev}, alphas_cumprod, {vtype!r}"
            f"{'' if pv is None else f', predicted_variance {tuple(pv.shape)} float32'}) "
            f"[{desc}, set_timesteps({n})]")
    abar_in, pv_in = abar.clone(), None if pv is None else pv.clone()
    try:
        got = fn(t, prev, abar_in, vtype, pv_in)
    except NotImplementedError:
        raise
    except Exception as exc:
        raise CheckFailed(f"{name} raised {describe_exception(exc)}\nHint: {EQ_VAR}.") from exc
    if not torch.equal(abar_in, abar) or (pv is not None and not torch.equal(pv_in, pv)):
        raise CheckFailed(f"{name}: your function changed its inputs in place; build new tensors.")
    truth = _variance64(t, prev, abar, vtype, pv)
    tol = float(_variance_tol(t, prev, abar, vtype, pv).max())
    bugs = _variance_bugs(t, prev, abar, vtype, pv)
    if pv is None:  # a number, by the course's rule
        value = as_number(name, got)
        got64 = torch.tensor(value, dtype=torch.float64)
    else:
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{name}: expected a tensor of shape {tuple(pv.shape)}, got {describe(got)}.")
        if tuple(got.shape) != tuple(pv.shape) or got.dtype != pv.dtype:
            raise CheckFailed(f"{name}: expected a tensor like predicted_variance, {describe(pv)}, got "
                              f"{describe(got)}.\nHint: {EQ_VAR}.")
        got64 = got.detach().double().cpu()
    try:
        assert_close(f"{name} vs the float64 truth", got64, truth, atol=tol, rtol=0.0, hint=EQ_VAR + ".")
    except CheckFailed as exc:
        for label, cand in bugs:  # a bug's value carries float32 rounding of ITS magnitude (1e-5 rel.)
            if cand.shape == got64.shape and torch.allclose(got64, cand, atol=tol, rtol=1e-5, equal_nan=True):
                raise CheckFailed(f"Likely bug: {label}\n{exc}") from None
        raise
    theirs = sched._get_variance(sched.timesteps[index], predicted_variance=pv, variance_type=vtype)
    assert_close(f"{name} vs diffusers DDPMScheduler._get_variance", got64, torch.as_tensor(theirs).double(),
                 atol=2 * tol, rtol=0.0, hint=EQ_VAR + ".")
    mine = ref.ddpm_variance(t, prev, abar, vtype, pv)
    assert_close(f"{name} vs the reference", got64, torch.as_tensor(mine).double(), atol=2 * tol, rtol=0.0,
                 hint=EQ_VAR + ".")


def check_ddpm_variance(fn, gen):
    """Every variance_type, in a random order, each on its own random schedule (beta schedule, T,
    set_timesteps(n) with a random spacing): at an interior step, at the second-to-last step and
    at the last one (t = 0 or t = 1 with prev_t = -1, where beta_tilde_t is 0 and is clamped).
    Compared with the float64 truth, DDPMScheduler._get_variance and the reference; then an
    unknown variance_type must raise ValueError."""
    order = [VARIANCE_TYPES[i] for i in torch.randperm(len(VARIANCE_TYPES), generator=gen).tolist()]
    for vtype in order:
        spacing = choice(gen, SPACINGS)
        extra = dict(timestep_spacing=spacing, variance_type=vtype)
        if spacing == "leading":
            extra["steps_offset"] = choice(gen, (0, 1))
        sched, desc = _random_scheduler(gen, "epsilon", **extra)
        n = randint(gen, 5, 50)
        sched.set_timesteps(n)
        for index in (randint(gen, 1, n - 3), n - 2, n - 1):
            _variance_case(fn, gen, sched, desc, n, index, vtype)
    sched, _ = _random_scheduler(gen)
    require_raises("ddpm_variance(5, 4, alphas_cumprod, 'fixed_medium')",
                   lambda: fn(5, 4, sched.alphas_cumprod, "fixed_medium", None), "an unknown variance_type")
