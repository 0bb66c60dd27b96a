"""Lab 12: flow matching, the way Stable Diffusion 3 and FLUX train and sample.

Rectified flow (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2022, "Flow
Matching"; Esser et al. 2024, "Scaling Rectified Flow Transformers", the SD3 paper) joins a
clean sample x_0 and a Gaussian noise eps by a path indexed by sigma in [0, 1]: sigma = 0 is
the data, sigma = 1 pure noise. The network is trained to predict the velocity of the point
moving along that path, and a sampler integrates that velocity from sigma = 1 down to 0.
In diffusers all of it lives in one file:
`diffusers/schedulers/scheduling_flow_match_euler_discrete.py` (FlowMatchEulerDiscreteScheduler),
plus FLUX's `calculate_shift` in `diffusers/pipelines/flux/pipeline_flux.py`.

    sigma      the noise level, 0 (data) .. 1 (noise); the model's timestep is 1000 sigma
    x_sigma    the point on the path at sigma                           (B, ...) any rank
    v          the velocity d x_sigma / d sigma the model predicts       same shape
    shift      SD3's resolution shift of the sigma grid (Esser et al. 2024, sec. 5.3.2)
    mu         FLUX's shift, computed from the number of image tokens (dynamic shifting)

The functions below are, in order: the forward path (training input), the training target,
the two ways a schedule is shifted toward high noise (SD3's fixed shift, FLUX's mu from the
image size and its exponential time shift), and one sampling step. Each equals diffusers.
Read the scheduler to write them: the docstrings say what each computes and where, not how.
"""

import math

import torch

__all__ = ["flow_interpolate", "flow_velocity_target", "shift_sigmas", "calculate_shift", "time_shift_exponential",
           "flow_euler_step"]


def flow_interpolate(sample, noise, sigmas):
    """The point at noise level sigma on the straight path from `sample` to `noise`: the
    training input of a rectified-flow model (Esser et al. 2024, eq. 3 with the rectified-flow
    coefficients of sec. 3.1; Liu et al. 2022, sec. 2), what
    `FlowMatchEulerDiscreteScheduler.scale_noise` returns at the same sigmas.

    At sigma = 0 it is the sample, at sigma = 1 the noise, and in between it moves along the
    straight segment between the two at constant speed (no sqrt, unlike DDPM's q(x_t | x_0)).

    Args:
        sample: (B, ...) clean data x_0 (latents, 2-D points, any rank >= 1).
        noise: like sample, Gaussian noise eps.
        sigmas: (B,) one noise level per batch element (a tensor, a list, or one number for
            the whole batch), broadcast over every other axis of sample.

    Returns:
        (B, ...) sample's dtype and device.
    """
    # BEGIN SOLUTION
    # TODO: the point on the path at each element's sigma, as FlowMatchEulerDiscreteScheduler.scale_noise
    # TODO: computes it (diffusers/schedulers/scheduling_flow_match_euler_discrete.py), for any rank.
    # HINT 1: Open scheduling_flow_match_euler_discrete.py, method scale_noise: skip the lookup of the sigmas by
    # HINT 1: timestep and read its last five lines (the while loop and the returned expression).
    # HINT 2: Make sigmas a tensor of sample's dtype and device with one entry per batch element; give it as many
    # HINT 2: trailing size-1 axes as sample has axes after the batch; then mix sample and noise with weights
    # HINT 2: that are 1 and 0 at sigma = 0, 0 and 1 at sigma = 1, and linear in sigma.
    # HINT 3: s = sigmas.reshape(B, 1, ..., 1); return s * noise + (1 - s) * sample.
    if noise.shape != sample.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and sample {tuple(sample.shape)} must have the same shape")
    sigmas = torch.as_tensor(sigmas, dtype=sample.dtype, device=sample.device)
    batch = sample.shape[0]
    if sigmas.ndim == 0:  # one number for the whole batch
        sigmas = sigmas.expand(batch)
    if sigmas.shape != (batch,):
        raise ValueError(f"sigmas must hold one value per batch element ({batch}), got shape {tuple(sigmas.shape)}")
    per_sample = sigmas.reshape(batch, *([1] * (sample.ndim - 1)))  # (B, 1, ..., 1)
    return per_sample * noise + (1.0 - per_sample) * sample
    # END SOLUTION


