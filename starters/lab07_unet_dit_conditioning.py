# Your exercise file for Lab 07: UNet / DiT Conditioning.
#
# Generated from helpers/solutions/lab07_unet_dit_conditioning.py by `python -m helpers.make_starters`.
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab07")` in notebooks/07_unet_dit_conditioning.ipynb: edits are picked up without
# restarting the kernel. Until a function passes its check, the notebook uses the reference.

"""Lab 07: how a denoiser is conditioned, in a UNet (Stable Diffusion) and in a DiT (PixArt).

Three signals enter a text-to-image denoiser eps_theta(x_t, t, c):

    t   the timestep: a sinusoidal embedding (Vaswani et al. 2017, sec. 3.5, reused by DDPM,
        Ho et al. 2020, App. B), then an MLP; the UNet ADDS it to every ResNet block's
        features, a DiT turns it into per-channel shift / scale / gate of its LayerNorms
        (adaLN, Peebles & Xie 2023, sec. 3.2; "adaLN-single" in PixArt-alpha, Chen et al. 2023)
    c   the prompt: token states of the text encoder (B, L, D_text), read through
        CROSS-attention: queries from the image, keys and values from the text
        (Rombach et al. 2022, "Latent Diffusion", sec. 3.3)
    x_t the noisy latent: a feature map (B, C, H, W) in the UNet; in a DiT, cut into p x p
        patches, one token per patch (Dosovitskiy et al. 2021, ViT; Peebles & Xie 2023)

Attention (Vaswani et al. 2017, eq. 1, with multiple heads, sec. 3.2.2), as diffusers'
`Attention` computes it for a query sequence of N tokens and a key/value sequence of M:

    Q = X W_q (B, N, D),  K = Y W_k (B, M, D),  V = Y W_v (B, M, D)   (Y = X: self-attention)
    split D = heads * d, one head per slice of d channels: (B, heads, N, d)
    out_h = softmax(Q_h K_h^T / sqrt(d)) V_h                           (B, heads, N, d)
    concatenate the heads back: (B, N, D), then the output projection W_o

The functions below are, in order: the timestep embedding, multi-head attention, one
diffusers `Attention` module computed from its own weights, patchify / unpatchify, and the
adaLN modulation. Each equals the matching piece of diffusers.
"""

import math

import torch

__all__ = ["timestep_embedding", "attention", "cross_attention", "patchify", "unpatchify", "modulate"]


def timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                       max_period=10000):
    """Sinusoidal timestep embedding, as `diffusers.models.embeddings.get_timestep_embedding`.

    With half = embedding_dim // 2 and frequencies (Vaswani et al. 2017, sec. 3.5):

        f_i   = exp(-ln(max_period) * i / (half - downscale_freq_shift)),   i = 0 .. half - 1
        arg_i = scale * t * f_i
        emb   = [sin(arg_0 .. arg_{half-1}), cos(arg_0 .. arg_{half-1})]      (flip_sin_to_cos=False)
        emb   = [cos(...), sin(...)]                                          (flip_sin_to_cos=True)

    then one zero column when embedding_dim is odd. Stable Diffusion's UNet uses
    flip_sin_to_cos=True, freq_shift=0 (cos first, frequencies from 1 down to
    max_period^(-(half-1)/half), just above 1/max_period); DDPM's original code is sin first
    with shift 1 (the slowest frequency exactly 1/max_period). The fastest frequency
    (f_0 = 1 rad per step) tells neighbouring timesteps apart, the slowest spans the whole
    range of t; the MLP after it (`TimestepEmbedding`) learns what to do with them.

    Args:
        timesteps: (B,) int or float tensor, one timestep per sample (may be fractional).
        embedding_dim: int, the output width.
        flip_sin_to_cos: bool, cos half first when True.
        downscale_freq_shift: float, the shift in the exponent's denominator (1 or 0 in practice).
        scale: float, multiplies the arguments t * f_i (before sin / cos).
        max_period: float, the slowest period.

    Returns:
        (B, embedding_dim) float32, on timesteps' device.
    """
    # TODO: half = embedding_dim // 2; exponent = -ln(max_period) * arange(half) / (half - downscale_freq_shift), in float32.
    # TODO: args = scale * timesteps[:, None].float() * exp(exponent)[None, :]  -> (B, half).
    # TODO: cat([sin(args), cos(args)], dim=-1); swap the two halves when flip_sin_to_cos; pad one zero column when embedding_dim is odd.
    raise NotImplementedError("TODO(lab07): timestep_embedding")


