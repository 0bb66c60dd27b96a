"""Checks of Lab 08 (LoRA): one ``check_<name>(obj, gen)`` per exercise.

Every check draws fresh shapes, ranks, alphas, weights and inputs from ``gen`` and compares
with the reference solution AND with peft on the same weights: ``LoraConfig`` +
``inject_adapter_in_model`` (what diffusers' ``add_adapter`` calls) for the injected model,
``get_peft_model(...).merge_and_unload()`` for the merge. The learner's LoRALinear
initialises ``down`` from torch's global generator; the checks call it inside
``torch.random.fork_rng`` with a seed drawn from ``gen``, so a check is reproducible and the
notebook's own random stream is left alone. When the output matches what a typical bug
returns, the message names that bug (the ``diagnose`` candidates below).
"""
import copy
import math
import re

import torch
from diffusers.models.attention_processor import Attention
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from torch import nn

from helpers.checks._core import (META_NOTE, require_raises, CheckFailed, as_number, assert_close, choice, describe,
                                  describe_exception, device_case, randint, random_seed, require_unchanged)
from helpers.solutions import lab08_lora as ref

LAB = "lab08"

# |got - expected| <= atol + rtol * |expected|. The reference computes like peft (B @ A, then
# times alpha / rank); a correct rewrite ((alpha / rank) * B) @ A, or x @ (W + dW).T for the
# forward) differs by a few float32 ulps, far below every typical bug: `_rank_alpha` draws rank
# and alpha so that every wrong scaling (1, alpha, 1 / rank, rank / alpha, alpha / sqrt(rank))
# is at least 20% away from alpha / rank.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}

EQ_FORWARD = ("LoRA (Hu et al. 2021, eq. 3 and Sec. 4.1): the frozen base output plus the low-rank update, scaled "
              "as the paper's alpha and rank say; down (in_features -> rank) random, up (rank -> out_features) "
              "zero, both bias-free. Read peft's LoraLayer.update_layer (its scaling, lora_A / lora_B) and "
              "lora.Linear.forward in peft/tuners/lora/layer.py")
EQ_MERGE = ("LoRA Sec. 4.1 (no extra latency: the update merged into W), with B = up_weight (d_out, r) and "
            "A = down_weight (r, d_in), the result shaped like W (d_out, d_in); read peft's lora.Linear.merge and "
            "get_delta_weight in peft/tuners/lora/layer.py")
MATCH_RULE = ("peft's rule for a list of targets (check_target_module_exists in peft/tuners/tuners_utils.py): "
              "a module is targeted when it is an nn.Linear and its full name is a target or ends with one at a "
              "'.' boundary")


# --------------------------------------------------------------------------- helpers

def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _file_of(obj):
    """The file a learner's function was written in (for error messages), or None."""
    code = getattr(obj, "__code__", None)
    return code.co_filename if code is not None else None


def _rank_alpha(gen):
    """rank >= 2 and an int alpha (peft's lora_alpha is an int) such that alpha / rank differs from
    1, alpha, 1 / rank, rank / alpha and alpha / sqrt(rank) by at least 20%: every scaling bug
    gives a distinct output."""
    while True:
        rank = randint(gen, 2, 6)
        alpha = choice(gen, (1, 3, 5, 7, 12, 20, 40))
        s = alpha / rank
        others = [1.0, alpha, 1 / rank, rank / alpha, alpha / math.sqrt(rank)]
        if all(abs(o - s) > 0.2 * max(abs(s), abs(o)) for o in others):
            return rank, alpha


def _linear(gen, d_in, d_out, bias, dtype=torch.float32):
    lin = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(_randn(gen, d_out, d_in, dtype=dtype) / math.sqrt(d_in))
        if bias:
            lin.bias.copy_(_randn(gen, d_out, dtype=dtype))
    return lin


