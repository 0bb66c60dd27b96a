"""Lab 02: one reverse (denoising) step of DDPM, the way diffusers' `DDPMScheduler.step` does it.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", DDPM; diffusers' names
on the right):

    abar_t       alphas_cumprod[t], the signal variance left in x_t   (`alpha_prod_t`)
    t' = prev_t  the timestep the step goes to: t - 1 when sampling with all T steps,
                 the next (smaller) entry of `set_timesteps(n)`'s timesteps (t - T/n when n divides T,
                 with "leading" spacing); -1 after the last step
    abar_t'      alphas_cumprod[prev_t], or 1 when prev_t < 0        (`alpha_prod_t_prev`)
    alpha_t      abar_t / abar_t', the signal kept by THIS step       (`current_alpha_t`)
    beta_t       1 - alpha_t, the noise variance added by this step   (`current_beta_t`)
    phi_t        the angle with cos(phi_t) = sqrt(abar_t) and sin(phi_t) = sqrt(1 - abar_t)
                 (Salimans & Ho 2022): the signal and noise coefficients of x_t
    x_t          the noisy sample,  x_t = cos(phi_t) x_0 + sin(phi_t) eps     (DDPM eq. 4)
    eps, x_0, v  what a network may predict: the noise, the clean sample, or the
                 "velocity" v, the derivative of x_t along phi_t (Salimans & Ho 2022)

alpha_t keeps DDPM's meaning (one step's kept signal); the coefficients of x_t are written
cos(phi_t), sin(phi_t), never "alpha" and "sigma". Every symbol above is a per-step
quantity: with a strided schedule (50 of 1000 steps) the step goes from t to t' = t - 20
and alpha_t, beta_t are those of the 20-step jump, computed from alphas_cumprod, never from
the one-step betas.

One step (DDPM eq. 6-7, "fixed_small" variance):

    x_0_hat   = what the model's output says x_0 is                          (eq. 15 for eps)
    mu        = the posterior mean of eq. 7, a weighted sum of x_0_hat and x_t
    var       = beta_tilde_t, the posterior variance                           (eq. 7)
    x_t'      = mu + sqrt(var) * z,   z ~ N(0, I),   no noise at t = 0

The functions below are, in order: x_0 from any of the three predictions, the v target,
the whole step, and the variance of a step for every `variance_type` diffusers offers. Each
equals the matching piece of `diffusers.DDPMScheduler` on the same inputs (with
clip_sample=False, as Stable Diffusion's config has it).

Return types, as in every lab: "a tensor" means a torch.Tensor of the stated shape and
dtype; "a number" may be a Python number, a NumPy scalar or a one-element tensor.
"""

import torch

