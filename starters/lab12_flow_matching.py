# Your exercise file for Lab 12: Flow Matching (SD3 / FLUX).
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab12")` in notebooks/12_flow_matching.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab12')"
# Stuck? hint("lab12", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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
    # TODO: the point on the path at each element's sigma, as FlowMatchEulerDiscreteScheduler.scale_noise
    # TODO: computes it (diffusers/schedulers/scheduling_flow_match_euler_discrete.py), for any rank.
    # Stuck? hint("lab12", "flow_interpolate") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): flow_interpolate")


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
    # TODO: the derivative of your flow_interpolate with respect to sigma (it does not depend on sigma): what
    # TODO: FlowMatchEulerDiscreteScheduler.step multiplies by (sigma_next - sigma) to move a point along the path.
    # Stuck? hint("lab12", "flow_velocity_target") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): flow_velocity_target")


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
    # TODO: the shift of the docstring, exactly as FlowMatchEulerDiscreteScheduler applies it with shift= in its
    # TODO: config (diffusers/schedulers/scheduling_flow_match_euler_discrete.py).
    # Stuck? hint("lab12", "shift_sigmas") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): shift_sigmas")


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
    # TODO: mu of the docstring, as calculate_shift in diffusers/pipelines/flux/pipeline_flux.py computes it.
    # Stuck? hint("lab12", "calculate_shift") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): calculate_shift")


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
    # TODO: the exponential time shift, as FlowMatchEulerDiscreteScheduler computes it for dynamic shifting
    # TODO: (diffusers/schedulers/scheduling_flow_match_euler_discrete.py).
    # Stuck? hint("lab12", "time_shift_exponential") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): time_shift_exponential")


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
    # TODO: the deterministic branch of FlowMatchEulerDiscreteScheduler.step
    # TODO: (diffusers/schedulers/scheduling_flow_match_euler_discrete.py), with its dtypes.
    # Stuck? hint("lab12", "flow_euler_step") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab12): flow_euler_step")