def _build(cls_or_fn, gen, *args):
    """Call the learner's constructor/function with torch's global RNG seeded from ``gen`` (and
    restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed(gen))
        return cls_or_fn(*args)


def _weight_of(module, attr, name):
    sub = getattr(module, attr, None)
    w = getattr(sub, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise CheckFailed(f"{name}: expected an attribute `{attr}` (an nn.Linear) with a `.weight`, got "
                          f"{describe(sub)}. Name the two projections `down` and `up`, as in the docstring.")
    return w


def _lora_bugs(base, x, A, B, rank, alpha):
    """Outputs of typical LoRALinear bugs on these inputs (float64)."""
    x, A, B = x.double(), A.double(), B.double()
    W = base.weight.detach().double()
    b = base.bias.detach().double() if base.bias is not None else None
    y_base = x @ W.T + (b if b is not None else 0)
    low = x @ A.T @ B.T  # up(down(x))
    bugs = [
        ("LoRA without alpha/rank: the update is scaled (LoRA Sec. 4.1, the scaling peft's update_layer sets), "
         "so that changing the rank does not change the update's size.", y_base + low),
        ("the update is multiplied by alpha only: the rank belongs in the scaling too (LoRA Sec. 4.1).",
         y_base + alpha * low),
        ("the update is divided by the rank only: alpha belongs in the scaling too (LoRA Sec. 4.1).",
         y_base + low / rank),
        ("scaling is inverted: you used rank / alpha.", y_base + (rank / alpha) * low),
        ("you used rsLoRA's alpha / sqrt(rank) (peft's use_rslora=True); plain LoRA takes no square root.",
         y_base + alpha / math.sqrt(rank) * low),
        ("the base layer's output is missing: LoRA adds its update to base(x).",
         (alpha / rank) * low),
        ("the sign is wrong: the update is ADDED to base(x).", y_base - (alpha / rank) * low),
    ]
    if b is not None:
        bugs.append(("the base layer's bias is missing: the base output includes its bias (x @ W.T leaves it out).",
                     x @ W.T + (alpha / rank) * low))
    return bugs


# --------------------------------------------------------------------------- LoRALinear

def _check_lora_layer(cls, gen, d_in, d_out, bias, dtype):
    rank, alpha = _rank_alpha(gen)
    base = _linear(gen, d_in, d_out, bias, dtype)
    W0 = base.weight.detach().clone()
    name = f"LoRALinear(nn.Linear({d_in}, {d_out}, bias={bias}, dtype={str(dtype).replace('torch.', '')}), " \
           f"rank={rank}, alpha={alpha})"
    m = _build(cls, gen, base, rank, alpha)
    if not isinstance(m, nn.Module):
        raise CheckFailed(f"{name}: expected an nn.Module, got {describe(m)}.")
    if getattr(m, "base", None) is not base:
        raise CheckFailed(f"{name}: `self.base` must be the nn.Linear you were given (the same object), got "
                          f"{describe(getattr(m, 'base', None))}.")
    down, up = _weight_of(m, "down", name), _weight_of(m, "up", name)

    # shapes: down is A (rank, d_in), up is B (d_out, rank)
    if tuple(down.shape) != (rank, d_in) or tuple(up.shape) != (d_out, rank):
        if tuple(down.shape) == (d_out, rank) and tuple(up.shape) == (rank, d_in):
            lead = "Likely bug: up and down swapped. "
        elif tuple(down.shape) == (d_in, rank) or tuple(up.shape) == (rank, d_out):
            lead = "Likely bug: transposed weights. nn.Linear(a, b).weight has shape (b, a). "
        else:
            lead = ""
        raise CheckFailed(f"{lead}{name}: expected down.weight of shape ({rank}, {d_in}) (A: in_features -> rank) "
                          f"and up.weight ({d_out}, {rank}) (B: rank -> out_features), got {tuple(down.shape)} and "
                          f"{tuple(up.shape)}.\nHint: nn.Linear(a, b) maps a features to b and stores its weight as (b, a); "
                          f"down goes first (peft's lora_A / lora_B in LoraLayer.update_layer).")
    for attr in ("down", "up"):
        if getattr(getattr(m, attr), "bias", None) is not None:
            raise CheckFailed(f"{name}: `{attr}` has a bias; LoRA's projections have none (bias=False), like "
                              f"peft's lora_A / lora_B: the update must be exactly the scaled low-rank product.")
    if down.dtype != dtype or up.dtype != dtype or down.device != base.weight.device:
        lead = "dtype" if down.dtype != dtype or up.dtype != dtype else "device"
        raise CheckFailed(f"Likely bug: {lead} not kept. {name}: down/up must be created in the base's dtype and "
                          f"on its device, got down {describe(down)}, up {describe(up)}.\nHint: "
                          f"nn.Linear accepts a device and a dtype; read them off the base layer's weight.")

    # frozen base, trainable A and B
    if any(p.requires_grad for p in base.parameters()):
        raise CheckFailed(f"Likely bug: base not frozen. {name}: base.weight.requires_grad is "
                          f"{base.weight.requires_grad}; LoRA trains A and B only, W stays frozen.\n"
                          f"Hint: freeze the base layer's parameters (requires_grad).")
    if not (down.requires_grad and up.requires_grad):
        raise CheckFailed(f"{name}: down.weight and up.weight must be trainable parameters (requires_grad True), "
                          f"got {down.requires_grad} and {up.requires_grad}.")
    n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
    if n_train != rank * (d_in + d_out):
        raise CheckFailed(f"{name}: {n_train} trainable numbers, expected rank * (in + out) = "
                          f"{rank * (d_in + d_out)} (down.weight and up.weight only).")

    # initialisation: B = 0, A random of full rank
    if not torch.all(up == 0):
        if torch.all(down == 0):
            lead = "Likely bug: up not zero-initialised (you zeroed down instead). "
        else:
            lead = "Likely bug: up not zero-initialised. "
        raise CheckFailed(f"{lead}{name}: up.weight must start at zero (LoRA Sec. 4.1: B = 0, A random), so the "
                          f"adapted layer starts out equal to the base layer; max |up.weight| = "
                          f"{up.abs().max().item():.3g}.\nHint: see how peft's LoraLayer.reset_lora_parameters initialises lora_B.")
    if torch.all(down == 0):
        raise CheckFailed(f"{name}: down.weight is all zeros. With A = 0 AND B = 0 both gradients are zero "
                          f"(dL/dB = g (A x)^T = 0 and dL/dA = B^T g x^T = 0): nothing would ever train. "
                          f"Keep nn.Linear's random init for down.")
    full = min(rank, d_in)  # the largest rank an (r, d_in) matrix can have
    if torch.linalg.matrix_rank(down.detach().double()).item() < full:
        raise CheckFailed(f"{name}: down.weight has rank {torch.linalg.matrix_rank(down.detach().double()).item()} "
                          f"< {full}: its rows must be random (kaiming_uniform_, nn.Linear's default), not "
                          f"constant, or the update can never use all {full} directions.")

    # forward at init: exactly the base layer
    lead_dims = (randint(gen, 1, 3), randint(gen, 1, 5))
    x = _randn(gen, *lead_dims, d_in, dtype=dtype)
    with torch.no_grad():
        y0 = m(x)
        expected0 = base(x)
    init_bugs = [("the base layer's output is missing: LoRA adds its update to base(x).",
                  torch.zeros_like(y0))]
    if bias:
        init_bugs.append(("the base layer's bias is missing: the base output includes its bias (x @ W.T leaves "
                          "it out).", x @ base.weight.detach().T))
    assert_close(f"{name}(x) at initialisation (x {tuple(x.shape)})", y0, expected0, **TOL[dtype], diagnose=init_bugs,
                 hint="with up = 0 the adapted layer must return exactly base(x).")

    # forward with trained-looking A and B
    A = _randn(gen, rank, d_in, dtype=dtype)
    B = _randn(gen, d_out, rank, dtype=dtype)
    reference = _build(ref.LoRALinear, gen, base, rank, alpha)  # the same base, the same A and B
    with torch.no_grad():
        for layer in (m, reference):
            layer.down.weight.copy_(A)
            layer.up.weight.copy_(B)
        got, expected = m(x), reference(x)
    assert_close(f"{name}(x) with random down/up weights (x {tuple(x.shape)})", got, expected, **TOL[dtype],
                 diagnose=_lora_bugs(base, x, A, B, rank, alpha), hint=EQ_FORWARD + ".")
    if not torch.equal(base.weight.detach(), W0):
        raise CheckFailed(f"{name}: the base weight changed; LoRA never touches W (it is frozen).")
    scaling = as_number(f"{name}: the attribute self.scaling", getattr(m, "scaling", None))
    if abs(scaling - alpha / rank) > 1e-9 * (alpha / rank):
        raise CheckFailed(f"{name}: expected the attribute self.scaling = {alpha / rank:g} (a number, LoRA's scale), "
                          f"got {getattr(m, 'scaling', None)!r}.")
    kept = [as_number(f"{name}: the attribute self.{a}", getattr(m, a, None)) for a in ("rank", "alpha")]
    if kept != [rank, alpha]:
        raise CheckFailed(f"{name}: keep the arguments as attributes, self.rank = {rank} and self.alpha = {alpha} "
                          f"(got {getattr(m, 'rank', None)!r} and {getattr(m, 'alpha', None)!r}): merging and "
                          f"rescaling a trained layer read them.")

    # the forward reads self.scaling (the LoRA scale knob)
    s = alpha / rank * float(choice(gen, (0.0, 0.3, 1.7)))
    m.scaling = reference.scaling = s
    with torch.no_grad():
        got, expected = m(x), reference(x)
    assert_close(f"{name}(x) after setting lora.scaling = {s:g}", got, expected, **TOL[dtype],
                 hint="forward must read self.scaling on every call (not a value fixed in __init__), so that a trained "
                      "LoRA can be turned down or up afterwards, like peft's scale_layer / diffusers' LoRA scale.")
    m.scaling = alpha / rank

    # gradients reach down and up, not the base
    g_out = _randn(gen, *expected.shape, dtype=dtype)
    m.zero_grad(set_to_none=True)
    out = m(x)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise CheckFailed(f"{name}: no gradient reached down.weight and up.weight: the output does not require grad "
                          f"(is forward under torch.no_grad(), or using detached weights?).")
    (out * g_out).sum().backward()
    s = alpha / rank
    xf, gf = x.reshape(-1, d_in), g_out.reshape(-1, d_out)
    grad_up = s * gf.T @ (xf @ A.T)  # dL/dB = s g (A x)^T, summed over tokens
    grad_down = s * B.T @ gf.T @ xf  # dL/dA = s B^T g x^T
    for attr, want in (("down", grad_down), ("up", grad_up)):
        grad = getattr(m, attr).weight.grad
        if grad is None:
            raise CheckFailed(f"{name}: no gradient reached {attr}.weight after backward(); is forward under "
                              f"torch.no_grad() or using a detached copy?")
        assert_close(f"{name}: gradient of {attr}.weight", grad, want, **TOL[dtype], hint=EQ_FORWARD + ".")
    if base.weight.grad is not None:
        raise CheckFailed(f"Likely bug: base not frozen. {name}: base.weight received a gradient.")


def check_LoRALinear(cls, gen):
    """Three layers (non-square with and without bias, square; one in float64): attributes and their
    shapes, frozen base, B = 0 / A random, forward at init and with random A, B (every scaling bug
    named), the scaling attribute, gradients. Each layer is compared with the reference. Then a base
    on the "meta" device (a stand-in for a GPU): down and up must be made on the base's device."""
    if not isinstance(cls, type):
        raise CheckFailed(f"LoRALinear: expected a class (an nn.Module subclass), got {describe(cls)}.")
    d_in = randint(gen, 4, 24)
    d_out = choice(gen, [d for d in range(4, 25) if d != d_in])
    _check_lora_layer(cls, gen, d_in, d_out, True, torch.float32)
    _check_lora_layer(cls, gen, d_out, d_in, False, torch.float32)
    d = randint(gen, 6, 16)
    _check_lora_layer(cls, gen, d, d, True, torch.float64)
    _check_lora_device(cls, gen, d_in, d_out)


