# Your exercise file for Lab 07: UNet / DiT Conditioning.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab07")` in notebooks/07_unet_dit_conditioning.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab07')"
# Stuck? hint("lab07", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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

Attention (Vaswani et al. 2017, eq. 1, with multiple heads, sec. 3.2.2) lets each of N query
tokens take a weighted average of M value tokens; in diffusers' `Attention` the queries come
from the image and the keys and values from the text (cross-attention) or from the image
itself (self-attention). Each head works on its own slice of the channels.

The functions below are, in order: the timestep embedding, multi-head attention, one
diffusers `Attention` module computed from its own weights, patchify / unpatchify, the 2-D
sin-cos position embedding a DiT adds to its patch tokens, and the adaLN modulation. Each
equals the matching piece of diffusers.
"""

import math

import torch

__all__ = ["timestep_embedding", "attention", "cross_attention", "patchify", "unpatchify", "sincos_pos_embed_2d",
           "modulate"]


def timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                       max_period=10000):
    """Sinusoidal timestep embedding (Vaswani et al. 2017, sec. 3.5; DDPM, Ho et al. 2020),
    equal to `diffusers.models.embeddings.get_timestep_embedding` for every argument.

    D = embedding_dim. About D/2 frequencies, from 1 radian per step down to about
    1/max_period; each timestep gets the sine and the cosine of its angle at every frequency.
    What you read in get_timestep_embedding (the notebook's Reading 1 prints it): how the
    frequencies are built from max_period and downscale_freq_shift, where scale enters, how the
    sines and cosines are laid out along the D channels and what flip_sin_to_cos changes in
    that layout, and what the last column holds when D is odd. Stable Diffusion's UNet calls
    it with flip_sin_to_cos=True, downscale_freq_shift=0; DDPM's original code corresponds to
    False and 1. The fast frequencies tell neighbouring timesteps apart, the slow ones span the
    whole range of t; the MLP after it (`TimestepEmbedding`) learns what to do with them.
    diffusers builds the frequencies in float32 and casts t to float32 before the product.

    Args:
        timesteps: (B,) int or float tensor, one timestep per sample (may be fractional).
        embedding_dim: an integer D.
        flip_sin_to_cos: bool, diffusers' flag of that name.
        downscale_freq_shift: a number (1 or 0 in practice).
        scale: a number (1 in the UNets; larger when t comes in [0, 1]).
        max_period: a number, 10000 by default.

    Returns:
        (B, embedding_dim) float32, on timesteps' device.
    """
    # TODO: the sinusoidal embedding of the docstring, exactly as get_timestep_embedding in
    # TODO: diffusers/models/embeddings.py computes it (every flag, the channel layout, the odd width).
    # Stuck? hint("lab07", "timestep_embedding") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): timestep_embedding")


def attention(query, key, value, heads):
    """Multi-head scaled dot-product attention on projected tokens (Vaswani et al. 2017,
    eq. 1 and sec. 3.2.2), as diffusers' attention processors compute it between the
    `to_q/to_k/to_v` projections and `to_out`.

    Notation: D = heads * d channels per token, N queries, M keys. Head k (k = 0 .. heads-1)
    owns the CONTIGUOUS channels k*d .. (k+1)*d - 1 of every token; each head attends on its
    own (eq. 1 of the paper, on its d channels), and its result goes back to its channels.

    Must equal `torch.nn.functional.scaled_dot_product_attention` on the split heads (read how
    `AttnProcessor2_0.__call__` splits and merges them) and `AttnProcessor`'s explicit path
    (`Attention.get_attention_scores`: read which dimension its scale uses).

    Args:
        query: (B, N, D) queries (the image tokens).
        key: (B, M, D) keys (image tokens for self-attention, text tokens for cross-attention).
        value: (B, M, D) values, like key.
        heads: an integer; D must be divisible by it.

    Returns:
        (B, N, D), query's dtype and device.
    """
    # TODO: multi-head attention of the docstring, as AttnProcessor2_0.__call__ in
    # TODO: diffusers/models/attention_processor.py does it between to_q/to_k/to_v and to_out.
    # Stuck? hint("lab07", "attention") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): attention")


def cross_attention(attn_module, hidden_states, encoder_hidden_states=None):
    """One diffusers `Attention` module (the `attn1` / `attn2` of a UNet or PixArt block),
    computed from its own layers (`to_q`, `to_k`, `to_v`, `to_out`) and your `attention`
    over `attn_module.heads` heads: the output of the module's own forward.

    What you read in `AttnProcessor2_0.__call__` (the notebook's Reading 3 prints it): which
    of the two inputs each projection is applied to, what stands in for the text when
    encoder_hidden_states is None (self-attention, `attn1`), and what the module applies after
    the attention. In a UNet's `attn2` the queries come from the latent pixels of one
    resolution (N = h * w) and the keys from the prompt's L token states (width
    `cross_attention_dim`, 768 for SD 1.5): every pixel reads a weighted average of the text
    tokens (Rombach et al. 2022, sec. 3.3). Only the modules used in SD and PixArt blocks are
    covered: no group norm, no norm_cross, no residual connection inside the module,
    rescale_output_factor = 1, eval mode.

    Args:
        attn_module: a `diffusers.models.attention_processor.Attention`.
        hidden_states: (B, N, query_dim) the image tokens.
        encoder_hidden_states: (B, M, cross_attention_dim) the text tokens, or None.

    Returns:
        (B, N, query_dim), equal to `attn_module(hidden_states, encoder_hidden_states)`.
    """
    # TODO: the module's forward from its own layers and your attention, as AttnProcessor2_0.__call__
    # TODO: (diffusers/models/attention_processor.py) runs it for SD's and PixArt's blocks.
    # Stuck? hint("lab07", "cross_attention") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): cross_attention")


def patchify(latents, patch_size):
    """Cut a latent into p x p patches, one token per patch, as a DiT's patch embedding sees it.

    Notation: latent of shape (B, C, H, W), patch size p, a grid of R = H/p rows and
    K = W/p columns of non-overlapping p x p patches. The convention:

    - token order: the patches row by row (the grid's first row left to right, then the
      second row, ...), so token n = r*K + c is the patch in grid row r, column c;
    - inside a token: the patch's C*p*p values channel by channel, and within a channel its
      p x p block row by row.

    That is the order of a Conv2d weight (D, C, p, p): a linear layer on these tokens with that
    weight flattened to (D, C*p*p) is diffusers' `PatchEmbed.proj` (a Conv2d with kernel =
    stride = p), whose output `PatchEmbed` flattens to tokens in the same order.

    Args:
        latents: (B, C, H, W), H and W divisible by patch_size.
        patch_size: an integer p.

    Returns:
        (B, (H/p) * (W/p), C * p * p), same dtype and device.
    """
    # TODO: the token layout of the docstring, the layout PatchEmbed.forward
    # TODO: (diffusers/models/embeddings.py) produces with its convolution and flatten.
    # Stuck? hint("lab07", "patchify") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): patchify")


def unpatchify(tokens, patch_size, height, width, channels):
    """The exact inverse of `patchify`: tokens (B, (H/p)(W/p), C*p*p) -> (B, C, H, W).

    `height` and `width` are the LATENT's H and W (not the patch grid's). The convention is
    patchify's: tokens row by row over the grid of patches, (C, p, p) inside a token, and
    unpatchify(patchify(z, p), p, H, W, C) == z exactly.

    diffusers' transformers end with the same rearrangement of their `proj_out` tokens,
    e.g. `PixArtTransformer2DModel`'s "nhwpqc->nchpwq"; there the values inside a token are
    ordered (p, p, C), the layout of proj_out's weights. Which inner order a model uses is a
    convention fixed by its trained weights; ours is patchify's (C, p, p), so unpatchify
    undoes patchify exactly.

    Args:
        tokens: (B, (height/p) * (width/p), channels * p * p).
        patch_size: an integer p.
        height, width: integers, the latent's H and W, divisible by p.
        channels: an integer C.

    Returns:
        (B, C, H, W), same dtype and device.
    """
    # TODO: undo patchify exactly (the docstring's convention); compare the end of
    # TODO: PixArtTransformer2DModel.forward (diffusers/models/transformers/pixart_transformer_2d.py).
    # Stuck? hint("lab07", "unpatchify") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): unpatchify")


def sincos_pos_embed_2d(embed_dim, grid_size, base_size=16, interpolation_scale=1.0):
    """The fixed 2-D sin-cos position embedding of the patch tokens, as
    `diffusers.models.embeddings.get_2d_sincos_pos_embed` (DiT, PixArt, SD3's PatchEmbed).

    Attention is blind to order (permuting the tokens permutes its output), so a DiT adds to
    every patch token a vector that encodes where its patch sits: `PatchEmbed.forward` returns
    `proj(latent)` as tokens PLUS this table. Notation: D = embed_dim (divisible by 4), a grid
    of R rows and K columns of patches (grid_size = R = K when it is one integer, or (R, K)),
    b = base_size, s = interpolation_scale.

    The table has one row per token, tokens row by row (n = r*K + c, as `patchify`). Each row
    is the concatenation of two 1-D sin-cos codes of width D/2 (the timestep embedding's
    form), one of the token's column position and one of its row position. What you read in
    diffusers: how a position is rescaled by b and s (PixArt's trick, so that a model trained
    at one resolution sees familiar positions at another: a grid of b patches at s = 1 has
    positions 0, 1, 2, ...), which frequencies the 1-D code uses, and which of the two codes
    comes first (the "xy" meshgrid and the comments around it need care).

    diffusers computes the positions in float32 and the codes in float64, and PatchEmbed
    stores the table as float32 (1, R*K, D).

    Args:
        embed_dim: an integer D, divisible by 4.
        grid_size: an integer (a square grid), or a pair of integers (R, K) = (rows, columns).
        base_size: a number b, the grid size whose positions are 0, 1, 2, ... (PatchEmbed
            passes height // patch_size of the size the model was built for).
        interpolation_scale: a number s > 0.

    Returns:
        (R * K, D) float tensor (float32 or float64: the check compares values), rows of the
        grid one after the other.
    """
    # TODO: the table of the docstring, equal to get_2d_sincos_pos_embed in diffusers/models/embeddings.py
    # TODO: (read it with get_2d_sincos_pos_embed_from_grid and get_1d_sincos_pos_embed_from_grid below it).
    # Stuck? hint("lab07", "sincos_pos_embed_2d") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): sincos_pos_embed_2d")


def modulate(x, shift, scale):
    """adaLN modulation (Peebles & Xie 2023, DiT, sec. 3.2): applied to the output of a
    LayerNorm WITHOUT its own affine weights, it scales and shifts the normalised tokens per
    sample and per channel, with `scale` and `shift` regressed from the timestep (and class or
    pooled text) embedding, in the form where scale = shift = 0 leaves x unchanged. Read the
    form in diffusers: the modulation line of `AdaLayerNormZero.forward`
    (diffusers/models/normalization.py, DiT) or of the "ada_norm_single" branch of
    `BasicTransformerBlock.forward` (diffusers/models/attention.py, PixArt; Reading 4).

    (adaLN-Zero also regresses a gate for each residual branch, applied outside this
    function; the gate starts at zero, and that is what makes every DiT block start as the
    identity.)

    Args:
        x: (B, N, D) normalised tokens.
        shift: (B, D) one value per sample and channel, the same for all N tokens, or
            (B, 1, D) / (B, N, D), already broadcastable against x.
        scale: the same shape as shift.

    Returns:
        (B, N, D), x's shape, dtype and device.
    """
    # TODO: adaLN's modulation of the docstring, as AdaLayerNormZero.forward in diffusers/models/normalization.py
    # TODO: applies it (and BasicTransformerBlock.forward in diffusers/models/attention.py for PixArt).
    # Stuck? hint("lab07", "modulate") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab07): modulate")
