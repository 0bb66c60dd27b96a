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
        # BEGIN SOLUTION
        # TODO: keep and freeze the base layer, create the two bias-free projections A (random) and
        # TODO: B (zero) on base's device and dtype, store rank, alpha and the scaling: peft's
        # TODO: LoraLayer.update_layer and reset_lora_parameters (peft/tuners/lora/layer.py).
        # HINT 1: In peft/tuners/lora/layer.py read LoraLayer.update_layer (where lora_A, lora_B and
        # HINT 1: scaling are created) and reset_lora_parameters (the `init_lora_weights is True` branch).
        # HINT 2: Store base and switch off its gradients. Build A (d_in -> r) and B (r -> d_out) as
        # HINT 2: bias-free linear layers with base's weight's device and dtype; set B's weight to zero and
        # HINT 2: leave A's default random init. Keep rank and alpha, and their ratio as the scaling.
        # HINT 3: self.base = base; base.requires_grad_(False);
        # HINT 3: self.down = nn.Linear(in, rank, bias=False, device=..., dtype=...); self.up likewise (rank -> out);
        # HINT 3: nn.init.zeros_(self.up.weight); self.scaling = alpha / rank
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
        # TODO: LoRA eq. 3 with the scaling of Sec. 4.1, as peft's lora.Linear.forward
        # TODO: (peft/tuners/lora/layer.py), reading the scaling from the attribute.
        # HINT 1: peft/tuners/lora/layer.py, class Linear, forward: the loop over active adapters after
        # HINT 1: `result = self.base_layer(x, ...)` (ignore dropout and the variants).
        # HINT 2: The base layer's output (with its bias), plus the scaled low-rank path: first A, then B,
        # HINT 2: then the scaling attribute (not recomputed from alpha and rank).
        # HINT 3: base(x) + self.scaling * up(down(x))
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
        a list (a tuple is accepted too) of the new trainable parameters: [down.weight,
        up.weight] of each replaced layer, in `named_modules()` order; after the call they are
        the only parameters of `model` with requires_grad True.

    Raises:
        ValueError: when no nn.Linear matches (peft raises too: a typo must not train nothing).
    """
    # BEGIN SOLUTION
    # TODO: freeze the model, find every targeted nn.Linear by peft's matching rule
    # TODO: (check_target_module_exists, peft/tuners/tuners_utils.py), swap each for your LoRALinear
    # TODO: on its parent module (BaseTuner._create_and_replace / _replace_module), return the new
    # TODO: trainable weights; ValueError when nothing matches.
    # HINT 1: peft/tuners/tuners_utils.py: check_target_module_exists (the `key in config.target_modules`
    # HINT 1: and `endswith` branches) and inject_adapter (freezing, the loop over named_modules, the error
    # HINT 1: when nothing was found); peft.utils.get_submodules shows how a module's parent is found.
    # HINT 2: Turn off every gradient of the model. Walk all named modules and collect the matching
    # HINT 2: Linear layers into a list first (changing a model while iterating over it is unsafe).
    # HINT 2: Nothing collected: raise. Otherwise, for each, split the dotted name into the parent's
    # HINT 2: name and the last part, fetch the parent, and set a new LoRALinear around the old layer as
    # HINT 2: that attribute. Gather the two new weights of each, in order.
    # HINT 3: match: isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets);
    # HINT 3: parent_name, _, child = name.rpartition("."); setattr(model.get_submodule(parent_name), child, new)
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
    # BEGIN SOLUTION
    # TODO: W' of LoRA Sec. 4.1, as peft's lora.Linear.get_delta_weight and merge
    # TODO: (peft/tuners/lora/layer.py), out of place, in W's dtype.
    # HINT 1: peft/tuners/lora/layer.py, class Linear: get_delta_weight (the product and its order, then
    # HINT 1: the scaling) and merge (where the delta is added to the base weight).
    # HINT 2: Multiply the two factors in the order that gives W's shape (d_out, d_in), scale the product,
    # HINT 2: and add it to W into a new tensor (never into W itself), in W's dtype.
    # HINT 3: W' = base_weight + (up_weight @ down_weight) * (alpha / rank)
    delta = (up_weight @ down_weight) * (alpha / rank)  # (d_out, d_in), as peft's get_delta_weight
    return base_weight + delta.to(base_weight.dtype)  # (d_out, d_in), a new tensor
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: W' by DoRA eq. 5, its norm's gradients as Sec. 4.3 says: read DoraLinearLayer.get_weight_norm
    # TODO: (which dimension the norm runs over) and DoraLinearLayer.forward (how the norm enters the
    # TODO: gradients) in peft/tuners/lora/dora.py; DoraLinearVariant.merge_safe (peft/tuners/lora/variants.py)
    # TODO: puts the same pieces together into the merged weight.
    # HINT 1: peft/tuners/lora/variants.py, DoraLinearVariant.merge_safe: delta_weight (the LoRA update,
    # HINT 1: scaling included), weight_norm, dora_factor and new_weight. The norm itself is in
    # HINT 1: peft/tuners/lora/dora.py, DoraLinearLayer.get_weight_norm; forward there shows the detach.
    # HINT 2: Build the LoRA-merged weight V (W plus the scaled product of the factors, shape (d_out, d_in)).
    # HINT 2: Take the Euclidean length of each of its d_out rows (over the input dimension) and cut it off
    # HINT 2: from the gradient graph. Divide the magnitude by these lengths and scale each row of V by
    # HINT 2: its own factor (a (d_out, 1) column broadcast over the row). Return it in W's dtype.
    # HINT 3: V = W + (B @ A) * s;  n = torch.linalg.norm(V, dim=1).detach()  (shape (d_out,));
    # HINT 3: W' = (m / n).view(-1, 1) * V
    merged = base_weight + (lora_B @ lora_A) * scaling  # V: (d_out, d_in), the LoRA-merged weight
    row_norm = torch.linalg.norm(merged, dim=1).detach()  # (d_out,) ||V_i||, a constant for autograd
    factor = (magnitude / row_norm).unsqueeze(1)  # (d_out, 1): m_i / ||V_i||, one per output row
    return (factor * merged).to(base_weight.dtype)  # (d_out, d_in): row i has length m_i
    # END SOLUTION