def _check_lora_device(cls, gen, d_in, d_out):
    """A base layer on PyTorch's "meta" device (shapes, no data), standing in for a GPU: down and up must
    be made on the base's device, or a LoRA injected into a model on a GPU (as training scripts do) meets
    CPU weights in its first forward. What meta tensors cannot do (reading values) is left to the cases
    above."""
    rank, alpha = _rank_alpha(gen)
    base = nn.Linear(d_in, d_out, device="meta")
    name = f"LoRALinear(nn.Linear({d_in}, {d_out}, device='meta'), rank={rank}, alpha={alpha})"
    why = ("a LoRA layer made on the CPU inside a model on a GPU stops the model's first forward with a device "
           f"error{META_NOTE}")
    hint = "nn.Linear accepts a device and a dtype; read them off the base layer's weight."
    m = device_case(name, _build, (cls, gen, base, rank, alpha), "meta", hint=hint)
    if m is None:  # a raise that is not about devices: meta tensors hold no values, the cases above judge it
        return
    devices = {attr: getattr(getattr(getattr(m, attr, None), "weight", None), "device", None) for attr in ("down", "up")}
    if any(d is None or d.type != "meta" for d in devices.values()):
        raise CheckFailed(f"Likely bug: device not kept. {name}: down.weight is on {devices['down']}, up.weight on "
                          f"{devices['up']}; both must be on the base layer's device: {why}.\nHint: {hint}")


