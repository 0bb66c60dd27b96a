"""Lab 01: the forward noise process of DDPM, the way diffusers' `DDPMScheduler` builds it.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", DDPM):

    T            number of training timesteps; diffusers indexes them t = 0 .. T-1
    beta_t       variance of the noise added at step t               (the "beta schedule")
    alpha_t      1 - beta_t, the fraction of variance kept at step t
    abar_t       alpha_0 * alpha_1 * ... * alpha_t                    (`alphas_cumprod`)
    x_0          a clean sample (an image, a latent, any tensor)
    eps          standard Gaussian noise, same shape as x_0
    x_t          the noisy sample at step t

One step (DDPM eq. 2):    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)
Closed form (DDPM eq. 4): q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I)
so                        x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

The functions below are, in order: the beta schedule, its cumulative product, the closed
form, the signal-to-noise ratio, and the zero-terminal-SNR rescaling of a schedule (Lin et
al. 2023). Each equals the matching piece of `diffusers.DDPMScheduler` on the same inputs.
"""

import math

import torch

__all__ = ["make_betas", "alphas_cumprod", "add_noise", "snr", "rescale_zero_terminal_snr"]


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """The beta schedule beta_0 .. beta_{T-1}, as `DDPMScheduler(beta_schedule=...).betas`.

    Five schedules, by their diffusers names (the two linear ones and the sigmoid one run over
    u_t = t / (T-1), t = 0 .. T-1; the cosine and laplace ones evaluate at t / T and (t+1) / T):

    - "linear" (Ho et al. 2020, DDPM, Sec. 4): beta_t rises linearly in u_t from beta_start
      (u = 0) to beta_end (u = 1). DDPM uses 1e-4 .. 0.02, T = 1000.
    - "scaled_linear" (latent diffusion / Stable Diffusion, which uses 0.00085 .. 0.012):
      sqrt(beta_t) rises linearly in u_t from sqrt(beta_start) to sqrt(beta_end).
    - "sigmoid" (GeoDiff, Xu et al. 2022): beta_t = beta_start + (beta_end - beta_start) * s(v_t),
      s the logistic sigmoid, v_t running linearly from -6 (t = 0) to +6 (t = T-1): an S-shaped
      ramp that never quite reaches either end of the range.
    - "squaredcos_cap_v2" (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17): the cosine
      schedule, defined through abar(u) rather than through beta, with the offset s = 0.008 and
      the cap on beta stated in the paper's text after eq. 17. beta_start and beta_end are
      ignored. diffusers builds it in `betas_for_alpha_bar` (the same code as the authors'
      improved-diffusion), which differs from the formula on the page in three ways: it never
      evaluates abar itself but one beta per step from a ratio of the paper's function (so
      diffusers' index t is the paper's t+1: the paper counts 1 .. T); the last raw beta is
      exactly 1, and the cap leaves a tiny abar_{T-1} > 0 instead of 0 (both must be
      reproduced); and it computes in Python float64 (the math module), rounding the result to
      float32 (float32 arithmetic gives betas up to a few tenths of a percent off at small t,
      which the check accepts as rounding: the page measures it).
    - "laplace" (Hang et al. 2024, "Improved Noise Schedule for Diffusion Training"): built by
      `betas_for_alpha_bar` exactly like the cosine one (same ratios, same cap, same float64
      arithmetic, beta_start/beta_end ignored), with another function of u in place of the
      cosine's, built from a log-SNR that follows a Laplace quantile (what diffusers then
      returns as abar is not sigmoid of that log-SNR). Read it in `betas_for_alpha_bar`'s
      laplace branch as it stands (its 1e-6, its square root, and its sign convention; at
      u = 1/2, reached for even T, a sign of 0 moves two betas by about 0.05%, within the
      check's tolerance).

    Args:
        schedule: "linear", "scaled_linear", "sigmoid", "squaredcos_cap_v2" or "laplace".
        num_train_timesteps: T, the number of betas.
        beta_start, beta_end: the first and last beta of the two linear schedules.

    Returns:
        betas: float32 tensor of shape (T,).

    Raises:
        ValueError: for any other schedule name.
    """
    # BEGIN SOLUTION
    # TODO: the five schedules of DDPMScheduler.__init__ (diffusers/schedulers/scheduling_ddpm.py),
    # TODO: the cosine and laplace ones through betas_for_alpha_bar (same file; Improved DDPM eq. 17
    # TODO: and the cap after it). float32, shape (T,); ValueError for any other name.
    # HINT 1: Open diffusers/schedulers/scheduling_ddpm.py: DDPMScheduler.__init__ has one branch per
    # HINT 1: beta_schedule name; "squaredcos_cap_v2" and "laplace" call betas_for_alpha_bar, at the top of
    # HINT 1: the file, which picks its alpha_bar_fn by alpha_transform_type.
    # HINT 2: linear: T evenly spaced values over the range. scaled_linear: the same over the square
    # HINT 2: roots of the range, then square. sigmoid: evenly spaced points from -6 to 6 through the
    # HINT 2: sigmoid, then stretched onto [beta_start, beta_end]. cosine: for each t, one minus the
    # HINT 2: ratio of f at the end and the start of the step, capped, in Python floats; then a tensor.
    # HINT 2: laplace: the same loop with the laplace alpha_bar_fn (log-SNR, then sqrt of its sigmoid).
    # HINT 3: linear: torch.linspace(beta_start, beta_end, T); scaled_linear: linspace of the square roots, squared;
    # HINT 3: sigmoid: torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start;
    # HINT 3: cosine: beta_t = min(1 - f((t+1)/T) / f(t/T), 0.999), f(u) = math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    # HINT 3: laplace: f(u) = sqrt(s / (1 + s)), s = exp(lam), lam = -0.5 * copysign(1, 0.5 - u) * log(1 - 2 * |0.5 - u| + 1e-6)
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)  # (T,)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2  # (T,)
    if schedule == "sigmoid":
        v = torch.linspace(-6, 6, T, dtype=torch.float32)  # (T,)
        return torch.sigmoid(v) * (beta_end - beta_start) + beta_start  # (T,)
    if schedule in ("squaredcos_cap_v2", "laplace"):

        def f(u):  # abar(u) up to a constant factor (Improved DDPM eq. 17)
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        def f_laplace(u):  # diffusers' laplace alpha_bar_fn
            lam = -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * abs(0.5 - u) + 1e-6)  # log-SNR
            snr_u = math.exp(lam)
            return math.sqrt(snr_u / (1 + snr_u))

        if schedule == "laplace":
            f = f_laplace

        betas = [min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)]
        return torch.tensor(betas, dtype=torch.float32)  # (T,)
    raise ValueError(
        f"unknown beta schedule {schedule!r}: expected 'linear', 'scaled_linear', 'sigmoid', "
        f"'squaredcos_cap_v2' or 'laplace'"
    )
    # END SOLUTION


