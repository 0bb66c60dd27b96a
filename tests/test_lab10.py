"""Lab 10 (memory): the reference equals torch / diffusers, passes its checks, and every check
is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from helpers.checks import lab10_memory as checks
from labtools import checker
from helpers.checks._core import CheckFailed, make_generator
from helpers.solutions import lab10_memory as ref

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
NAMES = ["attention_scores_bytes", "sliced_attention", "chunked_feed_forward", "param_bytes", "latent_shape",
         "estimate_peak_memory"]


run, fails = checker(checks)  # tests/labtools.py


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2),
                                        (torch.float64, 8), (torch.float8_e4m3fn, 1)])
def test_scores_bytes_is_what_get_attention_scores_allocates(dtype, size):
    """The (B * H, Lq, Lk) baddbmm input of Attention.get_attention_scores has exactly that many bytes."""
    attn = Attention(query_dim=16, heads=4, dim_head=4)
    q, k = torch.randn(2 * 4, 10, 4), torch.randn(2 * 4, 7, 4)
    probs = attn.get_attention_scores(q, k)  # (B * H, Lq, Lk), float32 here
    assert ref.attention_scores_bytes(2, 4, 10, 7, dtype) == probs.numel() * size


@pytest.mark.parametrize("slice_size", [1, 3, 8, 100])
def test_sliced_equals_sdpa_and_diffusers_processors(slice_size):
    """Inside a diffusers Attention layer, the reference gives what SlicedAttnProcessor,
    AttnProcessor and AttnProcessor2_0 give (same projections, same output layer)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 50, 32), torch.randn(2, 11, 24)

    def ours(attn, hidden_states, encoder_hidden_states):
        B = hidden_states.shape[0]
        split = lambda t: t.reshape(B, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)  # noqa: E731
        q, k, v = (split(attn.to_q(hidden_states)), split(attn.to_k(encoder_hidden_states)),
                   split(attn.to_v(encoder_hidden_states)))
        out = ref.sliced_attention(q, k, v, slice_size).transpose(1, 2).reshape(B, -1, attn.heads * q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))

    with torch.no_grad():
        mine = ours(attn, x, ctx)
        for proc in (SlicedAttnProcessor(slice_size), AttnProcessor(), AttnProcessor2_0()):
            attn.set_processor(proc)
            torch.testing.assert_close(mine, attn(x, ctx), atol=1e-5, rtol=1e-5)
    q, k, v = torch.randn(3, 5, 17, 8), torch.randn(3, 5, 9, 8), torch.randn(3, 5, 9, 6)
    torch.testing.assert_close(ref.sliced_attention(q, k, v, slice_size), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)


def test_sliced_attention_lowers_the_measured_peak():
    """The profiler's CPU peak of sliced attention is close to one slice's scores, far below full
    attention's (B * H, Lq, Lk) scores and probabilities."""
    from helpers.memory import measure_peak

    q, k, v = (torch.randn(2, 4, 512, 8) for _ in range(3))
    full = measure_peak(lambda: (q @ k.transpose(-1, -2) * 8**-0.5).softmax(-1) @ v, "cpu").extra
    sliced = measure_peak(lambda: ref.sliced_attention(q, k, v, 1), "cpu").extra
    scores = ref.attention_scores_bytes(2, 4, 512, 512, torch.float32)
    assert full >= 2 * scores
    assert sliced < 0.3 * scores  # one slice of 8: 1/8 of the scores, twice, plus the output


def test_param_bytes_on_meta_and_diffusers():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(32, 64),
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    norm_num_groups=8, layers_per_block=1)
    n = unet.num_parameters()
    assert ref.param_bytes(unet, torch.bfloat16) == 2 * n
    assert ref.param_bytes(unet) == 4 * n
    assert ref.param_bytes(unet, torch.float8_e4m3fn) == n


