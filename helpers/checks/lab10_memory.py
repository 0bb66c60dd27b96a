"""Checks of Lab 10 (memory): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` and compares the learner's result with the
reference solution AND with an independent ground truth: the bytes of a real (meta-device)
tensor for the attention scores, ``torch.nn.functional.scaled_dot_product_attention`` for sliced
attention, diffusers' ``ModelMixin.num_parameters`` for the weights, the shape of
``StableDiffusionPipeline.prepare_latents`` for the latent. ``sliced_attention`` is also
checked for memory, twice: the largest tensor it creates (every operator's output, seen through a
``TorchDispatchMode``) may not exceed one slice's scores, and the memory alive at once (the CPU
allocator's events, recorded by the profiler through ``helpers.memory.measure_peak``) may not
exceed two slices' scores (the scores and their softmax), so that a slice's tensor kept alive
into the next iteration fails. Where a GPU is present (the notebook computes on it there),
``sliced_attention`` and ``chunked_feed_forward`` are also called on CUDA inputs, last, and their
output must stay on that device: a buffer created without ``device=`` passes on CPU inputs and
breaks the notebook's cells on a GPU. When a wrong result matches what a typical bug returns, the
message names that bug.
"""
import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention import FeedForward, _chunked_feed_forward
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.checks._core import (require_raises, CheckFailed, as_number, as_numbers, assert_close, choice, describe, randint,
                                  require_unchanged)
from helpers.memory import measure_peak
from helpers.solutions import lab10_memory as ref

LAB = "lab10"

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn)
BYTES_HINT = ("bytes per element: the dtype's own size (torch.dtype.itemsize): float64 8, float32 4, float16 2, "
              "bfloat16 2 (16 bits: 1 sign, 8 exponent, 7 mantissa), float8 1.")
SCORES_EQ = ("the scores tensor diffusers' Attention.get_attention_scores allocates (attention_processor.py), after "
             "head_to_batch_dim: one score per batch element, head, query and key, in bytes.")
ATTN_EQ = ("Vaswani et al. 2017, eq. 1, per (batch, head) pair, as diffusers' SlicedAttnProcessor.__call__ "
           "(attention_processor.py): the (B, H) pairs flattened into B * H rows (head_to_batch_dim), processed "
           "slice_size rows at a time (the last slice may be shorter), the scores scaled by the head dimension D "
           "of the queries and keys (Attention.get_attention_scores), the softmax over the keys; output "
           "(B, H, Lq, Dv).")
# Tolerances, |got - expected| <= atol + rtol * |expected|, against float64 math: a rewrite (einsum,
# baddbmm, SDPA per slice, float32 softmax) differs by rounding only; bfloat16 keeps 8 significant bits.
TOL = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=2e-5),
       torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}


def _lead(labels):
    """'Likely bug: ...' for the bugs that give exactly what the learner's function gave (several
    bugs can give the same number on one input: then all of them are named)."""
    labels = list(dict.fromkeys(labels))
    if not labels:
        return ""
    if len(labels) == 1:
        return f"Likely bug: {labels[0]}\n"
    return "Likely bug (these give the same number here; one of them):\n" + "".join(f"  - {x}\n" for x in labels)


def _int_result(name, got, expected, bugs, hint):
    """got must be the integer `expected` (by the course's return-type rule: an int, a NumPy
    integer, a one-element tensor or an integral float); if it equals a bug's value, name the bug."""
    try:
        got = as_number(name, got, integer=True)
    except CheckFailed as e:
        raise CheckFailed(f"{e}\nHint: {hint}") from None
    if got == expected:
        return
    lead = _lead([label for label, value in bugs if value == got and value != expected])
    ratio = f" ({got / expected:.4g} x the expected)" if expected else ""
    raise CheckFailed(f"{lead}{name}: expected {expected:,}, got {got:,}{ratio}.\nHint: {hint}")


# --------------------------------------------------------------------------- attention_scores_bytes

def _meta_scores_bytes(batch, heads, q, k, dtype):
    """Bytes of the tensor `get_attention_scores` really allocates, (B * H, Lq, Lk), on the meta device."""
    t = torch.empty(batch * heads, q, k, dtype=dtype, device="meta")
    return t.numel() * t.element_size()