def attention(query, key, value, heads):
    """Multi-head scaled dot-product attention on projected tokens (Vaswani et al. 2017,
    eq. 1 and sec. 3.2.2), as diffusers' attention processors compute it between the
    `to_q/to_k/to_v` projections and `to_out`.

        split:   (B, N, D) -> (B, heads, N, d), d = D / heads: head h owns channels
                 h*d .. (h+1)*d - 1 of every token (a view (B, N, heads, d), then transpose)
        scores:  S = Q K^T / sqrt(d)                          (B, heads, N, M)
        weights: softmax over the M keys (the last axis): each query's weights sum to 1
        out:     weights V                                    (B, heads, N, d)
        merge:   transpose back and reshape to (B, N, D)

    Equal to `torch.nn.functional.scaled_dot_product_attention` on the split heads (what
    `AttnProcessor2_0` calls) and to `AttnProcessor`'s explicit `get_attention_scores`
    (scale = d ** -0.5, d the HEAD dim, not D).

    Args:
        query: (B, N, D) queries (the image tokens).
        key: (B, M, D) keys (image tokens for self-attention, text tokens for cross-attention).
        value: (B, M, D) values, like key.
        heads: int, number of heads; D must be divisible by it.

    Returns:
        (B, N, D), query's dtype and device.
    """
    # TODO: d = D // heads; q = query.view(B, N, heads, d).transpose(1, 2) -> (B, heads, N, d); same for key and value with M.
    # TODO: scores = q @ k.transpose(-1, -2) / sqrt(d): d is the HEAD dim. softmax over the LAST axis (the keys).
    # TODO: out = weights @ v -> (B, heads, N, d); .transpose(1, 2).reshape(B, N, D) to merge the heads.
    raise NotImplementedError("TODO(lab07): attention")


def cross_attention(attn_module, hidden_states, encoder_hidden_states=None):
    """One diffusers `Attention` module (the `attn1` / `attn2` of a UNet or PixArt block),
    computed from its own weights with `attention` above:

        Q = to_q(hidden_states)                                    (B, N, inner)
        K = to_k(encoder_hidden_states), V = to_v(encoder_hidden_states)  (B, M, inner)
            (encoder_hidden_states None: self-attention, K and V from hidden_states too)
        out = to_out[1](to_out[0](attention(Q, K, V, attn_module.heads)))  (B, N, query_dim)

    `to_out[0]` is the output projection, `to_out[1]` a Dropout (identity in eval mode).
    In a UNet's `attn2` the queries are the latent pixels of one resolution (N = h * w) and
    the keys the prompt's L token states (width `cross_attention_dim`, 768 for SD 1.5):
    every pixel reads a weighted average of the text tokens (Rombach et al. 2022, sec. 3.3).
    Only the modules used in SD and PixArt blocks are covered: no group norm, no
    norm_cross, no residual connection inside the module, rescale_output_factor = 1.

    Args:
        attn_module: a `diffusers.models.attention_processor.Attention`.
        hidden_states: (B, N, query_dim) the image tokens.
        encoder_hidden_states: (B, M, cross_attention_dim) the text tokens, or None.

    Returns:
        (B, N, query_dim), equal to `attn_module(hidden_states, encoder_hidden_states)`.
    """
    # TODO: context = hidden_states if encoder_hidden_states is None else encoder_hidden_states.
    # TODO: queries ALWAYS come from hidden_states (the image); keys and values from the context (the text).
    # TODO: attention(q, k, v, attn_module.heads), then attn_module.to_out[0] (linear) and to_out[1] (dropout).
    raise NotImplementedError("TODO(lab07): cross_attention")