__all__ = ["pred_original_sample", "get_velocity", "ddpm_step", "ddpm_variance"]

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def pred_original_sample(model_output, timesteps, sample, alphas_cumprod, prediction_type="epsilon"):
    """x_0_hat: the clean sample the model's output implies, as in `DDPMScheduler.step`.

    Solve x_t = cos(phi_t) x_0 + sin(phi_t) eps (DDPM eq. 4) for x_0, given the network's
    output in place of the unknown it predicts:

    - "epsilon" (DDPM eq. 15; SD 1.x, SD 2.x base): the output is eps_hat; x_0_hat follows
      from eq. 4 with eps = eps_hat.
    - "sample" (the network predicts x_0 directly): x_0_hat is the output.
    - "v_prediction" (Salimans & Ho 2022, "Progressive Distillation", Sec. 4 and App. D;
      SD 2.x 768-v): the output is v_hat (v as in `get_velocity`); (x_t, v) is (x_0, eps)
      rotated by the angle phi_t, so x_0_hat is a rotation of (x_t, v_hat): work out which
      (or read it in `DDPMScheduler.step`).

    Args:
        model_output: (B, ...) the network's output (eps_hat, x_0_hat or v_hat).
        timesteps: (B,) long, one timestep in 0 .. T-1 per sample, on the CPU or on the
            sample's device (where set_timesteps(device=...) puts a sampler's).
        sample: (B, ...) x_t, same shape as model_output; any rank after the batch one.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1} (float32, possibly on another device).
        prediction_type: "epsilon", "sample" or "v_prediction".

    Returns:
        a tensor (B, ...): x_0_hat, same shape, dtype and device as sample (abar_t is taken in
        the sample's dtype and on its device, one value per sample, broadcast over the rest).

    Raises:
        ValueError: for any other prediction_type.
    """
    # BEGIN SOLUTION
    # TODO: x_0_hat for the three prediction types, as the "1. compute predicted original sample"
    # TODO: part of DDPMScheduler.step (diffusers/schedulers/scheduling_ddpm.py); DDPM eq. 4 and 15,
    # TODO: Salimans & Ho 2022 App. D for v. ValueError for an unknown type.
    # HINT 1: In diffusers/schedulers/scheduling_ddpm.py, DDPMScheduler.step, step "2. compute
    # HINT 1: predicted original sample from predicted noise also called ...": one branch per
    # HINT 1: config.prediction_type. Lab 01's add_noise shows how abar_t is indexed and broadcast.
    # HINT 2: Cast alphas_cumprod to the sample's dtype and device, pick abar_t per sample and give it
    # HINT 2: shape (B, 1, ..., 1). For eps: remove the noise part from x_t, divide by the signal
    # HINT 2: coefficient. For x_0: nothing to do. For v: combine x_t and v with cos and sin of phi_t.
    # HINT 3: cos = sqrt(abar_t), sin = sqrt(1 - abar_t); "epsilon": x_0 = (x_t - sin * eps) / cos;
    # HINT 3: "v_prediction": x_0 = cos * x_t - sin * v; raise ValueError for an unknown prediction_type.
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
    """The v-prediction target v, as `DDPMScheduler.get_velocity`.

    Salimans & Ho 2022 ("Progressive Distillation for Fast Sampling of Diffusion Models",
    Sec. 4): with x_t = cos(phi_t) x_0 + sin(phi_t) eps, where cos(phi_t) = sqrt(abar_t) and
    sin(phi_t) = sqrt(1 - abar_t), the velocity is the derivative of x_t along the angle,
    v = d x_t / d phi_t: differentiate. A v-model is trained to regress this target (instead
    of eps).

    Args:
        sample: (B, ...) the CLEAN sample x_0 (diffusers' name; not x_t).
        noise: (B, ...) eps, the noise that made x_t.
        timesteps: (B,) long, one timestep in 0 .. T-1 per sample, on the CPU or on the
            sample's device (where set_timesteps(device=...) puts a sampler's).
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}.

    Returns:
        a tensor (B, ...): v, same shape, dtype and device as sample.
    """
    # BEGIN SOLUTION
    # TODO: v for each sample at its own timestep (Salimans & Ho 2022, Sec. 4), as
    # TODO: DDPMScheduler.get_velocity (diffusers/schedulers/scheduling_ddpm.py).
    # HINT 1: DDPMScheduler.get_velocity, near the end of scheduling_ddpm.py: it prepares
    # HINT 1: the two coefficients exactly like add_noise, then combines noise and sample.
    # HINT 2: The same per-sample abar_t of shape (B, 1, ..., 1) as in pred_original_sample; then
    # HINT 2: the cos-weighted noise minus the sin-weighted clean sample.
    # HINT 3: v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample.
    abar = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)  # (T,)
    abar_t = abar[timesteps.to(sample.device)].reshape(-1, *[1] * (sample.ndim - 1))  # (B, 1, ..., 1)
    return abar_t**0.5 * noise - (1 - abar_t) ** 0.5 * sample  # (B, ...)
    # END SOLUTION