# --------------------------------------------------------------------------- inject_lora

class _Block(nn.Module):
    """A toy cross-attention block with the module names of real models (and decoys)."""

    def __init__(self, d, d_ctx):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d_ctx, d, bias=False), nn.Linear(d_ctx, d)
        self.out_proj = nn.Linear(d, d)  # decoy: "proj" must not target it
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, ctx):  # (B, N, d), (B, M, d_ctx)
        h = self.norm(x)
        att = torch.softmax(self.q(h) @ self.k(ctx).transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1)
        x = x + self.out_proj(att @ self.v(ctx))
        x = x + self.proj(x)
        return x + self.ff(x)


class _Toy(nn.Module):
    def __init__(self, d, d_ctx, d_out, n_blocks):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(d, d_ctx) for _ in range(n_blocks)])
        self.head = nn.Linear(d, d_out)

    def forward(self, x, ctx):
        for blk in self.blocks:
            x = blk(x, ctx)
        return self.head(x)


class _AttnModel(nn.Module):
    """diffusers' own Attention (to_q, to_k, to_v, to_out = [Linear, Dropout]) as a cross-attention."""

    def __init__(self, d, d_ctx, heads, dim_head):
        super().__init__()
        self.attn = Attention(query_dim=d, cross_attention_dim=d_ctx, heads=heads, dim_head=dim_head)

    def forward(self, x, ctx):
        return self.attn(x, encoder_hidden_states=ctx)


