"""Lab 08: LoRA, injected by hand into a diffusers model, the way peft does it.

Notation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; peft's names
on the right, as `diffusers` uses them through `unet.add_adapter` / `load_lora_weights`):

    W      (d_out, d_in)  the frozen weight of one nn.Linear       (`base_layer.weight`)
    A      (r, d_in)      the DOWN projection, random at the start (`lora_A[adapter].weight`)
    B      (d_out, r)     the UP projection, zero at the start     (`lora_B[adapter].weight`)
    r                     the rank, r << min(d_in, d_out)          (`r`)
    alpha                 the scale's numerator                    (`lora_alpha`)
    alpha / r             the scaling of the update                (`scaling[adapter]`)

One adapted layer (LoRA eq. 3, with the alpha / r scaling of Sec. 4.1):

    h = W x + b + (alpha / r) * B (A x)          x: (..., d_in), h: (..., d_out)

Only A and B train: r (d_in + d_out) numbers instead of d_in d_out. B = 0 at the start, so
the adapted model starts out EXACTLY equal to the base model, and the update
dW = (alpha / r) B A has rank at most r. Because it is a plain matrix, it can be folded into
the weight once training is done ("merging", LoRA Sec. 4.1: no extra latency):

    W' = W + (alpha / r) * B A

The functions below are, in order: the adapted layer, the injection of such layers into a
whole model by module name (peft's `target_modules`), and the merge. Each equals peft on the
same weights: `LoraConfig(r, lora_alpha, target_modules)`, `inject_adapter_in_model`,
`merge_and_unload`.
"""

import torch
from torch import nn

