"""Lab 02: one reverse (denoising) step of DDPM, the way diffusers' `DDPMScheduler.step` does it.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", DDPM; diffusers' names
on the right):

    abar_t       alphas_cumprod[t], the signal variance left in x_t   (`alpha_prod_t`)
    t' = prev_t  the timestep the step goes to: t - 1 when sampling with all T steps,
                 t - T/n after `set_timesteps(n)`; -1 after the last step
    abar_t'      alphas_cumprod[prev_t], or 1 when prev_t < 0        (`alpha_prod_t_prev`)
    alpha_t      abar_t / abar_t', the signal kept by THIS step       (`current_alpha_t`)
    beta_t       1 - alpha_t, the noise variance added by this step   (`current_beta_t`)
    x_t          the noisy sample,  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)
    eps, x_0, v  what a network may predict: the noise, the clean sample, or the
                 "velocity" v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)

Every symbol above is a per-step quantity: with a strided schedule (50 of 1000 steps) the
step goes from t to t' = t - 20 and alpha_t, beta_t are those of the 20-step jump, computed
from alphas_cumprod, never from the one-step betas.

One step (DDPM eq. 6-7, "fixed_small" variance):

    x_0_hat   = what the model's output says x_0 is                          (eq. 15 for eps)
    mu        = sqrt(abar_t') beta_t / (1 - abar_t) * x_0_hat
              + sqrt(alpha_t) (1 - abar_t') / (1 - abar_t) * x_t                 (eq. 7)
    var       = beta_tilde = (1 - abar_t') / (1 - abar_t) * beta_t               (eq. 7)
    x_t'      = mu + sqrt(var) * z,   z ~ N(0, I),   no noise at t = 0

The functions below are, in order: x_0 from any of the three predictions, the v target,
and the whole step. Each equals the matching piece of `diffusers.DDPMScheduler` on the same
inputs (with clip_sample=False, as Stable Diffusion's config has it).
"""

import torch

__all__ = ["pred_original_sample", "get_velocity", "ddpm_step"]


def pred_original_sample(model_output, timesteps, sample, alphas_cumprod, prediction_type="epsilon"):
    """x_0_hat: the clean sample the model's output implies, as in `DDPMScheduler.step`.

    From x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4), solved for x_0:

    - "epsilon" (DDPM eq. 15; SD 1.x, SD 2.x base):
          x_0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t)
    - "sample" (the network predicts x_0 directly):
          x_0_hat = model_output
    - "v_prediction" (Salimans & Ho 2022, "Progressive Distillation", Sec. 4 and App. D;
      SD 2.x 768-v): with alpha = sqrt(abar_t) = cos(phi), sigma = sqrt(1 - abar_t) = sin(phi)
      and v = alpha eps - sigma x_0:
          x_0_hat = alpha * x_t - sigma * v_hat

    Args:
        model_output: (B, ...) the network's output (eps_hat, x_0_hat or v_hat).
        timesteps: (B,) long, one timestep in 0 .. T-1 per sample.
        sample: (B, ...) x_t, same shape as model_output; any rank after the batch one.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1} (float32, possibly on another device).
        prediction_type: "epsilon", "sample" or "v_prediction".

    Returns:
        (B, ...) x_0_hat, same shape, dtype and device as sample.

    Raises:
        ValueError: for any other prediction_type.
    """
    # BEGIN SOLUTION
    # HINT: abar_t = alphas_cumprod (cast to sample's dtype/device) [timesteps], reshaped to (B, 1, ..., 1) as in Lab 01.
    # HINT: alpha = sqrt(abar_t) multiplies the signal, sigma = sqrt(1 - abar_t) the noise; solve x_t = alpha x_0 + sigma eps for x_0.
    # HINT: "v_prediction": x_0 = alpha * x_t - sigma * v; raise ValueError for an unknown prediction_type.
    if prediction_type not in ("epsilon", "sample", "v_prediction"):
        raise ValueError(f"unknown prediction_type {prediction_type!r}: expected 'epsilon', 'sample' "
                         f"or 'v_prediction'")
    abar = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)  # (T,)
    abar_t = abar[timesteps.to(sample.device)].reshape(-1, *[1] * (sample.ndim - 1))  # (B, 1, ..., 1)
    if prediction_type == "epsilon":
        return (sample - (1 - abar_t) ** 0.5 * model_output) / abar_t**0.5  # (B, ...)
    if prediction_type == "sample":
        return model_output
    return abar_t**0.5 * sample - (1 - abar_t) ** 0.5 * model_output  # (B, ...)
    # END SOLUTION


