# Your exercise file for Lab 10: Memory Optimization Reading.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab10")` in notebooks/10_memory.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab10')"
# Stuck? hint("lab10", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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

Return types: "an integer" may come as a Python int, a NumPy integer, a one-element tensor or
an integral float (4.0); "a tuple of three integers" also as a list or a torch.Size. The
checks judge values, not types.

The functions below, in order: the bytes of one attention matrix, sliced attention, the
feed-forward chunking of diffusers' transformer blocks, the bytes of a model's weights, the latent shape of an image, and an analytic model of a pipeline's peak
memory built from them.
"""

import torch

__all__ = ["attention_scores_bytes", "sliced_attention", "chunked_feed_forward", "param_bytes", "latent_shape",
           "estimate_peak_memory"]

# How many full-resolution feature maps of the VAE decoder's widest full-resolution layer are
# alive at once at its peak: in the last up block's first ResnetBlock2D, the block's input
# (kept for the shortcut), the GroupNorm output and the SiLU output (diffusers' ResnetBlock2D
# does not run SiLU in place). Counted from the code. The kernel of a convolution adds scratch the
# count leaves out: oneDNN a copy of its input (the peak then reads about half a map above the
# count), PyTorch's im2col kernel (slow_conv2d) nine inputs; Lab 10's experiment 3 measures both.
VAE_LIVE_TENSORS = 3


def attention_scores_bytes(batch, heads, query_len, key_len, dtype):
    """Bytes of one attention-score matrix Q K^T, as `Attention.get_attention_scores` allocates it.

    What to count: the tensor `get_attention_scores` (diffusers/models/attention_processor.py)
    allocates and hands to `torch.baddbmm`, after `head_to_batch_dim` has folded the heads of
    (B, H, L, D) into the batch: read its shape there, then the bytes of one element of `dtype`
    from the dtype itself (torch.dtype has an attribute for it; a tensor's `element_size()` says
    the same), never from a table of your own: the check tries float8 and float64 too.

    Args:
        batch: int, the batch the attention layer sees (2 x images with classifier-free guidance).
        heads: int, attention heads H.
        query_len: int, Lq (latent pixels h * w for self-attention).
        key_len: int, Lk (h * w for self-attention; text tokens for cross-attention).
        dtype: torch.dtype of the scores (the activations' dtype): float32, float16, bfloat16, ...

    Returns:
        an integer, the number of bytes.
    """
    # TODO: the bytes of the (B * H, Lq, Lk) score tensor Attention.get_attention_scores allocates
    # TODO: (diffusers/models/attention_processor.py), for any dtype.
    # Stuck? hint("lab10", "attention_scores_bytes") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): attention_scores_bytes")


def sliced_attention(query, key, value, slice_size):
    """softmax(Q K^T / sqrt(D)) V computed `slice_size` (batch, head) pairs at a time, like
    diffusers' `SlicedAttnProcessor`.

    Vaswani et al. 2017, eq. 1, for every (batch, head) pair independently: the softmax runs
    over the KEYS (last axis of the scores) and the dot product sums over the whole head
    dimension D, so neither of those axes may be split. The (batch, head) pairs are
    independent, so diffusers flattens them into one axis of B * H rows (`head_to_batch_dim`)
    and loops over it. Memory: at any moment at most two (slice_size, Lq, Lk) tensors may be
    alive, one slice's scores and their softmax (`get_attention_scores` holds two), instead of
    the (B * H, Lq, Lk) scores. Tensors of the PREVIOUS iteration count too: one still bound to
    a name while the next slice's scores and softmax are computed adds to those two. The result equals
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
    # TODO: Vaswani et al. 2017, eq. 1, as diffusers' SlicedAttnProcessor.__call__ computes it
    # TODO: (diffusers/models/attention_processor.py): slice_size (batch, head) pairs at a time, in the
    # TODO: inputs' dtype. The check also watches the largest tensor your function creates and
    # TODO: measures how much is alive at once (two slices' scores at most, the previous iteration's included).
    # Stuck? hint("lab10", "sliced_attention") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): sliced_attention")


def chunked_feed_forward(ff, hidden_states, chunk_dim, chunk_size):
    """A transformer block's feed-forward applied chunk by chunk, like diffusers'
    `_chunked_feed_forward` (diffusers/models/attention.py), the function behind
    `BasicTransformerBlock.set_chunk_feed_forward` and `unet.enable_forward_chunking`.

    A feed-forward network acts on every token (and every batch element) independently,

        FF(x)[b, l, :] = W_2 act(W_1 x[b, l, :])      (Vaswani et al. 2017, eq. 2; GEGLU in SD)

    so it may be applied to slices of the batch axis or of the token axis separately and the
    pieces put back together: the result is the same, but the wide hidden activation (4 to 8
    times the model width in SD's GEGLU) exists for one chunk at a time instead of the whole
    (B, L) grid.

    Conventions (those of diffusers): `chunk_size` is the LENGTH of each chunk along
    `chunk_dim` (not the number of chunks); the length of `hidden_states` along `chunk_dim`
    must be a multiple of it; `ff` is called once per chunk, in order, on a tensor of the same
    number of dimensions whose length along `chunk_dim` is `chunk_size`; the outputs are joined
    along `chunk_dim`.

    Args:
        ff: a torch.nn.Module acting on the last axis (diffusers' FeedForward, any module that
            maps (..., dim) to (..., dim_out) position by position).
        hidden_states: (B, L, dim) tensor (any number of leading axes allowed).
        chunk_dim: int, the axis to chunk: 0 (batch) or 1 (tokens) in diffusers.
        chunk_size: int >= 1, the length of each chunk along chunk_dim.

    Returns:
        tensor of the shape, dtype and device of ff(hidden_states): (B, L, dim_out).

    Raises:
        ValueError: when the length of hidden_states along chunk_dim is not a multiple of chunk_size
            (diffusers raises it too, naming `enable_forward_chunking`).
    """
    # TODO: diffusers' _chunked_feed_forward (diffusers/models/attention.py): the same result as
    # TODO: ff(hidden_states), computed chunk_size positions along chunk_dim at a time; ValueError when
    # TODO: they do not divide evenly. The check counts your calls of ff and the shape of each input.
    # Stuck? hint("lab10", "chunked_feed_forward") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): chunked_feed_forward")


def param_bytes(model, dtype=None):
    """Bytes of a model's weights: its parameters, in bytes of `dtype` ("if I cast it to dtype") or,
    with dtype=None, each in the bytes of the dtype it is stored in now.

    What to count: the parameters diffusers' `ModelMixin.num_parameters`
    (diffusers/models/modeling_utils.py) counts: every parameter once, even when two layers
    share it (tied weights), and no buffers (running statistics, position ids). Where to read
    the bytes of one element: from the dtype itself, or from each parameter (torch's
    `Tensor.element_size()`). Reads only shapes and dtypes,
    so it works on a model built on the meta device (`with torch.device("meta"): Model(config)`),
    which holds no data: that is how the lab sizes SDXL and FLUX without downloading them.

    Args:
        model: a torch.nn.Module (any device, meta included).
        dtype: torch.dtype the weights would have (torch.float16 for "in half precision"), or
            None for the dtypes they have now (mixed dtypes allowed).

    Returns:
        an integer, the number of bytes.
    """
    # TODO: the bytes of the model's parameters (each shared one once, no buffers), in `dtype` or as
    # TODO: stored; compare diffusers' ModelMixin.num_parameters (diffusers/models/modeling_utils.py).
    # Stuck? hint("lab10", "param_bytes") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): param_bytes")


def latent_shape(height, width, vae_scale_factor=8, channels=4):
    """The shape of the latent a VAE with downsampling factor f makes of a height x width image,
    as `StableDiffusionPipeline.prepare_latents` shapes it
    (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py: read the shape it
    builds), without the batch.

    Args:
        height: int, image height in pixels (rows).
        width: int, image width in pixels (columns).
        vae_scale_factor: int f = 2 ** (len(vae.config.block_out_channels) - 1), 8 for SD and FLUX.
        channels: int, latent channels (4 for SD 1.x/2.x/SDXL, 16 for SD3 and FLUX).

    Returns:
        a tuple of three integers (channels, rows, columns), channels first; rows and columns
        rounded as prepare_latents rounds them when height or width is not a multiple of f.
    """
    # TODO: the latent's (C, rows, columns) as StableDiffusionPipeline.prepare_latents shapes it
    # TODO: (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py), without the batch.
    # Stuck? hint("lab10", "latent_shape") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): latent_shape")


def estimate_peak_memory(n_params, height, width, heads, vae_channels, *, dtype=torch.float16, vae_dtype=None,
                         batch_size=1, cfg=True, vae_scale_factor=8, attn_downsample=1, text_tokens=0,
                         attention="sdpa", slice_size=1):
    """An analytic model of a text-to-image pipeline's peak memory for one call at height x width.

    Three terms; the denoising loop and the VAE decode run one after the other, so only the
    larger of the two activation terms adds to the weights:

        weights     = n_params * bytes(dtype)                 every component resident
        attention   = the denoiser's largest self-attention, of Lq = Lk = L tokens:
                      L = floor(h / d) · floor(w / d) + T,   d = attn_downsample, T = text_tokens,
                      (h, w) the latent's rows and columns (from `latent_shape`); its batch B' is
                      the number of images, doubled under classifier-free guidance (cfg=True);
                      "classic": two score matrices of B' · heads rows (`get_attention_scores`:
                                 baddbmm's empty input and its output, then the scores
                                 and their softmax, coexist), each of
                                 attention_scores_bytes(...) bytes
                      "sliced":  two score matrices of one slice: slice_size (batch, head) pairs,
                                 or all B' · heads of them if there are fewer
                      "sdpa":    0 (fused kernels never hold the (L, L) matrix)
        vae_decoder = VAE_LIVE_TENSORS · batch_size · vae_channels · height · width · bytes(vae_dtype)
                      (the widest full-resolution feature maps of the decoder's last up block)
        peak        = weights + the larger of attention and vae_decoder

    What it leaves out (so it UNDER-estimates: a little, unless a kernel's scratch is large): the
    denoiser's other activations (hidden states, feed-forward, convolutions, small next to the
    scores at high resolution and next to the weights at low), the VAE's own mid-block attention
    at the latent resolution, the text encoders' activations, the kernels' scratch (oneDNN's copy
    of a convolution's input; the columns of PyTorch's im2col convolution, nine times its input;
    cuDNN's workspaces), allocator rounding and fragmentation, and the CUDA context (~0.3-0.5 GB,
    which `torch.cuda.max_memory_allocated` does not count either).

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
        dict {"weights", "attention", "vae_decoder", "peak"} of integers, bytes.

    Raises:
        ValueError: for an unknown `attention`.
    """
    # TODO: the three terms and the peak of the docstring, built on your attention_scores_bytes and
    # TODO: latent_shape; the switches it models are read in diffusers' AttnProcessor,
    # TODO: SlicedAttnProcessor (diffusers/models/attention_processor.py) and the pipeline's __call__.
    # Stuck? hint("lab10", "estimate_peak_memory") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab10): estimate_peak_memory")