def _targeted(model, targets):
    """Names of the nn.Linear modules targeted by ``targets`` (peft's rule for a list)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]


def _randomize(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(_randn(gen, *p.shape, dtype=p.dtype) * 0.3)


def _one_injection(fn, gen, model, targets, inputs, what):
    rank, alpha = _rank_alpha(gen)
    name = f"inject_lora({what}, target_modules={targets}, rank={rank}, alpha={alpha})"
    original = copy.deepcopy(model)
    peft_model = copy.deepcopy(model)
    expected_names = _targeted(model, targets)
    before = {n: m for n, m in model.named_modules()}
    try:
        params = _build(fn, gen, model, targets, rank, alpha)
    except NotImplementedError:
        raise
    except ValueError as exc:
        raise CheckFailed(f"{name} raised {describe_exception(exc, _file_of(fn))}\nbut {expected_names} match. {MATCH_RULE}; "
                          f"walk every module (model.named_modules()), not only the top-level children.") from exc

    # which modules were replaced
    now = dict(model.named_modules())
    replaced = [n for n, m in now.items() if hasattr(m, "down") and hasattr(m, "up") and hasattr(m, "base")]
    if not replaced:
        raise CheckFailed(f"{name}: no module of the model was replaced (expected {expected_names}). Set the new "
                          f"module on its parent module, under the child's name (as peft's _replace_module does); "
                          f"assigning to a loop variable changes nothing.")
    extra = sorted(set(replaced) - set(expected_names))
    missing = sorted(set(expected_names) - set(replaced))
    if extra:
        lead = "Likely bug: substring match. " if any(t in n for n in extra for t in targets) else ""
        raise CheckFailed(f"{lead}{name}: replaced {extra}, which are not targeted. {MATCH_RULE} ('proj' targets "
                          f"'blocks.0.proj' but not 'blocks.0.out_proj').")
    if missing:
        raise CheckFailed(f"{name}: {missing} were not replaced. {MATCH_RULE}; walk every module "
                          f"(model.named_modules()), not only the top-level children.")
    for n in expected_names:
        if now[n].base is not before[n]:
            raise CheckFailed(f"{name}: the LoRALinear at {n!r} must wrap the original nn.Linear (the same object).")

    # frozen model, trainable LoRA weights only, returned
    lora_params = [p for n in expected_names for p in (now[n].down.weight, now[n].up.weight)]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    expected_trainable = [f"{n}.{a}.weight" for n in expected_names for a in ("down", "up")]
    if sorted(trainable) != sorted(expected_trainable):
        others = sorted(set(trainable) - set(expected_trainable))
        lead = "Likely bug: base not frozen (the model was not frozen). " if others else ""
        raise CheckFailed(f"{lead}{name}: the trainable parameters must be exactly the LoRA weights; also "
                          f"trainable: {others[:4]}{' ...' if len(others) > 4 else ''}; not trainable: "
                          f"{sorted(set(expected_trainable) - set(trainable))[:4]}.\nHint: "
                          f"freeze the whole model before injecting (peft freezes the base model too).")
    if not isinstance(params, (list, tuple)) or len(params) != len(lora_params) or \
            any(p is not q for p, q in zip(params, lora_params)):
        got = f"{type(params).__name__} of {len(params)}" if isinstance(params, (list, tuple)) else describe(params)
        raise CheckFailed(f"{name}: expected the list [down.weight, up.weight] of each replaced layer, in "
                          f"named_modules() order ({len(lora_params)} tensors), got {got}.")
    for n in expected_names:
        lin = before[n]
        if tuple(now[n].down.weight.shape) != (rank, lin.in_features):
            lead = "Likely bug: rank and alpha swapped. " if now[n].down.weight.shape[0] == alpha else ""
            raise CheckFailed(f"{lead}{name}: {n}.down.weight has shape {tuple(now[n].down.weight.shape)}, expected "
                              f"({rank}, {lin.in_features}): call LoRALinear(module, rank, alpha).")
        sc = as_number(f"{name}: {n}.scaling", getattr(now[n], "scaling", None))
        if abs(sc - alpha / rank) > 1e-9 * (alpha / rank):
            lead = "Likely bug: rank and alpha swapped. " if abs(sc - rank / alpha) < 1e-9 * (rank / alpha) else ""
            raise CheckFailed(f"{lead}{name}: {n}.scaling is {sc!r}, expected {alpha / rank:g}: call "
                              f"LoRALinear(module, rank, alpha).")

    # the injected model starts equal to the original, then equals peft with the same A, B
    with torch.no_grad():
        assert_close(f"{name}: the model's output right after injection", model(*inputs), original(*inputs),
                     atol=1e-5, rtol=1e-5, hint="up = 0, so injecting must not change the output.")
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), peft_model)
    with torch.no_grad():
        for n in expected_names:
            lin = before[n]
            A = _randn(gen, rank, lin.in_features) * 0.5
            B = _randn(gen, lin.out_features, rank) * 0.5
            now[n].down.weight.copy_(A)
            now[n].up.weight.copy_(B)
            peft_layer = peft_model.get_submodule(n)
            peft_layer.lora_A["default"].weight.copy_(A)
            peft_layer.lora_B["default"].weight.copy_(B)
        got, want = model(*inputs), peft_model(*inputs)
    assert_close(f"{name}: output with random LoRA weights vs peft's inject_adapter_in_model(LoraConfig(...)) "
                 f"with the same weights", got, want, atol=1e-5, rtol=1e-4,
                 hint="each targeted Linear becomes your LoRALinear, which computes what peft's lora.Linear.forward does.")


def check_inject_lora(fn, gen):
    """A toy model of nested cross-attention blocks (targets drawn at random, always with a decoy
    "proj" next to "out_proj"), then diffusers' own Attention with SD's targets ["to_q", "to_k",
    "to_v", "to_out.0"]: which modules were replaced, frozen base, the returned parameters,
    rank and alpha, the output right after injection (unchanged) and with random A, B against
    peft's inject_adapter_in_model. A target that matches nothing must raise ValueError."""
    d, d_ctx = randint(gen, 6, 12), randint(gen, 3, 8)
    model = _Toy(d, d_ctx, randint(gen, 2, 5), randint(gen, 2, 3))
    _randomize(model, gen)
    optional = ["q", "k", "v", "ff.0", "ff.2", "head", "blocks.1.q"]
    targets = ["proj"] + [t for t in optional if randint(gen, 0, 1)]
    targets = [targets[i] for i in torch.randperm(len(targets), generator=gen).tolist()]
    inputs = (_randn(gen, 2, randint(gen, 2, 5), d), _randn(gen, 2, randint(gen, 2, 4), d_ctx))
    _one_injection(fn, gen, model, targets, inputs, f"a model of {len(model.blocks)} toy attention blocks")

    heads, dim_head = randint(gen, 1, 2), choice(gen, (4, 8))
    d = randint(gen, 4, 12)
    model = _AttnModel(d, d_ctx, heads, dim_head)
    _randomize(model, gen)
    inputs = (_randn(gen, 2, randint(gen, 2, 6), d), _randn(gen, 2, randint(gen, 2, 4), d_ctx))
    _one_injection(fn, gen, model, ["to_q", "to_k", "to_v", "to_out.0"], inputs,
                   f"diffusers Attention(query_dim={d}, cross_attention_dim={d_ctx}, heads={heads})")

    model = _Toy(6, 3, 2, 1)
    name = "inject_lora(model, target_modules=['to_q'], rank=2, alpha=2) on a model without any to_q"
    require_raises(name, lambda: _build(fn, gen, model, ["to_q"], 2, 2.0),
                   "peft raises one too: a typo in target_modules must not silently train nothing",
                   learner_file=_file_of(fn))