__all__ = ["LoRALinear", "inject_lora", "merge_lora"]


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: peft's `lora.Linear`, one adapter.

        forward(x) = base(x) + scaling * up(down(x)),   scaling = alpha / rank

    (Hu et al. 2021, eq. 3 and Sec. 4.1.) Attributes, with these exact names (the checks, the
    notebook and the conversion to peft's format read them):

        base     the nn.Linear it wraps (the same object), every parameter frozen
                 (requires_grad False)
        down     nn.Linear(base.in_features, rank, bias=False): A, (rank, d_in), initialised
                 like peft (and like nn.Linear itself): kaiming_uniform_(a=sqrt(5))
        up       nn.Linear(rank, base.out_features, bias=False): B, (d_out, rank), all ZEROS
        rank, alpha   the ints/floats given
        scaling  the float alpha / rank; forward reads it, so a caller can turn the update
                 down or up afterwards (diffusers' "LoRA scale": scaling = s * alpha / rank)

    down and up live on base.weight's device, in its dtype.

    Args:
        base: the nn.Linear to adapt (d_in -> d_out), with or without bias.
        rank: r >= 1.
        alpha: the scale's numerator (peft's lora_alpha; alpha = rank gives scaling 1).

    forward:
        x: (..., d_in) -> (..., d_out), like base.
    """

    def __init__(self, base, rank, alpha):
        super().__init__()
        # BEGIN SOLUTION
        # HINT: Keep base as self.base and freeze it: base.requires_grad_(False).
        # HINT: down = nn.Linear(d_in, rank, bias=False) maps x to rank numbers; up = nn.Linear(rank, d_out,
        # HINT:     bias=False) maps them back. Create both with device=base.weight.device, dtype=base.weight.dtype.
        # HINT: Zero up.weight (nn.init.zeros_), so the layer starts equal to base; leave down random
        # HINT:     (nn.Linear's own init is peft's).
        # HINT: self.rank, self.alpha = rank, alpha; self.scaling = alpha / rank.
        self.base = base
        self.base.requires_grad_(False)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)  # A: (r, d_in), kaiming_uniform_
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)  # B: (d_out, r)
        nn.init.zeros_(self.up.weight)  # B = 0: the adapted layer starts equal to the base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        # END SOLUTION

    def forward(self, x):
        # BEGIN SOLUTION
        # HINT: base(x) + self.scaling * up(down(x)): read self.scaling here (not alpha / rank again).
        return self.base(x) + self.scaling * self.up(self.down(x))  # (..., d_out)
        # END SOLUTION


def inject_lora(model, target_modules, rank, alpha):
    """Freeze `model` and replace each targeted nn.Linear by a LoRALinear around it, in place,
    like `peft.inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha,
    target_modules=target_modules), model)` (what diffusers' `unet.add_adapter` calls).

    A module is targeted when it is an nn.Linear and its name in `model.named_modules()`
    equals one of `target_modules` or ends with "." + one of them (peft's rule for a list:
    "to_q" targets "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" and
    "to_out.0" targets "...attn1.to_out.0", but "proj" does not target "out_proj").

    Args:
        model: any nn.Module (a UNet2DConditionModel, a CLIPTextModel, ...), changed in place.
        target_modules: list of module names or name suffixes, e.g.
            ["to_q", "to_k", "to_v", "to_out.0"] (the attention projections of SD's UNet).
        rank, alpha: passed to every LoRALinear.

    Returns:
        list of the new trainable parameters, [down.weight, up.weight] of each replaced layer,
        in `named_modules()` order; after the call they are the only parameters of `model`
        with requires_grad True.

    Raises:
        ValueError: when no nn.Linear matches (peft raises too: a typo must not train nothing).
    """
    # BEGIN SOLUTION
    # HINT: Freeze everything first: model.requires_grad_(False).
    # HINT: Collect the matches BEFORE replacing, from list(model.named_modules()): keep (name, module) when
    # HINT:     isinstance(module, nn.Linear) and, for some target t, name == t or name.endswith("." + t).
    # HINT: Replace with setattr(parent, child_name, LoRALinear(module, rank, alpha)), where
    # HINT:     parent_name, _, child_name = name.rpartition(".") and parent = model.get_submodule(parent_name).
    # HINT: Return [lora.down.weight, lora.up.weight] of each new layer; raise ValueError if nothing matched.
    model.requires_grad_(False)
    targets = list(target_modules)
    matches = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    if not matches:
        raise ValueError(f"no nn.Linear in the model matches target_modules={targets}")
    params = []
    for name, module in matches:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)  # "" -> the model itself
        lora = LoRALinear(module, rank, alpha)
        setattr(parent, child_name, lora)
        params += [lora.down.weight, lora.up.weight]
    return params
    # END SOLUTION


def merge_lora(base_weight, down_weight, up_weight, alpha, rank):
    """The merged weight W' = W + (alpha / rank) * B A (LoRA Sec. 4.1), what peft's
    `merge_and_unload` writes into the base layer (`get_delta_weight`: B @ A * scaling).

    A merged layer is a plain nn.Linear again: same output as the adapted one (to float
    rounding), no extra matmuls at inference, and no way to turn the LoRA down afterwards.

    Args:
        base_weight: W, (d_out, d_in).
        down_weight: A, (rank, d_in)  (LoRALinear.down.weight, peft's lora_A).
        up_weight: B, (d_out, rank)   (LoRALinear.up.weight, peft's lora_B).
        alpha: the scale's numerator; rank: r.

    Returns:
        (d_out, d_in) W', a new tensor in base_weight's dtype and device; the inputs are not
        modified.
    """
    # BEGIN SOLUTION
    # HINT: B A is (d_out, r) @ (r, d_in) = (d_out, d_in), the shape of W (A B would not be).
    # HINT: Multiply by alpha / rank, add to W out of place (W + ..., not W += ...), cast to W's dtype.
    delta = (up_weight @ down_weight) * (alpha / rank)  # (d_out, d_in), as peft's get_delta_weight
    return base_weight + delta.to(base_weight.dtype)  # (d_out, d_in), a new tensor
    # END SOLUTION
