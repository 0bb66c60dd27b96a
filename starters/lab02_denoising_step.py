# Your exercise file for Lab 02: Denoising Step.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab02")` in notebooks/02_denoising_step.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab02')"
# Stuck? hint("lab02", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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
    # TODO: x_0_hat for the three prediction types, as the "1. compute predicted original sample"
    # TODO: part of DDPMScheduler.step (diffusers/schedulers/scheduling_ddpm.py); DDPM eq. 4 and 15,
    # TODO: Salimans & Ho 2022 App. D for v. ValueError for an unknown type.
    # Stuck? hint("lab02", "pred_original_sample") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab02): pred_original_sample")


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
    # TODO: v for each sample at its own timestep (Salimans & Ho 2022, Sec. 4), as
    # TODO: DDPMScheduler.get_velocity (diffusers/schedulers/scheduling_ddpm.py).
    # Stuck? hint("lab02", "get_velocity") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab02): get_velocity")


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
    # TODO: DDPM eq. 6-7 with the jump's alpha_t and beta_t, as DDPMScheduler.step (steps 1, 2, 4, 5, 6
    # TODO: of diffusers/schedulers/scheduling_ddpm.py, clip_sample=False), x_0_hat from your
    # TODO: pred_original_sample.
    # Stuck? hint("lab02", "ddpm_step") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab02): ddpm_step")


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
    # TODO: DDPMScheduler._get_variance (diffusers/schedulers/scheduling_ddpm.py), with the step's
    # TODO: prev_t given instead of self.previous_timestep(t): DDPM eq. 7 for the posterior variance,
    # TODO: Improved DDPM eq. 15 for "learned_range". Note what each branch returns: a variance, a
    # TODO: standard deviation or a log-variance (and how `step` then uses it).
    # Stuck? hint("lab02", "ddpm_variance") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab02): ddpm_variance")
