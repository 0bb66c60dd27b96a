# Your exercise file for Lab 05: VAE Latent Space.
#
# Generated from helpers/solutions/lab05_vae_latents.py by `python -m helpers.make_starters`.
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab05")` in notebooks/05_vae_latents.ipynb: edits are picked up without
# restarting the kernel. Until a function passes its check, the notebook uses the reference.

"""Lab 05: the VAE's latent space, the way Stable Diffusion's pipelines enter and leave it.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", LDM) runs the diffusion model on the latents of a pretrained, frozen autoencoder
instead of on pixels. diffusers' `AutoencoderKL` is that autoencoder (a "KL-regularized" VAE):

    x        an image, (B, 3, H, W), values in [-1, 1]       (the pipelines' convention)
    E(x)     the encoder's output: a diagonal Gaussian q(z | x) = N(mean, std^2), per element;
             `vae.encode(x).latent_dist` (a `DiagonalGaussianDistribution`), with
             z of shape (B, c, H/f, W/f): f = 8 and c = 4 for SD 1.x/2.x/XL and for tiny-sd
    D(z)     the decoder: `vae.decode(z).sample`, (B, 3, H, W), about [-1, 1] (not clipped)
    s        the scaling factor, `vae.config.scaling_factor` (0.18215 for SD 1.x/2.x):
             1 / std of the latents, measured once on training images (LDM sec. 4.3.2 and
             appendix D.1), so that the latents the diffusion model sees have unit variance

The diffusion model lives in the SCALED space z' = s * z:

    training, img2img, inpainting:  z' = s * (a sample of, or the mean of) q(z | x)
    generation (after the loop):    x  = D(z' / s)

Between the two, the UNet only ever sees z', and the noise schedule (Lab 01) assumes z' has
roughly unit variance. The four functions below are the encode and decode paths of the
pipelines, the estimate of s, and the compression the autoencoder buys.
"""

import math

import torch

__all__ = ["encode", "decode", "estimate_scaling_factor", "compression_ratio"]


def encode(vae, images, scaling_factor, sample=False, generator=None):
    """Images in [-1, 1] -> scaled latents z' = s * z, as the diffusers pipelines do.

    `StableDiffusionImg2ImgPipeline.prepare_latents` and the training scripts compute

        z' = s * z,   z ~ q(z | x) = N(mean, std^2)   (a sample; diffusers' `retrieve_latents`
                                                        with sample_mode="sample")
        z' = s * mean                                   (the mode; sample_mode="argmax")

    with s = vae.config.scaling_factor (LDM sec. 4.3.2, appendix D.1). The sample is drawn by
    `DiagonalGaussianDistribution.sample(generator)`: z = mean + std * eps, eps from `generator`.

    Args:
        vae: a diffusers `AutoencoderKL` (any config: c latent channels, factor f).
        images: (B, 3, H, W) in [-1, 1], on the VAE's device and dtype.
        scaling_factor: float, s. Use this argument (not vae.config.scaling_factor), so that the
            same function encodes with any factor.
        sample: False: the posterior mean; True: a sample of the posterior.
        generator: a torch.Generator for the sample (ignored when sample=False).

    Returns:
        (B, c, H/f, W/f) scaled latents z', same dtype and device as the VAE's output.
    """
    # TODO: posterior = vae.encode(images).latent_dist: a DiagonalGaussianDistribution (.mean, .std, .mode(), .sample(generator)).
    # TODO: z = posterior.sample(generator=generator) if sample else posterior.mode() (the mean).
    # TODO: the diffusion model's latents are z * scaling_factor: MULTIPLY by it (the decode path divides).
    raise NotImplementedError("TODO(lab05): encode")


def decode(vae, latents, scaling_factor):
    """Scaled latents z' -> images x = D(z' / s), as the end of `StableDiffusionPipeline.__call__`.

    The pipeline's line is `self.vae.decode(latents / self.vae.config.scaling_factor,
    return_dict=False)[0]`; its image processor then maps [-1, 1] to [0, 1] and clips
    (`(x / 2 + 0.5).clamp(0, 1)`): that postprocessing is NOT part of this function.

    Args:
        vae: a diffusers `AutoencoderKL`.
        latents: (B, c, h, w) scaled latents z' (what the UNet's loop produces).
        scaling_factor: float, s (the same one `encode` multiplied by).

    Returns:
        (B, 3, h*f, w*f) images, about [-1, 1], not clipped. The input is not modified.
    """
    # TODO: undo the scaling first: z = latents / scaling_factor (a new tensor: do not divide `latents` in place).
    # TODO: vae.decode(z) returns a DecoderOutput: its .sample is the image tensor; do not clip or map it to [0, 1].
    raise NotImplementedError("TODO(lab05): decode")


def estimate_scaling_factor(latents):
    """s = 1 / std(z): the scaling factor latent diffusion sets from unscaled latents.

    LDM, appendix D.1: "we rescale the latent z such that it has unit variance", with one
    scalar std over ALL components (batch, channels, height, width):

        sigma^2 = 1 / (bchw) sum_{b,c,h,w} (z_bchw - mu)^2,   mu = 1 / (bchw) sum z_bchw,
        s = 1 / sigma

    (LDM's code: `1. / z.flatten().std()` over the first training batch, torch's unbiased
    std; the two estimators differ by a factor sqrt(n / (n - 1)), negligible for n in the
    thousands.) The mean is subtracted inside the std but not from the latents: SD 1.x/2.x
    scale only; SD3 and FLUX also shift (`shift_factor`).

    Args:
        latents: (N, c, h, w) UNSCALED latents of training images (samples of q(z | x)), any
            float dtype; at least two elements.

    Returns:
        s as a Python float.
    """
    # TODO: ONE scalar over every element (not per channel, not per image): latents.flatten().std().
    # TODO: std subtracts the mean (do not use the root mean square); compute it in float32 or float64, then 1 / std.
    raise NotImplementedError("TODO(lab05): estimate_scaling_factor")


def compression_ratio(image_shape, latent_shape):
    """How many numbers of the image each latent number stands for: prod(image) / prod(latent).

    Shapes are (C, H, W) without the batch: (3, 512, 512) -> (4, 64, 64) is
    786432 / 16384 = 48 for SD 1.x (f = 8 gives 64 spatially, the channels 3 -> 4 take back 4/3);
    (3, 1024, 1024) -> (16, 128, 128) is 12 for SD3 and FLUX.

    Args:
        image_shape: (C, H, W), a tuple, list or torch.Size of ints.
        latent_shape: (c, h, w), the same kinds.

    Returns:
        The ratio as a Python float (not rounded: it need not be an integer).
    """
    # TODO: count the numbers in each: C * H * W and c * h * w (every dimension, the channels too).
    # TODO: return the quotient as a float, image over latent (a true division, not //).
    raise NotImplementedError("TODO(lab05): compression_ratio")
