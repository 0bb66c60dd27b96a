"""Checks of Lab 07 (UNet / DiT conditioning): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` (sizes, head counts, embedding widths, patch
sizes, the flags of the timestep embedding, random module weights) and compares the
learner's output with the reference AND with diffusers on the same inputs:
``get_timestep_embedding``, ``F.scaled_dot_product_attention`` on split heads, an
``Attention`` module's own forward, ``PatchEmbed``'s convolution, PixArt's unpatchify lines,
``get_2d_sincos_pos_embed`` and ``PatchEmbed``'s position table, ``AdaLayerNormZero``. When the output matches what a typical bug returns, the message
names that bug: the ``diagnose`` candidates below are those bugs, computed on the same inputs.
"""
import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed, get_timestep_embedding
from diffusers.models.normalization import AdaLayerNormZero

from helpers.checks._core import (CheckFailed, assert_close, choice, describe, describe_exception, device_case, randint,
                                  random_seed, require_unchanged)
from helpers.solutions import lab07_unet_dit_conditioning as ref

LAB = "lab07"

EQ_EMB = ("the sinusoidal embedding of DDPM (Vaswani et al. 2017, sec. 3.5, applied to t), as "
          "diffusers.models.embeddings.get_timestep_embedding: read how it builds the exponent (max_period, "
          "downscale_freq_shift, half the width), where `scale` enters, the order of the sin and cos halves "
          "(flip_sin_to_cos) and the zero padding when embedding_dim is odd")
EQ_ATT = ("scaled dot-product attention (Vaswani et al. 2017, eq. 1) per head: each (B, N, D) input split into "
          "`heads` heads of width d = D / heads, (B, heads, N, d), the softmax over the keys, then merged back to "
          "(B, N, D); read the lines around F.scaled_dot_product_attention in AttnProcessor2_0.__call__ "
          "(diffusers/models/attention_processor.py)")
EQ_XATT = ("AttnProcessor2_0.__call__ (attention_processor.py): queries from hidden_states, keys and values from "
           "encoder_hidden_states (hidden_states when it is None: self-attention), each through its own "
           "projection of attn; after the attention, attn.to_out (the output projection, then dropout)")
EQ_PATCH = ("DiT's patchify (Peebles & Xie 2023, sec. 3.1): (B, C, H, W) to (B, (H/p)(W/p), C p p), tokens "
            "row-major over the patch grid, (C, dy, dx) inside a token, the order PatchEmbed's conv (kernel = "
            "stride = p) and its flatten give; the unpatchify lines at the end of PixArtTransformer2DModel.forward "
            "do the reverse")
EQ_UNPATCH = ("the exact inverse of patchify (same token order, same (C, dy, dx) order inside a token), like the "
              "unpatchify lines at the end of PixArtTransformer2DModel.forward (whose tokens hold (dy, dx, C)); "
              "height and width are the latent's H and W")
EQ_POS = ("read get_2d_sincos_pos_embed, get_2d_sincos_pos_embed_from_grid and get_1d_sincos_pos_embed_from_grid in "
          "diffusers/models/embeddings.py: how each axis's positions are rescaled (grid size, base_size, "
          "interpolation_scale); the 1-D code of width D/2 (its sin half, cos half and frequencies); which axis's code "
          "comes first (\"here w goes first\"); tokens row by row")
EQ_MOD = ("adaLN (DiT, Peebles & Xie 2023, sec. 3.2), as the modulation line of diffusers' AdaLayerNormZero.forward "
          "(normalization.py): scale = shift = 0 is the identity; (B, D) shift/scale broadcast over the tokens as "
          "(B, 1, D)")

TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-9, rtol=1e-9)}


def _rand(gen, shape, dtype=torch.float32, std=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std).to(dtype)


