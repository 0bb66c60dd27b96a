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
    # BEGIN SOLUTION
    # TODO: the bytes of the (B * H, Lq, Lk) score tensor Attention.get_attention_scores allocates
    # TODO: (diffusers/models/attention_processor.py), for any dtype.
    # HINT 1: Read Attention.get_attention_scores in diffusers/models/attention_processor.py: the
    # HINT 1: torch.empty it hands to baddbmm has the shape of the scores. For bytes per element, see
    # HINT 1: torch.dtype's attributes (help(torch.float16)): one of them is the element size in bytes.
    # HINT 2: Count the elements of that tensor (one per batch, head, query and key), then multiply by the
    # HINT 2: bytes of one element of `dtype`, read from the dtype itself (no table of your own).
    # HINT 3: batch * heads * query_len * key_len * dtype.itemsize
    return int(batch) * int(heads) * int(query_len) * int(key_len) * dtype.itemsize
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: Vaswani et al. 2017, eq. 1, as diffusers' SlicedAttnProcessor.__call__ computes it
    # TODO: (diffusers/models/attention_processor.py): slice_size (batch, head) pairs at a time, in the
    # TODO: inputs' dtype. The check also watches the largest tensor your function creates and
    # TODO: measures how much is alive at once (two slices' scores at most, the previous iteration's included).
    # HINT 1: Read SlicedAttnProcessor.__call__ in diffusers/models/attention_processor.py: what
    # HINT 1: head_to_batch_dim does to the layout, which axis its for-loop runs over, and what
    # HINT 1: get_attention_scores (same file) computes for one slice before the bmm with the values.
    # HINT 2: Fold batch and heads into one axis of B * H rows; make an empty output of B * H rows; walk
    # HINT 2: the rows slice_size at a time (the last slice may be shorter); for each slice compute the
    # HINT 2: scaled scores, their softmax over the keys and the weighted sum of the values, and write
    # HINT 2: them into the output; unfold the output to (B, H, Lq, Dv). Never split the keys or D, and
    # HINT 2: let no slice's scores or softmax stay bound to a name into the next iteration (del them,
    # HINT 2: or reassign one name, as SlicedAttnProcessor does with attn_slice).
    # HINT 3: rows r = start:start + slice_size; out[r] = softmax(q[r] @ k[r]^T * D ** -0.5, dim=-1) @ v[r],
    # HINT 3: with q, k, v of shape (B * H, L, D) (torch.bmm, or @).
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
        out[rows] = torch.bmm(scores.softmax(dim=-1), v[rows])  # (s, Lq, Dv); scores and softmax: two slices
        del scores  # nothing of this slice stays alive into the next
    return out.reshape(B, H, Lq, Dv)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: diffusers' _chunked_feed_forward (diffusers/models/attention.py): the same result as
    # TODO: ff(hidden_states), computed chunk_size positions along chunk_dim at a time; ValueError when
    # TODO: they do not divide evenly. The check counts your calls of ff and the shape of each input.
    # HINT 1: Open diffusers/models/attention.py and find `def _chunked_feed_forward` (a dozen lines,
    # HINT 1: above GatedSelfAttentionDense); see how BasicTransformerBlock.forward calls it with
    # HINT 1: self._chunk_dim and self._chunk_size, set by set_chunk_feed_forward.
    # HINT 2: Check that the length along chunk_dim divides by chunk_size (else ValueError); work out
    # HINT 2: how many chunks that makes; cut the input into those pieces along chunk_dim (torch's
    # HINT 2: chunk wants a NUMBER of chunks, split a chunk LENGTH); run ff on each piece; join the
    # HINT 2: outputs along the same axis.
    # HINT 3: n = hidden_states.shape[chunk_dim]; if n % chunk_size: raise ValueError(...);
    # HINT 3: torch.cat([ff(piece) for piece in hidden_states.chunk(n // chunk_size, dim=chunk_dim)], dim=chunk_dim)
    length = hidden_states.shape[chunk_dim]
    if length % chunk_size != 0:
        raise ValueError(f"hidden_states has {length} positions along dim {chunk_dim}, not a multiple of chunk_size "
                         f"{chunk_size} (see unet.enable_forward_chunking)")
    pieces = hidden_states.chunk(length // chunk_size, dim=chunk_dim)  # each chunk_size long along chunk_dim
    outputs = [ff(piece) for piece in pieces]  # the wide hidden activation exists for one piece at a time
    return torch.cat(outputs, dim=chunk_dim)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the bytes of the model's parameters (each shared one once, no buffers), in `dtype` or as
    # TODO: stored; compare diffusers' ModelMixin.num_parameters (diffusers/models/modeling_utils.py).
    # HINT 1: Read ModelMixin.num_parameters in diffusers/models/modeling_utils.py: which iterator
    # HINT 1: over the weights it uses, and why not state_dict() (buffers; a tied weight under two names).
    # HINT 2: Walk the parameters once; add up their element counts; multiply by the bytes per element of
    # HINT 2: `dtype`, or, when it is None, each parameter by the bytes of its own dtype.
    # HINT 3: sum(p.numel() * (dtype.itemsize if dtype else p.element_size()) for p in model.parameters())
    if dtype is None:
        return sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the latent's (C, rows, columns) as StableDiffusionPipeline.prepare_latents shapes it
    # TODO: (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py), without the batch.
    # HINT 1: Read StableDiffusionPipeline.prepare_latents in
    # HINT 1: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py: the `shape = (...)` line.
    # HINT 2: Channels first; then the image's rows and columns, each divided by the factor and rounded
    # HINT 2: down to an integer (what does prepare_latents do with a size that is not a multiple?).
    # HINT 3: (channels, height // vae_scale_factor, width // vae_scale_factor)
    return (int(channels), int(height) // int(vae_scale_factor), int(width) // int(vae_scale_factor))
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the three terms and the peak of the docstring, built on your attention_scores_bytes and
    # TODO: latent_shape; the switches it models are read in diffusers' AttnProcessor,
    # TODO: SlicedAttnProcessor (diffusers/models/attention_processor.py) and the pipeline's __call__.
    # HINT 1: The docstring is the specification; the reading cells of the page show where each term
    # HINT 1: comes from: get_attention_scores (two matrices), SlicedAttnProcessor's loop (one slice),
    # HINT 1: StableDiffusionPipeline.__call__ (the latent batch doubled by do_classifier_free_guidance).
    # HINT 2: Reject an unknown `attention` first; weights from the parameter count; the latent's rows
    # HINT 2: and columns from latent_shape, then the token count L; the denoiser's batch; the attention
    # HINT 2: term per setting (slicing: never more pairs than exist); the VAE term in the VAE's dtype;
    # HINT 2: the peak adds the weights to the larger activation term (the loop and the decode do not overlap).
    # HINT 3: L = (h // attn_downsample) * (w // attn_downsample) + text_tokens; B' = batch_size * (2 if cfg else 1);
    # HINT 3: classic 2 * attention_scores_bytes(B', heads, L, L, dtype); sliced 2 * attention_scores_bytes(1,
    # HINT 3: min(slice_size, B' * heads), L, L, dtype); vae = VAE_LIVE_TENSORS * batch_size * vae_channels *
    # HINT 3: height * width * (vae_dtype or dtype).itemsize; peak = weights + max(attn, vae).
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
