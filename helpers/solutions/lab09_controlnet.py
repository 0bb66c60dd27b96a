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
(equal to the call inside `StableDiffusionControlNetPipeline.__call__`), the control image in
the format the pipeline's `prepare_image` produces, the per-step on/off weights the pipeline
builds from `control_guidance_start` / `control_guidance_end` (`controlnet_keep`), the
per-residual scales of guess mode (`ControlNetModel.forward`), and, for the third way to
condition, IP-Adapter's decoupled cross-attention (`IPAdapterAttnProcessor2_0`).

IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for
Text-to-Image Diffusion Models", sec. 3.2; diffusers' names on the right):

    c_t = text tokens      (B, L, D)    the text encoder's states       (`encoder_hidden_states`)
    c_i = image tokens     (B, T, D)    the image embedding projected   (`ImageProjection(image_embeds)`,
                                        to T = 4 tokens                  `unet.encoder_hid_proj`)
    W'_k, W'_v             new projections for c_i only                 (`to_k_ip`, `to_v_ip`)
    lambda                 the image prompt's weight                    (`set_ip_adapter_scale`)

    Z = Attention(Q, K, V) + lambda * Attention(Q, K', V')              (paper eq. 5; lambda: sec. 3.3)
      Q = Z_in W_q,   K = c_t W_k,   V = c_t W_v,   K' = c_i W'_k,   V' = c_i W'_v