def test_latent_shape_matches_the_tiny_pipeline():
    from helpers.zoo import load_pipeline

    pipe = load_pipeline("tiny-sd", device="cpu")
    latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, 96, 160, torch.float32, torch.device("cpu"), None)
    assert ref.latent_shape(96, 160, pipe.vae_scale_factor, pipe.unet.config.in_channels) == tuple(latents.shape[1:])


def test_estimate_terms_and_value_error():
    t = ref.estimate_peak_memory(10**9, 512, 512, heads=8, vae_channels=256, attention="classic")
    assert t["weights"] == 2 * 10**9
    assert t["attention"] == 2 * 2 * 8 * 4096**2 * 2  # scores + probs, CFG batch 2, 64 x 64 latent
    assert t["vae_decoder"] == 3 * 256 * 512 * 512 * 2
    assert t["peak"] == t["weights"] + max(t["attention"], t["vae_decoder"])
    assert ref.estimate_peak_memory(10**9, 512, 512, heads=8, vae_channels=256)["attention"] == 0
    with pytest.raises(ValueError, match="unknown attention"):
        ref.estimate_peak_memory(1, 64, 64, heads=1, vae_channels=1, attention="xformers")


# --------------------------------------------------------------------------- planted bugs: attention_scores_bytes

def scores_variant(bug):
    def fn(batch, heads, query_len, key_len, dtype):
        size = dtype.itemsize
        if bug == "bf16_4":
            size = {torch.float16: 2, torch.float64: 8, torch.float8_e4m3fn: 1}.get(dtype, 4)
        if bug == "float32_always":
            size = 4
        n = batch * heads * query_len * key_len
        return {"bf16_4": n * size, "float32_always": n * size, "elements": n, "bits": n * torch.finfo(dtype).bits,
                "q_squared": batch * heads * query_len * query_len * size,
                "no_heads": batch * query_len * key_len * size,
                "float": n * torch.finfo(dtype).bits / 8, "mib": n * size // 2**20,
                None: n * size}[bug]
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("bf16_4", "bytes per element wrong for bfloat16"),
    ("float32_always", "bytes per element wrong for"),
    ("elements", "number of elements, not bytes"),
    ("bits", "bits, not bytes"),
    ("q_squared", "used query_len twice"),
    ("no_heads", "heads missing"),
    ("mib", "MiB"),
])
def test_attention_scores_bytes_bugs(bug, phrase):
    fails("attention_scores_bytes", scores_variant(bug), phrase)


def test_attention_scores_bytes_correct_variant_passes():
    """The return-type rule: an integer may come as an int, an integral float or a one-element tensor."""
    alt = lambda b, h, q, k, dtype: b * h * q * k * torch.finfo(dtype).bits // 8  # noqa: E731
    as_tensor = lambda b, h, q, k, dtype: torch.tensor(b * h * q * k * dtype.itemsize)  # noqa: E731
    for seed in SEEDS:
        for fn in (scores_variant(None), alt, scores_variant("float"), as_tensor):
            run("attention_scores_bytes", fn, seed)


def test_attention_scores_bytes_fraction_fails():
    fails("attention_scores_bytes", lambda b, h, q, k, dtype: b * h * q * k * dtype.itemsize + 0.5, "a fraction")


# --------------------------------------------------------------------------- planted bugs: sliced_attention

def _softmax_attn(q, k, v, scale, dim=-1):
    return (q @ k.transpose(-1, -2) * scale).softmax(dim=dim) @ v


def _get_attention_scores(query, key, scale, dim=-1):
    """Attention.get_attention_scores without a mask: torch.empty, baddbmm with beta=0, softmax, dels."""
    baddbmm_input = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device)
    attention_scores = torch.baddbmm(baddbmm_input, query, key.transpose(-1, -2), beta=0, alpha=scale)
    del baddbmm_input
    attention_probs = attention_scores.softmax(dim=dim)
    del attention_scores
    return attention_probs