# --------------------------------------------------------------------------- merge_lora

def _merge_bugs(W, A, B, alpha, rank):
    W, A, B = W.double(), A.double(), B.double()
    BA = B @ A
    s = alpha / rank
    bugs = [
        ("LoRA without alpha/rank: the merged update is scaled exactly as in the forward (LoRA Sec. 4.1).", W + BA),
        ("the update is multiplied by alpha only: the rank belongs in the scaling too.", W + alpha * BA),
        ("the update is divided by the rank only: alpha belongs in the scaling too.", W + BA / rank),
        ("scaling is inverted: you used rank / alpha.", W + (rank / alpha) * BA),
        ("you used rsLoRA's alpha / sqrt(rank); plain LoRA (and peft's default) takes no square root.",
         W + alpha / math.sqrt(rank) * BA),
        ("you returned the update (alpha / rank) * B @ A alone; the merged weight includes W.", s * BA),
        ("you returned W unchanged: add the update.", W.clone()),
        ("wrong sign: the update is ADDED to W.", W - s * BA),
    ]
    if W.shape[0] == W.shape[1]:
        bugs.append(("merge transposed: the update has W's shape (d_out, d_in) and W's orientation; a transposed "
                     "product only fits because this W is square.", W + s * BA.T))
    return bugs


def _peft_merge(W, A, B, alpha, rank):
    """peft's merged weight: get_peft_model(LoraConfig(r, lora_alpha)) with A, B set, merge_and_unload."""
    d_out, d_in = W.shape
    holder = nn.Module()
    holder.lin = nn.Linear(d_in, d_out, bias=False, dtype=W.dtype)
    with torch.no_grad():
        holder.lin.weight.copy_(W)
    peft_model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lin"]))
    layer = peft_model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    return peft_model.merge_and_unload().lin.weight.detach().clone()


def check_merge_lora(fn, gen):
    """A non-square and a square weight in float32, one in float64: compared with the reference and with
    peft's merge_and_unload on the same weights; the inputs must not change."""
    d_in = randint(gen, 3, 20)
    d_out = choice(gen, [d for d in range(3, 21) if d != d_in])
    d_sq = randint(gen, 4, 16)
    for (rows, cols), dtype in (((d_out, d_in), torch.float32), ((d_sq, d_sq), torch.float32),
                                ((d_in, d_out), torch.float64)):
        rank, alpha = _rank_alpha(gen)
        W = _randn(gen, rows, cols, dtype=dtype)
        A = _randn(gen, rank, cols, dtype=dtype)
        B = _randn(gen, rows, rank, dtype=dtype)
        ins = [W.clone(), A.clone(), B.clone()]
        name = (f"merge_lora(base_weight {tuple(W.shape)} {str(dtype).replace('torch.', '')}, down_weight "
                f"{tuple(A.shape)}, up_weight {tuple(B.shape)}, alpha={alpha}, rank={rank})")
        try:
            got = fn(W, A, B, alpha, rank)
        except NotImplementedError:
            raise
        except RuntimeError as exc:
            if "must match the size" in str(exc):
                raise CheckFailed(f"Likely bug: merge transposed. {name} raised {describe_exception(exc, _file_of(fn))}\n"
                                  f"Hint: {EQ_MERGE}; the update has the shape of W, (d_out, d_in).") from exc
            if "shapes cannot be multiplied" in str(exc) or "size mismatch" in str(exc):
                raise CheckFailed(f"Likely bug: up and down swapped. {name} raised {describe_exception(exc, _file_of(fn))}\n"
                                  f"Hint: {EQ_MERGE}; check the shapes of the two factors: only one order multiplies to "
                                  f"W's shape.") from exc
            raise
        for t, t0, label in zip((W, A, B), ins, ("base_weight", "down_weight", "up_weight")):
            if not torch.equal(t, t0):
                raise CheckFailed(f"{name}: your function changed `{label}` in place (W += ...); return a new "
                                  f"tensor W + ... and leave the inputs alone.")
        if isinstance(got, torch.Tensor) and rows != cols and tuple(got.shape) == (cols, rows):
            raise CheckFailed(f"Likely bug: merge transposed. {name}: expected shape {(rows, cols)} (the shape of W), "
                              f"got {tuple(got.shape)}.\nHint: {EQ_MERGE}.")
        expected = ref.merge_lora(W, A, B, alpha, rank)
        assert_close(name, got, expected, **TOL[dtype], diagnose=_merge_bugs(W, A, B, alpha, rank), hint=EQ_MERGE + ".")
        assert_close(f"{name} vs peft's merge_and_unload() with the same lora_A / lora_B", got,
                     _peft_merge(W, A, B, alpha, rank), **TOL[dtype])


