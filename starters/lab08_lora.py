# Your exercise file for Lab 08: LoRA Injection Reading.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab08")` in notebooks/08_lora.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab08')"
# Stuck? hint("lab08", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

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
whole model by module name (peft's `target_modules`), the merge, and DoRA's merged weight
(Liu et al. 2024), LoRA with each output row's length handed to a trainable vector. Each
equals peft on the same weights: `LoraConfig(r, lora_alpha, target_modules)`,
`inject_adapter_in_model`, `merge_and_unload`, and `LoraConfig(..., use_dora=True)`.
"""

import torch
from torch import nn

__all__ = ["LoRALinear", "inject_lora", "merge_lora", "dora_weight"]


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: peft's `lora.Linear`, one adapter.

        h = W x + b + s B (A x),   s = alpha / r   (the two factors applied one after the other)

    (Hu et al. 2021, eq. 3 and Sec. 4.1.) Attributes, with these exact names (the checks, the
    notebook and the conversion to peft's format read them):

        base     the nn.Linear it wraps (the same object, not a copy), every parameter frozen
                 (requires_grad False): it computes W x + b
        down     an nn.Linear without bias from base's d_in input features to r features:
                 A, weight of shape (r, d_in), initialised as peft's
                 LoraLayer.reset_lora_parameters initialises lora_A with its default
                 init_lora_weights=True
        up       an nn.Linear without bias from r features to base's d_out: B, weight of
                 shape (d_out, r), initialised as the same function initialises lora_B
        rank, alpha   the numbers given, kept as they are (an integer and a number)
        scaling  s = alpha / r, a number; forward reads this attribute, so a caller
                 can turn the update down or up afterwards (diffusers' "LoRA scale":
                 s = scale * alpha / r)

    down and up live on base.weight's device, in its dtype.

    Args:
        base: the nn.Linear to adapt (d_in -> d_out), with or without bias.
        rank: r >= 1, an integer.
        alpha: the scale's numerator (peft's lora_alpha; alpha = rank gives s = 1), a number.

    forward:
        x: (..., d_in) -> (..., d_out), like base; gradients reach A and B only.
    """

    def __init__(self, base, rank, alpha):
        super().__init__()
        # TODO: keep and freeze the base layer, create the two bias-free projections A (random) and
        # TODO: B (zero) on base's device and dtype, store rank, alpha and the scaling: peft's
        # TODO: LoraLayer.update_layer and reset_lora_parameters (peft/tuners/lora/layer.py).
        # Stuck? hint("lab08", "LoRALinear") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab08): LoRALinear.__init__")

    def forward(self, x):
        # TODO: LoRA eq. 3 with the scaling of Sec. 4.1, as peft's lora.Linear.forward
        # TODO: (peft/tuners/lora/layer.py), reading the scaling from the attribute.
        # Stuck? hint("lab08", "LoRALinear") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab08): LoRALinear.forward")


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
        a list (a tuple is accepted too) of the new trainable parameters: [down.weight,
        up.weight] of each replaced layer, in `named_modules()` order; after the call they are
        the only parameters of `model` with requires_grad True.

    Raises:
        ValueError: when no nn.Linear matches (peft raises too: a typo must not train nothing).
    """
    # TODO: freeze the model, find every targeted nn.Linear by peft's matching rule
    # TODO: (check_target_module_exists, peft/tuners/tuners_utils.py), swap each for your LoRALinear
    # TODO: on its parent module (BaseTuner._create_and_replace / _replace_module), return the new
    # TODO: trainable weights; ValueError when nothing matches.
    # Stuck? hint("lab08", "inject_lora") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab08): inject_lora")


def merge_lora(base_weight, down_weight, up_weight, alpha, rank):
    """The merged weight W' = W + (alpha / r) B A (LoRA Sec. 4.1), what peft's
    `merge_and_unload` writes into the base layer (its `get_delta_weight`).

    A merged layer is a plain nn.Linear again: same output as the adapted one (to float
    rounding), no extra matmuls at inference, and no way to turn the LoRA down afterwards.

    Args:
        base_weight: W, (d_out, d_in).
        down_weight: A, (rank, d_in)  (LoRALinear.down.weight, peft's lora_A).
        up_weight: B, (d_out, rank)   (LoRALinear.up.weight, peft's lora_B).
        alpha: the scale's numerator, a number; rank: r, an integer.

    Returns:
        (d_out, d_in) W', a new tensor in base_weight's dtype and device; the inputs are not
        modified.
    """
    # TODO: W' of LoRA Sec. 4.1, as peft's lora.Linear.get_delta_weight and merge
    # TODO: (peft/tuners/lora/layer.py), out of place, in W's dtype.
    # Stuck? hint("lab08", "merge_lora") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab08): merge_lora")


def dora_weight(base_weight, lora_A, lora_B, magnitude, scaling):
    """DoRA's merged weight (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
    eq. 5, with the gradients of Sec. 4.3): what peft writes into the base layer when a LoRA
    with `LoraConfig(..., use_dora=True)` is merged, and what its forward computes.

    DoRA splits the LoRA-merged weight V = W + s B A into a magnitude and a direction: the
    trainable vector m (d_out numbers) sets the magnitudes, V the directions, through a norm of
    V taken one way across the matrix (the paper's eq. 5). Which way that norm runs in PyTorch's
    (out, in) layout (the paper writes W as d x k, with a different convention) and how the
    norm enters the gradients (Sec. 4.3) are what you read in the paper and in peft: its
    DoraLinearLayer.get_weight_norm and DoraLinearLayer.forward (peft/tuners/lora/dora.py).
    m is an input here: starting it is the job of a layer (the stretch's DoRALinear).

    Args:
        base_weight: W, (d_out, d_in), frozen.
        lora_A: A, (r, d_in)  (peft's lora_A[...].weight, our LoRALinear.down.weight).
        lora_B: B, (d_out, r) (peft's lora_B[...].weight, our LoRALinear.up.weight).
        magnitude: m, (d_out,) (peft's lora_magnitude_vector[...].weight).
        scaling: s, a number (alpha / r for plain LoRA).
        All tensors share one floating dtype and device.

    Returns:
        W', (d_out, d_in), a new tensor in base_weight's dtype and device; the inputs are not
        modified.
    """
    # TODO: W' by DoRA eq. 5, its norm's gradients as Sec. 4.3 says: read DoraLinearLayer.get_weight_norm
    # TODO: (which dimension the norm runs over) and DoraLinearLayer.forward (how the norm enters the
    # TODO: gradients) in peft/tuners/lora/dora.py; DoraLinearVariant.merge_safe (peft/tuners/lora/variants.py)
    # TODO: puts the same pieces together into the merged weight.
    # Stuck? hint("lab08", "dora_weight") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab08): dora_weight")
