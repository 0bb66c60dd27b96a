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
    # BEGIN SOLUTION
    # TODO: s times the posterior's mean (or a sample drawn from `generator`), as diffusers' retrieve_latents
    # TODO: followed by StableDiffusionImg2ImgPipeline.prepare_latents (pipeline_stable_diffusion_img2img.py).
    # HINT 1: Read AutoencoderKL.encode (autoencoder_kl.py): what its output object holds; then
    # HINT 1: DiagonalGaussianDistribution (vae.py): its sample and mode methods; then retrieve_latents.
    # HINT 2: Encode the images; take the distribution out of the output; draw a sample from it with the
    # HINT 2: generator when asked, else take its mode (the mean); multiply by the argument s.
    # HINT 3: posterior = vae.encode(images).latent_dist;
    # HINT 3: z = posterior.sample(generator=generator) if sample else posterior.mode(); return z * scaling_factor
    posterior = vae.encode(images).latent_dist  # q(z | x), mean and std of shape (B, c, h, w)
    latents = posterior.sample(generator=generator) if sample else posterior.mode()  # (B, c, h, w), unscaled
    return scaling_factor * latents  # (B, c, h, w), about unit variance when s = 1 / std(z)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: D(z' / s), the decode line of StableDiffusionPipeline.__call__ (pipeline_stable_diffusion.py,
    # TODO: the block under `if not output_type == "latent"`), without the image processor.
    # HINT 1: In StableDiffusionPipeline.__call__, find where output_type is not "latent": the call to the VAE
    # HINT 1: and what is done to the latents first; AutoencoderKL.decode returns a DecoderOutput.
    # HINT 2: Undo encode's scaling into a NEW tensor (the caller keeps its latents), decode it, and return
    # HINT 2: the image tensor inside the output object, neither clipped nor mapped to [0, 1].
    # HINT 3: z = latents / scaling_factor; return vae.decode(z).sample
    z = latents / scaling_factor  # (B, c, h, w), back in the VAE's own units
    return vae.decode(z).sample  # (B, 3, h*f, w*f), about [-1, 1]
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: LDM appendix D.1 (Rombach et al. 2022): 1 / the std of every element at once, with the
    # TODO: estimator convention this docstring states.
    # HINT 1: LDM appendix D.1 writes sigma-hat and mu-hat; diffusers' AutoencoderKL docstring (scaling_factor)
    # HINT 1: calls it "the component-wise standard deviation": one scalar over all components.
    # HINT 2: Flatten everything (no per-channel or per-image std), take the std that subtracts the mean and
    # HINT 2: divides by n - 1 (float32 is enough, float64 costs nothing), and return its inverse as a number.
    # HINT 3: s = 1 / latents.flatten().double().std()   (torch's std is unbiased by default)
    std = latents.detach().flatten().to(torch.float64).std()  # scalar over all b, c, h, w
    return float(1.0 / std)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: numbers in the image over numbers in the latent (LDM sec. 3 / table 8 counts them this way).
    # HINT 1: Nothing to read in diffusers: count the values a (C, H, W) tensor holds, and a (c, h, w) one.
    # HINT 2: Multiply out each shape (channels included), then divide the image's count by the latent's,
    # HINT 2: with a true division.
    # HINT 3: (C * H * W) / (c * h * w), e.g. with math.prod over each shape.
    image_numbers = math.prod(int(d) for d in image_shape)  # C * H * W
    latent_numbers = math.prod(int(d) for d in latent_shape)  # c * h * w
    return float(image_numbers / latent_numbers)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: AutoencoderKL.blend_v (diffusers/models/autoencoders/autoencoder_kl.py): the same values, without
    # TODO: a Python loop over rows if you can (one broadcast weight per row).
    # HINT 1: Read AutoencoderKL.blend_v: how it clamps the extent, which rows of a it reads (counted from
    # HINT 1: the end), and the two weights of row y. Note that it writes into b.
    # HINT 2: Clamp the extent; build the e weights of b (a column of e values, broadcast over B, C, W);
    # HINT 2: mix the last e rows of a with the first e rows of b; careful: a slice "from -e" is the whole
    # HINT 2: tensor when e = 0, so index a's rows from H_a - e.
    # HINT 3: e = min(H_a, H_b, blend_extent); for y < e: b[:, :, y] = a[:, :, H_a - e + y] * (1 - y / e)
    # HINT 3: + b[:, :, y] * (y / e)   (the weight of b is y / e: 0 at the first row, never 1)
    e = min(a.shape[2], b.shape[2], int(blend_extent))  # rows in the overlap
    w = (torch.arange(e, device=b.device, dtype=torch.float64) / e).to(b.dtype).view(1, 1, e, 1)  # weight of b
    out = b.clone()  # (B, C, H_b, W); rows e and below are b's
    out[:, :, :e] = a[:, :, a.shape[2] - e:] * (1 - w) + b[:, :, :e] * w
    return out
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: AutoencoderKL.blend_h (diffusers/models/autoencoders/autoencoder_kl.py): blend_v on the last axis.
    # HINT 1: Read AutoencoderKL.blend_h next to blend_v: the same clamp and weights, on dimension 3.
    # HINT 2: As blend_v, with the weights as a row of e values broadcast over B, C, H, mixing a's last e
    # HINT 2: columns with b's first e columns.
    # HINT 3: e = min(W_a, W_b, blend_extent); for x < e: b[..., x] = a[..., W_a - e + x] * (1 - x / e)
    # HINT 3: + b[..., x] * (x / e)
    e = min(a.shape[3], b.shape[3], int(blend_extent))  # columns in the overlap
    w = (torch.arange(e, device=b.device, dtype=torch.float64) / e).to(b.dtype).view(1, 1, 1, e)  # weight of b
    out = b.clone()  # (B, C, H, W_b); columns e and beyond are b's
    out[..., :e] = a[..., a.shape[3] - e:] * (1 - w) + b[..., :e] * w
    return out
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: AutoencoderKL.tiled_decode (diffusers/models/autoencoders/autoencoder_kl.py), with this module's
    # TODO: blend_v and blend_h, returning the image tensor.
    # HINT 1: Read AutoencoderKL.tiled_decode top to bottom: the three sizes it computes from the tile
    # HINT 1: attributes, the two loops, and which tiles blend_v / blend_h receive (they write into the tile).
    # HINT 2: Compute the stride in latents, the blend extent and the kept size in pixels; decode every
    # HINT 2: tile of a grid; then, row by row, blend each tile with the blended tile above and the blended
    # HINT 2: tile on its left, store it back in the grid, crop it, and concatenate across, then down.
    # HINT 3: stride = int(T * (1 - r)); extent = int(P * r); keep = P - extent; tile = z[:, :, i:i+T, j:j+T];
    # HINT 3: grid[i][j] = blend_v(grid[i-1][j], grid[i][j], extent) if i > 0, then blend_h(grid[i][j-1], ...)
    # HINT 3: if j > 0; row = torch.cat([t[:, :, :keep, :keep] for t in grid[i]], dim=3); torch.cat(rows, dim=2)
    T, P, r = vae.tile_latent_min_size, vae.tile_sample_min_size, vae.tile_overlap_factor
    stride = int(T * (1 - r))  # latents between the starts of two neighbouring tiles
    extent = int(P * r)  # pixels cross-faded at each seam
    keep = P - extent  # pixels of each tile that reach the output, per side
    grid = []
    for i in range(0, z.shape[2], stride):
        tiles = []
        for j in range(0, z.shape[3], stride):
            tile = z[:, :, i:i + T, j:j + T]  # (B, c, <=T, <=T)
            if vae.config.use_post_quant_conv:
                tile = vae.post_quant_conv(tile)
            tiles.append(vae.decoder(tile))  # (B, 3, <=P, <=P)
        grid.append(tiles)
    rows = []
    for i, tiles in enumerate(grid):
        for j in range(len(tiles)):
            if i > 0:
                tiles[j] = blend_v(grid[i - 1][j], tiles[j], extent)  # the tile above, already blended
            if j > 0:
                tiles[j] = blend_h(tiles[j - 1], tiles[j], extent)  # the tile on the left, already blended
        rows.append(torch.cat([t[:, :, :keep, :keep] for t in tiles], dim=3))  # (B, 3, <=keep, W')
    return torch.cat(rows, dim=2)  # (B, 3, H', W')
    # END SOLUTION
