"""Lab 10: where the memory of a diffusion pipeline goes, and how diffusers' switches cut it.

Notation (shapes as in diffusers' attention processors):

    B            images in the batch (the UNet sees 2B with classifier-free guidance)
    H            attention heads of one attention layer
    Lq, Lk       query and key tokens: Lq = Lk = h * w latent pixels for self-attention,
                 Lk = 77 (CLIP) text tokens for cross-attention
    D, Dv        head dimension of queries/keys and of values
    f            the VAE's downsampling factor (8 for every Stable Diffusion and FLUX)
    bytes(dt)    bytes per element: 4 for float32, 2 for float16 AND bfloat16, 1 for float8

Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You Need", eq. 1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D)) V,     Q K^T of shape (B, H, Lq, Lk)

The classic processor (`AttnProcessor`, `Attention.get_attention_scores`) materialises the
(B * H, Lq, Lk) scores and then their softmax: for self-attention that is quadratic in the
number of latent pixels, so quadratic in the image AREA (fourth power of the side). Slicing
(`SlicedAttnProcessor`) computes the same thing slice_size (batch, head) pairs at a time;
`scaled_dot_product_attention` (`AttnProcessor2_0`) uses fused kernels (FlashAttention, Dao et
al. 2022; memory-efficient attention, Rabe & Staats 2021) that never hold the whole matrix.

The functions below, in order: the bytes of one attention matrix, sliced attention, the bytes
of a model's weights, the latent shape of an image, and an analytic model of a pipeline's peak
memory built from them.
"""

import torch

__all__ = ["attention_scores_bytes", "sliced_attention", "param_bytes", "latent_shape", "estimate_peak_memory"]

# How many full-resolution feature maps of the VAE decoder's widest full-resolution layer are
# alive at once at its peak: in the last up block's first ResnetBlock2D, the block's input
# (kept for the shortcut), the GroupNorm output and the SiLU output (diffusers' ResnetBlock2D
# does not run SiLU in place). Counted from the code, for a GPU; on a CPU, oneDNN's copy of a
# convolution's input into its blocked layout adds about half a map more (the notebook measures it).
VAE_LIVE_TENSORS = 3


def attention_scores_bytes(batch, heads, query_len, key_len, dtype):
    """Bytes of one attention-score matrix Q K^T, as `Attention.get_attention_scores` allocates it.

    The classic processor reshapes (B, H, L, D) to (B * H, L, D) (`head_to_batch_dim`) and calls
    `torch.baddbmm(empty(B * H, Lq, Lk), query, key.transpose(-1, -2))`: one score per
    (batch, head, query token, key token), each of `bytes(dtype)` bytes:

        bytes = batch * heads * query_len * key_len * bytes(dtype)

    Args:
        batch: int, the batch the attention layer sees (2 x images with classifier-free guidance).
        heads: int, attention heads H.
        query_len: int, Lq (latent pixels h * w for self-attention).
        key_len: int, Lk (h * w for self-attention; text tokens for cross-attention).
        dtype: torch.dtype of the scores (the activations' dtype): float32, float16, bfloat16, ...

    Returns:
        int, the number of bytes.
    """
    # BEGIN SOLUTION
    # HINT: One score per (batch, head, query, key): batch * heads * query_len * key_len elements.
    # HINT: Bytes per element: dtype.itemsize (float32 4, float16 2, bfloat16 2, float8 1); return a Python int.
    return int(batch) * int(heads) * int(query_len) * int(key_len) * dtype.itemsize
    # END SOLUTION