def sliced_variant(bug):
    """Sliced attention written independently of the reference, with one bug switched on."""
    def fn(query, key, value, slice_size):
        B, H, Lq, D = query.shape
        Lk, Dv = key.shape[-2], value.shape[-1]
        scale = {"no_scale": 1.0, "scale_d": 1.0 / D, "scale_dv": Dv**-0.5}.get(bug, D**-0.5)
        dim = -2 if bug == "softmax_dim" else -1
        if bug == "sdpa_whole":
            return F.scaled_dot_product_attention(query, key, value)
        if bug == "cpu_buffer_off_cpu":  # right on the CPU; elsewhere the output stays in a CPU buffer
            if query.device.type == "cpu":
                return sliced_variant(None)(query, key, value, slice_size)
            return torch.zeros(B, H, Lq, Dv, dtype=query.dtype)
        if bug == "keys_sum":  # each key chunk its own softmax, summed
            return sum(_softmax_attn(query, key[:, :, i:i + slice_size], value[:, :, i:i + slice_size], scale)
                       for i in range(0, Lk, slice_size))
        if bug == "keys_last":  # each key chunk overwrites the output
            out = None
            for i in range(0, Lk, slice_size):
                out = _softmax_attn(query, key[:, :, i:i + slice_size], value[:, :, i:i + slice_size], scale)
            return out
        if bug == "head_dim":  # partial dot products over chunks of D
            parts = [_softmax_attn(query[..., i:i + slice_size], key[..., i:i + slice_size],
                                   value[..., i:i + slice_size], min(slice_size, D - i) ** -0.5)
                     for i in range(0, D, slice_size)]
            return torch.cat(parts, dim=-1)
        if bug == "batch_only":  # slice_size batch elements, all heads at once
            return torch.cat([_softmax_attn(query[i:i + slice_size], key[i:i + slice_size], value[i:i + slice_size],
                                            scale) for i in range(0, B, slice_size)])
        q, k, v = (t.reshape(B * H, *t.shape[2:]) for t in (query, key, value))
        out = torch.zeros(B * H, Lq, Dv, dtype=query.dtype, device=query.device)
        if bug == "full_scores":  # all the scores first, then the softmax in slices
            scores = torch.bmm(q, k.transpose(1, 2)) * scale
            for i in range(0, B * H, slice_size):
                out[i:i + slice_size] = scores[i:i + slice_size].softmax(dim) @ v[i:i + slice_size]
            return out.reshape(B, H, Lq, Dv)
        stop = (B * H // slice_size) * slice_size if bug == "remainder" else B * H
        for i in range(0, stop, slice_size):
            s = slice(i, i + slice_size)
            if bug == "leftover_softmax":  # the previous slice's softmax alive while the next is computed
                attn = (q[s] @ k[s].transpose(-1, -2) * scale).softmax(dim)
                out[s] = attn @ v[s]
            elif bug == "leftover_both":  # the previous slice's scores AND softmax alive
                scores = q[s] @ k[s].transpose(-1, -2) * scale
                probs = scores.softmax(dim)
                out[s] = probs @ v[s]
            elif bug == "matmul":  # the one-liner with @
                out[s] = ((q[s] @ k[s].transpose(-1, -2)) * scale).softmax(dim) @ v[s]
            elif bug == "del":  # named tensors, freed at the end of the iteration
                scores = q[s] @ k[s].transpose(-1, -2) * scale
                probs = scores.softmax(dim)
                del scores
                out[s] = probs @ v[s]
                del probs
            elif bug == "diffusers":  # SlicedAttnProcessor: one name reassigned, get_attention_scores inside
                attn_slice = _get_attention_scores(q[s], k[s], scale, dim)
                attn_slice = torch.bmm(attn_slice, v[s])
                out[s] = attn_slice
            elif bug == "sdpa_slices":
                out[s] = F.scaled_dot_product_attention(q[s], k[s], v[s])
            elif bug == "float32_always":  # a .float() inside: float64 inputs lose their precision
                out[s] = _softmax_attn(q[s].float(), k[s].float(), v[s].float(), scale, dim).to(query.dtype)
            elif bug == "float32":
                up = torch.promote_types(query.dtype, torch.float32)  # bfloat16 -> float32, float64 stays
                out[s] = _softmax_attn(q[s].to(up), k[s].to(up), v[s].to(up), scale, dim).to(query.dtype)
            else:
                out[s] = torch.einsum("sqk,skd->sqd", torch.einsum("sqd,skd->sqk", q[s], k[s]).mul(scale).softmax(dim),
                                      v[s])
        return out if bug == "no_reshape" else out.reshape(B, H, Lq, Dv)
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("keys_sum", "slicing along the wrong axis: you sliced the KEYS"),
    ("keys_last", "slicing along the wrong axis: you sliced the KEYS"),
    ("head_dim", "slicing along the wrong axis: you sliced the HEAD DIMENSION"),
    ("no_scale", "missing scale"),
    ("scale_d", "not 1 / D"),
    ("scale_dv", "not value's"),
    ("softmax_dim", "softmax over the wrong axis"),
    ("remainder", "the last slice is missing"),
    ("no_reshape", "not reshaped back"),
    ("full_scores", "scores of all B * H (batch, head) pairs at once"),
    ("sdpa_whole", "scores of all B * H (batch, head) pairs at once"),
    ("batch_only", "sliced the batch axis only"),
    ("float32_always", "computed in float32"),
    ("leftover_softmax", "a tensor of the previous slice is still alive"),
    ("leftover_both", "a tensor of the previous slice is still alive"),
])
def test_sliced_attention_bugs(bug, phrase):
    fails("sliced_attention", sliced_variant(bug), phrase)


