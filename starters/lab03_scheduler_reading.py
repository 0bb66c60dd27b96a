# Your exercise file for Lab 03: Scheduler Reading.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab03")` in notebooks/03_scheduler_reading.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab03')"
# Stuck? hint("lab03", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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
    # TODO: the three timestep_spacing branches of DDIMScheduler.set_timesteps
    # TODO: (diffusers/schedulers/scheduling_ddim.py; Lin et al. 2023, Table 2), int64, descending.
    # TODO: ValueError for an unknown spacing or n > T.
    # Stuck? hint("lab03", "ddim_timesteps") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab03): ddim_timesteps")


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
    # TODO: DDIM eqs. 12 and 16 (Song et al. 2021), as DDIMScheduler.step (diffusers/schedulers/
    # TODO: scheduling_ddim.py, steps 2 to 7, with prev_timestep given and no clipping).
    # TODO: ValueError for an unknown prediction_type; alphas_cumprod is not modified.
    # Stuck? hint("lab03", "ddim_step") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab03): ddim_step")


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
    # TODO: EDM's sigma from abar (Karras et al. 2022, Sec. 2), as EulerDiscreteScheduler.__init__
    # TODO: computes it before the flip (diffusers/schedulers/scheduling_euler_discrete.py). Keep dtype and order.
    # Stuck? hint("lab03", "sigmas_from_alphas_cumprod") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab03): sigmas_from_alphas_cumprod")



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
    # TODO: EDM eq. 5 (Karras et al. 2022), as EulerDiscreteScheduler._convert_to_karras in
    # TODO: diffusers/schedulers/scheduling_euler_discrete.py (with rho as an argument instead of 7).
    # Stuck? hint("lab03", "karras_sigmas") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab03): karras_sigmas")


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
    # TODO: the s_churn = 0 path of EulerDiscreteScheduler.step (diffusers/schedulers/
    # TODO: scheduling_euler_discrete.py): steps 1 and 2 there; EDM eqs. 1 and 3, Algorithm 1.
    # TODO: ValueError for any other prediction_type.
    # Stuck? hint("lab03", "euler_step") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab03): euler_step")
