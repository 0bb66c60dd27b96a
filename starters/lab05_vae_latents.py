# Your exercise file for Lab 05: VAE Latent Space.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab05")` in notebooks/05_vae_latents.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab05')"
# Stuck? hint("lab05", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

"""Lab 05: the VAE's latent space, the way Stable Diffusion's pipelines enter and leave it.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", LDM) runs the diffusion model on the latents of a pretrained, frozen autoencoder
instead of on pixels. diffusers' `AutoencoderKL` (diffusers/models/autoencoders/autoencoder_kl.py)
is that autoencoder (a "KL-regularized" VAE):

    x        an image, (B, 3, H, W), values in [-1, 1]       (the pipelines' convention)
    E(x)     the encoder's output: a diagonal Gaussian q(z | x) = N(mean, std^2), per element
             (a `DiagonalGaussianDistribution`, diffusers/models/autoencoders/vae.py), with
             z of shape (B, c, H/f, W/f): f = 8 and c = 4 for SD 1.x/2.x/XL and for tiny-sd
    D(z)     the decoder, (B, 3, H, W), about [-1, 1] (not clipped)
    s        the scaling factor, stored in the VAE's config (0.18215 for SD 1.x/2.x):
             1 / std of the latents, measured once on training images (LDM sec. 4.3.2 and
             appendix D.1), so that the latents the diffusion model sees have unit variance

The diffusion model lives in the SCALED space z' = s * z:

    training, img2img, inpainting:  z' = s * (a sample of, or the mean of) q(z | x)
    generation (after the loop):    x  = D(z' / s)

Between the two, the UNet only ever sees z', and the noise schedule (Lab 01) assumes z' has
roughly unit variance. The functions below are the encode and decode paths of the pipelines,
the estimate of s, the compression the autoencoder buys, and tiled decoding (`enable_tiling`):
the two cross-fades that hide the seams between tiles, and the tiled decode itself.

Return types (every check of the course): where a docstring says "a number", a Python number,
a NumPy scalar or a one-element tensor is accepted; tensors must have the stated shape, dtype
and device.
"""

import math

import torch

__all__ = ["encode", "decode", "estimate_scaling_factor", "compression_ratio", "blend_v", "blend_h",
           "tiled_decode"]


def encode(vae, images, scaling_factor, sample=False, generator=None):
    """Images in [-1, 1] -> scaled latents z' = s * z, as the diffusers pipelines do.

    `StableDiffusionImg2ImgPipeline.prepare_latents` and the training scripts compute

        z' = s * z,   z ~ q(z | x) = N(mean, std^2)   (a sample; diffusers' `retrieve_latents`
                                                        with sample_mode="sample")
        z' = s * mean                                   (the mode; sample_mode="argmax")

    with s the scaling factor (LDM sec. 4.3.2, appendix D.1). The sample is the
    reparameterisation z = mean + std * eps, with eps drawn by the posterior's own sampling
    method from `generator` (so the same seed gives the pipeline's latents).

    Args:
        vae: a diffusers `AutoencoderKL` (any config: c latent channels, factor f).
        images: (B, 3, H, W) in [-1, 1], on the VAE's device and dtype.
        scaling_factor: a number, s. Use this argument (not the VAE's config), so that the same
            function encodes with any factor.
        sample: False: the posterior mean; True: a sample of the posterior.
        generator: a torch.Generator for the sample (ignored when sample=False).

    Returns:
        (B, c, H/f, W/f) scaled latents z', same dtype and device as the VAE's output.
    """
    # TODO: s times the posterior's mean (or a sample drawn from `generator`), as diffusers' retrieve_latents
    # TODO: followed by StableDiffusionImg2ImgPipeline.prepare_latents (pipeline_stable_diffusion_img2img.py).
    # Stuck? hint("lab05", "encode") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): encode")