def alphas_cumprod(betas):
    """abar_t = prod_{s=0..t} (1 - beta_s), as `DDPMScheduler.alphas_cumprod`.

    Ho et al. 2020 (DDPM), the definitions above eq. 4: alpha_t = 1 - beta_t and
    abar_t = prod_{s<=t} alpha_s. abar_t is the fraction of the clean sample's variance
    left in x_t; it falls from about 1 (t = 0) towards 0 (t = T-1).

    Args:
        betas: (T,) the beta schedule.

    Returns:
        (T,) abar_0 .. abar_{T-1}, same dtype and device as betas.
    """
    # BEGIN SOLUTION
    # TODO: abar_t from the betas (DDPM, the definitions above eq. 4), as DDPMScheduler.__init__
    # TODO: computes `self.alphas_cumprod` (diffusers/schedulers/scheduling_ddpm.py).
    # HINT 1: The last lines of DDPMScheduler.__init__ build self.alphas, then self.alphas_cumprod.
    # HINT 2: Turn each beta into the fraction kept, then take the running product along the timesteps.
    # HINT 3: alpha_t = 1 - beta_t; abar_t = alpha_0 * ... * alpha_t (torch.cumprod along dim 0).
    return torch.cumprod(1.0 - betas, dim=0)  # (T,)
    # END SOLUTION


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    """Sample x_t ~ q(x_t | x_0) in one shot, as `DDPMScheduler.add_noise`.

    Ho et al. 2020 (DDPM), eq. 4: q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with a
    different t for each sample of the batch, by the reparametrisation x_t = mean + std * eps. Like diffusers, alphas_cumprod is
    moved to the samples' device and cast to their dtype *before* indexing, so the result
    has the dtype and device of original_samples (alphas_cumprod usually stays float32 on
    the CPU while the samples are float16 on a GPU).

    Args:
        original_samples: (B, ...) x_0, any number of dimensions after the batch one:
            (B, D) vectors, (B, C, H, W) images, (B, C, F, H, W) videos.
        noise: (B, ...) eps, same shape as original_samples.
        timesteps: (B,) long, one timestep in 0 .. T-1 per sample, on the CPU or on the
            samples' device (where a training loop on a GPU draws them).
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}.

    Returns:
        (B, ...) x_t, same shape, dtype and device as original_samples.
    """
    # BEGIN SOLUTION
    # TODO: x_t by DDPM eq. 4, as DDPMScheduler.add_noise (diffusers/schedulers/scheduling_ddpm.py):
    # TODO: one abar_t per sample, broadcast over every dimension after the batch one.
    # HINT 1: Read DDPMScheduler.add_noise: the cast of alphas_cumprod, the two coefficients, and the
    # HINT 1: while-loop that gives them trailing dimensions of size 1.
    # HINT 2: Move/cast the schedule to the samples' device and dtype; pick one abar per sample with the
    # HINT 2: timesteps; give it as many trailing size-1 dims as the samples have after the batch; combine
    # HINT 2: the square roots of the signal and noise variances with x_0 and eps.
    # HINT 3: abar_t = alphas_cumprod.to(device, dtype)[timesteps], reshaped to (B, 1, ..., 1);
    # HINT 3: x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps
    abar = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)  # (T,)
    abar_t = abar[timesteps.to(original_samples.device)]  # (B,)
    abar_t = abar_t.reshape(-1, *[1] * (original_samples.ndim - 1))  # (B, 1, ..., 1)
    return abar_t**0.5 * original_samples + (1 - abar_t) ** 0.5 * noise  # (B, ...)
    # END SOLUTION