def _call(name, fn, *args, hint=""):
    """Call the learner; turn a shape error into a message that says which shape to fix."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        raise CheckFailed(f"{name} raised {describe_exception(exc)}\nHint: {hint}") from exc


# --------------------------------------------------------------------------- timestep_embedding

def emb_variant(t, dim, flip=False, shift=1, scale=1, max_period=10000, *, bug=None):
    """The timestep embedding in float64, written independently of the reference, with one bug on."""
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    denom = {"shift_ignored": half, "shift_always_1": half - 1, "dim_denominator": dim}.get(bug, half - shift)
    log = math.log10 if bug == "log10" else math.log
    mp = 10000 if bug == "max_period_ignored" else max_period
    freqs = torch.exp((1 if bug == "positive_exponent" else -1) * log(mp) * i / denom)
    s = {"no_scale": 1, "divide_scale": 1 / scale}.get(bug, scale)
    args = s * t.double()[:, None] * freqs[None, :]
    sin, cos = torch.sin(args), torch.cos(args)
    if bug == "interleaved":
        emb = torch.stack([cos, sin] if flip else [sin, cos], dim=-1).reshape(len(t), -1)
    else:
        first_cos = flip != (bug == "flipped")
        emb = torch.cat([cos, sin] if first_cos else [sin, cos], dim=-1)
    if dim % 2 == 1 and bug != "no_pad":
        emb = F.pad(emb, (0, 1))
    return emb.float()


EMB_BUGS = [
    ("flipped", "sin/cos order flipped: flip_sin_to_cos=True puts the cos half FIRST, False the sin half first."),
    ("interleaved", "sin and cos interleaved (sin_0, cos_0, sin_1, ...): diffusers concatenates the two halves."),
    ("shift_ignored", "downscale_freq_shift ignored: it enters the exponent's denominator (get_timestep_embedding)."),
    ("shift_always_1", "downscale_freq_shift hard-coded to 1: use the argument (Stable Diffusion's UNet passes 0)."),
    ("dim_denominator", "frequencies spaced over embedding_dim; diffusers spaces them over half the width (read the "
                        "exponent's denominator in get_timestep_embedding)."),
    ("positive_exponent", "frequencies grow instead of decaying: check the exponent's sign."),
    ("log10", "log base 10: the exponent uses the natural log of max_period."),
    ("max_period_ignored", "max_period ignored (10000 hard-coded): use the argument."),
    ("no_scale", "missing scaling factor: `scale` multiplies the arguments before sin and cos."),
    ("divide_scale", "divided by scale instead of multiplying by it."),
]


def check_timestep_embedding(fn, gen):
    """Tiny fractional t (every argument small, so a wrong frequency shows exactly), Stable
    Diffusion's setting (cos first, shift 0, int timesteps 0..999), DDPM's (sin first, shift 1,
    odd width), fractional t in [0, 1] with scale 100 or 1000 (as flow-matching models feed
    sigma), and max_period 100 or 1000; each compared with diffusers' get_timestep_embedding. Then
    once with t on the "meta" device (a stand-in for the GPU the notebook may run on): the
    embedding must be computed on t's device."""
    cases = [  # the first: tiny t, where every frequency's argument is small and exact in float32
        dict(dim=2 * randint(gen, 8, 40), flip=choice(gen, [True, False]), shift=1, scale=1, max_period=10000,
             kind="tiny"),
        dict(dim=2 * randint(gen, 8, 80), flip=True, shift=0, scale=1, max_period=10000, kind="int"),
        dict(dim=2 * randint(gen, 8, 40) + 1, flip=False, shift=1, scale=1, max_period=10000, kind="int"),
        dict(dim=2 * randint(gen, 8, 40), flip=choice(gen, [True, False]), shift=1,
             scale=choice(gen, [100, 1000]), max_period=10000, kind="unit"),
        dict(dim=2 * randint(gen, 8, 40), flip=True, shift=0, scale=1, max_period=choice(gen, [1000, 100]),
             kind="float"),
    ]
    for c in cases:
        B = randint(gen, 2, 6)
        if c["kind"] == "int":
            t = torch.randint(0, 1000, (B,), generator=gen)
            t[0] = 0
        elif c["kind"] == "tiny":
            t = torch.rand(B, generator=gen) * 1e-5
        elif c["kind"] == "unit":
            t = torch.rand(B, generator=gen)
        else:
            t = torch.rand(B, generator=gen) * 999
        t_in = t.clone()
        dim = c["dim"]
        args = (c["flip"], c["shift"], c["scale"], c["max_period"])
        name = (f"timestep_embedding(timesteps={describe(t)}, embedding_dim={dim}, flip_sin_to_cos={c['flip']}, "
                f"downscale_freq_shift={c['shift']}, scale={c['scale']}, max_period={c['max_period']})")
        got = _call(name, fn, t_in, dim, *args, hint=EQ_EMB)
        require_unchanged(name, [t], [t_in])
        if isinstance(got, torch.Tensor) and dim % 2 == 1 and tuple(got.shape) == (B, dim - 1):
            raise CheckFailed(f"Likely bug: odd embedding_dim not padded.\n{name}: expected shape {(B, dim)}, got "
                              f"{tuple(got.shape)}.\nHint: one zero column at the end when embedding_dim is odd "
                              f"(the last lines of get_timestep_embedding).")
        # sin of float32 arguments up to ~1000 is good to a few ulps of the argument; tiny ones are exact
        tol = dict(atol=2e-6, rtol=2e-6) if c["kind"] == "tiny" else dict(atol=2e-4, rtol=1e-4)
        diag = [(label, emb_variant(t, dim, *args, bug=b)) for b, label in EMB_BUGS]
        assert_close(name, got, ref.timestep_embedding(t, dim, *args), **tol, diagnose=diag, hint=EQ_EMB)
        assert_close(f"{name} vs diffusers' get_timestep_embedding", got, get_timestep_embedding(t, dim, *args), **tol)
    _device_case("timestep_embedding", fn, torch.zeros(randint(gen, 2, 6), device="meta"), 2 * randint(gen, 8, 40) + 1,
                 hint="make every new tensor (the frequencies' torch.arange) on the input's device: "
                      "device=timesteps.device, as get_timestep_embedding does.")