@pytest.mark.parametrize("variant", [None, "sdpa_slices", "float32"])
def test_sliced_attention_correct_variants_pass(variant):
    for seed in SEEDS:
        run("sliced_attention", sliced_variant(variant), seed)


def test_sliced_attention_equivalent_forms_pass_the_memory_checks_on_12_seeds(one_thread):
    """The reference, the einsum one-liner, the @ one-liner, named tensors freed with del,
    diffusers' reassignment of one name (get_attention_scores inside) and SDPA per slice: the
    memory checks (largest tensor, memory alive at once) accept every one on every seed. The
    measurement counts allocations, so it does not vary between runs: over 40 seeds these forms
    held 0.75-0.89 of the allowed bytes, the leftover-softmax bug 1.12-1.18 (2026-12-04)."""
    forms = (ref.sliced_attention, sliced_variant(None), sliced_variant("matmul"), sliced_variant("del"),
             sliced_variant("diffusers"), sliced_variant("sdpa_slices"))
    for seed in range(12):
        gen = make_generator(seed, "sliced_attention", "test")
        for fn in forms:
            checks._memory_case(fn, gen)
            checks._alive_case(fn, gen)


def test_sliced_attention_leftover_fails_on_12_seeds(one_thread):
    """The previous slice's softmax kept alive into the next iteration fails on every seed."""
    for seed in range(12):
        gen = make_generator(seed, "sliced_attention", "test")
        with pytest.raises(CheckFailed, match="previous slice is still alive"):
            checks._alive_case(sliced_variant("leftover_softmax"), gen)


def test_sliced_attention_alive_check_agrees_with_the_notebook_measurement():
    """The notebook's claim at tiny-sd's 256 px shapes (two slices of 4 of the 16 pairs alive) and
    the check agree: the reference holds about two slices, the leftover form three."""
    from helpers.memory import measure_peak

    q, k, v = (torch.randn(2, 8, 1024, 4) for _ in range(3))
    scores = ref.attention_scores_bytes(2, 8, 1024, 1024, torch.float32)
    held = {name: measure_peak(lambda fn=fn: fn(q, k, v, 4), "cpu").extra / (scores * 4 / 16)
            for name, fn in (("reference", ref.sliced_attention), ("leftover", sliced_variant("leftover_softmax")))}
    assert 1.9 < held["reference"] < 2.3 and held["leftover"] > 2.9, held