def flow_velocity_target(sample, noise):
    """The regression target of rectified-flow training (Esser et al. 2024, eq. 3 and sec. 3.1;
    the loss of diffusers' examples/dreambooth/train_dreambooth_sd3.py on GitHub): the velocity of the
    point `flow_interpolate(sample, noise, sigma)` as sigma grows, the same at every sigma on a
    straight path. What an SD3 or FLUX transformer outputs, and what
    `FlowMatchEulerDiscreteScheduler.step` multiplies by the step in sigma.

    Args:
        sample: (B, ...) clean data x_0.
        noise: like sample, the noise eps of the same path.

    Returns:
        like sample: the velocity d x_sigma / d sigma.
    """
    # BEGIN SOLUTION
    # TODO: the derivative of your flow_interpolate with respect to sigma (it does not depend on sigma): what
    # TODO: FlowMatchEulerDiscreteScheduler.step multiplies by (sigma_next - sigma) to move a point along the path.
    # HINT 1: Differentiate the expression of flow_interpolate by sigma. The step() line "sample + dt * model_output"
    # HINT 1: fixes the sign; diffusers' examples/dreambooth/train_dreambooth_sd3.py (on GitHub, "flow matching loss")
    # HINT 1: writes the target out.
    # HINT 2: The point goes from the sample (sigma = 0) to the noise (sigma = 1) in a straight line, so its
    # HINT 2: velocity is the displacement from the start to the end.
    # HINT 3: return noise - sample.
    velocity = noise - sample  # d/dsigma [(1 - sigma) x0 + sigma eps]
    return velocity
    # END SOLUTION


def shift_sigmas(sigmas, shift):
    """SD3's timestep shift (Esser et al. 2024, sec. 5.3.2, eq. 23): the noise levels a
    schedule visits, moved toward sigma = 1 for shift > 1 so that more steps are spent where
    the image's layout is decided; what `FlowMatchEulerDiscreteScheduler` applies to its sigmas
    when its config has `shift=` (in `__init__` and again in `set_timesteps`) and
    `use_dynamic_shifting` is False. SD3 medium ships shift = 3.0.

    It keeps 0 at 0 and 1 at 1, is the identity for shift = 1, and is increasing in sigma.
    In the paper it is the map that keeps the signal-to-noise ratio of an image with `shift`^2
    times as many pixels what it was at the base resolution (sqrt(m / n) in eq. 23).

    Args:
        sigmas: (N,) noise levels in [0, 1] (a tensor or a numpy array).
        shift: a number > 0.

    Returns:
        like sigmas, the shifted noise levels.
    """
    # BEGIN SOLUTION
    # TODO: the shift of the docstring, exactly as FlowMatchEulerDiscreteScheduler applies it with shift= in its
    # TODO: config (diffusers/schedulers/scheduling_flow_match_euler_discrete.py).
    # HINT 1: In scheduling_flow_match_euler_discrete.py, read __init__ ("if not use_dynamic_shifting") and step 2
    # HINT 1: of set_timesteps ("Perform timestep shifting"): the same line in both places.
    # HINT 2: A ratio whose numerator is shift times sigma and whose denominator is 1 plus (shift - 1) times
    # HINT 2: sigma; check it keeps sigma = 1 at 1 and is the identity for shift = 1.
    # HINT 3: return shift * sigmas / (1 + (shift - 1) * sigmas).
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    stretched = shift * sigmas
    return stretched / (1 + (shift - 1) * sigmas)
    # END SOLUTION