def _device_case(name, fn, *args, hint):
    """``fn(*args)`` with its tensors on PyTorch's "meta" device, standing in for the GPU on which the
    notebook calls it with CUDA tensors (helpers.checks._core.device_case: what meta tensors cannot do,
    reading values, is judged by the CPU cases)."""
    where = ", ".join(f"{tuple(a.shape)} on 'meta'" if isinstance(a, torch.Tensor) else repr(a) for a in args)
    device_case(f"{name}({where})", fn, args, "meta", hint=hint)


# --------------------------------------------------------------------------- attention

def attention_variant(q, k, v, heads, *, bug=None):
    """Multi-head attention in float64, written independently of the reference, with one bug on."""
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    B, N, D = q.shape
    M = k.shape[1]
    h = 1 if bug == "one_head" else heads
    d = D // h

    def split(x, L):
        if bug == "wrong_axis":
            return x.reshape(B, h, L, d)
        if bug == "interleaved":
            return x.reshape(B, L, d, h).permute(0, 3, 1, 2)
        return x.reshape(B, L, h, d).transpose(1, 2)

    qs, ks, vs = split(q, N), split(k, M), split(v, M)
    s = qs @ ks.transpose(-1, -2)
    s = s * {"no_scale": 1.0, "full_dim": D ** -0.5, "over_d": 1.0 / d}.get(bug, d ** -0.5)
    w = s.softmax(dim=-2 if bug == "softmax_queries" else -1)
    o = w @ vs  # (B, h, N, d)
    if bug == "merge_no_transpose":
        o = o.reshape(B, N, D)
    elif bug == "interleaved":
        o = o.permute(0, 2, 3, 1).reshape(B, N, D)
    else:
        o = o.transpose(1, 2).reshape(B, N, D)
    return o.to(dtype)


ATT_BUGS = [
    ("no_scale", "missing 1/sqrt(d) scaling of the scores (Vaswani et al. 2017, eq. 1)."),
    ("full_dim", "scaled by 1/sqrt(D), the full width: the scale uses the HEAD dim d = D / heads."),
    ("over_d", "scaled by 1/d instead of 1/sqrt(d)."),
    ("wrong_axis", "heads split along the wrong axis: a direct reshape to (B, heads, N, d) mixes tokens between "
                   "heads; split each token's channels first (AttnProcessor2_0's lines before the attention)."),
    ("interleaved", "heads interleaved: head h must own a contiguous block of d channels (AttnProcessor2_0's "
                    "lines before the attention)."),
    ("merge_no_transpose", "heads merged along the wrong axis: the heads axis must sit next to d again before the "
                           "merge to (B, N, D) (AttnProcessor2_0's lines after the attention)."),
    ("softmax_queries", "softmax over the wrong axis: normalise over the KEYS (the last axis), so each query's "
                        "weights sum to 1."),
    ("one_head", "heads ignored: one head over all D channels (scale 1/sqrt(D)); split into `heads` heads."),
]