def get_velocity(sample, noise, timesteps, alphas_cumprod):
    """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, as
    `DDPMScheduler.get_velocity`.

    Salimans & Ho 2022 ("Progressive Distillation for Fast Sampling of Diffusion Models",
    Sec. 4): with alpha = cos(phi) = sqrt(abar_t) and sigma = sin(phi) = sqrt(1 - abar_t),
    x_t = cos(phi) x_0 + sin(phi) eps and v = d x_t / d phi = cos(phi) eps - sin(phi) x_0.
    A v-model is trained to regress this target (instead of eps).

    Args:
        sample: (B, ...) the CLEAN sample x_0 (diffusers' name; not x_t).
        noise: (B, ...) eps, the noise that made x_t.
        timesteps: (B,) long, one timestep in 0 .. T-1 per sample.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}.

    Returns:
        (B, ...) v, same shape, dtype and device as sample.
    """
    # BEGIN SOLUTION
    # HINT: The same (B, 1, ..., 1) abar_t as above; v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample.
    abar = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)  # (T,)
    abar_t = abar[timesteps.to(sample.device)].reshape(-1, *[1] * (sample.ndim - 1))  # (B, 1, ..., 1)
    return abar_t**0.5 * noise - (1 - abar_t) ** 0.5 * sample  # (B, ...)
    # END SOLUTION


def ddpm_step(model_output, timestep, prev_timestep, sample, alphas_cumprod, variance_noise,
              prediction_type="epsilon"):
    """One DDPM reverse step x_t -> x_t', as `DDPMScheduler(clip_sample=False).step`.

    Ho et al. 2020 (DDPM), eq. 6-7: the forward posterior q(x_t' | x_t, x_0) is Gaussian with

        mu(x_t, x_0) = sqrt(abar_t') beta_t / (1 - abar_t) * x_0
                       + sqrt(alpha_t) (1 - abar_t') / (1 - abar_t) * x_t
        beta_tilde   = (1 - abar_t') / (1 - abar_t) * beta_t                  (a VARIANCE)

    where abar_t' = alphas_cumprod[prev_timestep] (1 when prev_timestep < 0, like diffusers'
    `self.one`), alpha_t = abar_t / abar_t' and beta_t = 1 - alpha_t are those of the jump from
    t to t' (prev_timestep), not of a single training step. The sampler replaces x_0 by the
    model's x_0_hat (`pred_original_sample`) and draws

        x_t' = mu + sqrt(beta_tilde) * variance_noise        for t > 0
        x_t' = mu                                            for t = 0 (no noise at the end)

    ("fixed_small", diffusers' default variance_type; DDPM's sigma_t^2 = beta_tilde). No
    clipping of x_0_hat: this is diffusers with clip_sample=False, Stable Diffusion's setting
    (latents are not confined to [-1, 1]).

    Args:
        model_output: (B, ...) the network's output at timestep t (eps_hat, x_0_hat or v_hat).
        timestep: int or 0-d tensor, t (the same for the whole batch, like diffusers' step).
        prev_timestep: int or 0-d tensor, t' (t - T/n after set_timesteps(n)); -1 after the
            last step.
        sample: (B, ...) x_t, any rank after the batch one.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}.
        variance_noise: (B, ...) z ~ N(0, I), same shape as sample; ignored at t = 0.
        prediction_type: "epsilon", "sample" or "v_prediction" (passed to pred_original_sample).

    Returns:
        (B, ...) x_t', same shape, dtype and device as sample.
    """
    # BEGIN SOLUTION
    # HINT: abar_t = alphas_cumprod[t]; abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else 1 (never alphas_cumprod[-1]).
    # HINT: alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t belong to the jump t -> prev_t: use prev_timestep, not t - 1.
    # HINT: x0 = pred_original_sample(model_output, t as a (B,) tensor, sample, alphas_cumprod, prediction_type).
    # HINT: mean = sqrt(abar_prev) * beta_t / (1 - abar_t) * x0 + sqrt(alpha_t) * (1 - abar_prev) / (1 - abar_t) * x_t
    # HINT: variance = (1 - abar_prev) / (1 - abar_t) * beta_t; add sqrt(variance) * variance_noise only when t > 0.
    t, prev_t = int(timestep), int(prev_timestep)
    abar = alphas_cumprod.to(sample.device)  # (T,) float32, like diffusers' scalars
    abar_t = abar[t]  # 0-d
    abar_prev = abar[prev_t] if prev_t >= 0 else torch.ones((), dtype=abar.dtype, device=abar.device)
    alpha_t = abar_t / abar_prev  # 0-d, this jump's alpha
    beta_t = 1 - alpha_t

    timesteps = torch.full((sample.shape[0],), t, dtype=torch.long, device=sample.device)  # (B,)
    x0 = pred_original_sample(model_output, timesteps, sample, alphas_cumprod, prediction_type)  # (B, ...)

    x0_coeff = abar_prev**0.5 * beta_t / (1 - abar_t)  # DDPM eq. 7
    xt_coeff = alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)
    mean = x0_coeff * x0 + xt_coeff * sample  # (B, ...)
    if t > 0:
        variance = ((1 - abar_prev) / (1 - abar_t) * beta_t).clamp(min=1e-20)  # beta_tilde, as diffusers
        mean = mean + variance**0.5 * variance_noise
    return mean
    # END SOLUTION