def _scores_bugs(b, h, q, k, dtype):
    n, size = b * h * q * k, dtype.itemsize
    bugs = [
        ("you returned the number of elements, not bytes: each element takes dtype.itemsize bytes.", n),
        ("bits, not bytes: torch.finfo(dtype).bits is in bits; dtype.itemsize is in bytes.", n * 8 * size),
        ("the scores of cross-attention are (Lq, Lk): you used query_len twice (query_len ** 2).",
         b * h * q * q * size),
        ("the scores are (Lq, Lk): you used key_len twice (key_len ** 2).", b * h * k * k * size),
        ("heads missing: every head has its own (Lq, Lk) scores; diffusers' head_to_batch_dim makes B * H rows.",
         b * q * k * size),
        ("batch missing: every batch element (2 x images with CFG) has its own scores.", h * q * k * size),
        ("you returned MiB (bytes / 2**20); the function returns bytes.", (n * size) // 2**20),
    ]
    if dtype == torch.bfloat16:
        bugs.insert(0, ("bytes per element wrong for bfloat16: it has 16 bits, 2 bytes, like float16 (same size, "
                        "8 exponent bits instead of 5); you used 4. Use dtype.itemsize.", n * 4))
    if dtype == torch.float16:
        bugs.insert(0, ("bytes per element wrong for float16: 2 bytes; you used 4. Use dtype.itemsize.", n * 4))
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        bugs.append((f"bytes per element wrong for {dtype}: it has {size}; you used 4 (float32's) whatever the "
                     f"dtype. Use dtype.itemsize.", n * 4))
    return bugs


def check_attention_scores_bytes(fn, gen):
    """Every dtype (float32, float16, bfloat16, float64, float8) with random batch, heads and
    lengths; self-attention (Lq = Lk) and cross-attention (Lk = 77 text tokens) shapes."""
    dtypes = list(DTYPES)
    order = torch.randperm(len(dtypes), generator=gen).tolist()
    for i in order:
        dtype = dtypes[i]
        b, h = randint(gen, 2, 4), randint(gen, 3, 16)
        side = randint(gen, 3, 64)
        q = side * side
        k = choice(gen, (q, 77, randint(gen, 5, 300)))
        if k == q and i % 2:  # half the dtypes with cross-attention, so Lq ** 2 cannot pass
            k = 77
        expected = ref.attention_scores_bytes(b, h, q, k, dtype)
        assert expected == _meta_scores_bytes(b, h, q, k, dtype)
        name = f"attention_scores_bytes(batch={b}, heads={h}, query_len={q}, key_len={k}, dtype={dtype})"
        got = fn(b, h, q, k, dtype)
        _int_result(name, got, expected, _scores_bugs(b, h, q, k, dtype), SCORES_EQ + " " + BYTES_HINT)


# --------------------------------------------------------------------------- sliced_attention

class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (elements) any operator creates while active (views excluded:
    they share memory with their base)."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape, self.op = 0, None, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.numel() > self.numel:
                    self.numel, self.shape, self.op = o.numel(), tuple(o.shape), str(func).split(".")[1]
        return out


def _attn64(q, k, v, *, scale=None, dim=-1):
    """Full attention in float64 (B, H, Lq, Dv); scale defaults to 1 / sqrt(D)."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    return s.softmax(dim=dim) @ v


def _rows(x):
    B, H = x.shape[:2]
    return x.reshape(B * H, *x.shape[2:])


def _sliced_bugs(q, k, v, s):
    """What attention sliced along a wrong axis, or with a wrong scale, returns (float64)."""
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[-2], v.shape[-1]
    q64, k64, v64 = q.double(), k.double(), v.double()
    bugs = []
    chunks = [slice(i, i + s) for i in range(0, Lk, s)]
    if len(chunks) > 1:
        parts = [_attn64(q64, k64[:, :, c], v64[:, :, c]) for c in chunks]
        bugs += [
            ("slicing along the wrong axis: you sliced the KEYS (each key chunk got its own softmax, and you summed "
             "the chunks). The softmax normalises over all Lk keys; slice the (batch, head) rows instead.",
             sum(parts)),
            ("slicing along the wrong axis: you sliced the KEYS and kept only the last chunk's result. The softmax "
             "needs all Lk keys at once; slice the (batch, head) rows instead.", parts[-1]),
        ]
    if Dv == D and D > s:
        dchunks = [slice(i, min(i + s, D)) for i in range(0, D, s)]
        for full_scale, how in ((False, "1 / sqrt of the chunk's width"), (True, "the full 1 / sqrt(D)")):
            out = torch.cat([_attn64(q64[..., c], k64[..., c], v64[..., c],
                                     scale=D ** -0.5 if full_scale else (c.stop - c.start) ** -0.5)
                             for c in dchunks], dim=-1)
            bugs.append((f"slicing along the wrong axis: you sliced the HEAD DIMENSION D (with {how}): each chunk's "
                         "Q K^T is a partial dot product, but each score needs all of D; slice the (batch, head) "
                         "rows instead.", out))
    bugs += [
        ("missing scale: the scores are scaled by the head dimension (Vaswani et al. 2017, eq. 1; Attention.scale).",
         _attn64(q, k, v, scale=1.0)),
        ("wrong scale: 1 / sqrt(D), not 1 / D.", _attn64(q, k, v, scale=1.0 / D)),
        ("softmax over the wrong axis: the probabilities of one query sum to 1 over the KEYS, the last axis of "
         "the (.., Lq, Lk) scores.", _attn64(q, k, v, dim=-2)),
    ]
    if Dv != D:
        bugs.append(("wrong scale: the head dimension of the queries and keys counts, "
                     "not value's.", _attn64(q, k, v, scale=Dv ** -0.5)))
    if Lk != Lq:
        bugs.append(("wrong scale: 1 / sqrt(D) with D the head dimension, not the number of keys.",
                     _attn64(q, k, v, scale=Lk ** -0.5)))
    return bugs


def _call_sliced(fn, name, q, k, v, s):
    inputs = [t.clone() for t in (q, k, v)]
    got = fn(q, k, v, s)
    require_unchanged(name, inputs, (q, k, v), "query, key or value")
    return got


def _remainder_dropped(got, expected, s):
    """The last, shorter slice is wrong while every full slice is right."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape):
        return False
    g, e = _rows(got.detach().double()), _rows(expected.double())
    n = g.shape[0]
    full = (n // s) * s
    if full in (0, n):
        return False
    return bool(torch.allclose(g[:full], e[:full], atol=1e-3, rtol=1e-3)
                and not torch.allclose(g[full:], e[full:], atol=1e-3, rtol=1e-3))


def _sliced_case(fn, gen, B, H, Lq, Lk, D, Dv, s, dtype, diagnose=True):
    q = torch.randn(B, H, Lq, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, H, Lk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, Lk, Dv, generator=gen, dtype=torch.float64)
    q = (q * 1.5).to(dtype)  # logits of a few units: a wrong scale or axis changes the output visibly
    k, v = k.to(dtype), v.to(dtype)
    name = (f"sliced_attention(query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}, "
            f"slice_size={s}) [{dtype}, B * H = {B * H} rows]")
    got = _call_sliced(fn, name, q, k, v, s)
    expected = ref.sliced_attention(q, k, v, s)
    if isinstance(got, torch.Tensor) and got.shape == (B * H, Lq, Dv):
        raise CheckFailed(f"Likely bug: output not reshaped back: you returned the (B * H, Lq, Dv) rows; the output "
                          f"is (B, H, Lq, Dv) = {(B, H, Lq, Dv)}.\n{name}: got shape {tuple(got.shape)}.")
    if _remainder_dropped(got, expected, s):
        raise CheckFailed(f"Likely bug: the last slice is missing: B * H = {B * H} rows is not a multiple of "
                          f"slice_size = {s}, so the last slice has only {B * H % s} rows; "
                          f"a loop over the full slices only misses it (see how SlicedAttnProcessor's loop ends).\n{name}: "
                          f"rows {(B * H // s) * s}..{B * H - 1} (flattened) are wrong, the others right.\n"
                          f"Hint: {ATTN_EQ}")
    exact = _attn64(q, k, v)
    tol = TOL[dtype]
    if (dtype == torch.float64 and isinstance(got, torch.Tensor) and got.shape == exact.shape
            and got.dtype == dtype and not torch.allclose(got, exact, **tol)
            and torch.allclose(got, exact, **TOL[torch.float32])):
        err = float((got - exact).abs().max())
        raise CheckFailed(f"Likely bug: computed in float32 (a .float(), a float32 buffer or a float32 constant "
                          f"tensor on the way): the inputs are float64, and so must every intermediate be; the "
                          f"error, {err:.3g}, is float32's rounding (float64's would be about 1e-15).\n{name}: "
                          f"max abs error {err:.3g} against float64 math, allowed {tol['atol']:g} + "
                          f"{tol['rtol']:g} |expected|.\nHint: keep the inputs' dtype throughout (every buffer and constant "
                          f"you create too). {ATTN_EQ}")
    bugs = [(label, cand.to(dtype)) for label, cand in _sliced_bugs(q, k, v, s)] if diagnose else None
    assert_close(name, got, exact.to(dtype), **tol, diagnose=bugs, hint=ATTN_EQ)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert_close(f"{name} vs torch.nn.functional.scaled_dot_product_attention", got, sdpa, **tol)
    return expected


def _memory_case(fn, gen):
    """Few query tokens, many keys, head dimension 2, slice_size 1 (diffusers' "max"): one slice's
    scores (1, Lq, Lk) are smaller than the inputs, and the inputs (B * H * Lk * 2 values) are
    smaller than the scores of one batch element's heads (H * Lq * Lk) or of everything."""
    B, H = 2, randint(gen, 4, 6)
    Lq, Lk, D, s = randint(gen, 6, 8), randint(gen, 96, 160), 2, 1
    q = torch.randn(B, H, Lq, D, generator=gen) * 1.5
    k, v = torch.randn(B, H, Lk, D, generator=gen), torch.randn(B, H, Lk, D, generator=gen)
    name = (f"sliced_attention(query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}, "
            f"slice_size={s}) [float32]")
    inputs = [t.clone() for t in (q, k, v)]
    mode = _LargestTensor()
    with sdpa_kernel(SDPBackend.MATH), mode:  # SDPA materialises the scores, like the classic processor
        got = fn(q, k, v, s)
    require_unchanged(name, inputs, (q, k, v), "query, key or value")
    assert_close(name, got, F.scaled_dot_product_attention(q, k, v), **TOL[torch.float32], hint=ATTN_EQ)
    one_slice = s * Lq * Lk
    bound = max(one_slice, q.numel(), k.numel(), v.numel(), B * H * Lq * D)
    if mode.numel <= bound:
        return
    n, shape = mode.numel, mode.shape
    if n == B * H * Lq * Lk:
        why = ("you computed the scores of all B * H (batch, head) pairs at once: that (B * H, Lq, Lk) tensor is "
               "what slicing avoids. Compute them inside the loop, slice_size rows at a time.")
    elif n == s * H * Lq * Lk:
        why = ("you sliced the batch axis only: each slice holds all H heads. slice_size counts (batch, head) "
               "pairs, as in diffusers' SlicedAttnProcessor (read how its input is shaped before the loop).")
    else:
        why = "a tensor larger than one slice's scores, the inputs and the output was created."
    raise CheckFailed(
        f"Likely bug: {why}\n{name}: the largest tensor your function created has shape {shape} ({n:,} values, "
        f"from aten.{mode.op}); one slice's scores (slice_size, Lq, Lk) = ({s}, {Lq}, {Lk}) have {one_slice:,} "
        f"values, and no input or output has more than {bound:,}. The output is right, but the memory is not "
        f"saved.\nHint: {ATTN_EQ}")


def _alive_case(fn, gen):
    """How much is alive at once, measured: self-attention with many tokens and head dimension 2,
    slice_size 1 or 2, so one slice's (slice_size, L, L) scores are over 4 times the inputs and
    the output together. diffusers' loop holds two slices' worth at its peak (baddbmm's empty
    input and its output, then the scores and their softmax); a tensor of the previous slice
    still bound to a name makes three or more. Allowed: two slices, half a slice of slack (the
    boolean mask of SDPA's math backend per slice takes a quarter), the output and one copy of
    the inputs."""
    B, H = 2, randint(gen, 3, 5)
    L, D, s = randint(gen, 320, 384), 2, randint(gen, 1, 2)
    q = torch.randn(B, H, L, D, generator=gen) * 1.5
    k, v = torch.randn(B, H, L, D, generator=gen), torch.randn(B, H, L, D, generator=gen)
    name = (f"sliced_attention(query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}, "
            f"slice_size={s}) [float32, B * H = {B * H} rows]")
    inputs = [t.clone() for t in (q, k, v)]
    with sdpa_kernel(SDPBackend.MATH):  # SDPA per slice materialises that slice's scores, like the classic loop
        m = measure_peak(lambda: fn(q, k, v, s), "cpu")
    require_unchanged(name, inputs, (q, k, v), "query, key or value")
    assert_close(name, m.output, F.scaled_dot_product_attention(q, k, v), **TOL[torch.float32], hint=ATTN_EQ)
    one_slice = s * L * L * q.element_size()
    output = B * H * L * D * q.element_size()
    copies = sum(t.numel() * t.element_size() for t in (q, k, v))
    allowed = 2.5 * one_slice + output + copies
    if m.extra <= allowed:
        return
    held = (m.extra - output) / one_slice
    where = f" (at the peak: {' > '.join(m.at_peak)})" if m.at_peak else ""
    raise CheckFailed(
        f"Likely bug: a tensor of the previous slice is still alive while the next slice is computed: a name "
        f"bound in one iteration (the previous slice's softmax, or its scores) keeps its tensor until the name "
        f"is reassigned, so it sits beside the next slice's scores and softmax. `del` it at the end of the "
        f"iteration, or reassign one variable as SlicedAttnProcessor does (attn_slice = get_attention_scores(...); "
        f"attn_slice = torch.bmm(attn_slice, ...)).\n{name}: at the peak {m.extra:,} bytes were alive above the "
        f"inputs{where}, about {held:.2f} slices' scores (one slice, (slice_size, Lq, Lk) = ({s}, {L}, {L}) in "
        f"float32, is {one_slice:,} bytes) besides the output; allowed: two (the scores and their softmax, as in "
        f"Attention.get_attention_scores), half a slice of slack, the output and a copy of the inputs, "
        f"{int(allowed):,} bytes. The "
        f"output is right, but the memory is not what slicing promises.\nHint: {ATTN_EQ}")


def check_sliced_attention(fn, gen):
    """Self- and cross-attention shapes, B * H not a multiple of slice_size, slice_size >= B * H,
    head dimensions of values different from queries', float64 / float32 / bfloat16; each result
    against float64 math and `scaled_dot_product_attention`. Then the memory: with few queries
    and many keys, the largest tensor created may not exceed one slice's (slice_size, Lq, Lk)
    scores (or the inputs and output); with many tokens, the memory alive at once (measured)
    may not exceed two slices' scores, the previous iteration's leftovers included. There
    `scaled_dot_product_attention` runs on its math backend, which materialises the scores
    like the classic processor: SDPA on one slice is fine, SDPA on all B * H rows at once is
    not slicing."""
    # 1. float64, D = Dv, Lq != Lk, a remainder slice.
    B, H = randint(gen, 1, 3), randint(gen, 2, 5)
    sizes = [s for s in (2, 3, 4) if (B * H) % s and B * H > s]  # some full slices and a shorter last one
    while not sizes:
        H += 1
        sizes = [s for s in (2, 3, 4) if (B * H) % s and B * H > s]
    s = choice(gen, sizes)
    D = randint(gen, 5, 8)  # D > slice_size: slicing D by mistake gives several chunks
    _sliced_case(fn, gen, B, H, randint(gen, 8, 16), randint(gen, 17, 30), D, D, s, torch.float64)
    # 2. slice_size 1 (diffusers' "max"), cross-attention shape, Dv != D, float32.
    _sliced_case(fn, gen, randint(gen, 1, 2), randint(gen, 2, 4), randint(gen, 9, 20), 7, 8, randint(gen, 3, 6),
                 1, torch.float32)
    # 3. one slice holds everything (slice_size >= B * H), self-attention.
    B, H, L = randint(gen, 1, 2), randint(gen, 1, 3), randint(gen, 8, 20)
    _sliced_case(fn, gen, B, H, L, L, 8, 8, B * H + randint(gen, 0, 3), torch.float32)
    # 4. bfloat16: the output keeps the inputs' dtype.
    _sliced_case(fn, gen, 2, randint(gen, 2, 3), 12, 12, 8, 8, randint(gen, 2, 3), torch.bfloat16, diagnose=False)
    # 5. memory: the largest tensor, then what is alive at once.
    _memory_case(fn, gen)
    _alive_case(fn, gen)
    # 6. on a GPU, the notebook's device (last, so that the cases above draw the same inputs everywhere).
    if _gpu() is not None:
        _sliced_device_case(fn, gen, _gpu())


# --------------------------------------------------------------------------- on the notebook's device

DEVICE_EQ = ("on a GPU the notebook calls your function with CUDA tensors; every tensor you create must be made on "
             "the inputs' device (torch.empty(..., device=query.device, dtype=query.dtype), or torch.empty_like / "
             "x.new_empty), as diffusers does (SlicedAttnProcessor's torch.zeros(..., device=query.device, "
             "dtype=query.dtype)); a CPU buffer silently receives the CUDA results, and the next cell that mixes "
             "your output with CUDA tensors fails.")


FF_DEVICE_EQ = ("on a GPU the notebook calls your function with ff and hidden_states on CUDA; a tensor you create "
                "(an output buffer) must be made on hidden_states' device (torch.empty(..., "
                "device=hidden_states.device, dtype=...)), or let torch.cat join ff's outputs where they are, as "
                "diffusers' _chunked_feed_forward does; a CPU buffer silently receives the CUDA results, and the next "
                "cell that mixes your output with CUDA tensors fails.")


def _gpu():
    """CUDA where it is available (the device `setup()` gives the notebook there), else None."""
    return torch.device("cuda") if torch.cuda.is_available() else None


def _require_device(name, got, device, hint):
    """got, if a tensor, must be on `device` (the inputs'); any other mistake is left to assert_close."""
    if isinstance(got, torch.Tensor) and got.device != device:
        raise CheckFailed(f"Likely bug: a tensor created without device=: the inputs are on {device}, your output "
                          f"is on {got.device}.\n{name}\nHint: {hint}")


def _sliced_device_case(fn, gen, device):
    """sliced_attention on `device` (CUDA in check_sliced_attention), against float64 math on the CPU:
    the output on the inputs' device, the values right. float64, so that no TF32 or kernel choice
    blurs the comparison."""
    B, H, L, D, s = 2, randint(gen, 2, 3), randint(gen, 8, 16), 8, 2
    q = torch.randn(B, H, L, D, generator=gen, dtype=torch.float64) * 1.5
    k = torch.randn(B, H, L, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, H, L, D, generator=gen, dtype=torch.float64)
    qd, kd, vd = (t.to(device) for t in (q, k, v))
    name = (f"sliced_attention(query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}, "
            f"slice_size={s}) [float64, on {qd.device}]")
    got = fn(qd, kd, vd, s)
    _require_device(name, got, qd.device, DEVICE_EQ)
    assert_close(name, got.detach().cpu() if isinstance(got, torch.Tensor) else got, _attn64(q, k, v),
                 **TOL[torch.float64], hint=ATTN_EQ)


# --------------------------------------------------------------------------- chunked_feed_forward

FF_EQ = ("diffusers' _chunked_feed_forward (diffusers/models/attention.py, a few lines): when it raises "
         "ValueError, what chunk_size means (a length, not a count), which axis it cuts and joins along, and "
         "how often it calls ff; the output has the shape of ff on the whole input.")


class _RecordingFF(torch.nn.Module):
    """Wraps a feed-forward and records the shape of every input it is called with."""

    def __init__(self, ff):
        super().__init__()
        self.ff = ff
        self.calls = []

    def forward(self, x, *args, **kwargs):
        self.calls.append(tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__)
        return self.ff(x, *args, **kwargs)


def _ff_calls_bug(calls, shape, chunk_dim, chunk_size):
    """Why the recorded calls of ff are not diffusers' (None when they are)."""
    n = shape[chunk_dim]
    want = tuple(chunk_size if d == chunk_dim else x for d, x in enumerate(shape))
    if calls == [want] * (n // chunk_size):
        return None
    seen = sorted(set(map(str, calls)))
    said = (f"ff was called {len(calls)} time(s), on inputs of shape {', '.join(seen[:4])}"
            f"{' ...' if len(seen) > 4 else ''}; diffusers calls it {n // chunk_size} times, each on {want}.")
    if calls == [tuple(shape)]:
        why = ("ff was called once, on the whole hidden_states: nothing was chunked, so the wide hidden activation "
               "of every position exists at once (the output is right, the memory is not saved).")
    elif calls and all(isinstance(c, tuple) and len(c) == len(shape) and c[chunk_dim] == n // chunk_size
                       for c in calls) and n // chunk_size != chunk_size:
        why = (f"chunk_size is the LENGTH of each chunk ({chunk_size} positions), not the number of chunks: "
               f"torch.chunk takes a number of chunks (n // chunk_size = {n // chunk_size}), torch.split a length.")
    elif calls and all(isinstance(c, tuple) and len(c) == len(shape) and c[chunk_dim] == n for c in calls) \
            and len(calls) > 1:
        why = (f"chunked along the wrong axis: the pieces must be cut along chunk_dim = {chunk_dim} "
               f"(0: batch, 1: tokens); you cut another axis.")
    elif calls and all(isinstance(c, tuple) and len(c) == len(shape) - 1 for c in calls):
        why = "the pieces lost an axis (indexing x[i] instead of slicing): keep every axis."
    else:
        why = "ff was not called on chunk_size positions along chunk_dim, once per chunk."
    return f"Likely bug: {why}\n{said}"


def _ff_case(fn, gen, dim, dim_out, mult, act, shape, chunk_dim, chunk_size, dtype=torch.float32):
    with torch.random.fork_rng(devices=[]):  # the weights come from gen, not the global RNG
        torch.manual_seed(randint(gen, 0, 2**31 - 1))
        ff = FeedForward(dim, dim_out=dim_out, mult=mult, activation_fn=act).eval()
    ff = ff.to(dtype)
    x = (torch.randn(*shape, dim, generator=gen, dtype=torch.float64) * 2).to(dtype)
    full = tuple(x.shape)
    name = (f"chunked_feed_forward(FeedForward({dim}, dim_out={dim_out}, mult={mult}, activation_fn={act!r}), "
            f"hidden_states {full} [{dtype}], chunk_dim={chunk_dim}, chunk_size={chunk_size})")
    rec = _RecordingFF(ff)
    before = x.clone()
    with torch.no_grad():
        got = fn(rec, x, chunk_dim, chunk_size)
        require_unchanged(name, [before], [x], "hidden_states")
        ref_out = ref.chunked_feed_forward(ff, x, chunk_dim, chunk_size)
        theirs = _chunked_feed_forward(ff, x, chunk_dim, chunk_size)
        exact = copy.deepcopy(ff).double()(x.double())  # float64 ground truth
    out_shape = full[:-1] + (dim_out,)
    if isinstance(got, torch.Tensor) and tuple(got.shape) != out_shape:
        k = full[chunk_dim] // chunk_size
        piece = tuple(chunk_size if d == chunk_dim else s for d, s in enumerate(out_shape))
        other = 1 - chunk_dim if chunk_dim in (0, 1) else 0
        if tuple(got.shape) == tuple(k * s if d == other else s for d, s in enumerate(piece)):
            raise CheckFailed(f"Likely bug: outputs joined along the wrong axis: concatenate along chunk_dim = "
                              f"{chunk_dim}, the axis you cut.\n{name}: expected shape {out_shape}, got "
                              f"{tuple(got.shape)}.\nHint: {FF_EQ}")
        if tuple(got.shape) == (k,) + piece:
            raise CheckFailed(f"Likely bug: outputs stacked (a new axis) instead of concatenated along chunk_dim."
                              f"\n{name}: expected shape {out_shape}, got {tuple(got.shape)}.\nHint: {FF_EQ}")
        if tuple(got.shape) == piece:
            raise CheckFailed(f"Likely bug: only one chunk's output returned (the last one overwrote the others?): "
                              f"keep every output and concatenate them.\n{name}: expected shape {out_shape}, got "
                              f"{tuple(got.shape)}.\nHint: {FF_EQ}")
    # float32 rounding of a matmul with K terms: a few eps * sqrt(K) * the size of the terms; a batch of
    # different length may take another blocking, so the tolerance is relative to the output's magnitude.
    scale = float(exact.abs().max())
    eps = torch.finfo(dtype).eps
    tol = dict(atol=64 * eps * (dim * mult) ** 0.5 * max(scale, 1.0), rtol=16 * eps)
    assert _close_to(exact, ref_out.double(), tol) and _close_to(exact, theirs.double(), tol), name
    assert_close(name, got, exact.to(dtype), **tol, hint=FF_EQ)
    assert_close(f"{name} vs diffusers' _chunked_feed_forward", got, theirs, **tol)
    bug = _ff_calls_bug(rec.calls, full, chunk_dim, chunk_size)
    if bug:
        raise CheckFailed(f"{bug}\n{name}\nHint: {FF_EQ}")


def _close_to(a, b, tol):
    return bool(((a - b).abs() <= tol["atol"] + tol["rtol"] * a.abs()).all())


def check_chunked_feed_forward(fn, gen):
    """diffusers' FeedForward with random width, output width, multiplier and activation
    (GEGLU as in SD, GELU), chunked along the tokens (chunk_dim=1) and along the batch
    (chunk_dim=0), chunk sizes that divide the axis with several chunks (never as many chunks
    as positions per chunk, so a number of chunks cannot pass for a length), and one chunk of
    everything; each output against float64 math and diffusers' `_chunked_feed_forward` on
    the same inputs, then the calls of ff (count, input shapes) against diffusers'; finally a
    ValueError when chunk_size does not divide the axis."""
    def config():
        dim = randint(gen, 4, 24)
        return dict(dim=dim, dim_out=choice(gen, (dim, randint(gen, 3, 20))), mult=choice(gen, (2, 4)),
                    act=choice(gen, ("geglu", "gelu", "gelu-approximate")))

    # tokens: L = k * c with k != c, both > 1
    c = randint(gen, 2, 5)
    k = choice(gen, [x for x in (2, 3, 4, 6) if x != c])
    _ff_case(fn, gen, **config(), shape=(randint(gen, 2, 3), k * c), chunk_dim=1, chunk_size=c)
    # batch: B = k * c, chunk_size 1 or 2 (diffusers' chunk_dim=0 default)
    c = choice(gen, (1, 2))
    k = choice(gen, [x for x in (2, 3, 4) if x != c])
    _ff_case(fn, gen, **config(), shape=(k * c, randint(gen, 3, 9)), chunk_dim=0, chunk_size=c)
    # one chunk of the whole token axis
    L = randint(gen, 3, 10)
    _ff_case(fn, gen, **config(), shape=(2, L), chunk_dim=1, chunk_size=L)
    # a size that does not divide: diffusers raises
    L = randint(gen, 2, 5) * 3 + 1
    ff = FeedForward(8, mult=2)
    x = torch.randn(2, L, 8, generator=gen)
    with torch.no_grad():
        require_raises(f"chunked_feed_forward(ff, hidden_states {tuple(x.shape)}, chunk_dim=1, chunk_size=3)",
                       lambda: fn(ff, x, 1, 3), f"{L} positions are not a multiple of 3, as diffusers' "
                       "_chunked_feed_forward raises", note=f"\nHint: {FF_EQ}")
    # on a GPU, the notebook's device (last, so that the cases above draw the same inputs everywhere)
    if _gpu() is not None:
        _ff_device_case(fn, gen, _gpu())


def _ff_device_case(fn, gen, device):
    """chunked_feed_forward with ff and hidden_states on `device` (CUDA in check_chunked_feed_forward),
    against float64 math on the CPU: the output on the inputs' device, the values right."""
    with torch.random.fork_rng(devices=[]):  # the weights come from gen, not the global RNG
        torch.manual_seed(randint(gen, 0, 2**31 - 1))
        ff = FeedForward(8, mult=2, activation_fn="geglu").eval().double()
    x = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        exact = ff(x)
        ffd, xd = copy.deepcopy(ff).to(device), x.to(device)
        name = (f"chunked_feed_forward(FeedForward(8, mult=2, activation_fn='geglu'), hidden_states {tuple(x.shape)} "
                f"[float64, on {xd.device}], chunk_dim=1, chunk_size=3)")
        got = fn(ffd, xd, 1, 3)
    _require_device(name, got, xd.device, FF_DEVICE_EQ)
    assert_close(name, got.detach().cpu() if isinstance(got, torch.Tensor) else got, exact,
                 **TOL[torch.float64], hint=FF_EQ)


# --------------------------------------------------------------------------- param_bytes

class _Tied(torch.nn.Module):
    """A small language-model-like module: embedding and output head share ONE weight, plus a
    buffer (not a parameter)."""

    def __init__(self, vocab, dim, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("position_ids", torch.arange(vocab * 4).unsqueeze(0))


def _param_bugs(model, dtype):
    """Byte counts that typical bugs give for `model` cast to `dtype` (None: stored dtypes)."""
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    size = (lambda p: p.element_size()) if dtype is None else (lambda p: dtype.itemsize)
    state = list(model.state_dict().values())
    dup = list(model.named_parameters(remove_duplicate=False))
    bugs = [
        ("you counted tensors, not elements: each parameter has p.numel() elements.",
         sum(size(p) for p in params)),
        ("you counted the state_dict: it has the buffers too (not weights) and a shared (tied) weight once per "
         "name. Count model.parameters().", sum(t.numel() * (t.element_size() if dtype is None else dtype.itemsize)
                                               for t in state)),
        ("a shared (tied) weight counted twice: named_parameters(remove_duplicate=False) lists it once per name; "
         "model.parameters() lists it once.", sum(p.numel() * size(p) for _, p in dup)),
        ("bits, not bytes: torch.finfo(dtype).bits is in bits; dtype.itemsize is in bytes.",
         sum(p.numel() * size(p) * 8 for p in params)),
        ("you returned the parameter count; the question is in bytes.", numel),
    ]
    if dtype is not None:
        bugs.insert(0, (f"dtype ignored: the weights are stored in {params[0].dtype}, but the question is their "
                        f"size in {dtype}.", sum(p.numel() * p.element_size() for p in params)))
        if dtype == torch.bfloat16:
            bugs.insert(0, ("bytes per element wrong for bfloat16: it is 2 bytes (16 bits), like float16; you used 4. "
                            "Use dtype.itemsize.", numel * 4))
        if dtype not in (torch.float32, torch.bfloat16):
            bugs.append((f"bytes per element wrong for {dtype}: it has {dtype.itemsize}; you used 4 (float32's) "
                         f"whatever the dtype. Use dtype.itemsize.", numel * 4))
    else:
        bugs.insert(0, ("dtype=None means the dtypes the parameters have now (this model mixes them): "
                        "p.element_size() per parameter; you assumed float32.", numel * 4))
    return bugs


def _small_unet(gen):
    c = choice(gen, (8, 16))
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(c, 2 * c),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=randint(gen, 8, 24), attention_head_dim=2, norm_num_groups=4)


def check_param_bytes(fn, gen):
    """A module with a tied weight and a buffer (CPU, float32) in bfloat16 and another dtype; the
    same on the meta device; a mixed-dtype module with dtype=None; a small UNet2DConditionModel on
    the meta device against diffusers' `num_parameters()`."""
    vocab, dim, hidden = randint(gen, 20, 60), randint(gen, 8, 24), randint(gen, 16, 40)
    cases = []
    with torch.random.fork_rng(devices=[]):  # initial values do not matter; leave the caller's RNG alone
        model = _Tied(vocab, dim, hidden).double()  # stored in float64: "dtype ignored" gives 8 bytes each
        mixed = _Tied(vocab, dim, hidden)
    other = choice(gen, (torch.float16, torch.float32, torch.float8_e4m3fn))
    cases += [(model, torch.bfloat16, "a module with a tied weight and a buffer, float64 on the CPU"),
              (model, other, "a module with a tied weight and a buffer, float64 on the CPU")]
    vocab_meta = randint(gen, 20, 60)
    with torch.device("meta"):
        meta = _Tied(vocab_meta, dim, hidden)
    cases.append((meta, choice(gen, (torch.float16, torch.bfloat16)), "the same module on the meta device"))
    mixed.mlp.to(choice(gen, (torch.bfloat16, torch.float16)))
    mixed.norm.to(torch.float64)
    cases.append((mixed, None, "a module whose MLP is in half precision and its LayerNorm in float64"))
    for m, dtype, what in cases:
        expected = ref.param_bytes(m, dtype)
        name = f"param_bytes(model, dtype={dtype}) [{what}]"
        got = fn(m, dtype)
        _int_result(name, got, expected, _param_bugs(m, dtype),
                    "every parameter's elements, a shared parameter once and no buffers (diffusers' "
                    "ModelMixin.num_parameters in models/modeling_utils.py counts the same), in bytes of `dtype` "
                    "(of each parameter's own dtype when dtype is None). " + BYTES_HINT)
    config = _small_unet(gen)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    dtype = choice(gen, (torch.float16, torch.bfloat16, torch.float32))
    got = fn(unet, dtype)
    _int_result(f"param_bytes(UNet2DConditionModel on the meta device, dtype={dtype})", got,
                unet.num_parameters() * dtype.itemsize, _param_bugs(unet, dtype),
                "diffusers' unet.num_parameters(), in bytes of dtype. " + BYTES_HINT)


# --------------------------------------------------------------------------- latent_shape

def _diffusers_latent_shape(height, width, f, channels):
    """The shape StableDiffusionPipeline.prepare_latents gives, without the batch."""
    fake = SimpleNamespace(vae_scale_factor=f, scheduler=SimpleNamespace(init_noise_sigma=1.0))
    latents = StableDiffusionPipeline.prepare_latents(fake, 1, channels, height, width, torch.float32,
                                                      torch.device("meta"), None)
    return tuple(latents.shape[1:])


def check_latent_shape(fn, gen):
    """Non-square sizes (rows != columns), factors 8, 16 and 32, 4 / 16 / 32 channels, and one size
    that is not a multiple of the factor (floor, like prepare_latents); against the reference and
    the shape of StableDiffusionPipeline.prepare_latents."""
    cases = []
    for f, c in ((8, 4), (choice(gen, (16, 32)), choice(gen, (16, 32))), (8, 16)):
        h, w = randint(gen, 4, 24) * f, randint(gen, 4, 24) * f
        while w == h:
            w += f
        cases.append((h, w, f, c))
    h, w, f = randint(gen, 40, 120) * 8 + randint(gen, 1, 7), randint(gen, 40, 120) * 8, 8
    cases.append((h, w, f, 4))
    for h, w, f, c in cases:
        expected = ref.latent_shape(h, w, f, c)
        assert expected == _diffusers_latent_shape(h, w, f, c)
        name = f"latent_shape(height={h}, width={w}, vae_scale_factor={f}, channels={c})"
        got = fn(h, w, f, c)
        if isinstance(got, (tuple, list, torch.Size)) and len(got) == 2:
            raise CheckFailed(f"Likely bug: channels missing: the latent is (channels, rows, columns).\n{name}: "
                              f"expected a tuple of three integers {expected}, got {got!r}.")
        try:
            got = as_numbers(name, got, 3, integer=True)
        except CheckFailed as e:
            lead = ("Likely bug: float division: height / f is a fraction when height is not a multiple of f; "
                    "prepare_latents rounds down (integer division).\n"
                    if isinstance(got, (tuple, list)) and any(isinstance(x, float) and not float(x).is_integer()
                                                              for x in got) else "")
            raise CheckFailed(f"{lead}{e}\n{name}: expected a tuple of three integers {expected}, got {got!r} "
                              f"({describe(got)}).") from None
        if got == expected:
            continue
        bugs = [
            ("height and width swapped: rows (height) come before columns (width), like a (C, H, W) tensor.",
             (c, w // f, h // f)),
            ("channels last: the latent is channels-first, (C, H, W), as the UNet takes it.", (h // f, w // f, c)),
            ("multiplied by the factor: the VAE DOWNsamples, the latent is f times smaller per side.",
             (c, h * f, w * f)),
            ("rounded up: prepare_latents rounds down (and the pipeline's "
             "check_inputs accepts only multiples of 8 anyway).", (c, -(-h // f), -(-w // f))),
            (f"vae_scale_factor used as an exponent: f = {f} is already the factor (StableDiffusionPipeline.__init__ "
             f"derives it from the VAE's blocks).",
             (c, h // 2**f, w // 2**f)),
        ]
        lead = next((f"Likely bug: {label}\n" for label, value in bugs if value == tuple(got)), "")
        raise CheckFailed(f"{lead}{name}: expected {expected}, got {got}.\nHint: the shape StableDiffusionPipeline.prepare_latents uses, without the batch: "
                          f"(channels, rows, columns), each side of the image downsampled by f.")


# --------------------------------------------------------------------------- estimate_peak_memory

def _estimate_variant(n_params, height, width, *, heads, vae_channels, dtype=torch.float16, vae_dtype=None,
                      batch_size=1, cfg=True, vae_scale_factor=8, attn_downsample=1, text_tokens=0,
                      attention="sdpa", slice_size=1, bug=None):
    """The estimate written independently of the reference, with one typical bug switched on."""
    def size(dt):
        return 4 if (bug == "bf16" and dt == torch.bfloat16) else dt.itemsize

    weights = n_params * size(dtype)
    h, w = (height, width) if bug == "pixels" else (height // vae_scale_factor, width // vae_scale_factor)
    if bug == "downsample_area":
        grid = (h * w) // attn_downsample
    elif bug == "no_downsample":
        grid = h * w
    else:
        grid = (h // attn_downsample) * (w // attn_downsample)
    tokens = grid + (0 if bug == "no_text" else text_tokens)
    rows = batch_size * (2 if (cfg or bug == "always_cfg") and bug != "no_cfg" else 1)
    copies = 1 if bug == "once" else 2
    if attention == "classic":
        attn = copies * rows * heads * tokens * tokens * size(dtype)
    elif attention == "sliced":
        pairs = rows * heads if bug == "slice_ignored" else (slice_size * heads if bug == "slice_heads" else
                                                              slice_size if bug == "no_cap" else
                                                              min(slice_size, rows * heads))
        attn = copies * pairs * tokens * tokens * size(dtype)
    else:
        attn = 0
    vdt = dtype if bug == "vae_dtype" else (vae_dtype or dtype)
    vb = 1 if bug == "vae_batch" else batch_size
    vh, vw = (h, w) if bug == "vae_latent" else (height, width)
    vae = ref.VAE_LIVE_TENSORS * vb * vae_channels * vh * vw * size(vdt)
    if bug == "sum":
        peak = weights + attn + vae
    elif bug == "max3":
        peak = max(weights, attn, vae)
    else:
        peak = weights + max(attn, vae)
    return {"weights": weights, "attention": attn, "vae_decoder": vae, "peak": peak}


ESTIMATE_BUGS = {
    "bf16": "bytes per element wrong for bfloat16: 2 bytes (16 bits), like float16; you used 4. Use dtype.itemsize.",
    "pixels": "tokens counted in PIXELS: the denoiser works on the latent, f = vae_scale_factor times smaller per "
              "side (your latent_shape).",
    "no_downsample": "attn_downsample ignored: the largest attention's token grid is (h // attn_downsample) x "
                     "(w // attn_downsample) (SDXL's first level has no attention; FLUX packs 2 x 2 latent pixels "
                     "per token).",
    "downsample_area": "attn_downsample divides EACH side of the token grid, not its area.",
    "no_text": "text_tokens ignored: in FLUX's joint attention the text tokens are queries and keys too.",
    "no_cfg": "CFG ignored: with classifier-free guidance the denoiser runs on 2 * batch_size (uncond and cond).",
    "always_cfg": "cfg=False: the denoiser's batch is batch_size, not doubled (no unconditional branch).",
    "once": "the classic processor holds two score matrices at once (get_attention_scores: baddbmm's empty input "
            "beside its output, then the scores beside their softmax before `del attention_scores`).",
    "slice_ignored": "slice_size ignored: with slicing only one slice of (batch, head) pairs has scores at a time.",
    "no_cap": "slice_size is larger than the B' * heads (batch, head) pairs there are: a slice cannot hold more "
              "pairs than exist (diffusers' set_attention_slice even refuses a "
              "slice_size larger than the heads).",
    "slice_heads": "a slice holds slice_size (batch, head) PAIRS, not slice_size batches of all heads.",
    "vae_dtype": "vae_dtype ignored: the VAE term is in the VAE's dtype when it is given (SDXL's VAE decodes in "
                 "float32).",
    "vae_batch": "the VAE decodes every image: its term scales with batch_size.",
    "vae_latent": "the VAE decoder's largest feature maps are at the IMAGE resolution (height x width), not the "
                  "latent's.",
    "sum": "the denoising loop and the VAE decode do not overlap in time: their terms do not add up.",
    "max3": "the weights stay resident the whole time: they add to whichever activation term is larger.",
}


def _estimate_case(fn, gen, attention, dtype, *, cfg, text_tokens, attn_downsample, vae_dtype, **override):
    kw = dict(heads=randint(gen, 2, 24), vae_channels=choice(gen, (32, 128, 256)), dtype=dtype, vae_dtype=vae_dtype,
              batch_size=randint(gen, 2, 4), cfg=cfg, vae_scale_factor=8, attn_downsample=attn_downsample,
              text_tokens=text_tokens, attention=attention, slice_size=randint(gen, 2, 5))
    kw.update(override)
    n_params = randint(gen, 10**6, 10**9) * choice(gen, (1, 12))
    height, width = randint(gen, 4, 24) * 64, randint(gen, 4, 24) * 64
    while width == height:
        width += 64
    expected = ref.estimate_peak_memory(n_params, height, width, **kw)
    assert expected == _estimate_variant(n_params, height, width, **kw)
    args = ", ".join(f"{k}={v}" for k, v in kw.items())
    name = f"estimate_peak_memory({n_params}, {height}, {width}, {args})"
    got = fn(n_params, height, width, **kw)
    if not isinstance(got, dict) or set(got) != set(expected):
        raise CheckFailed(f"{name}: expected a dict with the keys {sorted(expected)} (bytes, integers), got "
                          f"{sorted(got) if isinstance(got, dict) else describe(got)}.")
    got = {k: as_number(f"{name}[{k!r}]", v, integer=True) for k, v in got.items()}
    wrong = [k for k in expected if got[k] != expected[k]]
    if not wrong:
        return
    labels = []
    for bug, label in ESTIMATE_BUGS.items():
        cand = _estimate_variant(n_params, height, width, **kw, bug=bug)
        if cand != expected and all(got[k] == cand[k] for k in expected):
            labels.append(label)
    lead = _lead(labels)
    show = lambda x: f"{x:>16,}" if isinstance(x, int) else f"{x!r:>16}"  # noqa: E731
    lines = "\n".join(f"  {k:12s} expected {expected[k]:>16,}  got {show(got[k])}" for k in expected)
    raise CheckFailed(f"{lead}{name}: wrong {', '.join(wrong)}:\n{lines}\nHint: re-read the docstring's model for the wrong term(s), {', '.join(wrong)}: which "
                      f"resolution each term lives at (latent tokens, image pixels), what CFG and text_tokens add, "
                      f"what each attention setting holds at once (get_attention_scores, SlicedAttnProcessor), "
                      f"and which terms overlap in time.")


def check_estimate_peak_memory(fn, gen):
    """Every attention setting; bfloat16, float16 and float32; with and without CFG; UNet-like
    (attn_downsample 1 or 2, no text tokens) and FLUX-like (joint attention with text tokens);
    a float32 VAE under float16 weights; batch sizes > 1; a ValueError for an unknown setting."""
    _estimate_case(fn, gen, "classic", torch.bfloat16, cfg=False, text_tokens=randint(gen, 77, 512),
                   attn_downsample=2, vae_dtype=None)
    _estimate_case(fn, gen, "classic", torch.bfloat16, cfg=True, text_tokens=0, attn_downsample=1, vae_dtype=None)
    _estimate_case(fn, gen, "classic", torch.float16, cfg=True, text_tokens=0, attn_downsample=2,
                   vae_dtype=torch.float32)
    _estimate_case(fn, gen, "sliced", choice(gen, (torch.float16, torch.float32)), cfg=True, text_tokens=0,
                   attn_downsample=1, vae_dtype=None)
    # slice_size above the (batch, head) pairs there are: the min(...) cap decides the term
    heads, batch = randint(gen, 1, 2), 1
    _estimate_case(fn, gen, "sliced", choice(gen, (torch.float16, torch.bfloat16)), cfg=choice(gen, (True, False)),
                   text_tokens=0, attn_downsample=1, vae_dtype=None, heads=heads, batch_size=batch,
                   vae_channels=32, slice_size=2 * 2 * heads + randint(gen, 1, 6))
    _estimate_case(fn, gen, "sdpa", torch.bfloat16, cfg=choice(gen, (True, False)), text_tokens=0,
                   attn_downsample=1, vae_dtype=choice(gen, (None, torch.float32)))
    require_raises("estimate_peak_memory(..., attention='flash-v9')",
                   lambda: fn(10**6, 512, 512, heads=8, vae_channels=256, attention="flash-v9"),
                   "an unknown attention setting: only 'classic', 'sliced' and 'sdpa' are modelled")
