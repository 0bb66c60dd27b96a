"""Lab 03: reading a sampler, the way diffusers' `DDIMScheduler` (and `EulerDiscreteScheduler`) does it.

Notation (Song et al. 2021, "Denoising Diffusion Implicit Models", DDIM; diffusers' names in brackets):

    T              number of training timesteps; diffusers indexes them t = 0 .. T-1
    n              number of inference steps                          (`num_inference_steps`)
    abar_t         alpha_0 * ... * alpha_t, as in Lab 01              (`alphas_cumprod[t]`)
                   (the DDIM paper writes alpha_t for this product)
    t, t'          the current timestep and the previous one, t' < t  (`timestep`, `prev_timestep`)
    eps_theta      the model's noise prediction at (x_t, t)           (`model_output`)
    x0_hat         the model's estimate of the clean sample           (`pred_original_sample`)
    sigma_t(eta)   std of the fresh noise added by one step           (`std_dev_t`)

A sampler has two halves, and diffusers keeps them in two methods:

    set_timesteps(n):   which n of the T training timesteps the loop visits, in descending order
    step(eps, t, x_t):  one update x_t -> x_{t'} (DDIM eq. 12), with no network inside

The caller writes the loop: `for t in scheduler.timesteps: eps = unet(x, t); x = scheduler.step(eps, t, x)`.

The k-diffusion / EDM view (Karras et al. 2022) writes the same forward process divided by
sqrt(abar_t), as x_t / sqrt(abar_t) = x_0 + sigma_t * eps, which defines sigma_t: a noise level
on an unscaled ("variance exploding") sample. Euler, Euler ancestral, DPM++ and UniPC in
diffusers think in these sigmas.
"""

import numpy as np
import torch

__all__ = ["ddim_timesteps", "ddim_step", "sigmas_from_alphas_cumprod", "karras_sigmas", "euler_step"]


def ddim_timesteps(num_inference_steps, num_train_timesteps=1000, timestep_spacing="leading", steps_offset=0):
    """The n timesteps a DDIM loop visits, as `DDIMScheduler.set_timesteps(n)` then `.timesteps`.

    Three spacings (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Table 2), for T = num_train_timesteps and n = num_inference_steps:

    - "leading" (DDIM's original choice, Stable Diffusion's config with steps_offset=1): the
      multiples i * floor(T / n) for i = 0 .. n-1 (an INTEGER step ratio; diffusers still
      passes them through .round(), which changes no integer), each plus steps_offset. The
      largest is (n-1) * floor(T / n) + steps_offset: for T = 1000, n = 10 that is 901 (with
      SD's offset 1), so sampling never starts from the noisiest step 999.
    - "trailing": with the FLOAT ratio r = T / n, the values T, T - r, T - 2r, ... (all > 0),
      each rounded to the nearest integer, minus 1: always starts at T-1.
    - "linspace": n values evenly spaced over [0, T-1], both ends included, rounded.

    Every spacing is returned in descending order. steps_offset is added only for "leading"
    (that is what DDIMScheduler does). Round to the nearest integer before the cast to int64
    (diffusers: numpy's round-half-to-even on float64 values). Where the exact value is halfway
    between two integers ("trailing": T - i * T / n; "linspace": i * (T - 1) / (n - 1)),
    diffusers' float arithmetic lands a hair to one side of the half before rounding, so its
    choice there is float luck: the check accepts either neighbour at those ties and compares
    exactly everywhere else. diffusers' float arange for "trailing" keeps one value too many
    for a few (T, n) (the lab shows it); the check draws no such (T, n).

    Args:
        num_inference_steps: n, 1 <= n <= T.
        num_train_timesteps: T.
        timestep_spacing: "leading", "trailing" or "linspace".
        steps_offset: integer added to every "leading" timestep.

    Returns:
        (n,) int64 tensor, descending.

    Raises:
        ValueError: for any other spacing name, or n > T.
    """
    # BEGIN SOLUTION
    # TODO: the three timestep_spacing branches of DDIMScheduler.set_timesteps
    # TODO: (diffusers/schedulers/scheduling_ddim.py; Lin et al. 2023, Table 2), int64, descending.
    # TODO: ValueError for an unknown spacing or n > T.
    # HINT 1: Open diffusers/schedulers/scheduling_ddim.py, DDIMScheduler.set_timesteps: one branch per
    # HINT 1: config.timestep_spacing; note which use // and which use /, where the order is reversed,
    # HINT 1: and where steps_offset is added.
    # HINT 2: Build the values with numpy in float64 (an arange or a linspace), round them, reverse them
    # HINT 2: where needed so the largest comes first, add the offset for "leading" only, cast to int64.
    # HINT 3: "leading": np.arange(n) * (T // n), reversed, + steps_offset; "trailing": np.round(np.arange(T, 0, -T / n)) - 1;
    # HINT 3: "linspace": np.linspace(0, T - 1, n).round()[::-1]; then torch.from_numpy(... .astype(np.int64)).
    T, n = num_train_timesteps, num_inference_steps
    if n > T:
        raise ValueError(f"num_inference_steps={n} cannot be larger than num_train_timesteps={T}")
    if timestep_spacing == "leading":
        step_ratio = T // n  # an int: the gap between timesteps
        timesteps = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)  # (n,)
        timesteps += steps_offset
    elif timestep_spacing == "trailing":
        step_ratio = T / n  # a float: the last timestep is exactly T - 1
        timesteps = np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1  # (n,)
    elif timestep_spacing == "linspace":
        timesteps = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)  # (n,)
    else:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}: expected 'leading', 'trailing' or 'linspace'")
    return torch.from_numpy(timesteps)  # (n,) int64, descending
    # END SOLUTION