def decode(vae, latents, scaling_factor):
    """Scaled latents z' -> images x = D(z' / s), as the end of `StableDiffusionPipeline.__call__`.

    The pipeline undoes the scaling, runs the decoder and keeps the raw image tensor; its image
    processor then maps [-1, 1] to [0, 1] and clips: that postprocessing is NOT part of this
    function.

    Args:
        vae: a diffusers `AutoencoderKL`.
        latents: (B, c, h, w) scaled latents z' (what the UNet's loop produces).
        scaling_factor: a number, s (the same one `encode` multiplied by).

    Returns:
        (B, 3, h*f, w*f) images, about [-1, 1], not clipped. The input is not modified.
    """
    # TODO: D(z' / s), the decode line of StableDiffusionPipeline.__call__ (pipeline_stable_diffusion.py,
    # TODO: the block under `if not output_type == "latent"`), without the image processor.
    # Stuck? hint("lab05", "decode") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): decode")


def estimate_scaling_factor(latents):
    """s = 1 / sigma-hat: the scaling factor latent diffusion sets from unscaled latents.

    LDM (Rombach et al. 2022), sec. 4.3.2 and appendix D.1: the latents are rescaled to unit
    variance by ONE scalar, estimated over ALL n = b*c*h*w components of a batch of training
    latents (batch, channels, height, width together: not per channel, not per image). Appendix
    D.1 writes the estimate out (sigma-hat, around mu-hat, the mean of all components): read it there.

    The convention the check follows: the UNBIASED variance estimator (n - 1 in the denominator),
    which is what LDM's code computed when it set SD's 0.18215 on its first training batch; the
    appendix's formula has n. The two differ by a factor sqrt(n / (n - 1)):
    nothing for the thousands of elements of a real batch (under 1e-3 for n > 500), but 7 % for
    n = 8, and the check also gives you a few elements, where it expects the unbiased estimate.
    The mean is taken out inside the estimate, not from the latents: SD 1.x/2.x scale only; SD3
    and FLUX also shift (`shift_factor`).

    Args:
        latents: (N, c, h, w) UNSCALED latents of training images (samples of q(z | x)), float32
            or float64; at least two elements. Not modified.

    Returns:
        s, a number. Float32 arithmetic is precise enough (the check allows a relative 2e-3 on
        its large batches and 1e-5 on its small one); float64 passes too.
    """
    # TODO: LDM appendix D.1 (Rombach et al. 2022): 1 / the std of every element at once, with the
    # TODO: estimator convention this docstring states.
    # Stuck? hint("lab05", "estimate_scaling_factor") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): estimate_scaling_factor")


def compression_ratio(image_shape, latent_shape):
    """How many numbers of the image each latent number stands for.

    ratio = (C * H * W) / (c * h * w), every dimension counted, a true (not integer) division.
    Shapes are (C, H, W) without the batch: (3, 512, 512) -> (4, 64, 64) is 48 for SD 1.x
    (f = 8 gives 64 spatially, the channels 3 -> 4 take back 4/3); (3, 1024, 1024) ->
    (16, 128, 128) is 12 for SD3 and FLUX.

    Args:
        image_shape: (C, H, W), a tuple of three integers (a list or torch.Size also works).
        latent_shape: (c, h, w), the same kinds.

    Returns:
        The ratio, a number (not rounded: it need not be an integer).
    """
    # TODO: numbers in the image over numbers in the latent (LDM sec. 3 / table 8 counts them this way).
    # Stuck? hint("lab05", "compression_ratio") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): compression_ratio")