# --------------------------------------------------------------------------- dora_weight

EQ_DORA = ("DoRA (Liu et al. 2024) eq. 5 and Sec. 4.3: read which way peft's DoraLinearLayer.get_weight_norm "
           "takes the norm of the LoRA-merged (d_out, d_in) weight, and how DoraLinearLayer.forward treats that "
           "norm for the gradients (peft/tuners/lora/dora.py); hint(\"lab08\", \"dora_weight\") gives more")


def _dora64(W, A, B, m, s, detach=True):
    """DoRA's merged weight in float64 (the ground truth; ``detach=False``: the norm keeps its graph)."""
    V = W.double() + s * (B.double() @ A.double())
    n = torch.linalg.norm(V, dim=1)
    return (m.double() / (n.detach() if detach else n))[:, None] * V


def _dora_bugs(W, A, B, m, s):
    """What typical dora_weight bugs return on these inputs (float64)."""
    W, A, B, m = W.double(), A.double(), B.double(), m.double()
    BA = B @ A
    V = W + s * BA
    n = torch.linalg.norm(V, dim=1)  # (d_out,)
    rows = lambda f: f[:, None] * V  # noqa: E731  each row of V times its factor
    bugs = []
    if W.shape[0] == W.shape[1]:
        bugs += [
            ("the norm runs over the wrong dimension: DoRA's n has one entry per OUTPUT feature, the length of each "
             "ROW of the (d_out, d_in) weight (the paper's 'column' is a row in PyTorch's (out, in) layout).",
             rows(m / torch.linalg.norm(V, dim=0))),
            ("the factor m / n scales the columns of V instead of its rows: it must broadcast as a (d_out, 1) "
             "column, one factor per row.", V * (m / n)[None, :]),
            ("the update is transposed: it has W's shape (d_out, d_in) and orientation; a transposed product only "
             "fits because this W is square.", _dora64(W, BA.T.contiguous(), torch.eye(W.shape[0], dtype=W.dtype), m, s)),
        ]
    bugs += [
        ("the norm is taken of W alone; DoRA normalises the LoRA-merged weight (DoRA eq. 5).",
         rows(m / torch.linalg.norm(W, dim=1))),
        ("the scaling s is missing inside the norm: the norm is of the same merged weight, scaling included.",
         rows(m / torch.linalg.norm(W + BA, dim=1))),
        ("the scaling s is missing: V = W + s * B @ A, in the norm and in the numerator.",
         (m / torch.linalg.norm(W + BA, dim=1))[:, None] * (W + BA)),
        ("the magnitude is missing: you returned the direction V / n alone (DoRA eq. 5: magnitude times direction).",
         rows(1 / n)),
        ("you returned the plain LoRA merge W + s * B @ A: DoRA rescales each of its rows to length m_i.", V.clone()),
        ("one norm for the whole matrix (Frobenius): DoRA takes one norm per output row.",
         m[:, None] * V / torch.linalg.norm(V)),
        ("the ratio is inverted (n_i / m_i): each row must end up with length m_i.", rows(n / m)),
        ("the norm is squared: n_i is the square root of the row's sum of squares.", rows(m / n**2)),
        ("only W is rescaled: the update is included in what is rescaled.",
         (m / n)[:, None] * W + s * BA),
    ]
    return bugs