def ddim_step(model_output, timestep, prev_timestep, sample, alphas_cumprod, final_alpha_cumprod,
              eta=0.0, variance_noise=None, prediction_type="epsilon"):
    """One DDIM update x_t -> x_{t'}, as `DDIMScheduler.step(...).prev_sample`.

    Song et al. 2021 (DDIM): eq. 12 (three terms: "predicted x_0", "direction pointing to x_t",
    "random noise") with the noise's standard deviation sigma_t(eta) from eq. 16, where the
    paper's alpha_t is our abar_t (a = abar_t, a' = abar_{t'}, t' = prev_timestep). In
    diffusers, read DDIMScheduler.step (diffusers/schedulers/scheduling_ddim.py): step 2
    (`alpha_prod_t`, `alpha_prod_t_prev`), step 3 (`pred_original_sample`, `pred_epsilon`),
    step 5 (`_get_variance` and `std_dev_t`), steps 6-7 (`pred_sample_direction`,
    `prev_sample`) and the `eta > 0` block after them. Conventions to keep:

    - a' at the last step: there is no previous timestep (t' < 0), and a' is
      `final_alpha_cumprod` (1.0 when the config says set_alpha_to_one=True, else abar_0;
      Stable Diffusion uses abar_0), never alphas_cumprod[t'] (a negative index wraps around).
    - eta in [0, 1] scales eq. 16's standard deviation: eta = 0 is deterministic DDIM (no noise
      term), eta = 1 gives DDPM's posterior variance.
    - the noise term is added only when eta > 0: sigma_t(eta) times `variance_noise`, a
      standard Gaussian z of sample's shape (drawn with torch.randn_like when None).
    - prediction_type "v_prediction" (Salimans & Ho 2022): the model predicts
      v = a^(1/2) eps - (1 - a)^(1/2) x_0; with x_t = a^(1/2) x_0 + (1 - a)^(1/2) eps, solve
      for x0_hat and eps_hat (step 3 of DDIMScheduler.step), and eq. 12 uses eps_hat as the noise.
    - no clipping or thresholding (SD's config has clip_sample=False).
    - the arithmetic runs in the dtype of alphas_cumprod and sample (float32 here); the result
      has sample's shape and dtype.

    Args:
        model_output: (B, ...) eps_theta(x_t, t), or v for "v_prediction".
        timestep: int t in 0 .. T-1.
        prev_timestep: int t' < t; negative at the last step.
        sample: (B, ...) x_t.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}, float32.
        final_alpha_cumprod: 0-dim tensor (or float), the abar used when prev_timestep < 0.
        eta: float >= 0, the weight of the noise (eq. 16).
        variance_noise: (B, ...) z, the standard Gaussian noise used when eta > 0
            (drawn with torch.randn_like(sample) when None).
        prediction_type: "epsilon" or "v_prediction".

    Returns:
        (B, ...) x_{t'}, same shape and dtype as sample.
    """
    # BEGIN SOLUTION
    # TODO: DDIM eqs. 12 and 16 (Song et al. 2021), as DDIMScheduler.step (diffusers/schedulers/
    # TODO: scheduling_ddim.py, steps 2 to 7, with prev_timestep given and no clipping).
    # TODO: ValueError for an unknown prediction_type; alphas_cumprod is not modified.
    # HINT 1: Read DDIMScheduler.step in diffusers/schedulers/scheduling_ddim.py: its numbered steps 2
    # HINT 1: (alphas at t and t'), 3 (the prediction types), 5 (_get_variance) and 6-7 (the update).
    # HINT 1: Note what it does when prev_timestep is negative.
    # HINT 2: Look up abar at t and at t' (final_alpha_cumprod when t' < 0: a negative index wraps
    # HINT 2: around); get x0_hat and eps_hat from the prediction type; compute eq. 16's standard
    # HINT 2: deviation; combine the three terms of eq. 12 (the noise term only when eta > 0).
    # HINT 3: a = alphas_cumprod[timestep]; a' = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod;
    # HINT 3: v: x0_hat = sqrt(a) x_t - sqrt(1 - a) v, eps_hat = sqrt(a) v + sqrt(1 - a) x_t;
    # HINT 3: sigma = eta * sqrt((1 - a') / (1 - a) * (1 - a / a'));
    # HINT 3: x_prev = sqrt(a') * x0_hat + sqrt(1 - a' - sigma**2) * eps_hat + sigma * variance_noise.
    a_t = alphas_cumprod[timestep]  # abar_t, 0-dim
    a_prev = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod  # abar_{t'}
    a_prev = torch.as_tensor(a_prev, dtype=alphas_cumprod.dtype)
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        x0_hat = (sample - b_t**0.5 * model_output) / a_t**0.5  # (B, ...)
        eps_hat = model_output
    elif prediction_type == "v_prediction":
        x0_hat = a_t**0.5 * sample - b_t**0.5 * model_output
        eps_hat = a_t**0.5 * model_output + b_t**0.5 * sample
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)  # sigma_t(1)^2, eq. 16
    std = eta * variance**0.5  # sigma_t(eta)
    direction = (1 - a_prev - std**2) ** 0.5 * eps_hat  # "direction pointing to x_t"
    prev_sample = a_prev**0.5 * x0_hat + direction
    if eta > 0:
        if variance_noise is None:
            variance_noise = torch.randn_like(model_output)
        prev_sample = prev_sample + std * variance_noise
    return prev_sample  # (B, ...)
    # END SOLUTION