def sdpa_reference(q, k, v, heads):
    """What AttnProcessor2_0 computes between its projections: F.scaled_dot_product_attention on split heads."""
    B, N, D = q.shape
    d = D // heads
    sp = lambda x: x.view(B, -1, heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(sp(q), sp(k), sp(v), dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(B, N, D)


def check_attention(fn, gen):
    """Self-attention (M = N), cross-attention (M != N) with several heads, one head, and float64;
    compared with the reference and with F.scaled_dot_product_attention on split heads."""
    heads_a = choice(gen, [2, 4])
    cases = [("self", heads_a, torch.float32), ("cross", choice(gen, [2, 3, 4]), torch.float32),
             ("cross", 1, torch.float32), ("cross", heads_a, torch.float64)]
    for kind, heads, dtype in cases:
        B = randint(gen, 2, 3)
        N = randint(gen, 5, 12)
        M = N if kind == "self" else choice(gen, [m for m in range(3, 9) if m != N])
        d = choice(gen, [4, 6, 8, 16])
        D = heads * d
        q, k, v = _rand(gen, (B, N, D), dtype, 1.3), _rand(gen, (B, M, D), dtype, 1.3), _rand(gen, (B, M, D), dtype)
        ins = [q.clone(), k.clone(), v.clone()]
        name = f"attention(query (B, N, D) = {(B, N, D)}, key/value (B, M, D) = {(B, M, D)}, heads={heads}, {dtype})"
        got = _call(name, fn, *ins, heads, hint=EQ_ATT)
        require_unchanged(name, [q, k, v], ins)
        bugs = [(label, attention_variant(q, k, v, heads, bug=b)) for b, label in ATT_BUGS
                if not (heads == 1 and b in ("wrong_axis", "interleaved", "merge_no_transpose", "one_head",
                                            "full_dim"))]
        assert_close(name, got, ref.attention(q, k, v, heads), **TOL[dtype], diagnose=bugs, hint=EQ_ATT)
        assert_close(f"{name} vs F.scaled_dot_product_attention on split heads", got, sdpa_reference(q, k, v, heads),
                     **TOL[dtype])


# --------------------------------------------------------------------------- cross_attention

def _attention_module(gen, query_dim, cross_dim, heads, dim_head, bias):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed(gen))
        attn = Attention(query_dim, cross_attention_dim=cross_dim, heads=heads, dim_head=dim_head, bias=bias,
                         out_bias=True)
        if bias:  # nonzero biases, so a skipped projection shows
            for lin in (attn.to_q, attn.to_k, attn.to_v):
                torch.nn.init.normal_(lin.bias, std=0.1)
    return attn.eval()


def xattn_variant(attn, x, ctx, *, bug=None):
    with torch.no_grad():
        c = x if (ctx is None or bug == "self") else ctx
        q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
        if bug == "k_as_v":
            v = k
        out = ref.attention(q, k, v, 1 if bug == "one_head" else attn.heads)
        return out if bug == "no_out" else attn.to_out[0](out)


XATT_BUGS = [
    ("self", "keys and values from hidden_states: in cross-attention they come from encoder_hidden_states (the text)."),
    ("no_out", "output projection to_out[0] missing."),
    ("one_head", "heads ignored: pass attn_module.heads to attention."),
    ("k_as_v", "values computed with to_k: the values have their own projection."),
]


def check_cross_attention(fn, gen):
    """A UNet-like attn2 (cross_attention_dim != query_dim, no q/k/v bias), a PixArt-like attn2
    (equal widths, biases), and a self-attention attn1 called with encoder_hidden_states=None;
    compared with the module's own forward (diffusers' AttnProcessor2_0)."""
    cases = [("unet attn2", False, True), ("pixart attn2", True, True), ("attn1 (self)", choice(gen, [False, True]),
                                                                         False)]
    for kind, bias, cross in cases:
        heads = choice(gen, [2, 4])
        dim_head = choice(gen, [4, 8])
        query_dim = heads * dim_head if kind != "unet attn2" else choice(gen, [24, 32])
        cross_dim = (query_dim if kind == "pixart attn2" else choice(gen, [12, 20])) if cross else None
        attn = _attention_module(gen, query_dim, cross_dim, heads, dim_head, bias)
        B, N, M = randint(gen, 2, 3), randint(gen, 6, 16), randint(gen, 3, 5)
        x = _rand(gen, (B, N, query_dim))
        ctx = _rand(gen, (B, M, cross_dim)) if cross else None
        name = (f"cross_attention(Attention(query_dim={query_dim}, cross_attention_dim={cross_dim}, heads={heads}, "
                f"dim_head={dim_head}, bias={bias}), hidden_states {tuple(x.shape)}, encoder_hidden_states "
                f"{None if ctx is None else tuple(ctx.shape)})")
        hint = EQ_XATT + (". to_k and to_v take the TEXT (width cross_attention_dim), to_q the image tokens."
                          if cross else "")
        with torch.no_grad():
            got = _call(name, fn, attn, x.clone(), None if ctx is None else ctx.clone(), hint=hint)
            expected = attn(x, ctx)
        bugs = [(label, xattn_variant(attn, x, ctx, bug=b)) for b, label in XATT_BUGS
                if b != "self" or (cross and cross_dim == query_dim)]
        if isinstance(got, torch.Tensor) and got.requires_grad:
            got = got.detach()
        assert_close(name, got, ref.cross_attention(attn, x, ctx).detach(), **TOL[torch.float32], diagnose=bugs,
                     hint=hint)
        assert_close(f"{name} vs the module's own forward attn(hidden_states, encoder_hidden_states)", got, expected,
                     **TOL[torch.float32])


# --------------------------------------------------------------------------- patchify / unpatchify

def patch_variant(x, p, *, bug=None):
    B, C, H, W = x.shape
    r, c = H // p, W // p
    if bug == "no_permute":
        return x.reshape(B, r * c, C * p * p)
    y = x.reshape(B, C, r, p, c, p)
    order = {"grid_transposed": (0, 4, 2, 1, 3, 5), "channels_last": (0, 2, 4, 3, 5, 1),
             "dxdy": (0, 2, 4, 1, 5, 3)}.get(bug, (0, 2, 4, 1, 3, 5))
    return y.permute(*order).reshape(B, r * c, C * p * p)


PATCH_BUGS = [
    ("no_permute", "patch order scrambled: a plain reshape of (B, C, H, W) to tokens mixes channels and pixels of "
                   "different patches; split each spatial axis into (grid, p) and reorder the axes before flattening."),
    ("grid_transposed", "patch grid transposed: tokens go row by row (row-major), the order of PatchEmbed's "
                        "flattened conv output."),
    ("channels_last", "(dy, dx, C) order inside a token: PatchEmbed's conv weight is (D, C, p, p), channel first."),
    ("dxdy", "dy and dx swapped inside a token: the order is (C, dy, dx), row before column."),
]


def _patch_inputs(gen):
    p = choice(gen, [2, 4])
    C = randint(gen, 2, 5)
    rows, cols = choice(gen, [(2, 3), (3, 2), (2, 4), (3, 4)])
    B = randint(gen, 1, 3)
    return _rand(gen, (B, C, rows * p, cols * p)), p


def check_patchify(fn, gen):
    """Random non-square latents, p in {2, 4}; tokens compared with the reference and with
    diffusers' PatchEmbed (a Conv2d with kernel = stride = p): tokens @ W.reshape(D, -1).T + b."""
    for _ in range(3):
        x, p = _patch_inputs(gen)
        B, C, H, W = x.shape
        name = f"patchify(latents (B, C, H, W) = {tuple(x.shape)}, patch_size={p})"
        x_in = x.clone()
        got = _call(name, fn, x_in, p, hint=EQ_PATCH)
        require_unchanged(name, [x], [x_in])
        bugs = [(label, patch_variant(x, p, bug=b)) for b, label in PATCH_BUGS]
        assert_close(name, got, ref.patchify(x, p), atol=0, rtol=0, diagnose=bugs, hint=EQ_PATCH)
        D = randint(gen, 8, 24)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed(gen))
            pe = PatchEmbed(height=H, width=W, patch_size=p, in_channels=C, embed_dim=D, pos_embed_type=None)
        with torch.no_grad():
            conv_tokens = pe(x)  # (B, N, D)
            mine = got @ pe.proj.weight.reshape(D, -1).T + pe.proj.bias
        assert_close(f"{name} @ W.reshape(D, -1).T + b vs diffusers' PatchEmbed (Conv2d kernel = stride = {p})",
                     mine, conv_tokens, atol=1e-4, rtol=1e-4, hint=EQ_PATCH)