@pytest.fixture
def another_device(monkeypatch):
    """The checks' GPU cases (run where CUDA is available) on a machine without one: the meta device
    stands in for CUDA, so that an output left on the CPU is seen. Values cannot be read there,
    so only the device test runs to its end; the CPU runs the value test."""
    monkeypatch.setattr(checks, "_gpu", lambda: torch.device("meta"))


def test_gpu_cases_catch_an_output_left_on_the_cpu(another_device):
    """A buffer created without device= is filled with the GPU's results and returned on the CPU:
    the next notebook cell that mixes it with CUDA tensors fails. The checks' last case, on the
    GPU, names it; here a CPU output for meta inputs stands in."""
    fails("sliced_attention", sliced_variant("cpu_buffer_off_cpu"), "a tensor created without device=")
    fails("chunked_feed_forward", ff_variant("cpu_buffer_off_cpu"), "a tensor created without device=")


def test_gpu_cases_pass_the_reference_on_the_cpu():
    """The GPU cases compare the values on the CPU against float64 math: on the CPU as the device, the
    reference and the correct forms pass them."""
    for seed in (0, 1, 2):
        gen = make_generator(seed, "device", "test")
        for fn in (ref.sliced_attention, sliced_variant(None), sliced_variant("diffusers")):
            checks._sliced_device_case(fn, gen, torch.device("cpu"))
        for fn in (ref.chunked_feed_forward, ff_variant(None), ff_variant("narrow")):
            checks._ff_device_case(fn, gen, torch.device("cpu"))


def test_sliced_attention_in_place_edit_fails():
    def fn(q, k, v, s):
        q.mul_(1.0 + 1e-3)
        return ref.sliced_attention(q, k, v, s)
    fails("sliced_attention", fn, "in place")


# --------------------------------------------------------------------------- planted bugs: chunked_feed_forward

