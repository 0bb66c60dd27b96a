# Your exercise file for Lab 11: Train a Diffusion Model from Scratch.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab11")` in notebooks/11_from_scratch.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab11')"
# Stuck? hint("lab11", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

"""Lab 11: train a diffusion model from scratch, in pixel space.

Everything the earlier labs took apart, put back together and trained:

    data      x_0: images of the shapes world at 32x32, in [-1, 1], and a class label per
              image (its colour and shape; label K = num_classes is the NULL label)
    forward   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps       (Lab 01's add_noise,
              Ho et al. 2020, eq. 4)
    model     eps_theta(x_t, t, y): a UNet (Ronneberger et al. 2015, as DDPM uses it, Ho et
              al. 2020 App. B): residual blocks at two or more resolutions, a down path whose
              features are concatenated into the up path (the skips), the sinusoidal timestep
              embedding (Lab 07) through an MLP, plus a learned embedding of the label, ADDED
              inside every residual block
    loss      E_{t, x_0, eps} [ w_t | target - eps_theta(x_t, t, y) |^2 ], t ~ U{0 .. T-1}
              (Ho et al. 2020, eq. 14 for target = eps, w_t = 1); the target is eps, v
              (Salimans & Ho 2022) or x_0; w_t the Min-SNR-gamma weight (Hang et al. 2023)
    CFG       the label replaced by the null label with probability p while training, so one
              network is both eps(x_t, t, y) and eps(x_t, t, null); sampling mixes them:
              eps_u + w (eps_c - eps_u) (Ho & Salimans 2022, eq. 6; Lab 04)
    sampling  a reverse step (Lab 02's DDPM step or Lab 03's DDIM step) over a list of
              timesteps

The exercises, in order: a residual block equal to diffusers' `ResnetBlock2D`, the UNet
around it, the regression target and the Min-SNR weights of diffusers' training scripts, one
training step, and the sampling loop with classifier-free guidance. The solution module is
self-contained: the learner's own Lab 01 / 02 / 03 / 07 functions are passed in as arguments.
"""

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

__all__ = ["ResBlock", "TinyUNet", "diffusion_target", "min_snr_loss_weights", "training_step", "sample_cfg"]


