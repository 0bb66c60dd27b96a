# Your exercise file for Lab 03: Scheduler Reading.
#
# Generated from helpers/solutions/lab03_scheduler_reading.py by `python -m helpers.make_starters`.
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab03")` in notebooks/03_scheduler_reading.ipynb: edits are picked up without
# restarting the kernel. Until a function passes its check, the notebook uses the reference.

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

The k-diffusion / EDM view (Karras et al. 2022) writes the same forward process as
x_t / sqrt(abar_t) = x_0 + sigma_t * eps with sigma_t = sqrt((1 - abar_t) / abar_t): a noise
level on an unscaled ("variance exploding") sample. Euler, Euler ancestral, DPM++ and UniPC in
diffusers think in these sigmas.
"""

import numpy as np
import torch

__all__ = ["ddim_timesteps", "ddim_step", "sigmas_from_alphas_cumprod"]


def ddim_timesteps(num_inference_steps, num_train_timesteps=1000, timestep_spacing="leading", steps_offset=0):
    """The n timesteps a DDIM loop visits, as `DDIMScheduler.set_timesteps(n)` then `.timesteps`.

    Three spacings (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Table 2), for T = num_train_timesteps and n = num_inference_steps:

    - "leading" (DDIM's original choice, Stable Diffusion's config with steps_offset=1):
          step_ratio = T // n   (integer division)
          timesteps  = [0, 1, ..., n-1] * step_ratio + steps_offset, in descending order.
      The largest timestep is (n-1) * (T // n) + steps_offset: for T = 1000, n = 10 that is
      901 (with SD's offset 1), so sampling never starts from the noisiest step 999.
    - "trailing": step_ratio = T / n (a float), timesteps = round(T, T - ratio, ..., > 0) - 1,
      i.e. np.round(np.arange(T, 0, -step_ratio)) - 1: always starts at T-1.
    - "linspace": n values evenly spaced from 0 to T-1, rounded, descending:
      np.linspace(0, T - 1, n).round()[::-1].

    steps_offset is added only for "leading" (that is what DDIMScheduler does). Rounding is
    numpy's round-half-to-even, done in float64, then cast to int64.

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
    # TODO: Build the timesteps with numpy in float64 (np.arange / np.linspace, then .round()), like diffusers, and cast to int64 at the end.
    # TODO: "leading": np.arange(n) * (T // n) + steps_offset; "trailing": np.round(np.arange(T, 0, -T / n)) - 1; "linspace": np.linspace(0, T - 1, n).round().
    # TODO: Return them in DESCENDING order (sampling goes from noise to image) as torch.int64; raise ValueError for an unknown spacing or n > T.
    raise NotImplementedError("TODO(lab03): ddim_timesteps")


def ddim_step(model_output, timestep, prev_timestep, sample, alphas_cumprod, final_alpha_cumprod,
              eta=0.0, variance_noise=None, prediction_type="epsilon"):
    """One DDIM update x_t -> x_{t'}, as `DDIMScheduler.step(...).prev_sample`.

    Song et al. 2021 (DDIM), eq. 12, with a = abar_t and a' = abar_{t'} (t' = prev_timestep):

        x0_hat = (x_t - sqrt(1 - a) * eps) / sqrt(a)                       "predicted x_0"
        x_{t'} = sqrt(a') * x0_hat
               + sqrt(1 - a' - sigma_t^2) * eps                             "direction pointing to x_t"
               + sigma_t * z,      z ~ N(0, I)  (`variance_noise`)          "random noise"

    and eq. 16, the noise level, with eta in [0, 1]:

        sigma_t(eta) = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')

    eta = 0 is deterministic DDIM; eta = 1 gives DDPM's posterior variance. At the last step
    there is no previous timestep (t' < 0): a' is `final_alpha_cumprod` (1.0 when the config
    says set_alpha_to_one=True, else abar_0; Stable Diffusion uses abar_0).

    prediction_type "v_prediction" (Salimans & Ho 2022): the model predicts
    v = sqrt(a) * eps - sqrt(1 - a) * x_0, so
        x0_hat = sqrt(a) * x_t - sqrt(1 - a) * v,    eps_hat = sqrt(a) * v + sqrt(1 - a) * x_t,
    and eq. 12 uses eps_hat as the noise. (No clipping or thresholding: SD's config has
    clip_sample=False.)

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
    # TODO: a = alphas_cumprod[timestep]; a' = alphas_cumprod[prev_timestep] if prev_timestep >= 0 else final_alpha_cumprod (a negative index would wrap around!).
    # TODO: x0_hat and eps_hat from the prediction type; sigma = eta * sqrt((1 - a') / (1 - a) * (1 - a / a')) (eq. 16: a standard deviation, not a variance).
    # TODO: x_prev = sqrt(a') * x0_hat + sqrt(1 - a' - sigma**2) * eps_hat, plus sigma * variance_noise when eta > 0.
    raise NotImplementedError("TODO(lab03): ddim_step")


def sigmas_from_alphas_cumprod(alphas_cumprod):
    """The k-diffusion noise levels sigma_t = sqrt((1 - abar_t) / abar_t), indexed like abar.

    Karras et al. 2022 (EDM), Sec. 2 and Table 1: a variance-preserving x_t =
    sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, divided by sqrt(abar_t), is x_0 + sigma_t eps. So
    the same schedule is a list of noise levels sigma_t that grow with t (sigma_t^2 = 1 / SNR_t).
    `EulerDiscreteScheduler.__init__` computes exactly this, then stores it FLIPPED (largest
    sigma first, the sampling order) with a 0 appended for the end of sampling:
    `scheduler.sigmas == cat([sigmas.flip(0), 0])`. set_timesteps later interpolates these
    values at the chosen timesteps. This function returns them in the order of t, before any
    flip, append or interpolation.

    Args:
        alphas_cumprod: (T,) abar_0 .. abar_{T-1} (any shape works: the formula is elementwise).

    Returns:
        Same shape, dtype and device: sigma_0 (small) .. sigma_{T-1} (large).
    """
    # TODO: A standard deviation, not a variance: take the square root of (1 - abar) / abar. Keep the t order (no flip, no appended 0).
    raise NotImplementedError("TODO(lab03): sigmas_from_alphas_cumprod")