def pixart_unpatchify(tokens_pqc, p, h, w, C):
    """The lines at the end of PixArtTransformer2DModel.forward (h, w: the patch grid), whose tokens
    hold (p, p, C) per patch."""
    x = tokens_pqc.reshape(shape=(-1, h, w, p, p, C))
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(shape=(-1, C, h * p, w * p))


def unpatch_variant(tokens, p, H, W, C, *, bug=None):
    B = tokens.shape[0]
    r, c = H // p, W // p
    if bug == "no_permute":
        return tokens.reshape(B, C, H, W)
    if bug == "grid_transposed":
        return tokens.reshape(B, c, r, C, p, p).permute(0, 3, 2, 4, 1, 5).reshape(B, C, H, W)
    if bug == "channels_last":
        return tokens.reshape(B, r, c, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
    if bug == "dxdy":
        return tokens.reshape(B, r, c, C, p, p).permute(0, 3, 1, 5, 2, 4).reshape(B, C, H, W)
    return tokens.reshape(B, r, c, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def check_unpatchify(fn, gen):
    """unpatchify(patchify(x)) must give x back exactly, for non-square latents; random tokens
    must also round-trip (patchify(unpatchify(t)) == t); and the result equals PixArt's own
    unpatchify lines once the inner (C, p, p) order is converted to PixArt's (p, p, C)."""
    for _ in range(3):
        x, p = _patch_inputs(gen)
        B, C, H, W = x.shape
        tokens = ref.patchify(x, p)
        name = f"unpatchify(tokens {tuple(tokens.shape)}, patch_size={p}, height={H}, width={W}, channels={C})"
        got = _call(name, fn, tokens.clone(), p, H, W, C,
                    hint=EQ_UNPATCH + f" (here the grid is {H // p} x {W // p} patches)")
        bugs = [(label.replace("patch order scrambled: a plain reshape of (B, C, H, W) to tokens",
                               "patch order scrambled: a plain reshape of the tokens to (B, C, H, W)"),
                 unpatch_variant(tokens, p, H, W, C, bug=b)) for b, label in PATCH_BUGS]
        assert_close(f"{name}, tokens = patchify(x): expected x back", got, x, atol=0, rtol=0, diagnose=bugs,
                     hint=EQ_UNPATCH)
        pqc = tokens.reshape(B, -1, C, p, p).permute(0, 1, 3, 4, 2).reshape(B, -1, p * p * C)
        assert_close(f"{name} vs PixArtTransformer2DModel's unpatchify (tokens converted to its (p, p, C) order)",
                     got, pixart_unpatchify(pqc, p, H // p, W // p, C), atol=0, rtol=0, hint=EQ_UNPATCH)
        t = _rand(gen, tokens.shape)
        back = ref.patchify(_call(name, fn, t.clone(), p, H, W, C, hint=EQ_UNPATCH), p)
        assert_close(f"patchify(unpatchify(random tokens {tuple(t.shape)}, {p}, {H}, {W}, {C})) vs the tokens",
                     back, t, atol=0, rtol=0, hint=EQ_UNPATCH)


# --------------------------------------------------------------------------- sincos_pos_embed_2d

U32 = 2.0 ** -24  # float32's unit roundoff


def pos_variant(D, grid, base, s, *, bug=None):
    """The 2-D sin-cos table in float64, written independently of the reference, with one bug on."""
    R, K = (grid, grid) if isinstance(grid, int) else grid

    def positions(n, other):
        i = torch.arange(n, dtype=torch.float64)
        if bug == "no_rescale":
            return i
        if bug == "rescale_inverted":
            return i * (n / base) / s
        if bug == "interp_multiplied":
            return i * base / n * s
        if bug == "one_size":  # both axes rescaled with the row count
            return i * base / (R * s)
        return i * base / (n * s)

    Q = D // 4
    k = torch.arange(Q, dtype=torch.float64)
    omega = 10000.0 ** (-k / {"omega_half": D / 2, "omega_shift": max(Q - 1, 1)}.get(bug, Q))

    def code(pos):
        a = pos[:, None] * omega[None, :]
        if bug == "interleaved":
            return torch.stack([a.sin(), a.cos()], dim=-1).reshape(len(pos), -1)
        return torch.cat([a.cos(), a.sin()] if bug == "cos_first" else [a.sin(), a.cos()], dim=1)

    ex, ey = code(positions(K, R)), code(positions(R, K))  # (K, D/2) per column, (R, D/2) per row
    if bug == "column_major":  # token n = c * R + r
        return torch.cat([ex[:, None, :].expand(K, R, -1), ey[None, :, :].expand(K, R, -1)], -1).reshape(R * K, D)
    halves = [ex[None, :, :].expand(R, K, -1), ey[:, None, :].expand(R, K, -1)]  # (R, K, D/2) each
    if bug == "rows_first":
        halves.reverse()
    return torch.cat(halves, -1).reshape(R * K, D)


POS_BUGS = [
    ("rows_first", "the row's code in the first half: diffusers puts the COLUMN's (x, w) code first, then the row's "
                   "(meshgrid(grid_w, grid_h, indexing=\"xy\"): \"here w goes first\"; on a square grid this is "
                   "also what tokens run column by column give, token n = c * R + r; they must run row by row, "
                   "token n = r * K + c)."),
    ("column_major", "your tokens run column by column (token n = c * R + r); they must run row by row, token "
                     "n = r * K + c (row r, column c), like patchify and PatchEmbed's flatten."),
    ("no_rescale", "positions not rescaled: read how get_2d_sincos_pos_embed rescales its arange by grid_size, "
                   "base_size and interpolation_scale."),
    ("rescale_inverted", "positions rescaled the wrong way: read the division of the arange in "
                         "get_2d_sincos_pos_embed (grid_size, base_size, interpolation_scale)."),
    ("interp_multiplied", "interpolation_scale multiplies the positions: diffusers DIVIDES by it."),
    ("one_size", "both axes rescaled with the same grid size: rows use R, columns use K (grid_size = (R, K))."),
    ("omega_half", "frequencies spaced over D/2: each 1-D code is D/2 wide, and "
                   "get_1d_sincos_pos_embed_from_grid spaces its frequencies over half of ITS embed_dim."),
    ("omega_shift", "frequencies spaced over D/4 - 1 (a timestep embedding with downscale_freq_shift=1): read the "
                    "omega lines of get_1d_sincos_pos_embed_from_grid."),
    ("cos_first", "cos before sin in a 1-D code: get_1d_sincos_pos_embed_from_grid concatenates [sin, cos]."),
    ("interleaved", "sin and cos interleaved: each 1-D code is a sin half followed by a cos half."),
]


def _pos_compare(name, got, truth, max_pos, diag, hint):
    """got vs a float64 truth: float32 or float64 accepted; the tolerance is float32 rounding of
    angles up to max_pos (a few units in the last place of the angle, plus those of sin/cos)."""
    if isinstance(got, torch.Tensor) and got.dtype in (torch.float32, torch.float64):
        got = got.detach().double()
    elif isinstance(got, torch.Tensor):
        raise CheckFailed(f"{name}: expected a float32 or float64 tensor, got {describe(got)}\nHint: {hint}")
    atol = 64 * U32 * (1 + max_pos)
    assert_close(name, got, truth, atol=atol, rtol=0, diagnose=diag, hint=hint)


def check_sincos_pos_embed_2d(fn, gen):
    """Random widths (multiples of 4) and grids: PatchEmbed's own table (square grid, base_size =
    the grid, various interpolation scales), a non-square (R, K) grid at another base_size,
    and PatchEmbed called at a resolution other than its own (it then recomputes the table for
    the new (R, K) grid with its original base_size). Each compared with a float64 ground
    truth, the reference and diffusers' get_2d_sincos_pos_embed (or PatchEmbed's table)."""
    g0 = randint(gen, 3, 8)
    R1, K1 = choice(gen, [(2, 5), (3, 6), (5, 3), (4, 7), (6, 4)])
    p = choice(gen, [1, 2])
    cases = [
        dict(grid=g0, base=g0, s=choice(gen, [1.0, 2.0, 0.5]), kind="table"),
        dict(grid=(R1, K1), base=choice(gen, [4, 8, 16]), s=choice(gen, [1.0, 1.5]), kind="plain"),
        dict(grid=(2 * R1, 2 * K1), base=g0, s=choice(gen, [1.0, 2.0]), kind="resized"),
        dict(grid=randint(gen, 3, 9), base=choice(gen, [2, 32]), s=choice(gen, [0.75, 1.0]), kind="plain"),
    ]
    for c in cases:
        D = 4 * randint(gen, 2, 16)
        grid, base, s = c["grid"], c["base"], c["s"]
        R, K = (grid, grid) if isinstance(grid, int) else grid
        name = (f"sincos_pos_embed_2d(embed_dim={D}, grid_size={grid}, base_size={base}, "
                f"interpolation_scale={s})")
        got = fn(D, grid, base, s)
        truth = ref.sincos_pos_embed_2d(D, grid, base, s)
        max_pos = base / s
        diag = [(label, pos_variant(D, grid, base, s, bug=b)) for b, label in POS_BUGS]
        _pos_compare(name, got, truth, max_pos, diag, EQ_POS)
        if c["kind"] == "plain":
            theirs = get_2d_sincos_pos_embed(D, grid, base_size=base, interpolation_scale=s)
            _pos_compare(f"{name} vs diffusers' get_2d_sincos_pos_embed", got, theirs.double(), max_pos, [], EQ_POS)
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_seed(gen))
            pe = PatchEmbed(height=base * p, width=base * p, patch_size=p, in_channels=2, embed_dim=D,
                            interpolation_scale=s).eval()
        if c["kind"] == "table":
            theirs, what = pe.pos_embed[0], f"PatchEmbed(height=width={base * p}, patch_size={p}).pos_embed"
        else:
            z = _rand(gen, (1, 2, R * p, K * p))
            with torch.no_grad():
                theirs = (pe(z) - pe.proj(z).flatten(2).transpose(1, 2))[0]
            what = (f"the table PatchEmbed(height=width={base * p}, patch_size={p}) adds to a latent of "
                    f"{R * p}x{K * p} (its grid {R}x{K}, its base_size {base})")
        _pos_compare(f"{name} vs {what}", got, theirs.double(), max_pos, [], EQ_POS)


# --------------------------------------------------------------------------- modulate

def mod_variant(x, shift, scale, *, bug=None):
    if shift.ndim == x.ndim - 1:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return {"no_one": x * scale + shift, "swapped": x * (1 + shift) + scale,
            "shift_first": (x + shift) * (1 + scale), "minus": x * (1 - scale) + shift,
            None: x * (1 + scale) + shift}[bug]


MOD_BUGS = [
    ("no_one", "adaLN without the 1+: scale = shift = 0 must be the identity (DiT sec. 3.2)."),
    ("swapped", "shift and scale swapped (read the modulation line of AdaLayerNormZero.forward)."),
    ("shift_first", "shift added before scaling, (x + shift) * (...): the shift comes after the scaling."),
    ("minus", "1 - scale: the scale enters with a plus (read the modulation line of AdaLayerNormZero.forward)."),
]
BROADCAST = ("shift and scale of shape (B, D) need a token axis, (B, 1, D), to broadcast over the N tokens of "
             "x (B, N, D) (see how AdaLayerNormZero.forward indexes them).")


def check_modulate(fn, gen):
    """(B, D) shift/scale with B != N (broadcast over tokens), (B, 1, D) ones (PixArt's shape),
    zero shift/scale (must be the identity), and the modulation inside diffusers'
    AdaLayerNormZero (DiT's block) computed from its own linear layer."""
    B = randint(gen, 2, 3)
    N = choice(gen, [n for n in range(4, 9) if n != B])
    D = choice(gen, [8, 12, 16])
    x = _rand(gen, (B, N, D))
    cases = [("(B, D)", _rand(gen, (B, D), std=0.5), _rand(gen, (B, D), std=0.5)),
             ("(B, 1, D)", _rand(gen, (B, 1, D), std=0.5), _rand(gen, (B, 1, D), std=0.5)),
             ("zeros (B, D)", torch.zeros(B, D), torch.zeros(B, D))]
    for label, shift, scale in cases:
        name = f"modulate(x {tuple(x.shape)}, shift {label} {tuple(shift.shape)}, scale {tuple(scale.shape)})"
        ins = [x.clone(), shift.clone(), scale.clone()]
        got = _call(name, fn, *ins, hint=BROADCAST)
        require_unchanged(name, [x, shift, scale], ins)
        bugs = [(lab, mod_variant(x, shift, scale, bug=b)) for b, lab in MOD_BUGS]
        extra = " With zero shift and scale the output must be x itself." if label.startswith("zeros") else ""
        assert_close(name, got, ref.modulate(x, shift, scale), **TOL[torch.float32], diagnose=bugs,
                     hint=EQ_MOD + extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed(gen))
        ada = AdaLayerNormZero(D).eval()
    emb = _rand(gen, (B, D))
    with torch.no_grad():
        expected = ada(x, emb=emb)[0]
        shift_msa, scale_msa = ada.linear(ada.silu(emb)).chunk(6, dim=1)[:2]
        normed = ada.norm(x)
        got = _call("modulate inside AdaLayerNormZero", fn, normed, shift_msa, scale_msa, hint=BROADCAST)
    bugs = [(lab, mod_variant(normed, shift_msa, scale_msa, bug=b)) for b, lab in MOD_BUGS]
    assert_close(f"modulate(LayerNorm(x), shift_msa, scale_msa) vs diffusers' AdaLayerNormZero (DiT's block), "
                 f"x {tuple(x.shape)}", got, expected, **TOL[torch.float32], diagnose=bugs, hint=EQ_MOD)