def ff_variant(bug):
    """Feed-forward chunking written independently of the reference, with one bug switched on."""
    def fn(ff, hidden_states, chunk_dim, chunk_size):
        n = hidden_states.shape[chunk_dim]
        if n % chunk_size and bug != "no_error":
            raise ValueError("not divisible")
        if bug == "cpu_buffer_off_cpu":  # right on the CPU; elsewhere the output stays in a CPU buffer
            if hidden_states.device.type == "cpu":
                return ff_variant(None)(ff, hidden_states, chunk_dim, chunk_size)
            return torch.zeros(*hidden_states.shape[:-1], ff.net[-1].out_features, dtype=hidden_states.dtype)
        if bug == "whole":  # the output is right, nothing is chunked
            return ff(hidden_states)
        if bug == "whole_then_split":
            return torch.cat(ff(hidden_states).split(chunk_size, dim=chunk_dim), dim=chunk_dim)
        if bug == "count_as_size":  # torch.chunk given the length
            return torch.cat([ff(p) for p in hidden_states.chunk(chunk_size, dim=chunk_dim)], dim=chunk_dim)
        if bug == "wrong_axis":  # the right number of chunks, cut along the other axis (a hard-coded dim)
            other = 1 - chunk_dim
            return torch.cat([ff(p) for p in hidden_states.chunk(n // chunk_size, dim=other)], dim=other)
        if bug == "cat_wrong_axis":
            return torch.cat([ff(p) for p in hidden_states.split(chunk_size, dim=chunk_dim)], dim=1 - chunk_dim)
        if bug == "stack":
            return torch.stack([ff(p) for p in hidden_states.split(chunk_size, dim=chunk_dim)])
        if bug == "last_only":
            out = None
            for p in hidden_states.split(chunk_size, dim=chunk_dim):
                out = ff(p)
            return out
        if bug == "indexing":  # x[i] drops the axis (chunk_size 1 only), then stacks back
            return torch.stack([ff(hidden_states.select(chunk_dim, i)) for i in range(n)], dim=chunk_dim)
        if bug == "feature_chunks":  # cuts the model width: a Linear then sees too few features
            return torch.cat([ff(p) for p in hidden_states.split(chunk_size, dim=-1)], dim=-1)
        if bug == "narrow":  # correct: a preallocated output filled chunk by chunk
            first = ff(hidden_states.narrow(chunk_dim, 0, chunk_size))
            shape = list(first.shape)
            shape[chunk_dim] = n
            out = first.new_empty(shape)
            out.narrow(chunk_dim, 0, chunk_size).copy_(first)
            for start in range(chunk_size, n, chunk_size):
                out.narrow(chunk_dim, start, chunk_size).copy_(ff(hidden_states.narrow(chunk_dim, start, chunk_size)))
            return out
        if bug == "index_slices":  # correct: explicit slices, outputs in a list
            idx = [slice(None)] * hidden_states.ndim
            outs = []
            for start in range(0, n, chunk_size):
                idx[chunk_dim] = slice(start, start + chunk_size)
                outs.append(ff(hidden_states[tuple(idx)]))
            return torch.cat(outs, dim=chunk_dim)
        return torch.cat([ff(p) for p in hidden_states.split(chunk_size, dim=chunk_dim)], dim=chunk_dim)  # correct
    return fn


def test_chunked_feed_forward_equals_diffusers_in_a_transformer_block():
    """BasicTransformerBlock with set_chunk_feed_forward calls _chunked_feed_forward; the reference
    gives what it gives, and what the block's ff gives unchunked."""
    from diffusers.models.attention import BasicTransformerBlock, _chunked_feed_forward

    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=32, num_attention_heads=4, attention_head_dim=8).eval()
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        for dim, size in ((1, 6), (1, 24), (0, 1)):
            torch.testing.assert_close(ref.chunked_feed_forward(block.ff, x, dim, size),
                                       _chunked_feed_forward(block.ff, x, dim, size), atol=0, rtol=0)
            torch.testing.assert_close(ref.chunked_feed_forward(block.ff, x, dim, size), block.ff(x),
                                       atol=1e-6, rtol=1e-5)
        with pytest.raises(ValueError):
            ref.chunked_feed_forward(block.ff, x, 1, 5)


def test_chunked_feed_forward_lowers_the_measured_peak():
    """The profiler's CPU peak of the chunked feed-forward is far below the unchunked one's."""
    from diffusers.models.attention import FeedForward

    from helpers.memory import measure_peak

    ff = FeedForward(32, mult=4).eval()
    x = torch.randn(2, 4096, 32)
    full = measure_peak(lambda: ff(x), "cpu").extra
    chunked = measure_peak(lambda: ref.chunked_feed_forward(ff, x, 1, 256), "cpu").extra
    assert chunked < 0.4 * full


@pytest.mark.parametrize("bug,phrase", [
    ("whole", "called once, on the whole hidden_states"),
    ("whole_then_split", "called once, on the whole hidden_states"),
    ("count_as_size", "not the number of chunks"),
    ("wrong_axis", "chunked along the wrong axis"),
    ("cat_wrong_axis", "joined along the wrong axis"),
    ("stack", "stacked"),
    ("last_only", "only one chunk's output"),
    ("no_error", "expected a ValueError"),
])
def test_chunked_feed_forward_bugs(bug, phrase):
    fails("chunked_feed_forward", ff_variant(bug), phrase)


def test_chunked_feed_forward_feature_chunks_fail():
    """Cutting the model width makes the first Linear see too few features: an error, never a pass."""
    with pytest.raises((CheckFailed, RuntimeError)):
        run("chunked_feed_forward", ff_variant("feature_chunks"), 0)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and far faster than several on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_chunked_feed_forward_equivalent_forms_pass_on_40_seeds(one_thread):
    """torch.split, torch.chunk (the reference), narrow into a preallocated output, explicit
    index slices: every seed of the check accepts each of them."""
    for seed in range(40):
        for fn in (ref.chunked_feed_forward, ff_variant(None), ff_variant("narrow"), ff_variant("index_slices")):
            run("chunked_feed_forward", fn, seed)


def test_chunked_feed_forward_in_place_edit_fails():
    def fn(ff, x, dim, size):
        x.mul_(1.0 + 1e-3)
        return ref.chunked_feed_forward(ff, x, dim, size)
    fails("chunked_feed_forward", fn, "in place")


# --------------------------------------------------------------------------- planted bugs: param_bytes

def param_variant(bug):
    def fn(model, dtype=None):
        params = list(model.parameters())
        size = (lambda p: p.element_size()) if dtype is None else (lambda p: dtype.itemsize)
        if bug == "bf16_4" and dtype is not None:
            size = lambda p: {torch.float16: 2, torch.float64: 8, torch.float8_e4m3fn: 1}.get(dtype, 4)  # noqa: E731
        if bug == "tensors":
            return sum(size(p) for p in params)
        if bug == "state_dict":
            return sum(t.numel() * (t.element_size() if dtype is None else dtype.itemsize)
                       for t in model.state_dict().values())
        if bug == "tied_twice":
            return sum(p.numel() * size(p) for _, p in model.named_parameters(remove_duplicate=False))
        if bug == "ignore_dtype":
            return sum(p.numel() * p.element_size() for p in params)
        if bug == "none_float32":
            return sum(p.numel() for p in params) * (4 if dtype is None else dtype.itemsize)
        if bug == "bits":
            return sum(p.numel() * size(p) * 8 for p in params)
        return sum(p.numel() * size(p) for p in params)
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("bf16_4", "bytes per element wrong for bfloat16"),
    ("tensors", "counted tensors, not elements"),
    ("state_dict", "state_dict"),
    ("tied_twice", "counted twice"),
    ("ignore_dtype", "dtype ignored"),
    ("none_float32", "dtype=None means the dtypes the parameters have now"),
    ("bits", "bits, not bytes"),
])
def test_param_bytes_bugs(bug, phrase):
    fails("param_bytes", param_variant(bug), phrase)