def calculate_shift(image_seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    """FLUX's mu for an image of `image_seq_len` latent tokens: the straight line through
    (base_seq_len, base_shift) and (max_seq_len, max_shift), read at image_seq_len (it
    extrapolates outside the two points). Equal to
    `diffusers.pipelines.flux.pipeline_flux.calculate_shift`, which the FLUX and SD3 pipelines
    call when their scheduler has `use_dynamic_shifting`; the pipelines pass the scheduler
    config's base_image_seq_len, max_image_seq_len, base_shift and max_shift.

    Args:
        image_seq_len: the number of image tokens, (H / 16) * (W / 16) for FLUX at H x W pixels
            (VAE factor 8, 2x2 patches).
        base_seq_len, max_seq_len: the two token counts the line goes through.
        base_shift, max_shift: mu at those two counts.

    Returns:
        mu, a float.
    """
    # BEGIN SOLUTION
    # TODO: mu of the docstring, as calculate_shift in diffusers/pipelines/flux/pipeline_flux.py computes it.
    # HINT 1: diffusers/pipelines/flux/pipeline_flux.py, function calculate_shift near the top: three lines.
    # HINT 2: The slope is the rise in shift over the rise in tokens between the two points; the intercept makes
    # HINT 2: the line pass through (base_seq_len, base_shift); evaluate it at image_seq_len.
    # HINT 3: m = (max_shift - base_shift) / (max_seq_len - base_seq_len); b = base_shift - m * base_seq_len;
    # HINT 3: return image_seq_len * m + b.
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    mu = image_seq_len * slope + intercept
    return mu
    # END SOLUTION


def time_shift_exponential(mu, sigma, t):
    """FLUX's resolution-dependent shift of the noise levels t (FlowMatchEulerDiscreteScheduler
    with `use_dynamic_shifting=True` and `time_shift_type="exponential"`, the default; the
    pipeline computes mu with `calculate_shift` and passes it to `set_timesteps(mu=...)`).

    Read the scheduler's exponential time shift and write it for tensors and arrays. Then, on
    paper: what does it do to logit(t), and which SD3 shift (your shift_sigmas) is it at
    sigma = 1? The page's experiments use the answer. It keeps t = 1 at 1.

    Args:
        mu: a float (the log of the shift).
        sigma: a float, the exponent applied to the odds (1.0 in the scheduler).
        t: (N,) noise levels in (0, 1] (a tensor or numpy array).

    Returns:
        like t, the shifted noise levels.
    """
    # BEGIN SOLUTION
    # TODO: the exponential time shift, as FlowMatchEulerDiscreteScheduler computes it for dynamic shifting
    # TODO: (diffusers/schedulers/scheduling_flow_match_euler_discrete.py).
    # HINT 1: scheduling_flow_match_euler_discrete.py: set_timesteps calls self.time_shift(mu, 1.0, sigmas), which
    # HINT 1: dispatches on config.time_shift_type to _time_shift_exponential at the end of the file.
    # HINT 2: Compute the odds (1 - t) / t, raise them to the power sigma; the result is e^mu over e^mu plus
    # HINT 2: those odds.
    # HINT 3: return exp(mu) / (exp(mu) + (1 / t - 1) ** sigma).
    e_mu = math.exp(mu)
    odds = (1 / t - 1) ** sigma  # signal-to-noise odds of the unshifted level, to the power sigma
    return e_mu / (e_mu + odds)
    # END SOLUTION


def flow_euler_step(model_output, sigma, sigma_next, sample):
    """One step of `FlowMatchEulerDiscreteScheduler.step` (deterministic: `stochastic_sampling`
    False, no per-token timesteps): the explicit Euler method for the ODE dx / dsigma =
    v(x, sigma), from noise level `sigma` to the next, lower, `sigma_next` (the scheduler's
    self.sigmas[i] and self.sigmas[i + 1]).

    Like diffusers, the update is computed on the sample upcast to float32 and returned in
    the model output's dtype.

    Args:
        model_output: (B, ...) the predicted velocity v at (sample, sigma).
        sigma: the current noise level (a number or a 0-d tensor, like scheduler.sigmas[i]).
        sigma_next: the next noise level, like sigma (0 at the last step).
        sample: (B, ...) the current x_sigma.

    Returns:
        (B, ...) x at sigma_next, in model_output's dtype.
    """
    # BEGIN SOLUTION
    # TODO: the deterministic branch of FlowMatchEulerDiscreteScheduler.step
    # TODO: (diffusers/schedulers/scheduling_flow_match_euler_discrete.py), with its dtypes.
    # HINT 1: In scheduling_flow_match_euler_discrete.py, step(): read from "Upcast to avoid precision issues" to
    # HINT 1: the cast back to model_output.dtype; skip the per_token_timesteps and stochastic_sampling branches.
    # HINT 2: Upcast the sample to float32; the change in sigma is the next level minus the current one (negative
    # HINT 2: while denoising); move the sample by that change times the velocity; cast to the output's dtype.
    # HINT 3: dt = sigma_next - sigma; return (sample.float() + dt * model_output).to(model_output.dtype).
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} differ in shape")
    out_dtype = model_output.dtype
    x = sample.to(torch.float32)  # diffusers upcasts the sample
    now = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    nxt = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    dt = nxt - now  # < 0 from noise toward data
    prev = x + dt * model_output
    return prev.to(out_dtype)
    # END SOLUTION