def patchify(latents, patch_size):
    """Cut a latent into p x p patches, one token per patch, as a DiT's patch embedding sees it.

        (B, C, H, W) -> (B, H/p, p, W/p, p) per channel -> tokens (B, (H/p)(W/p), C*p*p)

    Token order is row-major over the patch grid: token i*(W/p) + j is the patch in row i,
    column j (that is `PatchEmbed`'s `conv(x).flatten(2).transpose(1, 2)`). Inside a token the
    values are ordered (C, p, p), channel first, then row, then column, the order of a
    Conv2d weight (D, C, p, p): so `patchify(x, p) @ W.reshape(D, -1).T + b` IS diffusers'
    `PatchEmbed.proj` (a Conv2d with kernel = stride = p), flattened to tokens.

    Args:
        latents: (B, C, H, W), H and W divisible by patch_size.
        patch_size: int p.

    Returns:
        (B, (H/p) * (W/p), C * p * p), same dtype and device.
    """
    # TODO: x.reshape(B, C, H/p, p, W/p, p): axes (B, C, row, dy, col, dx).
    # TODO: permute to (B, row, col, C, dy, dx) so the grid axes come first, row before col; then reshape to (B, rows*cols, C*p*p).
    raise NotImplementedError("TODO(lab07): patchify")


def unpatchify(tokens, patch_size, height, width, channels):
    """The exact inverse of `patchify`: tokens (B, (H/p)(W/p), C*p*p) -> (B, C, H, W).

    `height` and `width` are the LATENT's H and W (not the patch grid's). diffusers'
    transformers end with the same rearrangement of their `proj_out` tokens, e.g.
    `PixArtTransformer2DModel`: reshape (B, H/p, W/p, p, p, C), einsum "nhwpqc->nchpwq";
    there the values inside a token are ordered (p, p, C), the layout of proj_out's
    weights. Which inner order a model uses is a convention fixed by its trained weights;
    ours is patchify's (C, p, p), so unpatchify(patchify(x)) == x exactly.

    Args:
        tokens: (B, (height/p) * (width/p), channels * p * p).
        patch_size: int p.
        height, width: int, the latent's H and W, divisible by p.
        channels: int C.

    Returns:
        (B, C, H, W), same dtype and device.
    """
    # TODO: reshape to (B, rows, cols, C, p, p), permute back to (B, C, rows, p, cols, p), reshape to (B, C, H, W).
    raise NotImplementedError("TODO(lab07): unpatchify")


def modulate(x, shift, scale):
    """adaLN modulation (Peebles & Xie 2023, DiT, sec. 3.2 and their `modulate`):

        out = x * (1 + scale) + shift

    applied to the LayerNorm output (a LayerNorm WITHOUT its own affine weights): the
    timestep (and class or pooled text) embedding sets a per-sample, per-channel scale and
    shift. The "1 +" makes scale = shift = 0 the identity, which is how DiT initialises it
    (adaLN-Zero: the modulation MLP's last layer is zeroed, plus gates zeroed, so every block
    starts as the identity). diffusers: `AdaLayerNormZero.forward` (DiT),
    `norm_hidden_states * (1 + scale_msa) + shift_msa` in `BasicTransformerBlock` for
    PixArt's "ada_norm_single".

    Args:
        x: (B, N, D) normalised tokens.
        shift: (B, D) one shift per sample and channel (broadcast over the N tokens), or
            (B, 1, D) / (B, N, D) already broadcastable.
        scale: the same shape as shift.

    Returns:
        (B, N, D), x's shape, dtype and device.
    """
    # TODO: a (B, D) shift/scale must be unsqueezed to (B, 1, D) to broadcast over the tokens (x is (B, N, D)).
    # TODO: out = x * (1 + scale) + shift: with scale = 0 and shift = 0 the block is the identity.
    raise NotImplementedError("TODO(lab07): modulate")
