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
    # BEGIN SOLUTION
    # TODO: the guided prediction of Ho & Salimans eq. 6 in diffusers' convention, as the
    # TODO: "perform guidance" lines of StableDiffusionPipeline.__call__ (step 7 of
    # TODO: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py).
    # HINT 1: In pipeline_stable_diffusion.py search for "perform guidance" inside __call__: one line
    # HINT 1: combines noise_pred_uncond, noise_pred_text and self.guidance_scale.
    # HINT 2: Start from the unconditional prediction and move w times the difference (text minus uncond)
    # HINT 2: towards the text one. Test it by hand: w = 1 must give eps_c, w = 0 must give eps_u.
    # HINT 3: eps_u + w * (eps_c - eps_u), built as a new tensor (no add_ / mul_ on the inputs).
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)  # (B, ...)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: Lin et al. 2023 sec. 3.4, as diffusers' rescale_noise_cfg in
    # TODO: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py (above the pipeline class).
    # HINT 1: Open pipeline_stable_diffusion.py and read rescale_noise_cfg near the top: four lines after
    # HINT 1: the docstring. Note the dims its std runs over and the keepdim.
    # HINT 2: Compute one standard deviation per sample (over every dim but the batch one, kept as size-1
    # HINT 2: dims so it broadcasts) for the text prediction and for the guided one; scale the guided
    # HINT 2: prediction by their ratio; blend the result with the unscaled guided prediction.
    # HINT 3: dims = list(range(1, x.ndim)); std_t = noise_pred_text.std(dim=dims, keepdim=True), same for
    # HINT 3: noise_cfg; rescaled = noise_cfg * std_t / std_cfg; return phi * rescaled + (1 - phi) * noise_cfg.
    dims = list(range(1, noise_pred_text.ndim))  # every dim but the batch one
    std_text = noise_pred_text.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)  # (B, ...)
    return guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg  # (B, ...)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: one guided prediction with ONE UNet call on the doubled batch, as steps 3 ("For classifier
    # TODO: free guidance, we need to do two forward passes") and 7 ("expand the latents ...", "perform
    # TODO: guidance") of StableDiffusionPipeline.__call__ in pipeline_stable_diffusion.py.
    # HINT 1: In __call__, read where prompt_embeds is concatenated with negative_prompt_embeds (step 3) and
    # HINT 1: the denoising loop (step 7): latent_model_input, the unet call, the chunk, the guidance line,
    # HINT 1: and the guidance_rescale branch. UNet2DConditionModel.get_time_embed shows how t is broadcast.
    # HINT 2: Stack the latents twice and the embeddings as [uncond, text]; for a (B,) timestep build (2B,)
    # HINT 2: timesteps in the same order (an int or 0-d tensor can go as is); call the UNet once and take
    # HINT 2: .sample; split it into two halves in the order you built the batch; guide; rescale if phi > 0.
    # HINT 3: x2 = torch.cat([latents, latents]); emb = torch.cat([uncond_embeddings, text_embeddings]);
    # HINT 3: t2 = torch.cat([t, t]) for a 1-D t; out = unet(x2, t2, encoder_hidden_states=emb).sample;
    # HINT 3: eps_u, eps_c = out.chunk(2); eps = classifier_free_guidance(eps_u, eps_c, w), then
    # HINT 3: rescale_noise_cfg(eps, eps_c, phi) when phi > 0.
    latent_model_input = torch.cat([latents] * 2)  # (2B, C, H, W)
    prompt_embeds = torch.cat([uncond_embeddings, text_embeddings])  # (2B, L, D), uncond first
    t = timestep
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        t = t.repeat(2)  # (2B,), same [uncond, cond] order as the batch
    noise_pred = unet(latent_model_input, t, encoder_hidden_states=prompt_embeds).sample  # (2B, C, H, W)
    eps_uncond, eps_text = noise_pred.chunk(2)  # (B, C, H, W) each
    guided = classifier_free_guidance(eps_uncond, eps_text, guidance_scale)
    if guidance_rescale > 0.0:
        guided = rescale_noise_cfg(guided, eps_text, guidance_rescale)
    return guided  # (B, C, H, W)
    # END SOLUTION


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
    # BEGIN SOLUTION
    # TODO: APG (Sadat et al. 2024, arXiv 2410.02416) exactly as normalized_guidance in
    # TODO: diffusers/guiders/adaptive_projected_guidance.py (its defaults: use_original_formulation=False,
    # TODO: norm_dim=None), momentum buffer included.
    # HINT 1: Open diffusers/guiders/adaptive_projected_guidance.py and read normalized_guidance at the end
    # HINT 1: of the file (and MomentumBuffer.update just above it): which dims the norms run over when
    # HINT 1: norm_dim is None, the order momentum -> threshold -> projection, and the dtype it projects in.
    # HINT 2: Take the difference cond - uncond. If a buffer is given, feed the difference to it and use its
    # HINT 2: running average instead. If norm_threshold > 0, shrink each sample whose norm exceeds it to that
    # HINT 2: norm. Normalise pred_cond per sample, project the difference onto it (inner product times the
    # HINT 2: unit vector), subtract to get the orthogonal part. Start from pred_uncond and add w times
    # HINT 2: (orthogonal + eta * parallel).
    # HINT 3: dims = list(range(1, d.ndim)); momentum_buffer.update(d); d = momentum_buffer.running_average;
    # HINT 3: d = d * torch.clamp(r / d.norm(p=2, dim=dims, keepdim=True), max=1.0) (p=2: the default 'fro'
    # HINT 3: norm refuses more than two dims);
    # HINT 3: e = torch.nn.functional.normalize(pred_cond.double(), dim=dims);
    # HINT 3: par = (d.double() * e).sum(dim=dims, keepdim=True) * e; perp = d.double() - par;
    # HINT 3: return pred_uncond + w * (perp.to(d.dtype) + eta * par.to(d.dtype)).
    dims = list(range(1, pred_cond.ndim))  # every dim but the batch one
    update = pred_cond - pred_uncond  # (B, ...) CFG's direction
    if momentum_buffer is not None:
        momentum_buffer.update(update)  # running average <- update + momentum * running average
        update = momentum_buffer.running_average
    if norm_threshold > 0:
        update_norm = update.norm(p=2, dim=dims, keepdim=True)  # (B, 1, ..., 1)
        update = update * torch.minimum(torch.ones_like(update), norm_threshold / update_norm)
    unit = torch.nn.functional.normalize(pred_cond.double(), dim=dims)  # (B, ...) float64, unit norm per sample
    along = (update.double() * unit).sum(dim=dims, keepdim=True) * unit  # projection on pred_cond
    across = update.double() - along  # the orthogonal rest
    along, across = along.to(update.dtype), across.to(update.dtype)  # diffusers casts back before mixing
    return pred_uncond + guidance_scale * (across + eta * along)  # (B, ...)
    # END SOLUTION