def snr(alphas_cumprod):
    """Signal-to-noise ratio SNR_t of x_t, as diffusers' `training_utils.compute_snr`.

    Kingma et al. 2021 ("Variational Diffusion Models", eq. 2-3, where the forward process is
    defined) define SNR(t) = alpha_t^2 / sigma_t^2 for z_t = alpha_t x + sigma_t eps: the signal's
    variance over the noise's. Their alpha_t and sigma_t are the two coefficients of x_t, not this
    module's alpha_t = 1 - beta_t: translate them into DDPM's notation (eq. 4) to get SNR_t in
    terms of abar_t. It is what diffusers' `training_utils.compute_snr`
    returns (for Min-SNR loss weighting); log-SNR is the natural axis to compare schedules.

    Args:
        alphas_cumprod: (T,) abar_t (any shape works: the formula is elementwise).

    Returns:
        Same shape, dtype and device as alphas_cumprod: SNR_t, from large (t = 0) to about 0.
    """
    # BEGIN SOLUTION
    # TODO: SNR_t (Kingma et al. 2021, eq. 2-3) in DDPM's notation, as diffusers.training_utils.compute_snr.
    # HINT 1: diffusers/training_utils.py, compute_snr: it squares the ratio of the two coefficients.
    # HINT 2: The signal variance in x_t over the noise variance in x_t: a ratio, not its log or root.
    # HINT 3: SNR_t = abar_t / (1 - abar_t)
    return alphas_cumprod / (1.0 - alphas_cumprod)  # (T,)
    # END SOLUTION


def rescale_zero_terminal_snr(betas):
    """Rescale a beta schedule to zero terminal SNR, as diffusers' `rescale_zero_terminal_snr`.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.1 and
    Algorithm 1 (diffusers: `DDPMScheduler(rescale_betas_zero_snr=True)`). Most schedules end
    with abar_{T-1} > 0, so x_{T-1} still holds some signal (SD: sqrt(abar_{T-1}) ~ 0.068), while
    sampling starts from pure noise. The fix works on the signal coefficient r_t = sqrt(abar_t):
    an affine map r'_t = a r_t + b, with a and b chosen so that

        r'_0 = r_0            (the first step keeps its signal), and
        r'_{T-1} = 0          (the last step has none: SNR_{T-1} = 0, x_{T-1} is pure noise).

    Then it turns r' back into a beta schedule whose cumulative product of (1 - beta') is
    abar'_t = r'_t^2, so the last beta' is 1 exactly.

    Args:
        betas: (T,) a beta schedule, T >= 2, float32 or float64, each in (0, 1). Not modified.

    Returns:
        (T,) the rescaled betas, same dtype and device as betas; the first equals betas[0] up
        to rounding and the last is 1.
    """
    # BEGIN SOLUTION
    # TODO: Lin et al. 2023, Algorithm 1, as rescale_zero_terminal_snr in
    # TODO: diffusers/schedulers/scheduling_ddpm.py (above class DDPMScheduler). Leave `betas` unchanged.
    # HINT 1: Read rescale_zero_terminal_snr in diffusers/schedulers/scheduling_ddpm.py: four blocks
    # HINT 1: (to sqrt(abar), store the two ends, shift and scale, back to betas). Note where it clones.
    # HINT 2: From the betas get abar and its square root r. Remember r at the first and last step.
    # HINT 2: Shift r so the last step is zero; scale it so the first step is back to its old value.
    # HINT 2: Square to get abar'; undo the cumulative product (ratio of neighbours; the first alpha is
    # HINT 2: abar'_0 itself); betas are one minus those alphas.
    # HINT 3: r = sqrt(cumprod(1 - betas)); r' = (r - r[-1]) * r[0] / (r[0] - r[-1]); abar' = r'^2;
    # HINT 3: alphas' = cat([abar'[:1], abar'[1:] / abar'[:-1]]); betas' = 1 - alphas'
    abar = torch.cumprod(1.0 - betas, dim=0)  # (T,) abar_t
    r = abar.sqrt()  # (T,) the signal coefficient sqrt(abar_t)
    r_first, r_last = r[0].clone(), r[-1].clone()  # () each: the old ends, kept before r changes
    r = (r - r_last) * (r_first / (r_first - r_last))  # (T,) r'_{T-1} = 0 and r'_0 = r_0
    abar = r**2  # (T,) abar'_t
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # (T,) undo the cumulative product
    return 1.0 - alphas  # (T,) beta'_t, the last one exactly 1
    # END SOLUTION