def sigmas_from_alphas_cumprod(alphas_cumprod):
    """The k-diffusion noise levels sigma_t of the same schedule, indexed like abar.

    Karras et al. 2022 (EDM), Sec. 2 and Table 1: a variance-preserving x_t =
    abar_t^(1/2) x_0 + (1 - abar_t)^(1/2) eps, divided by abar_t^(1/2), is x_0 + sigma_t eps,
    which defines sigma_t. So the same schedule is a list of noise levels sigma_t that grow
    with t (sigma_t is a standard deviation, not a variance). `EulerDiscreteScheduler.__init__`
    computes exactly this, then stores it FLIPPED (largest sigma first, the sampling order) with
    a 0 appended for the end of sampling. set_timesteps later interpolates these values at the
    chosen timesteps. This function returns them in the order of t, before any flip, append or
    interpolation.

    Args:
        alphas_cumprod: (T,) abar_0 .. abar_{T-1} (any shape works: the formula is elementwise).

    Returns:
        Same shape, dtype and device: sigma_0 (small) .. sigma_{T-1} (large).
    """
    # BEGIN SOLUTION
    # TODO: EDM's sigma from abar (Karras et al. 2022, Sec. 2), as EulerDiscreteScheduler.__init__
    # TODO: computes it before the flip (diffusers/schedulers/scheduling_euler_discrete.py). Keep dtype and order.
    # HINT 1: EulerDiscreteScheduler.__init__ in diffusers/schedulers/scheduling_euler_discrete.py: the
    # HINT 1: line that builds `sigmas` from self.alphas_cumprod, just before the flip and the appended 0.
    # HINT 2: Divide the noise variance by the signal variance, elementwise, and take the square root;
    # HINT 2: no flip, nothing appended, same dtype as the input.
    # HINT 3: sigma = ((1 - abar) / abar) ** 0.5
    return torch.sqrt((1 - alphas_cumprod) / alphas_cumprod)  # (T,) sigma_t, a standard deviation
    # END SOLUTION



