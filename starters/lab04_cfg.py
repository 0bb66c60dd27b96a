# Your exercise file for Lab 04: CFG Code Reading.
#
# Generated from helpers/solutions/lab04_cfg.py by `python -m helpers.make_starters`.
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab04")` in notebooks/04_cfg.ipynb: edits are picked up without
# restarting the kernel. Until a function passes its check, the notebook uses the reference.

"""Lab 04: classifier-free guidance (CFG), the way `StableDiffusionPipeline.__call__` does it.

Notation (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"; diffusers' names on the right):

    x_t          the noisy latents at timestep t                     `latents`   (B, C, H, W)
    c            the text condition (the prompt's embedding)          `prompt_embeds`   (B, L, D)
    0            the "null" condition (the empty prompt's embedding)  `negative_prompt_embeds`
    eps(x_t, c)  the conditional noise prediction                     `noise_pred_text`
    eps(x_t, 0)  the unconditional noise prediction                   `noise_pred_uncond`
    w            the guidance scale                                   `guidance_scale`

One denoiser, trained with the caption dropped (replaced by "") 10% of the time, gives both
predictions. CFG extrapolates from the unconditional one past the conditional one:

    eps_cfg = eps(x_t, 0) + w * (eps(x_t, c) - eps(x_t, 0))          (diffusers' convention)

Ho & Salimans write eq. 6 as eps~ = (1 + w') eps(x_t, c) - w' eps(x_t, 0), with w' = 0 meaning
no guidance. It is the same line with w = 1 + w': diffusers' `guidance_scale = 7.5` is the
paper's w' = 6.5, and `guidance_scale = 1` is the plain conditional model (no guidance). Imagen
(Saharia et al. 2022, eq. 2) uses diffusers' convention.

The functions below are, in order: the guidance line itself, the rescale of Lin et al. 2023
that tames its over-exposure, and one guided UNet call with the batch [uncond, cond] exactly as
the pipeline builds it. Each equals the matching lines of diffusers on the same inputs.
"""

import torch

__all__ = ["classifier_free_guidance", "rescale_noise_cfg", "guided_noise_pred"]


def classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale):
    """eps_cfg = eps_uncond + w * (eps_text - eps_uncond), as `StableDiffusionPipeline.__call__`.

    Ho & Salimans 2022, eq. 6, in diffusers' convention (w = 1: no guidance, the conditional
    prediction itself; w = 0: the unconditional one; w > 1: extrapolate past the conditional
    prediction, away from the unconditional one). The paper's (1 + w') eps_c - w' eps_u is the
    same line with w = 1 + w'.

    Args:
        noise_pred_uncond: (B, ...) eps(x_t, 0), the prediction for the empty (or negative) prompt.
        noise_pred_text: (B, ...) eps(x_t, c), the prediction for the prompt; same shape.
        guidance_scale: w, a Python float.

    Returns:
        (B, ...) the guided prediction, same shape, dtype and device as the inputs.
    """
    # TODO: Start from the unconditional prediction and move w times the difference (text - uncond) towards the text one.
    # TODO: Check your line at w = 1 (must return noise_pred_text) and at w = 0 (must return noise_pred_uncond).
    raise NotImplementedError("TODO(lab04): classifier_free_guidance")


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale=0.0):
    """Rescale the guided prediction to the std of the conditional one, then mix, as diffusers'
    `rescale_noise_cfg` (pipelines/stable_diffusion/pipeline_stable_diffusion.py).

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4
    (the paper states it for its own v-prediction model; diffusers applies the same lines to
    whatever the UNet predicts, eps here): a large w inflates the std of the guided prediction
    above that of any real one, which over-exposes the image. Per sample (std over every dim
    but the batch one):

        eps_rescaled = eps_cfg * std(eps_text) / std(eps_cfg)
        out          = phi * eps_rescaled + (1 - phi) * eps_cfg          phi = guidance_rescale

    phi = 0 returns eps_cfg unchanged; phi = 1 returns the fully rescaled one (the paper
    recommends phi = 0.7: fully rescaled images look plain). `torch.std` (unbiased) as diffusers;
    the correction cancels in the ratio anyway.

    Args:
        noise_cfg: (B, ...) eps_cfg, the output of classifier_free_guidance.
        noise_pred_text: (B, ...) eps_text, the conditional prediction; same shape.
        guidance_rescale: phi in [0, 1], a Python float.

    Returns:
        (B, ...) same shape, dtype and device as noise_cfg.
    """
    # TODO: One std per sample: .std(dim=list(range(1, x.ndim)), keepdim=True) gives (B, 1, ..., 1).
    # TODO: Rescale noise_cfg by std_text / std_cfg, then blend: phi * rescaled + (1 - phi) * noise_cfg.
    raise NotImplementedError("TODO(lab04): rescale_noise_cfg")


def guided_noise_pred(unet, latents, timestep, text_embeddings, uncond_embeddings, guidance_scale,
                      guidance_rescale=0.0):
    """One CFG step's noise prediction with ONE UNet forward on the batch [uncond, cond], as
    `StableDiffusionPipeline.__call__` (steps 3 and 7 of its source):

        prompt_embeds      = cat([negative_prompt_embeds, prompt_embeds])   # (2B, L, D), uncond first
        latent_model_input = cat([latents] * 2)                             # (2B, C, H, W)
        noise_pred         = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)            # (B, ...) each
        noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, w)
        if guidance_rescale > 0: noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, phi)

    The result equals two separate forwards (uncond, then cond) up to float rounding: every
    layer of the UNet treats the samples of a batch independently. One forward of 2B is
    usually faster than two of B on a GPU (one launch per kernel, better utilisation).

    Args:
        unet: a `UNet2DConditionModel` (or anything called as `unet(sample, timestep,
            encoder_hidden_states=...)` returning an object with `.sample`).
        latents: (B, C, H, W) x_t, already passed through `scheduler.scale_model_input`.
        timestep: the timestep t: a Python int, a 0-d tensor (what the pipeline passes: the
            UNet broadcasts it to the batch) or a (B,) tensor, one per sample (then it must be
            repeated to (2B,) in the same [uncond, cond] order).
        text_embeddings: (B, L, D) the prompt's text-encoder output.
        uncond_embeddings: (B, L, D) the empty prompt's (or the negative prompt's) output.
        guidance_scale: w, a Python float (diffusers' convention).
        guidance_rescale: phi, a Python float; 0 (the default) skips the rescale.

    Returns:
        (B, C, H, W) the guided noise prediction.
    """
    # TODO: Batch [uncond, cond] (uncond FIRST, like the pipeline): torch.cat for the embeddings AND for the latents.
    # TODO: A (B,) timestep must become (2B,) in the same order (torch.cat([t, t])); an int or 0-d tensor can go as is.
    # TODO: Split the output with .chunk(2) in the order you built the batch, then call classifier_free_guidance (and rescale_noise_cfg when guidance_rescale > 0).
    raise NotImplementedError("TODO(lab04): guided_noise_pred")
