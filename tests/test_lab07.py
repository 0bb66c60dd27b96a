"""Lab 07 (UNet / DiT conditioning): the reference equals diffusers, passes its checks, and
every check is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed, get_timestep_embedding

from helpers.checks import lab07_unet_dit_conditioning as checks
from labtools import checker, write_pristine_starter
from helpers.checks._core import CheckFailed, make_generator
from helpers.solutions import lab07_unet_dit_conditioning as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["timestep_embedding", "attention", "cross_attention", "patchify", "unpatchify", "sincos_pos_embed_2d",
         "modulate"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("flip,shift,scale,dim", [(True, 0, 1, 320), (False, 1, 1, 33), (True, 1, 1000, 256),
                                                  (False, 0, 1, 7)])
def test_timestep_embedding_equals_diffusers_bit_for_bit(flip, shift, scale, dim):
    t = torch.tensor([0, 1, 17, 500, 999])
    assert torch.equal(ref.timestep_embedding(t, dim, flip, shift, scale), get_timestep_embedding(t, dim, flip, shift, scale))
    tf = torch.rand(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ref.timestep_embedding(tf, dim, flip, shift, scale),
                       get_timestep_embedding(tf, dim, flip, shift, scale))


def test_timestep_embedding_is_the_unets_time_proj():
    unet = UNet2DConditionModel(block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8, layers_per_block=1)
    t = torch.tensor([3, 999])
    expected = unet.time_proj(t)
    assert torch.equal(ref.timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0), expected)


@pytest.mark.parametrize("processor", ["sdpa", "classic"])
def test_cross_attention_equals_module(processor):
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=16, heads=4, dim_head=8).eval()
    if processor == "classic":
        attn.set_processor(AttnProcessor())
    x, c = torch.randn(2, 10, 32), torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref.cross_attention(attn, x, c), attn(x, c), atol=1e-6, rtol=1e-5)


def test_pixart_block_attention_and_patches():
    """tiny-dit's architecture (random weights): attn1/attn2 of a block, and the patch embedding."""
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                                     num_layers=1, cross_attention_dim=128, sample_size=8, patch_size=2,
                                     caption_channels=64, use_additional_conditions=False).eval()
    block = model.transformer_blocks[0]
    x, c = torch.randn(2, 16, 128), torch.randn(2, 7, 128)
    with torch.no_grad():
        torch.testing.assert_close(ref.cross_attention(block.attn1, x), block.attn1(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref.cross_attention(block.attn2, x, c), block.attn2(x, c), atol=1e-5, rtol=1e-5)
        z = torch.randn(2, 4, 8, 8)
        w = model.pos_embed.proj.weight
        tokens = ref.patchify(z, 2) @ w.reshape(w.shape[0], -1).T + model.pos_embed.proj.bias
        torch.testing.assert_close(tokens + model.pos_embed.pos_embed, model.pos_embed(z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape,p", [((2, 4, 8, 8), 2), ((1, 3, 12, 8), 4), ((3, 16, 6, 10), 1)])
def test_unpatchify_inverts_patchify(shape, p):
    x = torch.randn(shape)
    assert torch.equal(ref.unpatchify(ref.patchify(x, p), p, shape[2], shape[3], shape[1]), x)


def test_patchify_is_unfold():
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(ref.patchify(x, 2), F.unfold(x, kernel_size=2, stride=2).transpose(1, 2))


# --------------------------------------------------------------------------- planted bugs: timestep_embedding

def emb_bug(bug):
    """Written independently: float32 like a learner would, one bug switched on."""
    def fn(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1, max_period=10000):
        half = embedding_dim // 2
        denom = {"shift_ignored": half, "shift_1": half - 1}.get(bug, half - downscale_freq_shift)
        mp = 10000 if bug == "max_period" else max_period
        sign = 1 if bug == "positive" else -1
        on = {} if bug == "cpu_arange" else dict(device=timesteps.device)  # the GPU bug: a new tensor on the CPU
        freqs = torch.exp(sign * math.log(mp) * torch.arange(half, dtype=torch.float32, **on) / denom)
        s = {"no_scale": 1, "divide": 1 / scale}.get(bug, scale)
        args = s * timesteps.float()[:, None] * freqs[None]
        cos_first = flip_sin_to_cos if bug != "flip" else not flip_sin_to_cos
        emb = torch.cat([args.cos(), args.sin()] if cos_first else [args.sin(), args.cos()], -1)
        if bug == "interleave":
            emb = torch.stack([args.cos(), args.sin()] if cos_first else [args.sin(), args.cos()], -1).flatten(1)
        if embedding_dim % 2 and bug != "no_pad":
            emb = F.pad(emb, (0, 1))
        return emb
    return fn


def test_timestep_embedding_independent_variant_passes():
    for seed in SEEDS:
        run("timestep_embedding", emb_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("flip", "sin/cos order flipped"),
    ("interleave", "interleaved"),
    ("shift_ignored", "downscale_freq_shift ignored"),
    ("shift_1", "downscale_freq_shift hard-coded to 1"),
    ("positive", "frequencies grow"),
    ("max_period", "max_period ignored"),
    ("no_scale", "missing scaling factor"),
    ("divide", "divided by scale instead of multiplying"),
    ("no_pad", "odd embedding_dim not padded"),
    ("cpu_arange", "a tensor made on the CPU"),
])
def test_timestep_embedding_bugs(bug, phrase):
    fails("timestep_embedding", emb_bug(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: attention

def att_bug(bug):
    def fn(query, key, value, heads):
        B, N, D = query.shape
        M = key.shape[1]
        d = D // heads
        if bug == "one_head":
            heads, d = 1, D
        if bug == "wrong_axis":
            sp = lambda x, L: x.reshape(B, heads, L, d)  # noqa: E731
        elif bug == "interleaved":
            sp = lambda x, L: x.reshape(B, L, d, heads).permute(0, 3, 1, 2)  # noqa: E731
        else:
            sp = lambda x, L: x.reshape(B, L, heads, d).transpose(1, 2)  # noqa: E731
        q, k, v = sp(query, N), sp(key, M), sp(value, M)
        if bug == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scale = {"no_scale": 1.0, "full_dim": 1 / math.sqrt(D), "over_d": 1 / d}.get(bug, 1 / math.sqrt(d))
            w = (q @ k.transpose(-1, -2) * scale).softmax(-2 if bug == "softmax_q" else -1)
            out = w @ v
        if bug == "merge":
            return out.reshape(B, N, D)
        if bug == "interleaved":
            return out.permute(0, 2, 3, 1).reshape(B, N, D)
        return out.transpose(1, 2).reshape(B, N, D)
    return fn


@pytest.mark.parametrize("bug", [None, "sdpa"])
def test_attention_correct_variants_pass(bug):
    for seed in SEEDS:
        run("attention", att_bug(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_scale", "missing 1/sqrt(d)"),
    ("full_dim", "1/sqrt(D), the full width"),
    ("wrong_axis", "heads split along the wrong axis"),
    ("merge", "heads merged along the wrong axis"),
    ("softmax_q", "softmax over the wrong axis"),
    ("over_d", "scaled by 1/d instead of 1/sqrt(d)"),
    ("one_head", "heads ignored"),
    ("interleaved", "heads interleaved"),
])
def test_attention_bugs(bug, phrase):
    fails("attention", att_bug(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: cross_attention

def xatt_bug(bug):
    def fn(attn_module, hidden_states, encoder_hidden_states=None):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if bug == "self":
            ctx = hidden_states
        q, k, v = attn_module.to_q(hidden_states), attn_module.to_k(ctx), attn_module.to_v(ctx)
        if bug == "k_as_v":
            v = k
        out = ref.attention(q, k, v, 1 if bug == "one_head" else attn_module.heads)
        return out if bug == "no_out" else attn_module.to_out[0](out)
    return fn


def test_cross_attention_correct_variant_passes():
    for seed in SEEDS:
        run("cross_attention", xatt_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("self", "to_k and to_v take the TEXT"),  # the UNet case: to_k cannot eat image tokens
    ("no_out", "to_out"),
    ("one_head", "heads ignored"),
    ("k_as_v", "values computed with to_k"),
])
def test_cross_attention_bugs(bug, phrase):
    fails("cross_attention", xatt_bug(bug), phrase)


def test_cross_attention_self_bug_named_when_widths_match():
    """PixArt's attn2 (cross_attention_dim == query_dim): using the image as keys runs, and is named."""
    with pytest.raises(CheckFailed) as info:
        checks_pixart_only(xatt_bug("self"))
    assert "keys and values from hidden_states" in str(info.value)


def checks_pixart_only(fn):
    g = make_generator(0, "x", "test")
    attn = checks._attention_module(g, 16, 16, 2, 8, True)
    x, c = torch.randn(2, 6, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    bugs = [(label, checks.xattn_variant(attn, x, c, bug=b)) for b, label in checks.XATT_BUGS]
    with torch.no_grad():
        checks.assert_close("pixart attn2", fn(attn, x, c), attn(x, c), atol=1e-5, rtol=1e-5, diagnose=bugs)


# --------------------------------------------------------------------------- planted bugs: patchify / unpatchify

def patch_bug(bug):
    def fn(latents, patch_size):
        B, C, H, W = latents.shape
        p = patch_size
        if bug == "unfold":
            return F.unfold(latents, p, stride=p).transpose(1, 2)
        if bug == "no_permute":
            return latents.reshape(B, -1, C * p * p)
        x = latents.reshape(B, C, H // p, p, W // p, p)
        perm = {"transposed": (0, 4, 2, 1, 3, 5), "channels_last": (0, 2, 4, 3, 5, 1)}.get(bug, (0, 2, 4, 1, 3, 5))
        return x.permute(*perm).reshape(B, -1, C * p * p)
    return fn


def unpatch_bug(bug):
    def fn(tokens, patch_size, height, width, channels):
        B, p = tokens.shape[0], patch_size
        if bug == "fold":
            return F.fold(tokens.transpose(1, 2), (height, width), p, stride=p)
        if bug == "no_permute":
            return tokens.reshape(B, channels, height, width)
        if bug == "pixart":  # diffusers' lines, (p, p, C) inside a token
            x = tokens.reshape(B, height // p, width // p, p, p, channels)
            return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, height, width)
        if bug == "transposed":
            x = tokens.reshape(B, width // p, height // p, channels, p, p)
            return x.permute(0, 3, 2, 4, 1, 5).reshape(B, channels, height, width)
        x = tokens.reshape(B, height // p, width // p, channels, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, height, width)
    return fn


@pytest.mark.parametrize("bug", [None, "unfold"])
def test_patchify_correct_variants_pass(bug):
    for seed in SEEDS:
        run("patchify", patch_bug(bug), seed)


@pytest.mark.parametrize("bug", [None, "fold"])
def test_unpatchify_correct_variants_pass(bug):
    for seed in SEEDS:
        run("unpatchify", unpatch_bug(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_permute", "patch order scrambled"),
    ("transposed", "patch grid transposed"),
    ("channels_last", "(dy, dx, C) order inside a token"),
])
def test_patchify_bugs(bug, phrase):
    fails("patchify", patch_bug(bug), phrase)


@pytest.mark.parametrize("bug,phrase", [
    ("no_permute", "patch order scrambled"),
    ("transposed", "patch grid transposed"),
    ("pixart", "(dy, dx, C) order inside a token"),
])
def test_unpatchify_bugs(bug, phrase):
    fails("unpatchify", unpatch_bug(bug), phrase)


# --------------------------------------------------------------------------- sincos_pos_embed_2d

@pytest.mark.parametrize("D,grid,base,s", [(8, (2, 3), 16, 1.0), (32, 5, 5, 1.0), (64, (7, 4), 4, 2.0),
                                           (128, 4, 4, 1), (16, (6, 9), 32, 0.5)])
def test_sincos_pos_embed_2d_equals_diffusers(D, grid, base, s):
    """Equal to diffusers' float32-positions version within float32 rounding of the positions."""
    theirs = get_2d_sincos_pos_embed(D, grid, base_size=base, interpolation_scale=s)
    atol = 8 * 2.0**-24 * (1 + base / s)  # diffusers' float32 positions: a few ulps of angles up to base / s
    torch.testing.assert_close(ref.sincos_pos_embed_2d(D, grid, base, s), theirs, atol=atol, rtol=0)


def test_sincos_pos_embed_2d_is_tiny_dits_table():
    """tiny-dit's architecture: its PatchEmbed table is the function at grid 4, base_size 4."""
    model = PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=32, in_channels=4, out_channels=4,
                                     num_layers=1, cross_attention_dim=128, sample_size=8, patch_size=2,
                                     caption_channels=64, use_additional_conditions=False)
    table = ref.sincos_pos_embed_2d(128, 4, base_size=4, interpolation_scale=1.0).float()
    torch.testing.assert_close(table[None], model.pos_embed.pos_embed, atol=1e-6, rtol=0)
    pe = PatchEmbed(height=8, width=8, patch_size=2, in_channels=4, embed_dim=32)
    z = torch.randn(1, 4, 12, 16)  # another resolution: PatchEmbed recomputes the table for a 6 x 8 grid
    with torch.no_grad():
        added = pe(z) - pe.proj(z).flatten(2).transpose(1, 2)
    torch.testing.assert_close(added[0], ref.sincos_pos_embed_2d(32, (6, 8), 4).float(), atol=1e-5, rtol=0)


def pos_form(form):
    """Correct textbook forms a learner may write, each independently of the reference."""
    def fn(embed_dim, grid_size, base_size=16, interpolation_scale=1.0):
        R, K = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        D = embed_dim
        if form == "diffusers":  # float32 grid via meshgrid "xy", float64 omega, torch.outer
            gh = torch.arange(R, dtype=torch.float32) / (R / base_size) / interpolation_scale
            gw = torch.arange(K, dtype=torch.float32) / (K / base_size) / interpolation_scale
            grid = torch.stack(torch.meshgrid(gw, gh, indexing="xy"), 0)  # (2, R, K)
            om = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))

            def e1(pos):
                a = torch.outer(pos.reshape(-1).double(), om)
                return torch.cat([a.sin(), a.cos()], 1)
            return torch.cat([e1(grid[0]), e1(grid[1])], 1)
        if form == "float32":  # everything in float32, ij meshgrid, float32 result
            y = torch.arange(R, dtype=torch.float32) * (base_size / interpolation_scale / R)
            x = torch.arange(K, dtype=torch.float32) * (base_size / interpolation_scale / K)
            yy, xx = torch.meshgrid(y, x, indexing="ij")  # (R, K)
            om = torch.exp(-math.log(10000.0) * torch.arange(D // 4, dtype=torch.float32) / (D // 4))
            ax, ay = xx.reshape(-1, 1) * om, yy.reshape(-1, 1) * om
            return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], 1)
        if form == "numpy":  # MAE's original NumPy code, float64
            gh = np.arange(R, dtype=np.float64) / (R / base_size) / interpolation_scale
            gw = np.arange(K, dtype=np.float64) / (K / base_size) / interpolation_scale
            grid = np.stack(np.meshgrid(gw, gh), 0).reshape(2, -1)
            om = 1.0 / 10000 ** (np.arange(D // 4) / (D / 4.0))
            parts = [f(np.einsum("m,d->md", grid[i], om)) for i in (0, 1) for f in (np.sin, np.cos)]
            return torch.from_numpy(np.concatenate(parts, 1))
        if form == "timestep":  # reuse the 1-D timestep embedding (sin first, shift 0) for each axis
            rows = torch.arange(R).repeat_interleave(K).float() * base_size / R / interpolation_scale
            cols = torch.arange(K).repeat(R).float() * base_size / K / interpolation_scale
            return torch.cat([ref.timestep_embedding(cols, D // 2, False, 0),
                              ref.timestep_embedding(rows, D // 2, False, 0)], 1)
        raise ValueError(form)
    return fn


@pytest.mark.parametrize("form", ["diffusers", "float32", "numpy", "timestep"])
def test_sincos_pos_embed_2d_equivalent_forms_pass_40_seeds(form):
    """No false negative: every correct form passes on 40 seeds (float32 rounding of angles up to 48)."""
    for seed in range(40):
        run("sincos_pos_embed_2d", pos_form(form), seed)


def pos_bug(bug):
    """A learner's float32 version with one bug on (written independently of the check's variants)."""
    def fn(embed_dim, grid_size, base_size=16, interpolation_scale=1.0):
        R, K = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        D, Q = embed_dim, embed_dim // 4

        def pos(n, denom_n):
            i = torch.arange(n, dtype=torch.float32)
            if bug == "no_rescale":
                return i
            if bug == "interp_mul":
                return i / (denom_n / base_size) * interpolation_scale
            return i / (denom_n / base_size) / interpolation_scale
        om = 10000.0 ** (-torch.arange(Q, dtype=torch.float32) / {"omega_half": 2 * Q, "shift": Q - 1}.get(bug, Q))

        def e1(p):
            a = p[:, None] * om
            if bug == "interleaved":
                return torch.stack([a.sin(), a.cos()], -1).flatten(1)
            return torch.cat([a.cos(), a.sin()] if bug == "cos_first" else [a.sin(), a.cos()], 1)
        ex = e1(pos(K, R if bug == "one_size" else K))  # (K, D/2)
        ey = e1(pos(R, R))  # (R, D/2)
        if bug == "column_major":
            return torch.cat([ex[:, None].expand(K, R, -1), ey[None].expand(K, R, -1)], -1).reshape(R * K, D)
        parts = [ex[None].expand(R, K, -1), ey[:, None].expand(R, K, -1)]
        if bug == "rows_first":
            parts.reverse()
        return torch.cat(parts, -1).reshape(R * K, D)
    return fn


def test_sincos_pos_embed_2d_bug_helper_is_right_when_off():
    for seed in SEEDS:
        run("sincos_pos_embed_2d", pos_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("rows_first", "the row's code in the first half"),
    ("column_major", "your tokens run column by column"),  # named as such once a non-square grid comes
    ("no_rescale", "positions not rescaled"),
    ("interp_mul", "interpolation_scale multiplies the positions"),
    ("one_size", "both axes rescaled with the same grid size"),
    ("omega_half", "frequencies spaced over D/2"),
    ("shift", "frequencies spaced over D/4 - 1"),
    ("cos_first", "cos before sin"),
    ("interleaved", "sin and cos interleaved"),
])
def test_sincos_pos_embed_2d_bugs(bug, phrase):
    if bug == "column_major":  # on the first (square) case it is indistinguishable from rows_first
        with pytest.raises(CheckFailed) as info:
            run("sincos_pos_embed_2d", pos_bug(bug), 0)
        assert "the row's code in the first half" in str(info.value) and "row by row" in str(info.value)
        bugs = [(label, checks.pos_variant(8, (2, 5), 4, 1.0, bug=b)) for b, label in checks.POS_BUGS]
        with pytest.raises(CheckFailed) as info:
            checks._pos_compare("non-square", pos_bug(bug)(8, (2, 5), 4, 1.0),
                                ref.sincos_pos_embed_2d(8, (2, 5), 4, 1.0), 4, bugs, "")
        assert phrase in str(info.value)
        return
    fails("sincos_pos_embed_2d", pos_bug(bug), phrase)


def test_sincos_pos_embed_2d_accepts_float32_and_float64_only():
    with pytest.raises(CheckFailed, match="float32 or float64"):
        run("sincos_pos_embed_2d", lambda *a: ref.sincos_pos_embed_2d(*a).half())
    run("sincos_pos_embed_2d", lambda *a: ref.sincos_pos_embed_2d(*a).float())


# --------------------------------------------------------------------------- planted bugs: modulate

def mod_bug(bug):
    def fn(x, shift, scale):
        if shift.ndim == 2 and bug != "no_unsqueeze":
            shift, scale = shift[:, None], scale[:, None]
        if bug == "no_one":
            return x * scale + shift
        if bug == "swapped":
            return x * (1 + shift) + scale
        if bug == "shift_first":
            return (x + shift) * (1 + scale)
        return x * (1 + scale) + shift
    return fn


def test_modulate_correct_variant_passes():
    for seed in SEEDS:
        run("modulate", mod_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_one", "adaLN without the 1+"),
    ("swapped", "shift and scale swapped"),
    ("shift_first", "shift added before scaling"),
    ("no_unsqueeze", "(B, 1, D)"),
])
def test_modulate_bugs(bug, phrase):
    fails("modulate", mod_bug(bug), phrase)


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name):
    fixed = torch.zeros(2, 16, 8)
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: fixed.clone())


@pytest.mark.parametrize("name", ["attention", "cross_attention", "patchify", "unpatchify", "modulate"])
def test_identity_answer_fails(name):
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: a[1] if name == "cross_attention" else a[0])


@pytest.fixture
def pristine_starters(tmp_path, monkeypatch):
    return write_pristine_starter("lab07", tmp_path, monkeypatch)


def test_a_learner_exception_names_the_learners_line(pristine_starters, capsys):
    """Issue 15: a learner's error was labelled "(not in your file)" in lab 07."""
    from helpers.exercise import check

    src = pristine_starters.read_text().replace('raise NotImplementedError("TODO(lab07): modulate")',
                                                "return x + undefined_shift")
    pristine_starters.write_text(src)
    check("lab07", seed=0)
    out = capsys.readouterr().out
    assert "NameError" in out and "undefined_shift" in out and "(not in your file)" not in out
    assert f"{pristine_starters.name} line" in out


def test_checks_print_no_torchvision_warning(tmp_path):
    """Issue 15: transformers' torchvision warning was printed twice by every check run in lab 07."""
    code = "from helpers.exercise import check; check('lab07', seed=0)"
    env = {**__import__("os").environ, "DIFFUSION_LABS_MODE": "solutions"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "7/7 passed" in res.stdout
    assert "torchvision" not in res.stdout + res.stderr


# --------------------------------------------------------------------------- real architectures on the meta device

def test_real_architectures_match_published_counts():
    from helpers import architectures as A

    rows = {r["model"]: r for r in A.summary_table()}
    for exact in ["SD 1.5 UNet", "SDXL UNet", "FLUX.1-dev"]:  # checkpoint counts
        assert rows[exact]["params"] == rows[exact]["published"]
    assert rows["SD 1.5 UNet"]["params"] == 859_520_964 and rows["SDXL UNet"]["params"] == 2_567_463_684
    assert abs(rows["DiT-XL/2"]["paper_params"] / 675e6 - 1) < 1e-3  # the paper's 675M, one shared embedder
    assert rows["DiT-XL/2"]["params"] > 740e6  # diffusers' module holds 28 copies of it
    assert abs(rows["PixArt-alpha"]["params"] / 0.6e9 - 1) < 0.025  # "0.6B"
    assert abs(rows["SD3 medium"]["params"] / 2e9 - 1) < 0.025  # "2B"
    assert all(p.device.type == "meta" for p in A.build("FLUX.1-dev").parameters())


def test_attention_token_counts():
    from helpers.architectures import attention_tokens

    assert attention_tokens("SD 1.5 UNet", 512)["tokens"] == 64 * 64  # attention at the first (64x64) level
    assert attention_tokens("SDXL UNet", 1024)["tokens"] == 64 * 64  # SDXL's first attention is at 1/2
    assert attention_tokens("SDXL UNet", 512)["tokens"] == 32 * 32
    assert attention_tokens("PixArt-alpha", 1024)["tokens"] == 64 * 64  # 128x128 latent, 2x2 patches
    assert attention_tokens("DiT-XL/2", 256)["tokens"] == 256  # the paper's 256 tokens for XL/2 at 256 px
    assert attention_tokens("SD3 medium", 1024)["tokens"] == 4096 + 77 + 256  # joint attention with the text
    assert attention_tokens("FLUX.1-dev", 1024)["tokens"] == 4096 + 512
    assert attention_tokens("FLUX.1-dev", 512)["scores_per_head"] == (1024 + 512) ** 2


def test_timestep_embedding_device_case_judges_only_the_device():
    """The meta-device case (a stand-in for a GPU) fails a tensor made on the CPU, and nothing that meta
    tensors merely cannot do: a correct embedding that reads t's values (here, to check them) passes."""
    def reads_values(timesteps, embedding_dim, *args):
        assert bool(torch.isfinite(timesteps).all())  # NotImplementedError on the meta device: not judged there
        return ref.timestep_embedding(timesteps, embedding_dim, *args)

    for seed in SEEDS[:3]:
        run("timestep_embedding", reads_values, seed)
    got = ref.timestep_embedding(torch.zeros(3, device="meta"), 33)
    assert got.device.type == "meta" and tuple(got.shape) == (3, 33)