def karras_sigmas(sigma_min, sigma_max, num_inference_steps, rho=7.0):
    """The n noise levels of Karras et al. 2022 (EDM), eq. 5, as `EulerDiscreteScheduler._convert_to_karras`.

    The n levels run from sigma_max down to sigma_min, both included (for n = 1, sigma_max
    alone), spaced as EDM eq. 5 spaces them: read the equation and `_convert_to_karras`.

    rho = 7 (the paper's choice, which diffusers hard-codes) crowds the steps at LOW noise;
    rho = 1 is evenly spaced sigmas; rho -> infinity tends to evenly spaced log-sigmas.
    diffusers takes sigma_min and sigma_max from the config when set, else from the ends of the
    interpolated schedule, computes in float64 (numpy), and `set_timesteps` then appends the
    final 0 and casts to float32. This function returns the n values only, largest first,
    nothing appended.

    Args:
        sigma_min: a number > 0, the last (smallest) noise level.
        sigma_max: a number > sigma_min, the first (largest) noise level.
        num_inference_steps: an integer n >= 1.
        rho: a number > 0.

    Returns:
        (n,) float tensor (float32 or float64: the check compares values), descending.
    """
    # BEGIN SOLUTION
    # TODO: EDM eq. 5 (Karras et al. 2022), as EulerDiscreteScheduler._convert_to_karras in
    # TODO: diffusers/schedulers/scheduling_euler_discrete.py (with rho as an argument instead of 7).
    # HINT 1: Open diffusers/schedulers/scheduling_euler_discrete.py and read _convert_to_karras (the
    # HINT 1: lines after "rho = 7.0"); set_timesteps calls it when use_karras_sigmas=True.
    # HINT 2: Make n evenly spaced fractions from 0 to 1; move both ends of the range to the power 1/rho;
    # HINT 2: interpolate between them, from the max end to the min end; raise the result back to the power rho.
    # HINT 3: ramp = np.linspace(0, 1, n); lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho);
    # HINT 3: sigmas = (hi + ramp * (lo - hi)) ** rho, then torch.from_numpy.
    inv_rho = 1.0 / float(rho)
    fractions = np.linspace(0.0, 1.0, int(num_inference_steps))  # (n,) float64, 0 .. 1
    top, bottom = float(sigma_max) ** inv_rho, float(sigma_min) ** inv_rho  # the ends in sigma^(1/rho)
    levels = top + fractions * (bottom - top)  # (n,) evenly spaced in sigma^(1/rho), descending
    return torch.from_numpy(levels**rho)  # (n,) float64, sigma_max .. sigma_min
    # END SOLUTION


def euler_step(model_output, sigma, sigma_next, sample, prediction_type="epsilon"):
    """One Euler step of the probability-flow ODE in sigma, as `EulerDiscreteScheduler.step(...).prev_sample`
    with s_churn = 0 (no noise added: the deterministic sampler).

    Karras et al. 2022 (EDM), Algorithm 1 without the second-order correction. The
    sample lives in the k-diffusion parametrisation x = x_0 + sigma * eps (NOT divided by
    sqrt(1 + sigma^2): that scaling is `scale_model_input`'s, applied to the UNet's INPUT only).
    The step has three parts: the denoised estimate D (`pred_original_sample`; for
    "v_prediction" a c_skip/c_out mix of x and v, which you read in `step`), the ODE's
    derivative dx/dsigma written with D (EDM eq. 1 with eq. 3's score and sigma(t) = t, as in
    Algorithm 1, line 4), and one Euler step from sigma to sigma_next along it.

    The last step has sigma_next = 0 and lands on D itself. diffusers casts the sample to
    float32 for this arithmetic (an upcast from float16, a downcast from float64) and casts the result to model_output's dtype.

    Args:
        model_output: (B, ...) eps_theta, or v for "v_prediction", from the UNet at this step.
        sigma: a number > 0, this step's noise level (`scheduler.sigmas[i]`).
        sigma_next: a number >= 0, the next one (`scheduler.sigmas[i + 1]`; 0 at the end).
        sample: (B, ...) x at noise level sigma (unscaled).
        prediction_type: "epsilon" or "v_prediction".

    Returns:
        (B, ...) x at sigma_next, same shape as sample, model_output's dtype.
    """
    # BEGIN SOLUTION
    # TODO: the s_churn = 0 path of EulerDiscreteScheduler.step (diffusers/schedulers/
    # TODO: scheduling_euler_discrete.py): steps 1 and 2 there; EDM eqs. 1 and 3, Algorithm 1.
    # TODO: ValueError for any other prediction_type.
    # HINT 1: In EulerDiscreteScheduler.step, with s_churn = 0 gamma is 0, so sigma_hat is sigma; read
    # HINT 1: "1. compute predicted original sample" and "2. Convert to an ODE derivative".
    # HINT 2: Estimate the clean sample from the model output (two formulas, one per prediction type);
    # HINT 2: the derivative is the sample minus that estimate, per unit of sigma; move the sample
    # HINT 2: along it by the change of sigma (negative: sigma falls). Compute in float32, return model_output's dtype.
    # HINT 3: epsilon: x0 = x - sigma * eps; v: x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1);
    # HINT 3: d = (x - x0) / sigma; x_next = x + d * (sigma_next - sigma).
    x = sample.to(torch.float32)  # diffusers' upcast
    s, s_next = float(sigma), float(sigma_next)
    if prediction_type == "epsilon":
        denoised = x - s * model_output  # D(x; sigma), (B, ...)
    elif prediction_type == "v_prediction":
        c_skip = 1.0 / (s * s + 1.0)
        c_out = -s / (s * s + 1.0) ** 0.5
        denoised = c_skip * x + c_out * model_output
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
    slope = (x - denoised) / s  # dx/dsigma, EDM eqs. 1 and 3 with sigma(t) = t
    moved = x + (s_next - s) * slope  # one Euler step from sigma to sigma_next
    return moved.to(model_output.dtype)  # (B, ...)
    # END SOLUTION
