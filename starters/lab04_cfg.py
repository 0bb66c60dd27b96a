# Your exercise file for Lab 04: CFG Code Reading.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab04")` in notebooks/04_cfg.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab04')"
# Stuck? hint("lab04", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

"""Lab 04: classifier-free guidance (CFG), the way `StableDiffusionPipeline.__call__` does it.

Notation (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"; diffusers' names on the right):

    x_t          the noisy latents at timestep t                     `latents`   (B, C, H, W)
    c            the text condition (the prompt's embedding)          `prompt_embeds`   (B, L, D)
    0            the "null" condition (the empty prompt's embedding)  `negative_prompt_embeds`
    eps(x_t, c)  the conditional noise prediction                     `noise_pred_text` / `pred_cond`
    eps(x_t, 0)  the unconditional noise prediction                   `noise_pred_uncond` / `pred_uncond`
    w            the guidance scale                                   `guidance_scale`

One denoiser, trained with the caption dropped (replaced by "") 10% of the time, gives both
predictions. CFG extrapolates from the unconditional one past the conditional one: Ho & Salimans
2022, eq. 6, which the pipeline writes as one line ("perform guidance" in
`StableDiffusionPipeline.__call__`; the lab's page states it in "Read first").

Conventions: Ho & Salimans weight eq. 6 by w', with w' = 0 meaning no guidance. diffusers (like
Imagen, Saharia et al. 2022, eq. 2) uses w = 1 + w': `guidance_scale = 1` is the plain
conditional model (no guidance), and diffusers' 7.5 is the paper's w' = 6.5. Every function
here takes diffusers' w.

The functions below are, in order: the guidance line itself, the rescale of Lin et al. 2023
that tames its over-exposure, one guided UNet call with the batch [uncond, cond] exactly as
the pipeline builds it, and adaptive projected guidance (Sadat et al. 2024), which diffusers
ships as a "guider". Each equals the matching lines of diffusers on the same inputs.

Return values: every function returns a tensor of the inputs' shape, dtype and device.
"""

import torch

__all__ = ["classifier_free_guidance", "rescale_noise_cfg", "guided_noise_pred", "normalized_guidance"]


def classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale):
    """The guided prediction of Ho & Salimans 2022, eq. 6, in diffusers' convention (w = 1 + w',
    see the module docstring), as the "perform guidance" line of `StableDiffusionPipeline.__call__`.

    w = 1 must return eps_c itself (no guidance); w > 1 moves past eps_c, away from eps_u. Do not
    change the inputs in place (the pipeline still needs them).

    Args:
        noise_pred_uncond: (B, ...) eps_u = eps(x_t, 0), the prediction for the empty (or negative) prompt.
        noise_pred_text: (B, ...) eps_c = eps(x_t, c), the prediction for the prompt; same shape.
        guidance_scale: w, a number.

    Returns:
        (B, ...) the guided prediction, same shape, dtype and device as the inputs.
    """
    # TODO: the guided prediction of Ho & Salimans eq. 6 in diffusers' convention, as the
    # TODO: "perform guidance" lines of StableDiffusionPipeline.__call__ (step 7 of
    # TODO: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py).
    # Stuck? hint("lab04", "classifier_free_guidance") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab04): classifier_free_guidance")


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", sec. 3.4), equal to diffusers' `rescale_noise_cfg`, the function defined above the
    pipeline class in diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py: read its
    lines there.

    The paper states it for its own v-prediction model: a large w makes the guided prediction
    larger than any real prediction, which over-exposes the image, and the rescale brings it
    back to the size of the conditional prediction, then blends. diffusers applies the same
    lines to whatever the UNet predicts, eps here. Read in diffusers' function which statistic
    it matches, over which dims it computes it, and how guidance_rescale = phi blends: phi = 0
    must return noise_cfg unchanged (the paper recommends phi = 0.7: fully rescaled images look
    plain). Any rank >= 2, the batch dim first. Where a statistic has a choice of divisor (n or
    n - 1), either passes the check.

    Args:
        noise_cfg: (B, ...) eps_cfg, the output of classifier_free_guidance.
        noise_pred_text: (B, ...) eps_c, the conditional prediction; same shape.
        guidance_rescale: phi in [0, 1], a number.

    Returns:
        (B, ...) same shape, dtype and device as noise_cfg.
    """
    # TODO: Lin et al. 2023 sec. 3.4, as diffusers' rescale_noise_cfg in
    # TODO: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py (above the pipeline class).
    # Stuck? hint("lab04", "rescale_noise_cfg") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab04): rescale_noise_cfg")


def guided_noise_pred(unet, latents, timestep, text_embeddings, uncond_embeddings, guidance_scale,
                      guidance_rescale=0.0):
    """One CFG step's noise prediction with ONE UNet forward on the batch [uncond, cond], as
    `StableDiffusionPipeline.__call__` (steps 3 and 7 of its source).

    The UNet is called once, on 2B samples: the first B pair x_t with the unconditional
    embeddings, the last B pair the same x_t with the text embeddings (unconditional FIRST, the
    pipeline's order; callbacks, IP-Adapter and ControlNet rely on it). The first half of its
    output is eps_u, the second eps_c; then eps = classifier_free_guidance(eps_u, eps_c, w), and,
    when phi = guidance_rescale > 0, eps = rescale_noise_cfg(eps, eps_c, phi). Call your two
    functions above by name.

    The result equals two separate forwards (uncond, then cond) up to float rounding: every
    layer of the UNet treats the samples of a batch independently. One forward of 2B is
    usually faster than two of B on a GPU (one launch per kernel, better utilisation).

    Args:
        unet: a `UNet2DConditionModel` (or anything called as `unet(sample, timestep,
            encoder_hidden_states=...)` returning an object with `.sample`).
        latents: (B, C, H, W) x_t, already passed through `scheduler.scale_model_input`.
        timestep: the timestep t: a Python int, a 0-d tensor (what the pipeline passes: the
            UNet broadcasts it to the batch) or a (B,) tensor, one per sample (then the UNet
            needs one per sample of the doubled batch, (2B,), in the same [uncond, cond] order).
        text_embeddings: (B, L, D) the prompt's text-encoder output.
        uncond_embeddings: (B, L, D) the empty prompt's (or the negative prompt's) output.
        guidance_scale: w, a number (diffusers' convention).
        guidance_rescale: phi, a number; 0 (the default) skips the rescale.

    Returns:
        (B, C, H, W) the guided noise prediction.
    """
    # TODO: one guided prediction with ONE UNet call on the doubled batch, as steps 3 ("For classifier
    # TODO: free guidance, we need to do two forward passes") and 7 ("expand the latents ...", "perform
    # TODO: guidance") of StableDiffusionPipeline.__call__ in pipeline_stable_diffusion.py.
    # Stuck? hint("lab04", "guided_noise_pred") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab04): guided_noise_pred")


def normalized_guidance(pred_cond, pred_uncond, guidance_scale, eta=1.0, norm_threshold=0.0, momentum_buffer=None):
    """Adaptive projected guidance (APG; Sadat et al. 2024, "Eliminating Oversaturation and
    Artifacts of High Guidance Scales in Diffusion Models", arXiv 2410.02416), as diffusers'
    `normalized_guidance` in diffusers/guiders/adaptive_projected_guidance.py with its defaults
    `use_original_formulation=False` and `norm_dim=None`.

    CFG's update d = eps_c - eps_u is split into a part parallel to the conditional prediction,
    which the paper finds causes the over-saturation, and an orthogonal part, which improves
    quality; the parallel part is down-weighted by eta, and the result is a CFG-like step
    built from the two parts. Two optional extras act on d first: a momentum (a running average
    kept in `momentum_buffer`, updated exactly once per call) and a norm threshold r that may
    shrink d, never grow it. What you read in diffusers' function: over which dims its norms
    and inner products run (with norm_dim=None), the order of momentum, threshold and
    projection, the dtype it projects in, and which prediction the result starts from
    (use_original_formulation=False). With eta = 1 and no extras the result is plain CFG.
    Note the argument order differs from diffusers' function (momentum_buffer comes last here).
    The check compares with a float64 ground truth, with a tolerance scaled to the values' size,
    so any order of rounding passes.

    Args:
        pred_cond: (B, ...) eps_c, the conditional prediction, any rank >= 2.
        pred_uncond: (B, ...) eps_u, the unconditional prediction; same shape and dtype.
        guidance_scale: w, a number (diffusers' convention: w = 1 returns eps_c when eta = 1).
        eta: a number, the weight of the parallel component (the paper uses 0).
        norm_threshold: r, a number; 0 (the default) switches the threshold off.
        momentum_buffer: None, or diffusers' `MomentumBuffer` (diffusers/guiders/
            adaptive_projected_guidance.py): an object with a number `momentum`, a
            `running_average` (0 before the first update) and an `update(value)` method.

    Returns:
        (B, ...) the guided prediction, same shape, dtype and device as pred_cond. The inputs
        are not changed in place.
    """
    # TODO: APG (Sadat et al. 2024, arXiv 2410.02416) exactly as normalized_guidance in
    # TODO: diffusers/guiders/adaptive_projected_guidance.py (its defaults: use_original_formulation=False,
    # TODO: norm_dim=None), momentum buffer included.
    # Stuck? hint("lab04", "normalized_guidance") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab04): normalized_guidance")
