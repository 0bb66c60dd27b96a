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
    # BEGIN SOLUTION
    # TODO: the sinusoidal embedding of the docstring, exactly as get_timestep_embedding in
    # TODO: diffusers/models/embeddings.py computes it (every flag, the channel layout, the odd width).
    # HINT 1: Open diffusers/models/embeddings.py, function get_timestep_embedding: read from "half_dim =" to
    # HINT 1: the final padding. The Reading section of the notebook shows those lines (show_source).
    # HINT 2: Build the h frequencies as exp of a linear ramp (float32, on t's device); take the outer product of
    # HINT 2: the timesteps with them and multiply by scale; concatenate the sin half and the cos half; swap the
    # HINT 2: halves for flip_sin_to_cos; pad one zero column when D is odd.
    # HINT 3: half = embedding_dim // 2; exponent = -ln(max_period) * arange(half) / (half - downscale_freq_shift);
    # HINT 3: args = scale * timesteps[:, None].float() * exp(exponent)[None, :]; emb = cat([sin(args), cos(args)], -1);
    # HINT 3: flip: cat([emb[:, half:], emb[:, :half]], -1); odd: F.pad(emb, (0, 1)).
    half = embedding_dim // 2
    ramp = torch.arange(half, dtype=torch.float32, device=timesteps.device)  # (h,)
    freqs = torch.exp(-math.log(max_period) * ramp / (half - downscale_freq_shift))  # (h,) from 1 downwards
    angles = scale * (timesteps.float()[:, None] * freqs[None, :])  # (B, h)
    halves = [torch.sin(angles), torch.cos(angles)]
    if flip_sin_to_cos:
        halves.reverse()
    emb = torch.cat(halves, dim=-1)  # (B, 2h)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: multi-head attention of the docstring, as AttnProcessor2_0.__call__ in
    # TODO: diffusers/models/attention_processor.py does it between to_q/to_k/to_v and to_out.
    # HINT 1: In diffusers/models/attention_processor.py, class AttnProcessor2_0, __call__: read the lines from
    # HINT 1: "head_dim = inner_dim // attn.heads" to the reshape after F.scaled_dot_product_attention.
    # HINT 2: Split the last axis of each input into (heads, d) and bring the head axis in front of the tokens;
    # HINT 2: score every query against every key, scale by 1/sqrt(d), softmax over the keys, weight the values;
    # HINT 2: move the head axis back behind the tokens and merge (heads, d) into D.
    # HINT 3: q = query.view(B, N, heads, d).transpose(1, 2) (same for key, value with M);
    # HINT 3: w = (q @ k.transpose(-1, -2) / sqrt(d)).softmax(-1); out = (w @ v).transpose(1, 2).reshape(B, N, D).
    B, N, D = query.shape
    d = D // heads  # the head dim

    def split(x):  # (B, L, D) -> (B, heads, L, d)
        return x.unflatten(-1, (heads, d)).permute(0, 2, 1, 3)

    q, k, v = split(query), split(key), split(value)
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * d**-0.5  # (B, heads, N, M)
    weights = torch.softmax(scores, dim=-1)  # over the M keys
    out = torch.einsum("bhnm,bhmd->bhnd", weights, v)  # (B, heads, N, d)
    return out.permute(0, 2, 1, 3).flatten(2)  # (B, N, D)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the module's forward from its own layers and your attention, as AttnProcessor2_0.__call__
    # TODO: (diffusers/models/attention_processor.py) runs it for SD's and PixArt's blocks.
    # HINT 1: In diffusers/models/attention_processor.py, AttnProcessor2_0.__call__: read where the query, the
    # HINT 1: keys and the values come from ("if encoder_hidden_states is None"), and the two to_out lines at the end.
    # HINT 2: Choose the context (the text, or the image itself when none is given); project the image to queries
    # HINT 2: and the context to keys and values; run your attention with the module's head count; apply the
    # HINT 2: output linear layer, then the dropout.
    # HINT 3: ctx = encoder_hidden_states or hidden_states; out = attention(to_q(hidden_states), to_k(ctx),
    # HINT 3: to_v(ctx), attn_module.heads); return to_out[1](to_out[0](out)).
    context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
    projected = [attn_module.to_q(hidden_states), attn_module.to_k(context), attn_module.to_v(context)]
    mixed = attention(*projected, attn_module.heads)  # (B, N, inner)
    linear, dropout = attn_module.to_out[0], attn_module.to_out[1]
    return dropout(linear(mixed))
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the token layout of the docstring, the layout PatchEmbed.forward
    # TODO: (diffusers/models/embeddings.py) produces with its convolution and flatten.
    # HINT 1: diffusers/models/embeddings.py, class PatchEmbed: __init__ builds proj (kernel = stride = p) and
    # HINT 1: forward flattens its output ("BCHW -> BNC"). Your tokens must line up with that conv's weight layout.
    # HINT 2: Give the height and the width each two axes (patch index, position inside the patch) with one reshape;
    # HINT 2: reorder the axes so both patch indices come first (row before column), then channel, then the two
    # HINT 2: inside-patch positions; merge into (tokens, values).
    # HINT 3: x.reshape(B, C, H/p, p, W/p, p) -> permute(0, 2, 4, 1, 3, 5) -> reshape(B, (H/p)*(W/p), C*p*p).
    B, C, H, W = latents.shape
    p = patch_size
    grid = latents.unflatten(3, (W // p, p)).unflatten(2, (H // p, p))  # (B, C, R, p, K, p)
    grid = grid.permute(0, 2, 4, 1, 3, 5)  # (B, R, K, C, p, p)
    return grid.flatten(3).flatten(1, 2)  # (B, R*K, C*p*p)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: undo patchify exactly (the docstring's convention); compare the end of
    # TODO: PixArtTransformer2DModel.forward (diffusers/models/transformers/pixart_transformer_2d.py).
    # HINT 1: diffusers/models/transformers/pixart_transformer_2d.py, forward, after "# unpatchify": a reshape to
    # HINT 1: six axes, an einsum that reorders them, a reshape to the image. Its inner order is (p, p, C), yours (C, p, p).
    # HINT 2: Split the token axis into (rows, columns) and the value axis into (C, p, p); reorder so that channel
    # HINT 2: comes first and each patch index sits just before its inside-patch position; merge to (H, W).
    # HINT 3: reshape(B, H/p, W/p, C, p, p) -> permute(0, 3, 1, 4, 2, 5) -> reshape(B, C, H, W).
    p = patch_size
    rows, cols = height // p, width // p
    grid = tokens.unflatten(2, (channels, p, p)).unflatten(1, (rows, cols))  # (B, R, K, C, p, p)
    grid = grid.permute(0, 3, 1, 4, 2, 5)  # (B, C, R, p, K, p)
    return grid.flatten(4, 5).flatten(2, 3)  # (B, C, H, W)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: the table of the docstring, equal to get_2d_sincos_pos_embed in diffusers/models/embeddings.py
    # TODO: (read it with get_2d_sincos_pos_embed_from_grid and get_1d_sincos_pos_embed_from_grid below it).
    # HINT 1: diffusers/models/embeddings.py: get_2d_sincos_pos_embed (the grid and its rescaling by base_size and
    # HINT 1: interpolation_scale, the "xy" meshgrid), get_2d_sincos_pos_embed_from_grid (which half encodes which
    # HINT 1: plane of the grid), get_1d_sincos_pos_embed_from_grid (omega). PatchEmbed.__init__ shows the call.
    # HINT 2: Turn grid_size into (rows, columns). Make the rows' and the columns' positions, each rescaled so the
    # HINT 2: grid spans base_size / interpolation_scale. Write a 1-D code of width D/2 (D/4 frequencies, sin half
    # HINT 2: then cos half; it is your timestep_embedding with downscale_freq_shift=0). Give every token the
    # HINT 2: code of its column, then the code of its row, tokens in row-major order.
    # HINT 3: y = arange(R) / (R / base_size) / interpolation_scale (x likewise with K);
    # HINT 3: omega = 1 / 10000 ** (arange(D // 4) / (D / 4)); e(pos) = cat([sin(outer(pos, omega)), cos(...)], 1);
    # HINT 3: emb = cat([e(x)[None, :, :].expand(R, K, -1), e(y)[:, None, :].expand(R, K, -1)], -1).reshape(R * K, D).
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    rows, cols = (int(n) for n in grid_size)
    quarter = embed_dim // 4
    omega = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,) from 1 downwards

    def code(n):  # the 1-D code of n positions spread over base_size / interpolation_scale: (n, D/2)
        pos = torch.arange(n, dtype=torch.float64) * base_size / (n * interpolation_scale)
        angles = torch.outer(pos, omega)  # (n, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    by_col = code(cols)[None, :, :].expand(rows, cols, -1)  # (R, K, D/2): the column's code
    by_row = code(rows)[:, None, :].expand(rows, cols, -1)  # (R, K, D/2): the row's code
    return torch.cat([by_col, by_row], dim=-1).reshape(rows * cols, embed_dim)  # (R*K, D) row-major
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: adaLN's modulation of the docstring, as AdaLayerNormZero.forward in diffusers/models/normalization.py
    # TODO: applies it (and BasicTransformerBlock.forward in diffusers/models/attention.py for PixArt).
    # HINT 1: diffusers/models/normalization.py, class AdaLayerNormZero, forward: the last line before the return;
    # HINT 1: note how it indexes scale_msa and shift_msa so that a (B, D) vector meets (B, N, D) tokens.
    # HINT 2: If shift and scale have one axis fewer than x, give them a token axis of length 1 (after the batch);
    # HINT 2: then scale x by one plus scale and add shift.
    # HINT 3: shift[:, None] and scale[:, None] when they are (B, D); out = x * (1 + scale) + shift.
    if shift.dim() < x.dim():
        shift, scale = shift[:, None, :], scale[:, None, :]  # (B, 1, D): the same for every token
    return torch.addcmul(x + shift, x, scale)  # x + x * scale + shift
    # END SOLUTION