def sliced_attention(query, key, value, slice_size):
    """softmax(Q K^T / sqrt(D)) V computed `slice_size` (batch, head) pairs at a time, like
    diffusers' `SlicedAttnProcessor`.

    Vaswani et al. 2017, eq. 1, for every (batch, head) pair independently: the softmax runs
    over the KEYS (last axis of the scores) and the dot product sums over the whole head
    dimension D, so neither of those axes may be split. The (batch, head) pairs are
    independent, so diffusers flattens them into one axis of B * H rows (`head_to_batch_dim`)
    and loops over it: only the scores of `slice_size` rows, (slice_size, Lq, Lk), exist at
    any time, instead of (B * H, Lq, Lk). The result equals
    `torch.nn.functional.scaled_dot_product_attention(query, key, value)` (no mask, no dropout,
    scale 1 / sqrt(D)).

    Args:
        query: (B, H, Lq, D).
        key: (B, H, Lk, D).
        value: (B, H, Lk, Dv).
        slice_size: int >= 1, how many of the B * H (batch, head) pairs one slice holds; the
            last slice may be shorter (B * H need not be a multiple of slice_size).

    Returns:
        (B, H, Lq, Dv), same dtype and device as query.
    """
    # BEGIN SOLUTION
    # HINT: Flatten (B, H) into B * H rows, like diffusers' head_to_batch_dim: q = query.reshape(B * H, Lq, D); same for key and value.
    # HINT: out = torch.empty(B * H, Lq, Dv); for start in range(0, B * H, slice_size): work on rows start:start + slice_size only (the last slice may be shorter).
    # HINT: Per slice: scores = (q_s * D ** -0.5) @ k_s.transpose(-1, -2); probs = scores.softmax(dim=-1) (over the KEYS); out_s = probs @ v_s.
    # HINT: Never slice the key axis (each chunk would get its own softmax) or the head dimension (partial dot products); reshape out to (B, H, Lq, Dv).
    B, H, Lq, D = query.shape
    Lk, Dv = key.shape[-2], value.shape[-1]
    q = query.reshape(B * H, Lq, D)  # (B*H, Lq, D)
    k = key.reshape(B * H, Lk, D)  # (B*H, Lk, D)
    v = value.reshape(B * H, Lk, Dv)  # (B*H, Lk, Dv)
    out = torch.empty(B * H, Lq, Dv, dtype=query.dtype, device=query.device)
    scale = D**-0.5
    for start in range(0, B * H, slice_size):
        rows = slice(start, start + slice_size)
        scores = torch.bmm(q[rows] * scale, k[rows].transpose(1, 2))  # (s, Lq, Lk), scaled on the small side
        out[rows] = torch.bmm(scores.softmax(dim=-1), v[rows])  # (s, Lq, Dv)
    return out.reshape(B, H, Lq, Dv)
    # END SOLUTION


def param_bytes(model, dtype=None):
    """Bytes of a model's weights: its parameter count times the bytes per element.

        bytes = sum over parameters p of numel(p) * bytes(dtype)       (dtype given: "if I cast to it")
        bytes = sum over parameters p of numel(p) * bytes(p.dtype)     (dtype=None: as stored now)

    Counts `model.parameters()`: every parameter once, even when two layers share it (tied
    weights), and no buffers (running statistics, position ids). Reads only shapes and dtypes,
    so it works on a model built on the meta device (`with torch.device("meta"): Model(config)`),
    which holds no data: that is how the lab sizes SDXL and FLUX without downloading them.

    Args:
        model: a torch.nn.Module (any device, meta included).
        dtype: torch.dtype the weights would have (torch.float16 for "in half precision"), or
            None for the dtypes they have now (mixed dtypes allowed).

    Returns:
        int, the number of bytes.
    """
    # BEGIN SOLUTION
    # HINT: Iterate model.parameters(): it yields each parameter once (shared ones too) and no buffers; do not use state_dict().
    # HINT: Count p.numel() elements (not tensors); bytes per element dtype.itemsize, or p.element_size() when dtype is None.
    if dtype is None:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize
    # END SOLUTION