def test_param_bytes_correct_variant_passes():
    for seed in SEEDS:
        run("param_bytes", param_variant(None), seed)


# --------------------------------------------------------------------------- planted bugs: latent_shape

def test_sliced_attention_float32_message_shows_the_digits():
    """The float32 diagnosis prints an error that tells got from expected (never 'got 0.246626,
    expected 0.246626')."""
    with pytest.raises(CheckFailed) as info:
        run("sliced_attention", sliced_variant("float32_always"), 0)
    assert "computed in float32" in str(info.value) and "e-0" in str(info.value)


def latent_variant(bug):
    def fn(height, width, vae_scale_factor=8, channels=4):
        f = vae_scale_factor
        return {"swapped": (channels, width // f, height // f), "channels_last": (height // f, width // f, channels),
                "multiplied": (channels, height * f, width * f),
                "ceil": (channels, math.ceil(height / f), math.ceil(width / f)),
                "no_channels": (height // f, width // f), "float": (channels, height / f, width / f),
                "exponent": (channels, height // 2**f, width // 2**f), "list": [channels, height // f, width // f],
                "size": torch.Size([channels, height // f, width // f]),
                "integral_floats": (float(channels), float(height // f), float(width // f)),
                "string": f"{channels}x{height // f}x{width // f}",
                None: (channels, height // f, width // f)}[bug]
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("swapped", "height and width swapped"),
    ("channels_last", "channels last"),
    ("multiplied", "multiplied by the factor"),
    ("ceil", "rounded up"),
    ("no_channels", "channels missing"),
    ("float", "float division"),
    ("exponent", "as an exponent"),
    ("string", "expected a tuple of 3 numbers"),
])
def test_latent_shape_bugs(bug, phrase):
    fails("latent_shape", latent_variant(bug), phrase)


def test_latent_shape_correct_variant_passes():
    """The return-type rule: a tuple of integers may come as a list, a torch.Size or integral floats."""
    for seed in SEEDS:
        for form in (None, "list", "size", "integral_floats"):
            run("latent_shape", latent_variant(form), seed)


# --------------------------------------------------------------------------- planted bugs: estimate_peak_memory

def estimate_variant(bug):
    """The estimate written independently of the reference (and of the check's candidates)."""
    def fn(n_params, height, width, *, heads, vae_channels, dtype=torch.float16, vae_dtype=None, batch_size=1, cfg=True,
           vae_scale_factor=8, attn_downsample=1, text_tokens=0, attention="sdpa", slice_size=1):
        if attention not in ("classic", "sliced", "sdpa"):
            if bug == "no_error":
                attention = "sdpa"
            else:
                raise ValueError(attention)
        nbytes = lambda dt: (4 if dt == torch.bfloat16 else torch.finfo(dt).bits // 8) if bug == "bf16" \
            else torch.finfo(dt).bits // 8  # noqa: E731
        _, h, w = ref.latent_shape(height, width, vae_scale_factor)
        if bug == "pixels":
            h, w = height, width
        d = 1 if bug == "no_downsample" else attn_downsample
        L = (h // d) * (w // d) + (0 if bug == "no_text" else text_tokens)
        batch = batch_size * (2 if cfg and bug != "no_cfg" else 1)
        copies = 1 if bug == "once" else 2
        attn = 0
        if attention == "classic":
            attn = copies * batch * heads * L * L * nbytes(dtype)
        elif attention == "sliced":
            pairs = batch * heads if bug == "slice_ignored" else (slice_size if bug == "no_cap"
                                                                  else min(slice_size, batch * heads))
            attn = copies * pairs * L * L * nbytes(dtype)
        vae = 3 * (1 if bug == "vae_batch" else batch_size) * vae_channels * height * width * \
            nbytes(dtype if bug == "vae_dtype" else (vae_dtype or dtype))
        weights = n_params * nbytes(dtype)
        peak = weights + attn + vae if bug == "sum" else weights + max(attn, vae)
        out = {"weights": weights, "attention": attn, "vae_decoder": vae, "peak": peak}
        if bug == "floats":  # correct: integral floats (n_params * 2.0, ...)
            out = {key: float(value) for key, value in out.items()}
        return out
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("bf16", "bytes per element wrong for bfloat16"),
    ("no_cap", "a slice cannot hold more pairs than exist"),
    ("pixels", "tokens counted in PIXELS"),
    ("no_downsample", "attn_downsample ignored"),
    ("no_text", "text_tokens ignored"),
    ("no_cfg", "CFG ignored"),
    ("once", "holds two score matrices at once"),
    ("slice_ignored", "slice_size ignored"),
    ("vae_dtype", "vae_dtype ignored"),
    ("vae_batch", "scales with batch_size"),
    ("sum", "do not overlap in time"),
    ("no_error", "expected a ValueError"),
])
def test_estimate_peak_memory_bugs(bug, phrase):
    fails("estimate_peak_memory", estimate_variant(bug), phrase)


def test_estimate_peak_memory_correct_variant_passes():
    for seed in SEEDS:
        run("estimate_peak_memory", estimate_variant(None), seed)
        run("estimate_peak_memory", estimate_variant("floats"), seed)


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name):
    for fixed in (4096, (4, 8, 8), torch.zeros(2, 4, 8, 8),
                  {"weights": 1, "attention": 0, "vae_decoder": 1, "peak": 2}):
        with pytest.raises(CheckFailed):
            run(name, lambda *a, fixed=fixed, **k: fixed)


