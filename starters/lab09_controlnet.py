# Your exercise file for Lab 09: ControlNet / Conditioning Reading.
#
# Generated from helpers/solutions/lab09_controlnet.py by `python -m helpers.make_starters`.
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab09")` in notebooks/09_controlnet.ipynb: edits are picked up without
# restarting the kernel. Until a function passes its check, the notebook uses the reference.

"""Lab 09: ControlNet, the way diffusers' `ControlNetModel` and `StableDiffusionControlNetPipeline`
wire it into a frozen Stable Diffusion UNet.

Notation (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models", ControlNet; diffusers' names on the right):

    F(x; Theta)        the frozen UNet encoder block                  (`unet.down_blocks`, `mid_block`)
    F(x; Theta_c)      its trainable copy, initialised from Theta       (`ControlNetModel.from_unet`)
    Z(.; Theta_z)      a 1x1 convolution with weight and bias ZERO      (`controlnet_down_blocks[i]`,
                                                                        `controlnet_mid_block`, made
                                                                        by `zero_module(nn.Conv2d(c, c, 1))`)
    c                  the control map (mask, edges, depth, pose), an image (B, 3, H, W) in [0, 1]
    c_f = E(c)         the map encoded to latent resolution             (`controlnet_cond_embedding`)
    s                  the conditioning scale                           (`controlnet_conditioning_scale`)

One ControlNet block (paper eq. 2):

    y_c = F(x; Theta) + Z(F(x + Z(c; Theta_z1); Theta_c); Theta_z2)

In diffusers the trainable copy runs as a whole network next to the UNet: it returns one
residual per UNet down-block output (the skip connections: conv_in, each resnet/attention
layer, each downsampler; 12 for SD 1.5, 6 for tiny-sd) and one for the mid block, every one through its
own zero conv. The pipeline multiplies ALL of them by s and the UNet adds them: the down
residuals to the skip connections (before the up blocks read them), the mid residual to the
mid block's output:

    down_i  <- down_i + s * Z_i(copy's down_i)        i = 0 .. N-1 (`down_block_additional_residuals`)
    mid     <- mid    + s * Z_mid(copy's mid)                         (`mid_block_additional_residual`)

With every Z zero, all residuals are zero, so a fresh ControlNet leaves the UNet's output
EXACTLY unchanged, while the gradient into Z is not zero (dL/dW_Z = dL/dy * the copy's
features): training starts from the pretrained model and moves away from it smoothly (paper
Sec. 3.1-3.2).

The functions below are, in order: the zero convolution, one ControlNet-conditioned UNet call
(equal to the call inside `StableDiffusionControlNetPipeline.__call__`), and the control image
in the format the pipeline's `prepare_image` produces.
"""

import torch
from torch import nn

__all__ = ["zero_conv", "controlnet_unet_step", "make_control_image"]


def zero_conv(channels):
    """The "zero convolution" of ControlNet (paper Sec. 3.1): a 1x1 nn.Conv2d(channels, channels)
    whose weight and bias are initialised to zero, as diffusers'
    `zero_module(nn.Conv2d(channels, channels, kernel_size=1))` in `ControlNetModel.__init__`.

    Its output is zero for every input at initialisation, yet it is trainable: the gradient of
    a loss L with respect to its weight is sum over pixels of dL/dy * x^T, which is not zero
    when the input x (the copy's features) is not.

    Args:
        channels: int, the number of input and output channels.

    Returns:
        nn.Conv2d with in_channels = out_channels = channels, kernel_size (1, 1), a bias,
        weight (channels, channels, 1, 1) and bias (channels,) all zeros, requires_grad True.
    """
    # TODO: nn.Conv2d(channels, channels, kernel_size=1): 1x1, the same number of channels in and out, with a bias.
    # TODO: PyTorch initialises weight and bias randomly: set both to zero (nn.init.zeros_), keep them trainable.
    raise NotImplementedError("TODO(lab09): zero_conv")