"""

import torch
from torch import nn

__all__ = ["zero_conv", "controlnet_unet_step", "make_control_image", "controlnet_keep", "guess_mode_scales",
           "ip_adapter_attention"]


def zero_conv(channels):
    """The "zero convolution" of ControlNet (paper Sec. 3.1): Z(x) = W x + b applied at every pixel
    (a 1x1 convolution, `channels` in and out, with a bias), with W = 0 and b = 0 at
    initialisation, exactly as diffusers builds each `controlnet_down_blocks[i]` and
    `controlnet_mid_block` in `ControlNetModel.__init__` (through its helper `zero_module`).

    Its output is zero for every input at initialisation, yet it is trainable: the gradient of
    a loss L with respect to its weight is sum over pixels of dL/dy * x^T, which is not zero
    when the input x (the copy's features) is not.

    Args:
        channels: int, the number of input and output channels.

    Returns:
        nn.Conv2d with in_channels = out_channels = channels, kernel_size (1, 1), a bias,
        weight (channels, channels, 1, 1) and bias (channels,) all zeros, requires_grad True.
    """
    # BEGIN SOLUTION
    # TODO: build the zero conv of ControlNet (paper Sec. 3.1) the way ControlNetModel.__init__ does
    # TODO: (diffusers/models/controlnets/controlnet.py: its controlnet_down_blocks, and zero_module).
    # HINT 1: In diffusers/models/controlnets/controlnet.py read ControlNetModel.__init__ (the lines that
    # HINT 1: fill self.controlnet_down_blocks) and the small function zero_module at the end of the file.
    # HINT 2: Make a 1x1 convolution with as many output channels as input channels, keeping PyTorch's
    # HINT 2: default bias; then overwrite its weight and its bias with zeros, leaving both trainable.
    # HINT 3: conv = nn.Conv2d(channels, channels, kernel_size=1); nn.init.zeros_ on conv.weight and conv.bias
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
    # END SOLUTION


def controlnet_unet_step(unet, controlnet, latents, timestep, text_embeddings, control_image,
                         conditioning_scale=1.0):
    """The noise prediction of one denoising step with a ControlNet, as the loop of
    `StableDiffusionControlNetPipeline.__call__` computes it (guess_mode off, one ControlNet):

        (r_0 .. r_{N-1}, r_mid) = ControlNet(latents, t, text, c)   each r through its zero conv
        eps = UNet(latents, t, text; skip_i + s r_i for every i, mid + s r_mid)

    s multiplies ALL the residuals, down and mid. The ControlNet sees the same latents, timestep
    and text embeddings as the UNet; the UNet takes the residuals through the two keyword
    arguments of `UNet2DConditionModel.forward` made for them (read its docstring: both must be
    given), as lists/tensors in the order the ControlNet returns them. The pipeline passes s
    to the ControlNet as its `conditioning_scale`; multiplying the residuals yourself is the
    same computation.

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
    # BEGIN SOLUTION
    # TODO: one ControlNet-conditioned UNet call, as the denoising loop of StableDiffusionControlNetPipeline.__call__
    # TODO: (diffusers/pipelines/controlnet/pipeline_controlnet.py, "# controlnet(s) inference" to "# predict the
    # TODO: noise residual"); the control image doubled for the guidance batch as its prepare_image does.
    # HINT 1: In pipeline_controlnet.py read the loop of __call__ from "# controlnet(s) inference" to the UNet call,
    # HINT 1: and the last lines of prepare_image (the doubling). In ControlNetModel.forward read its Returns and
    # HINT 1: "# 6. scaling"; in UNet2DConditionModel.forward the docstring of the two *_additional_resid* arguments.
    # HINT 2: If latents has more rows than the control image, stack copies of the whole control batch one after
    # HINT 2: the other until the rows match. Call the ControlNet (tuple output) on the same latents, timestep and
    # HINT 2: text. Scale every down residual and the mid one by s. Call the UNet with both and take its sample.
    # HINT 3: control = torch.cat([control_image] * (N // B)); down, mid = controlnet(latents, timestep,
    # HINT 3: encoder_hidden_states=text_embeddings, controlnet_cond=control, return_dict=False);
    # HINT 3: down = [s * d for d in down]; mid = s * mid; unet(latents, timestep, encoder_hidden_states=
    # HINT 3: text_embeddings, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    n, b = latents.shape[0], control_image.shape[0]
    if n != b:
        control_image = torch.cat([control_image] * (n // b))  # (N, 3, H, W), as prepare_image
    control_image = control_image.to(device=latents.device, dtype=latents.dtype)
    down, mid = controlnet(latents, timestep, encoder_hidden_states=text_embeddings,
                           controlnet_cond=control_image, return_dict=False)
    down = [d * conditioning_scale for d in down]  # one per UNet skip connection
    mid = mid * conditioning_scale
    return unet(latents, timestep, encoder_hidden_states=text_embeddings,
                down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    # END SOLUTION


def make_control_image(mask):
    """A one-channel map (a shape mask or an edge map) as the control image the pipeline feeds
    the ControlNet: what `StableDiffusionControlNetPipeline.prepare_image` returns for the same
    map given as grey-scale PIL images (at the pipeline's height and width, one image per
    prompt, before the guidance doubling). Read how the pipeline builds its control image
    processor (`__init__`: which of VaeImageProcessor's conversions it turns on and off) and
    what `prepare_image` does with a PIL image; the float32 result, channels first, is what
    this function returns for the map given as a tensor.

    A tensor with one channel is NOT converted by the pipeline (`prepare_image` passes it on
    with 1 channel, and the ControlNet's first conv expects 3): this function makes the
    3-channel image.

    Args:
        mask: (B, 1, H, W) or (B, H, W) tensor: bool, uint8 with values 0..255, or float in [0, 1].

    Returns:
        (B, 3, H, W) float32 in [0, 1], on mask's device: white (1) where the map is on.
    """
    # BEGIN SOLUTION
    # TODO: the control image StableDiffusionControlNetPipeline.prepare_image makes from grey PIL maps
    # TODO: (pipeline_controlnet.py: __init__'s control_image_processor, prepare_image; diffusers/image_processor.py).
    # HINT 1: In pipeline_controlnet.py read how __init__ builds self.control_image_processor (its two flags) and
    # HINT 1: prepare_image; in diffusers/image_processor.py, VaeImageProcessor.preprocess (convert_to_rgb,
    # HINT 1: pil_to_numpy: the division by 255, and normalize: skipped here).
    # HINT 2: Give a map without a channel axis one. Bring uint8 levels to [0, 1]; bool and float maps are
    # HINT 2: already there (just float32). Do NOT map to [-1, 1]. Copy the one channel into three.
    # HINT 3: m = mask[:, None] if mask.ndim == 3; m = m.float() / 255 for uint8, else m.float();
    # HINT 3: m.expand(-1, 3, -1, -1) (or repeat(1, 3, 1, 1))
    m = mask if mask.ndim == 4 else mask.unsqueeze(1)  # (B, 1, H, W)
    m = m.float() / 255.0 if m.dtype == torch.uint8 else m.float()
    return m.expand(-1, 3, -1, -1).contiguous()  # (B, 3, H, W)
    # END SOLUTION


def controlnet_keep(num_steps, control_guidance_start=0.0, control_guidance_end=1.0, num_controlnets=1):
    """The per-step on/off weights of the ControlNet(s), exactly as
    `StableDiffusionControlNetPipeline.__call__` builds its list `controlnet_keep` (section
    "# 7.2 Create tensor stating which controlnets to keep", after "# align format for control
    guidance" and the checks of `check_inputs`). At step i the pipeline calls each ControlNet
    with conditioning_scale = s * keep[i] (its own s for each of several ControlNets).

    The window [start, end] is a fraction of the N sampling steps, counted from the noisiest;
    step i (0-based) covers the fractions [i / N, (i + 1) / N]. Which steps get weight 1.0 and
    which 0.0, and what happens to a step that touches an end of the window: read the 7.2
    block (the check tries windows that fall exactly on step boundaries). Several
    ControlNets (a `MultiControlNetModel`) have one window each:

    - start and end both numbers: every ControlNet gets that window;
    - one a list and the other a number: the number is repeated to the list's length;
    - both lists: pair them up, entry by entry.

    Only a Python list counts as "several windows", as in the pipeline: a tuple is not
    accepted (diffusers' alignment tests `isinstance(..., list)`; a tuple would reach
    `check_inputs` unaligned and fail there with a TypeError), so it need not be handled.

    Invalid windows raise ValueError, as `check_inputs` does: lists of different lengths; with
    num_controlnets > 1, lists whose length is not num_controlnets; any start >= end, start < 0,
    or end > 1. With one ControlNet (num_controlnets = 1) and lists, the pipeline keeps
    only each step's first weight (from the first pair).

    Args:
        num_steps: an integer N >= 1, the number of denoising steps (`len(timesteps)`).
        control_guidance_start: a number in [0, 1), or a list of them (one per ControlNet).
        control_guidance_end: a number in (0, 1], or a list of them.
        num_controlnets: an integer K >= 1, how many ControlNets the pipeline holds.

    Returns:
        a list of N entries. K = 1: each entry a number, 1.0 or 0.0. K > 1: each entry a list of
        K numbers (1.0 or 0.0), one per ControlNet, in order.
    """
    # BEGIN SOLUTION
    # TODO: the list controlnet_keep of StableDiffusionControlNetPipeline.__call__
    # TODO: (diffusers/pipelines/controlnet/pipeline_controlnet.py: "# align format for control guidance",
    # TODO: "# 7.2 Create tensor stating which controlnets to keep", and the window checks in check_inputs).
    # HINT 1: In pipeline_controlnet.py, read three places of StableDiffusionControlNetPipeline: in __call__ the
    # HINT 1: block after "# align format for control guidance" and the one after "# 7.2 Create tensor stating
    # HINT 1: which controlnets to keep"; in check_inputs the lines on control_guidance_start / _end.
    # HINT 2: First make two lists of equal length: a lone number becomes a list (as long as the other list, or
    # HINT 2: K long when both are numbers). Validate them as check_inputs does (lengths, start < end, bounds).
    # HINT 2: Then for every step i and every window, the weight is 1 unless the step starts before the window
    # HINT 2: or ends after it. Keep the first weight only (a number) when K is 1, the whole list otherwise.
    # HINT 3: keeps = [1.0 - float(i / N < s or (i + 1) / N > e) for s, e in zip(starts, ends)];
    # HINT 3: keep.append(keeps[0] if K == 1 else keeps) for i in range(N)
    starts, ends = control_guidance_start, control_guidance_end
    many = list  # the pipeline's isinstance(..., list): a tuple is not aligned
    if isinstance(starts, many) and not isinstance(ends, many):
        ends = [ends] * len(starts)
    elif isinstance(ends, many) and not isinstance(starts, many):
        starts = [starts] * len(ends)
    elif not isinstance(starts, many):  # both numbers: one window for every ControlNet
        starts, ends = [starts] * num_controlnets, [ends] * num_controlnets
    if len(starts) != len(ends):
        raise ValueError(f"control_guidance_start has {len(starts)} entries but control_guidance_end {len(ends)}")
    if num_controlnets > 1 and len(starts) != num_controlnets:
        raise ValueError(f"{len(starts)} guidance windows for {num_controlnets} ControlNets")
    for s, e in zip(starts, ends):
        if s >= e or s < 0.0 or e > 1.0:
            raise ValueError(f"invalid control guidance window: start {s}, end {e} (need 0 <= start < end <= 1)")
    keep = []
    for i in range(num_steps):
        starts_late = [i / num_steps < s for s in starts]  # the step begins before the window opens
        ends_late = [(i + 1) / num_steps > e for e in ends]  # the step ends after the window closes
        keeps = [0.0 if a or b else 1.0 for a, b in zip(starts_late, ends_late)]
        keep.append(keeps[0] if num_controlnets == 1 else keeps)
    return keep
    # END SOLUTION


def guess_mode_scales(num_down, conditioning_scale=1.0):
    """The factors guess mode puts on the ControlNet's residuals, as `ControlNetModel.forward`
    computes them ("# 6. scaling", guess_mode on, global_pool_conditions off), instead of the
    single conditioning scale s of the normal mode.

    Guess mode (ControlNet paper Sec. 4, "without prompts") weights the residuals from the
    shallowest to the deepest by growing factors, times s: one factor per down residual
    (r_0 from conv_in first) and one for the mid residual. Which progression, from what to
    what, and which factor the mid residual gets: read "# 6. scaling".

    Args:
        num_down: an integer N >= 1, the number of down residuals (6 for tiny-sd, 12 for SD 1.5).
        conditioning_scale: a number s.

    Returns:
        (num_down + 1,) float32 tensor on the CPU: the N down factors in order, then the mid one.
    """
    # BEGIN SOLUTION
    # TODO: the guess-mode factors of ControlNetModel.forward, step "# 6. scaling"
    # TODO: (diffusers/models/controlnets/controlnet.py); f_k as in the docstring.
    # HINT 1: In diffusers/models/controlnets/controlnet.py, ControlNetModel.forward, read "# 6. scaling": the
    # HINT 1: branch taken when guess_mode is on, which factor each down residual gets and which one the mid one.
    # HINT 2: Space num_down + 1 numbers evenly in the exponent (a log scale), from 10^-1 to 10^0, in float32;
    # HINT 2: multiply them all by s. The first num_down go with the down residuals, the last with the mid one.
    # HINT 3: torch.logspace(-1, 0, num_down + 1) * conditioning_scale
    exponents = torch.linspace(-1.0, 0.0, num_down + 1)  # (N + 1,) from 10^-1 up to 10^0
    factors = torch.pow(10.0, exponents)  # (N + 1,) float32
    return factors * conditioning_scale
    # END SOLUTION


def ip_adapter_attention(attn, hidden_states, text_states, image_states, to_k_ip, to_v_ip, scale=1.0):
    """One cross-attention layer with an IP-Adapter, as `IPAdapterAttnProcessor2_0.__call__`
    computes it for one adapter and one reference image, no attention mask, 3-D hidden states
    (what the UNet's transformer blocks pass):

        Z = Attention(Q, K, V) + lambda * Attention(Q, K', V')      (IP-Adapter paper eq. 5; lambda, sec. 3.3)

    Q comes from hidden_states through the layer's own query projection; K, V from the text
    states through its own key / value projections; K', V' from the image tokens through the
    adapter's to_k_ip / to_v_ip. Both attentions are multi-head (the layer's number of heads,
    each head of width inner_dim / heads), each softmax scaled by 1 / sqrt(head width) as the
    processor's scaled_dot_product_attention calls do (they do not pass attn.scale). They are
    TWO separate softmaxes ("decoupled"): the image tokens do not compete with the text tokens
    for attention weight. Where lambda enters, what happens to the sum, and the layer's last
    steps (an optional residual connection and an output rescaling, which leave Stable
    Diffusion's cross-attention output as it is; the check also tries layers where they do
    not): read the processor's `__call__` after the two attentions.

    Args:
        attn: a diffusers `Attention` module (a cross-attention: `attn2` of a transformer block),
            with heads, to_q, to_k, to_v, to_out; no group_norm, spatial_norm or norm_cross.
        hidden_states: (B, N, C) the image features (queries), N = h * w positions.
        text_states: (B, L, D) the text encoder's states.
        image_states: (B, T, D) the image tokens (the adapter's ImageProjection output).
        to_k_ip, to_v_ip: nn.Linear(D, inner_dim, bias=False), the adapter's projections.
        scale: float lambda; 0 gives the layer without the adapter.

    Returns:
        (B, N, C): the layer's output.
    """
    # BEGIN SOLUTION
    # TODO: IP-Adapter's decoupled cross-attention, as IPAdapterAttnProcessor2_0.__call__
    # TODO: (diffusers/models/attention_processor.py; IP-Adapter paper sec. 3.2, eq. 5) for one adapter.
    # HINT 1: In diffusers/models/attention_processor.py read IPAdapterAttnProcessor2_0.__call__: the text part
    # HINT 1: (to_q, to_k, to_v, the head reshapes, scaled_dot_product_attention), then the loop after
    # HINT 1: "# for ip-adapter" (its branch without masks), then "# linear proj" to the end.
    # HINT 2: Split the queries, the text keys/values and the image keys/values (made by the adapter's own two
    # HINT 2: layers) into heads. Run two separate attentions that share the queries, merge the heads of each,
    # HINT 2: add the image one times the scale to the text one, then the output projection and dropout; finish
    # HINT 2: with the residual connection (if the layer has one) and the division by rescale_output_factor.
    # HINT 3: q = heads(attn.to_q(x)); text = sdpa(q, heads(attn.to_k(c_t)), heads(attn.to_v(c_t)));
    # HINT 3: img = sdpa(q, heads(to_k_ip(c_i)), heads(to_v_ip(c_i))); out = attn.to_out[1](attn.to_out[0](
    # HINT 3: merge(text) + scale * merge(img))); + hidden_states if residual_connection; / rescale_output_factor
    b, n, _ = hidden_states.shape
    h = attn.heads

    def split(t):  # (B, S, inner) -> (B, h, S, inner / h)
        return t.reshape(b, t.shape[1], h, t.shape[2] // h).permute(0, 2, 1, 3)

    def attend(q, k, v):  # one softmax over the keys k, per head
        weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)
        return (weights @ v).permute(0, 2, 1, 3).reshape(b, n, -1)  # heads merged: (B, N, inner)

    q = split(attn.to_q(hidden_states))
    from_text = attend(q, split(attn.to_k(text_states)), split(attn.to_v(text_states)))
    from_image = attend(q, split(to_k_ip(image_states)), split(to_v_ip(image_states)))
    out = attn.to_out[1](attn.to_out[0](from_text + scale * from_image))  # (B, N, C)
    if attn.residual_connection:
        out = out + hidden_states
    return out.div(attn.rescale_output_factor)
    # END SOLUTION