def _peft_dora_layer(W, A, B, m, rank, alpha):
    """peft's DoRA layer (get_peft_model(LoraConfig(r, lora_alpha, use_dora=True))) with W, A, B, m set."""
    d_out, d_in = W.shape
    holder = nn.Module()
    holder.lin = nn.Linear(d_in, d_out, bias=False, dtype=W.dtype)
    with torch.no_grad():
        holder.lin.weight.copy_(W)
    peft_model = get_peft_model(holder, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lin"], use_dora=True))
    layer = peft_model.base_model.model.lin
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
        layer.lora_magnitude_vector["default"].weight.copy_(m)
    return peft_model, layer


def _call_dora(fn, name, W, A, B, m, s):
    try:
        return fn(W, A, B, m, s)
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        text = str(exc)
        rank, (rows, cols) = A.shape[0], W.shape
        sizes = {int(v) for v in re.findall(r"\((\d+)\)", text)}
        if "shapes cannot be multiplied" in text or (
                "must match the size" in text and rank in sizes and rank not in (rows, cols)):
            raise CheckFailed(f"Likely bug: the factors are multiplied in the wrong order. {name} raised "
                              f"{describe_exception(exc)}\nHint: the update has the shape of W, (d_out, d_in); check the shapes of "
                              f"the two factors: only one order gives it.") from exc
        if "must match the size" in text and rows != cols and sizes == {rows, cols}:
            raise CheckFailed(f"Likely bug: the norm runs over the wrong dimension, or the factor is not a column. "
                              f"{name} raised {describe_exception(exc)}\nHint: {EQ_DORA}: n has d_out entries and "
                              f"scales the rows, as a (d_out, 1) column.") from exc
        raise


def check_dora_weight(fn, gen):
    """A square and a non-square weight in float32, then one in float64 with gradients. Values against
    the float64 ground truth (tolerance from the output's size) and against peft's merge_and_unload of
    a use_dora=True layer with the same W, A, B and m; gradients of A, B and m against the ground
    truth and against peft's forward (x = identity), so a norm left in the graph is caught; the
    inputs must not change."""
    d_sq = randint(gen, 7, 12)  # above every rank (2..6): A @ B never multiplies, so that bug is named
    d_in = randint(gen, 3, 16)
    d_out = choice(gen, [d for d in range(3, 17) if d != d_in])
    for (rows, cols), dtype in (((d_sq, d_sq), torch.float32), ((d_out, d_in), torch.float32),
                                ((d_in, d_out), torch.float64)):
        rank, alpha = _rank_alpha(gen)
        s = alpha / rank
        W = _randn(gen, rows, cols, dtype=dtype)
        A = _randn(gen, rank, cols, dtype=dtype) / math.sqrt(cols)
        B = _randn(gen, rows, rank, dtype=dtype) / math.sqrt(rank)
        # m: the row norms of W (peft's start) times a random factor per row in [0.5, 2], so m != n
        m = (torch.linalg.norm(W.double(), dim=1) * (0.5 + 1.5 * torch.rand(rows, generator=gen, dtype=torch.float64)))
        m = m.to(dtype)
        grads = dtype == torch.float64
        if grads:
            A.requires_grad_(True), B.requires_grad_(True), m.requires_grad_(True)
        before = [t.detach().clone() for t in (W, A, B, m)]
        name = (f"dora_weight(base_weight {tuple(W.shape)} {str(dtype).replace('torch.', '')}, lora_A {tuple(A.shape)}, "
                f"lora_B {tuple(B.shape)}, magnitude ({rows},), scaling={s:g})")
        got = _call_dora(fn, name, W, A, B, m, s)
        require_unchanged(name, before, [t.detach() for t in (W, A, B, m)],
                          "base_weight, lora_A, lora_B or magnitude")
        truth = _dora64(W.detach(), A.detach(), B.detach(), m.detach(), s)
        scale = truth.abs().max().item()
        tol = dict(atol=1e-5 * scale, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-12 * scale, rtol=1e-10)
        bugs = [(label, cand.to(dtype)) for label, cand in _dora_bugs(W.detach(), A.detach(), B.detach(),
                                                                      m.detach(), s)]
        got_value = got.detach() if isinstance(got, torch.Tensor) else got
        assert_close(name, got_value, truth.to(dtype), **tol, diagnose=bugs, hint=EQ_DORA + ".")
        peft_model, layer = _peft_dora_layer(W.detach(), A.detach(), B.detach(), m.detach(), rank, alpha)
        if grads:
            # peft's forward on x = I gives W'^T; its gradients are DoRA's (the norm detached inside peft)
            g_out = _randn(gen, rows, cols, dtype=dtype)
            out = layer(torch.eye(cols, dtype=dtype)).T  # (d_out, d_in) = W'
            (out * g_out).sum().backward()
            peft_grads = {"lora_A": layer.lora_A["default"].weight.grad, "lora_B": layer.lora_B["default"].weight.grad,
                          "magnitude": layer.lora_magnitude_vector["default"].weight.grad}
            if not (isinstance(got, torch.Tensor) and got.requires_grad):
                raise CheckFailed(f"{name}: the result does not require grad, though lora_A, lora_B and magnitude "
                                  f"do: DoRA trains them through this weight. Detach only the norm n, not the "
                                  f"result (no torch.no_grad(), no .detach() / .data on the output).")
            (got * g_out).sum().backward()
            leaves = {"lora_A": A, "lora_B": B, "magnitude": m}
            A_, B_, m_ = (t.detach().clone().requires_grad_(True) for t in (A, B, m))
            (_dora64(W.detach(), A_, B_, m_, s) * g_out).sum().backward()
            A2, B2, m2 = (t.detach().clone().requires_grad_(True) for t in (A, B, m))
            (_dora64(W.detach(), A2, B2, m2, s, detach=False) * g_out).sum().backward()
            for key, want, undetached in (("lora_A", A_.grad, A2.grad), ("lora_B", B_.grad, B2.grad),
                                          ("magnitude", m_.grad, m2.grad)):
                grad = leaves[key].grad
                if grad is None:
                    raise CheckFailed(f"{name}: no gradient reached {key}; DoRA trains it through W'.")
                assert_close(f"{name}: gradient of {key}", grad, want, atol=1e-9 * want.abs().max().item(),
                             rtol=1e-8, hint=EQ_DORA + ".",
                             diagnose=[("the norm n is not detached: DoRA (Sec. 4.3) and peft treat ||V_i|| as a "
                                        "constant, so no gradient flows through it (only its value is used).",
                                        undetached)])
                assert_close(f"{name}: gradient of {key} vs peft's DoRA layer (forward on x = identity)", grad,
                             peft_grads[key], atol=1e-9 * want.abs().max().item(), rtol=1e-8)
        merged = peft_model.merge_and_unload().lin.weight.detach()
        assert_close(f"{name} vs peft's merge_and_unload() of a LoraConfig(use_dora=True) layer with the same W, "
                     f"lora_A, lora_B and magnitude", got_value, merged, **tol)