def blend_v(a, b, blend_extent):
    """Cross-fade the top rows of tile `b` with the bottom rows of tile `a` (the tile above it):
    diffusers' `AutoencoderKL.blend_v` (autoencoder_kl.py), the seam hider of tiled decoding.

    Over an overlap of e = min(H_a, H_b, blend_extent) rows, row y of b (y = 0 .. e-1) becomes
    a linear mix of itself and the row of a that lies y rows into a's last e rows, the weight
    moving from a towards b as y grows. Rows y >= e of b are kept. The exact weights (where the
    ramp starts, where it ends) are diffusers': read them there; the check compares with
    `AutoencoderKL.blend_v` itself on random tiles.

    Args:
        a: (B, C, H_a, W), the tile above. Not modified.
        b: (B, C, H_b, W), the tile below, same B, C, W, dtype and device as a.
        blend_extent: an integer >= 0; larger than H_a or H_b is allowed (e is then clamped), and
            0 returns b's values unchanged.

    Returns:
        (B, C, H_b, W), same dtype and device as b. diffusers writes the mix into b and returns b;
        you may do the same, or return a new tensor (both pass; a tiled decode must then use
        what you return).
    """
    # TODO: AutoencoderKL.blend_v (diffusers/models/autoencoders/autoencoder_kl.py): the same values, without
    # TODO: a Python loop over rows if you can (one broadcast weight per row).
    # Stuck? hint("lab05", "blend_v") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): blend_v")


def blend_h(a, b, blend_extent):
    """Cross-fade the left columns of tile `b` with the right columns of tile `a` (its left
    neighbour): diffusers' `AutoencoderKL.blend_h` (autoencoder_kl.py), `blend_v` turned 90 degrees.

    Over an overlap of e = min(W_a, W_b, blend_extent) columns, column x of b (x = 0 .. e-1)
    becomes a linear mix of itself and the column of a that lies x columns into a's last e
    columns, the weight moving from a towards b as x grows; columns x >= e of b are kept. The
    exact weights are diffusers' (read them there).

    Args:
        a: (B, C, H, W_a), the tile on the left. Not modified.
        b: (B, C, H, W_b), the tile on the right, same B, C, H, dtype and device as a.
        blend_extent: an integer >= 0 (clamped as in blend_v; 0 keeps b's values).

    Returns:
        (B, C, H, W_b), same dtype and device as b; written into b or a new tensor, as in blend_v.
    """
    # TODO: AutoencoderKL.blend_h (diffusers/models/autoencoders/autoencoder_kl.py): blend_v on the last axis.
    # Stuck? hint("lab05", "blend_h") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): blend_h")


def tiled_decode(vae, z):
    """Decode UNSCALED latents tile by tile, the way `AutoencoderKL.tiled_decode` does
    (autoencoder_kl.py; what `vae.enable_tiling()` switches on for large latents).

    The sizes come from three attributes of the VAE (set in `AutoencoderKL.__init__`):
        vae.tile_latent_min_size    a tile's side in latents
        vae.tile_sample_min_size    the same tile's side in pixels (times the factor f)
        vae.tile_overlap_factor     the fraction of a tile that neighbouring tiles share (0.25)
    From them tiled_decode derives three integers: the stride between the starts of two tiles
    (in latents), the blend extent and the size of each tile that is kept (both in pixels); read
    how, and how it rounds, in its first lines. The tiles form a grid over the latent (the last
    ones cut short by its edge); each is decoded on its own (`vae.post_quant_conv` when
    `vae.config.use_post_quant_conv` is True, then `vae.decoder`), cross-faded with the tile
    above it (`blend_v`) and the tile on its left (`blend_h`), cropped to the kept size, and the
    crops are concatenated. Which state of those two neighbours a tile meets is yours to read in
    diffusers' loop (its blends write into their second argument). Use this module's `blend_v`
    and `blend_h`. The result equals `vae.tiled_decode(z).sample` (the check compares with it on
    random VAEs and tile sizes).

    Args:
        vae: a diffusers `AutoencoderKL`, factor f; whether tiling is enabled does not matter.
        z: (B, c, h, w) latents in the VAE's own units (divide the UNet's by s first), any h, w.

    Returns:
        (B, 3, H', W') images, about [-1, 1], same dtype and device as z: H' = h * f when the
        tiles cover the latent evenly; diffusers' cropping decides it otherwise (match it).
    """
    # TODO: AutoencoderKL.tiled_decode (diffusers/models/autoencoders/autoencoder_kl.py), with this module's
    # TODO: blend_v and blend_h, returning the image tensor.
    # Stuck? hint("lab05", "tiled_decode") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab05): tiled_decode")