def sinusoidal(timesteps, dim):
    """The default timestep embedding of TinyUNet: diffusers' `get_timestep_embedding` with
    the UNet2DModel's settings (cos half first, frequency shift 0). (B,) -> (B, dim)."""
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class ResBlock(nn.Module):
    """A residual block with a timestep (and label) embedding, equal to diffusers'
    `ResnetBlock2D(in_channels, out_channels, temb_channels=emb_dim, groups=groups, eps=1e-6)`
    (diffusers/models/resnet.py; DDPM's block, Ho et al. 2020 App. B, after Zagoruyko &
    Komodakis 2016): its output, for the same weights, and its parameter names, so that
    `ResnetBlock2D.load_state_dict(block.state_dict())` works (strict).

    The state dict is the contract: the attributes are named as diffusers names them (norm1,
    conv1, time_emb_proj, norm2, conv2, and conv_shortcut, which is None when diffusers'
    block has no shortcut layer), with diffusers' shapes. Which layers those are, their kernel
    sizes and epsilons: `ResnetBlock2D.__init__` for the defaults above (no dropout, no
    up/down-sampling, time_embedding_norm "default"). The order of the operations, where the
    embedding enters and what it goes through first: `ResnetBlock2D.forward`.

    Args:
        in_channels, out_channels: widths (each divisible by groups).
        emb_dim: the width of the embedding given to forward.
        groups: GroupNorm groups.

    forward(x, emb): x (B, in_channels, H, W), emb (B, emb_dim) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels, out_channels, emb_dim, groups=8):
        super().__init__()
        # TODO: the layers of diffusers' ResnetBlock2D.__init__ (diffusers/models/resnet.py) for the
        # TODO: default settings, with its attribute names (see the docstring).
        # Stuck? hint("lab11", "ResBlock") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab11): ResBlock.__init__")

    def forward(self, x, emb):
        # TODO: ResnetBlock2D.forward for the default settings: the main path, the embedding added
        # TODO: per channel in the middle of it, and the residual connection.
        # Stuck? hint("lab11", "ResBlock") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab11): ResBlock.forward")


class TinyUNet(nn.Module):
    """A small class-conditional UNet for pixel-space diffusion, built from ResBlock.

        emb = MLP(time_embedding(t, channels[0])) + label_emb(y)        (B, emb_dim)
        h   = conv_in(x)                                                (B, c_0, H, W)
        down: at each resolution i, ResBlock -> c_i (keep the output as the skip s_i), then
              halve H and W (a stride-2 3x3 conv) except after the last resolution
        mid:  one ResBlock at the lowest resolution
        up:   at each resolution, lowest first, concatenate s_i on the channels, ResBlock
              -> c_i, then double H and W (nearest, then a 3x3 conv) except at the top
        out = conv_out(SiLU(GroupNorm(h)))                              (B, 3, H, W)

    Every ResBlock gets `emb`: the timestep and the label reach every resolution (this is
    how diffusers' UNet2DModel uses `num_class_embeds`: the class embedding is added to the
    timestep embedding). The MLP is Linear(c_0, emb_dim), SiLU, Linear(emb_dim, emb_dim),
    like diffusers' `TimestepEmbedding`.

    Args:
        num_classes: K real labels 0 .. K-1; label K is the null label (CFG), so the label
            embedding has K + 1 rows.
        channels: widths c_0, c_1, ... of the resolutions (each divisible by `groups`).
        emb_dim: width of the time + label embedding.
        time_embedding: a function (timesteps (B,), dim) -> (B, dim), the sinusoidal
            embedding, kept as the attribute `time_embedding` and used by forward; None means
            `sinusoidal` (this module's: diffusers' get_timestep_embedding with
            flip_sin_to_cos=True, downscale_freq_shift=0, i.e. Lab 07's timestep_embedding
            with those arguments).
        groups: GroupNorm groups.

    forward(x, t, labels): x (B, 3, H, W), H and W divisible by 2^(len(channels) - 1);
    t (B,) long or float; labels (B,) long in 0 .. K. Returns (B, 3, H, W).
    """

    def __init__(self, num_classes, channels=(32, 64), emb_dim=128, time_embedding=None, groups=8):
        super().__init__()
        # TODO: the layers of the docstring's diagram: the embedding MLP and the label table, conv_in, a
        # TODO: ResBlock (+ downsampling conv) per resolution, the middle block, the up path's ResBlocks
        # TODO: (+ upsampling convs) whose inputs are wider by the skip, and the output head.
        # Stuck? hint("lab11", "TinyUNet") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab11): TinyUNet.__init__")

    def forward(self, x, t, labels):
        # TODO: the docstring's diagram: one embedding of t and the labels, then down (keeping each
        # TODO: resolution's output), middle, up (concatenating the matching skip), head.
        # Stuck? hint("lab11", "TinyUNet") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab11): TinyUNet.forward")


def diffusion_target(sample, noise, timesteps, alphas_cumprod, prediction_type):
    """The regression target of diffusion training, as diffusers' training scripts compute it
    ("Get the target for loss depending on the prediction type" in
    examples/text_to_image/train_text_to_image.py, a file of diffusers' repository, not of the
    installed package; the page says what it does). One target per prediction type:

        "epsilon"       what the model should predict for eps-prediction (Ho et al. 2020, eq. 14)
        "v_prediction"  v (Salimans & Ho 2022, sec. 4), exactly as the installed
                        `DDPMScheduler.get_velocity` computes it (read it: the dtype, device and
                        broadcasting of abar_t matter as much as the formula)
        "sample"        x_0-prediction's target

    Any other prediction_type raises ValueError (as the script does).

    Args:
        sample: (B, ...) x_0.
        noise: (B, ...) eps, same shape.
        timesteps: (B,) long.
        alphas_cumprod: (T,) the schedule's abar, float32.
        prediction_type: "epsilon", "v_prediction" or "sample".

    Returns:
        (B, ...) the target, same shape, dtype and device as sample (checked in float64 too,
        to 1e-10: compute it in the sample's dtype, as get_velocity does).
    """
    # TODO: the three cases of the training script (see the docstring), v exactly as
    # TODO: DDPMScheduler.get_velocity computes it (diffusers/schedulers/scheduling_ddpm.py).
    # Stuck? hint("lab11", "diffusion_target") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab11): diffusion_target")


def min_snr_loss_weights(timesteps, alphas_cumprod, gamma, prediction_type):
    """Min-SNR-gamma loss weights (Hang et al. 2023, sec. 3.4), per sample, as diffusers'
    text-to-image training example applies them (its `if args.snr_gamma` branch).

    Min-SNR-gamma's idea, in x_0 terms: the loss of sample i should be its x_0 error
    |x_0 - x0_hat|^2 times min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t) as
    `diffusers.training_utils.compute_snr` computes it (Lab 01's snr). But the model is
    trained on another target, and for each target the plain MSE already equals the x_0 error
    times some factor of SNR_t. Work that factor out for each prediction type (write x0_hat in
    terms of the predicted eps, of the predicted v, or of itself; Lab 02's pred_original_sample
    has all three), and return the weight that turns the plain MSE into the Min-SNR loss.
    (diffusers' example gives "sample" the weight min(SNR_t, gamma) too.)

    Args:
        timesteps: (B,) long.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}, float32.
        gamma: a positive number (5 in the paper).
        prediction_type: "epsilon", "v_prediction" or "sample".

    Returns:
        (B,) float32 weights, on timesteps' device.
    """
    # TODO: SNR_t as compute_snr does (diffusers/training_utils.py), then the example's weights
    # TODO: for each prediction type (see the docstring).
    # Stuck? hint("lab11", "min_snr_loss_weights") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab11): min_snr_loss_weights")


def training_step(model, x0, labels, alphas_cumprod, add_noise, generator, p_uncond=0.1, null_label=None,
                  prediction_type="epsilon", snr_gamma=None):
    """One diffusion training loss (no optimiser step): DDPM's Algorithm 1 (Ho et al. 2020)
    with a prediction type, Min-SNR weights and label dropout for classifier-free guidance
    (Ho & Salimans 2022, Algorithm 1). Random numbers, drawn from `generator` in THIS order
    (so a check can repeat them):

        1. t ~ U{0 .. T-1}, one per sample         (B,) integers
        2. eps ~ N(0, I), x0's shape
        3. u ~ U[0, 1), one per sample             (B,); sample i gets the null label where
                                                   u_i < p_uncond

    The rest is DDPM's Algorithm 1 with your own pieces: the noisy images by the given
    `add_noise` (Lab 01), the model's prediction on the labels after dropout, your
    diffusion_target, and the squared error. Its reduction is that of diffusers' training
    example with snr_gamma set: one mean squared error per sample, weighted by your
    min_snr_loss_weights (no weights when snr_gamma is None), then the batch mean.

    Args:
        model: a callable model(x_t, t, labels) -> (B, C, H, W) (a TinyUNet, or a UNet2DModel
            wrapped to return .sample).
        x0: (B, C, H, W) clean images.
        labels: (B,) long class labels (not modified).
        alphas_cumprod: (T,) float32; T = len(alphas_cumprod).
        add_noise: add_noise(original_samples, noise, timesteps, alphas_cumprod) -> x_t (Lab 01).
        generator: a torch.Generator (CPU), the only source of randomness.
        p_uncond: probability of the null label.
        null_label: the null label's index (required when p_uncond > 0).
        prediction_type: "epsilon", "v_prediction" or "sample".
        snr_gamma: None, or gamma for Min-SNR weights.

    Returns:
        a 0-dim tensor, the loss, differentiable with respect to the model's parameters.
    """
    # TODO: the docstring's recipe: the three draws in that order, the noisy images with the given
    # TODO: add_noise, the prediction on the (partly dropped) labels, the target, the weighted MSE.
    # Stuck? hint("lab11", "training_step") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab11): training_step")


@torch.no_grad()
def sample_cfg(model, x_T, labels, timesteps, step, guidance_scale, null_label):
    """Sampling with classifier-free guidance: the denoising loop of a diffusers pipeline
    (StableDiffusionPipeline.__call__, "7. Denoising loop"), written out for a class-conditional
    pixel model, with the guidance of Lab 04 (Ho & Salimans 2022, eq. 6) and the reverse update
    `step` given to you (Lab 03's DDIM step or Lab 02's DDPM step with the schedule bound in:
    step(model_output, timestep, prev_timestep, sample) -> x at prev_timestep). The update
    after the last timestep goes to prev_timestep -1, as Lab 03's steps expect. The pipeline
    evaluates the two predictions a timestep needs in one model call; so may you (the check
    accepts both, the numbers are the same).

    Args:
        model: model(x (N, C, H, W), t (N,) long, labels (N,) long) -> (N, C, H, W).
        x_T: (B, C, H, W) the starting noise.
        labels: (B,) long class labels.
        timesteps: (S,) long, descending (e.g. Lab 03's ddim_timesteps).
        step: the reverse update, as above (t and t' given as Python ints).
        guidance_scale: w (1: conditional only; 0: unconditional only).
        null_label: the null label's index.

    Returns:
        (B, C, H, W) the sample after the last step.
    """
    # TODO: the loop of the docstring: both predictions of a timestep in one call, the guided
    # TODO: combination (Lab 04), then the given step to the next timestep (-1 after the last).
    # Stuck? hint("lab11", "sample_cfg") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab11): sample_cfg")