def latent_shape(height, width, vae_scale_factor=8, channels=4):
    """(channels, height // f, width // f): the latent a VAE with downsampling factor f makes
    of a height x width image, as `StableDiffusionPipeline.prepare_latents` shapes it
    (`(batch, num_channels_latents, height // vae_scale_factor, width // vae_scale_factor)`,
    without the batch).

    Args:
        height: int, image height in pixels (rows).
        width: int, image width in pixels (columns).
        vae_scale_factor: int f = 2 ** (len(vae.config.block_out_channels) - 1), 8 for SD and FLUX.
        channels: int, latent channels (4 for SD 1.x/2.x/SDXL, 16 for SD3 and FLUX).

    Returns:
        tuple of 3 ints (channels, height // f, width // f), rows before columns.
    """
    # BEGIN SOLUTION
    # HINT: Channels first, then rows (height), then columns (width), like a (C, H, W) tensor; divide the pixels by f with // (ints).
    return (int(channels), int(height) // int(vae_scale_factor), int(width) // int(vae_scale_factor))
    # END SOLUTION


def estimate_peak_memory(n_params, height, width, heads, vae_channels, *, dtype=torch.float16, vae_dtype=None,
                         batch_size=1, cfg=True, vae_scale_factor=8, attn_downsample=1, text_tokens=0,
                         attention="sdpa", slice_size=1):
    """An analytic model of a text-to-image pipeline's peak memory for one call at height x width.

    Three terms; the denoising loop and the VAE decode run one after the other, so only the
    larger of the two activation terms adds to the weights:

        weights     = n_params * bytes(dtype)                 every component resident
        attention   = the denoiser's largest self-attention:
                      Lq = Lk = L = (h // attn_downsample) * (w // attn_downsample) + text_tokens
                      with (h, w) the latent's rows and columns (`latent_shape`) and
                      B' = batch_size * (2 if cfg else 1),
                      "classic": 2 * attention_scores_bytes(B', heads, L, L, dtype)
                                 (`get_attention_scores`: the scores and their softmax coexist)
                      "sliced":  2 * attention_scores_bytes(1, min(slice_size, B' * heads), L, L, dtype)
                      "sdpa":    0 (fused kernels never hold the (L, L) matrix)
        vae_decoder = VAE_LIVE_TENSORS * batch_size * vae_channels * height * width * bytes(vae_dtype)
                      (the widest full-resolution feature maps of the decoder's last up block)
        peak        = weights + max(attention, vae_decoder)

    What it leaves out (so it UNDER-estimates a little): the denoiser's other activations
    (hidden states, feed-forward, convolutions, small next to the scores at high resolution and
    next to the weights at low), the VAE's own mid-block attention at the latent resolution, the
    text encoders' activations, allocator rounding and fragmentation, cuDNN/cuBLAS workspaces and
    the CUDA context (~0.3-0.5 GB, which `torch.cuda.max_memory_allocated` does not count either).

    Args:
        n_params: int, parameters resident during the call (all components; with model CPU
            offload, the largest single component).
        height, width: int, image size in pixels.
        heads: int, heads of the denoiser's largest self-attention layer.
        vae_channels: int, channels of the VAE decoder's widest full-resolution feature map (the
            input of its last up block: `vae.decoder.up_blocks[-1].resnets[0].in_channels`).
        dtype: torch.dtype of the weights and the denoiser's activations.
        vae_dtype: torch.dtype the VAE decodes in (SDXL's VAE upcasts to float32); None: dtype.
        batch_size: int, images per call.
        cfg: bool, classifier-free guidance (the denoiser sees 2 * batch_size).
        vae_scale_factor: int, f.
        attn_downsample: int, how much smaller than the latent the largest attention's token
            grid is per side: 1 for SD 1.x (attention at the latent resolution), 2 for SDXL (its
            first level has no attention) and FLUX (2 x 2 latent patches form one token).
        text_tokens: int, text tokens that join the image tokens in the same attention (FLUX's
            joint attention: 512 T5 tokens); 0 for UNets (text enters by cross-attention).
        attention: "classic" (AttnProcessor), "sliced" (SlicedAttnProcessor) or "sdpa"
            (AttnProcessor2_0 with a fused kernel).
        slice_size: int, (batch, head) pairs per slice for "sliced".

    Returns:
        dict of ints, bytes: {"weights", "attention", "vae_decoder", "peak"}.

    Raises:
        ValueError: for an unknown `attention`.
    """
    # BEGIN SOLUTION
    # HINT: weights = n_params * dtype.itemsize; the VAE term uses (vae_dtype or dtype).itemsize.
    # HINT: (h, w) = latent_shape(height, width, vae_scale_factor)[1:]; L = (h // attn_downsample) * (w // attn_downsample) + text_tokens.
    # HINT: The denoiser's batch doubles with CFG; "classic" holds scores AND probabilities: 2 * attention_scores_bytes(B', heads, L, L, dtype).
    # HINT: "sliced": only min(slice_size, B' * heads) (batch, head) pairs at once; "sdpa": 0; anything else: ValueError.
    # HINT: peak = weights + max(attention, vae_decoder): the loop and the decode do not overlap in time.
    if attention not in ("classic", "sliced", "sdpa"):
        raise ValueError(f"unknown attention {attention!r}: expected 'classic', 'sliced' or 'sdpa'")
    weights = int(n_params) * dtype.itemsize
    _, h, w = latent_shape(height, width, vae_scale_factor)
    tokens = (h // attn_downsample) * (w // attn_downsample) + text_tokens  # L
    rows = batch_size * (2 if cfg else 1)  # B', the denoiser's batch
    if attention == "classic":
        attn = 2 * attention_scores_bytes(rows, heads, tokens, tokens, dtype)
    elif attention == "sliced":
        attn = 2 * attention_scores_bytes(1, min(slice_size, rows * heads), tokens, tokens, dtype)
    else:
        attn = 0
    vae = VAE_LIVE_TENSORS * batch_size * vae_channels * height * width * (vae_dtype or dtype).itemsize
    return {"weights": weights, "attention": attn, "vae_decoder": vae, "peak": weights + max(attn, vae)}
    # END SOLUTION