def ddpm_step(model_output, timestep, prev_timestep, sample, alphas_cumprod, variance_noise,
              prediction_type="epsilon"):
    """One DDPM reverse step x_t -> x_t', as `DDPMScheduler(clip_sample=False).step`.

    Ho et al. 2020 (DDPM), eq. 6-7: the forward posterior q(x_t' | x_t, x_0) is a Gaussian
    N(mu~(x_t, x_0), beta~_t I) whose mean is a weighted sum of x_0 and x_t and whose variance
    beta~_t is a fixed number; both weights and beta~_t are functions of abar_t, abar_t' and the
    jump's alpha_t, beta_t (read them in eq. 7, or in `DDPMScheduler.step`'s step 4).

    Conventions (diffusers'): abar_t' = alphas_cumprod[prev_timestep], and 1 when
    prev_timestep < 0 (diffusers' `self.one`); alpha_t = abar_t / abar_t' and
    beta_t = 1 - alpha_t belong to the jump from t to t' (prev_timestep), not to a single
    training step. The sampler replaces x_0 by the model's x_0_hat (your
    `pred_original_sample`, so x_0_hat uses abar_t in the sample's dtype) and samples the
    posterior with `variance_noise` as its standard normal draw, except at t = 0 (no noise at
    the end) ("fixed_small", diffusers' default variance_type; DDPM's sigma_t^2 = beta~_t). No
    clipping of x_0_hat: this is diffusers with clip_sample=False, Stable Diffusion's setting
    (latents are not confined to [-1, 1]). Like diffusers, the schedule's scalars stay float32
    (alphas_cumprod's dtype) and beta~_t is clamped below at 1e-20.

    Args:
        model_output: (B, ...) the network's output at timestep t (eps_hat, x_0_hat or v_hat).
        timestep: an integer t (int or 0-d tensor, on the CPU or on the sample's device; the
            same for the whole batch, like diffusers' step).
        prev_timestep: an integer t' (the next timestep of set_timesteps(n); t - T/n when n divides
            T), an int or 0-d tensor like timestep; -1 after the last step.
        sample: (B, ...) x_t, any rank after the batch one.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}.
        variance_noise: (B, ...) z ~ N(0, I), same shape as sample; ignored at t = 0.
        prediction_type: "epsilon", "sample" or "v_prediction" (passed to pred_original_sample).

    Returns:
        a tensor (B, ...): x_t', same shape, dtype and device as sample.
    """
    # BEGIN SOLUTION
    # TODO: DDPM eq. 6-7 with the jump's alpha_t and beta_t, as DDPMScheduler.step (steps 1, 2, 4, 5, 6
    # TODO: of diffusers/schedulers/scheduling_ddpm.py, clip_sample=False), x_0_hat from your
    # TODO: pred_original_sample.
    # HINT 1: DDPMScheduler.step in diffusers/schedulers/scheduling_ddpm.py: "1. compute alphas, betas"
    # HINT 1: (note `self.one` when prev_t < 0), "4. Compute coefficients for pred_original_sample x_0
    # HINT 1: and current sample x_t", "5. Compute predicted previous sample", "6. Add noise"; the
    # HINT 1: variance is `_get_variance` with variance_type "fixed_small".
    # HINT 2: Look up abar_t and abar_prev (1 when prev_timestep < 0), derive this jump's alpha_t and
    # HINT 2: beta_t from them; get x_0_hat from pred_original_sample with t repeated over the batch;
    # HINT 2: form the two coefficients of the posterior mean and the mean; for t > 0 add the noise
    # HINT 2: scaled by the posterior standard deviation.
    # HINT 3: abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else 1 (never alphas_cumprod[-1]);
    # HINT 3: alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t;
    # HINT 3: mean = sqrt(abar_prev) * beta_t / (1 - abar_t) * x0 + sqrt(alpha_t) * (1 - abar_prev) / (1 - abar_t) * x_t;
    # HINT 3: variance = (1 - abar_prev) / (1 - abar_t) * beta_t; add sqrt(variance) * variance_noise only when t > 0.
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