def controlnet_unet_step(unet, controlnet, latents, timestep, text_embeddings, control_image,
                         conditioning_scale=1.0):
    """The noise prediction of one denoising step with a ControlNet, as the loop of
    `StableDiffusionControlNetPipeline.__call__` computes it (guess_mode off):

        down, mid = controlnet(latents, t, encoder_hidden_states=text_embeddings,
                               controlnet_cond=control)          # residuals, each through its zero conv
        down_i = s * down_i,  mid = s * mid                      # s = conditioning_scale, ALL of them
        eps = unet(latents, t, encoder_hidden_states=text_embeddings,
                   down_block_additional_residuals=down,         # added to the skip connections
                   mid_block_additional_residual=mid).sample     # added to the mid block's output

    (the pipeline passes `conditioning_scale=s` to the ControlNet, whose forward multiplies every
    residual; multiplying them here is the same computation).

    Classifier-free guidance: like the pipeline's `latent_model_input`, `latents` and
    `text_embeddings` may hold the doubled batch [unconditional; conditional] of 2B rows for a
    control image of B rows. The control image is then doubled the way `prepare_image` does it,
    `torch.cat([control_image] * 2)`: row i and row B + i both get map i (both halves of the
    guidance batch see the map; only guess_mode gives it to the conditional half alone).

    Args:
        unet: a diffusers UNet2DConditionModel.
        controlnet: a diffusers ControlNetModel made for that UNet.
        latents: (N, C, h, w) the UNet's input (already scaled by `scheduler.scale_model_input`).
        timestep: int or 0-d tensor, the same for the whole batch.
        text_embeddings: (N, L, D) the encoder hidden states, row for row with latents.
        control_image: (B, 3, H, W) float in [0, 1], H = h * vae_scale_factor (the output of
            `make_control_image`), with N = B or N = 2 B (guidance batch).
        conditioning_scale: float s; 0 gives the UNet alone.

    Returns:
        (N, C, h, w) the UNet's output (the noise prediction, before guidance is combined).
    """
    # TODO: Under guidance latents has 2B rows and control_image B: repeat it as torch.cat([control_image] * (N // B)) (uncond half, then cond half), not repeat_interleave.
    # TODO: down, mid = controlnet(latents, timestep, encoder_hidden_states=text_embeddings, controlnet_cond=..., return_dict=False)
    # TODO: Multiply EVERY down residual AND the mid residual by conditioning_scale.
    # TODO: unet(..., down_block_additional_residuals=down, mid_block_additional_residual=mid).sample: the lists in the order the ControlNet returns them.
    raise NotImplementedError("TODO(lab09): controlnet_unet_step")


def make_control_image(mask):
    """A one-channel map (a shape mask or an edge map) as the control image the pipeline feeds
    the ControlNet: what `StableDiffusionControlNetPipeline.prepare_image` returns for the same
    map given as grey-scale PIL images (at the pipeline's height and width, one image per
    prompt, before the guidance doubling):

        PIL "L" -> RGB (do_convert_rgb): the grey value copied to 3 channels
        uint8 / 255 -> [0, 1], and NO normalisation to [-1, 1] (the control processor is
        built with do_normalize=False, unlike the VAE's image processor)
        -> float32 (B, 3, H, W), channels first

    A tensor with one channel is NOT converted by the pipeline (`prepare_image` passes it on
    with 1 channel, and the ControlNet's first conv expects 3): this function makes the
    3-channel image.

    Args:
        mask: (B, 1, H, W) or (B, H, W) tensor: bool, uint8 with values 0..255, or float in [0, 1].

    Returns:
        (B, 3, H, W) float32 in [0, 1], on mask's device: white (1) where the map is on.
    """
    # TODO: (B, H, W) -> (B, 1, H, W); uint8 means 0..255: divide by 255; bool and float: to float32 as they are.
    # TODO: Keep [0, 1]: the pipeline's control_image_processor has do_normalize=False (no 2x - 1).
    # TODO: Three identical channels (RGB of a grey image): expand or repeat along dim 1.
    raise NotImplementedError("TODO(lab09): make_control_image")