def ddpm_variance(t, prev_t, alphas_cumprod, variance_type, predicted_variance=None):
    """What `DDPMScheduler._get_variance` returns for the step t -> t' = prev_t, for each
    `variance_type` diffusers supports.

    The jump's abar_t', alpha_t and beta_t follow `ddpm_step`'s conventions, and beta~_t is
    DDPM eq. 7's posterior variance. The six types are two choices of the reverse step's
    noise, each in two forms, and a learned one:

    - "fixed_small": DDPM's sigma_t^2 = beta~_t (diffusers' default);
    - "fixed_small_log": the same choice, in the form of RL-diffuser's variant;
    - "fixed_large": DDPM's other choice, sigma_t^2 = beta_t (Sec. 3.2);
    - "fixed_large_log": the same choice, in the form of GLIDE's "max_log";
    - "learned": the model predicts it (predicted_variance);
    - "learned_range": Nichol & Dhariwal 2021 ("Improved DDPM"), eq. 15: between the two fixed
      choices, the model's output in [-1, 1] deciding where.

    What diffusers returns for each (a variance, a standard deviation or a log-variance, and
    with which clamp) is this exercise: read it in `_get_variance`, and how `step` uses it.

    Args:
        t: an integer timestep in 0 .. T-1.
        prev_t: an integer, the timestep the step goes to (`scheduler.previous_timestep(t)`:
            the next timestep of set_timesteps(n)); -1 after the last step.
        alphas_cumprod: (T,) float32 abar_0 .. abar_{T-1}.
        variance_type: one of "fixed_small", "fixed_small_log", "fixed_large",
            "fixed_large_log", "learned", "learned_range".
        predicted_variance: (B, ...) float32 tensor, the variance channels of the model's output;
            used only by "learned" and "learned_range" (None otherwise).

    Returns:
        for the four fixed types, a number (diffusers returns a 0-d float32 tensor computed
        from alphas_cumprod in float32); for "learned" and "learned_range", a tensor of
        predicted_variance's shape, dtype and device.

    Raises:
        ValueError: for any other variance_type (diffusers silently returns beta_tilde_t).
    """
    # BEGIN SOLUTION
    # TODO: DDPMScheduler._get_variance (diffusers/schedulers/scheduling_ddpm.py), with the step's
    # TODO: prev_t given instead of self.previous_timestep(t): DDPM eq. 7 for the posterior variance,
    # TODO: Improved DDPM eq. 15 for "learned_range". Note what each branch returns: a variance, a
    # TODO: standard deviation or a log-variance (and how `step` then uses it).
    # HINT 1: Read DDPMScheduler._get_variance in diffusers/schedulers/scheduling_ddpm.py (its first
    # HINT 1: lines are the same alphas and betas as in step), then the "6. Add noise" part of step,
    # HINT 1: which shows how each returned value is turned into a noise scale.
    # HINT 2: Compute abar_t, abar_prev (1 when prev_t < 0), the jump's beta_t and the posterior
    # HINT 2: variance, clamped at 1e-20. Then one branch per type: return the variance, its square root
    # HINT 2: through exp and log, beta_t, the log of beta_t, the model's output, or the interpolation
    # HINT 2: of the two log-variances with weight (output + 1) / 2 on log(beta_t).
    # HINT 3: beta_t = 1 - abar_t / abar_prev; var = ((1 - abar_prev) / (1 - abar_t) * beta_t).clamp(min=1e-20);
    # HINT 3: fixed_small_log: exp(0.5 * log(var)); fixed_large_log: log(beta_t);
    # HINT 3: learned_range: frac = (v + 1) / 2, frac * log(beta_t) + (1 - frac) * log(var).
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}: expected one of {VARIANCE_TYPES}")
    t, prev_t = int(t), int(prev_t)
    abar_t = alphas_cumprod[t]  # 0-d float32, like diffusers  # convention: the notation block defines abar_t
    abar_prev = alphas_cumprod[prev_t] if prev_t >= 0 else torch.ones_like(abar_t)
    beta_t = 1 - abar_t / abar_prev  # this jump's beta
    var = ((1 - abar_prev) / (1 - abar_t) * beta_t).clamp(min=1e-20)  # beta_tilde; its log must exist
    if variance_type == "fixed_small":
        return var
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(var))  # a standard deviation, not a log
    if variance_type == "fixed_large":
        return beta_t
    if variance_type == "fixed_large_log":
        return torch.log(beta_t)
    if variance_type == "learned":
        return predicted_variance
    min_log, max_log = torch.log(var), torch.log(beta_t)  # learned_range: log-variances
    frac = (predicted_variance + 1) / 2  # [-1, 1] -> [0, 1]
    return frac * max_log + (1 - frac) * min_log  # (B, ...)
    # END SOLUTION
