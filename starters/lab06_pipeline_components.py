# Your exercise file for Lab 06: Diffusers Pipeline Components.
#
# Fill in each TODO (replace the `raise NotImplementedError`), save, and run
# `check("lab06")` in notebooks/06_pipeline_components.ipynb (edits are picked up without
# restarting the kernel) or from a shell:
#     python -c "from helpers.exercise import check; check('lab06')"
# Stuck? hint("lab06", "<function name>") shows one more hint per call.
# Until a function passes its check, the notebook uses the reference.

"""Lab 06: `StableDiffusionPipeline` taken apart: text encoding, the starting latents, and the
whole generation loop written out from the pipeline's components.

A diffusers pipeline owns no weights of its own. It is a short program over five components
(`pipe.components`, listed in the folder's `model_index.json`); diffusers' names on the right:

    tokenizer      text -> token ids (B, L), padded/truncated to L = model_max_length
    text_encoder   token ids -> c, the last hidden state (B, L, D)        `prompt_embeds`
    unet           (x_t, t, c) -> eps_hat (B, C, h, w)                    `noise_pred`
    scheduler      (eps_hat, t, x_t) -> x_t', no weights, only a config   `scheduler.step`
    vae            z_0 / scaling_factor -> image (B, 3, H, W), H = f h    `vae.decode`

with f = vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) (8 for SD and
tiny-sd), C = unet.config.in_channels latent channels.

`StableDiffusionPipeline.__call__` (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models"; Ho & Salimans 2022 for the guidance), numbered as in its source:

    3. c = E(prompt), c_0 = E(negative prompt, or "")   both halves, unconditional first: (2B, L, D)
    4. the scheduler's n timesteps t_1 > ... > t_n        (set before step 5 reads init_noise_sigma)
    5. x = init_noise_sigma * eps, eps ~ N(0, I)          latent shape (B, C, H/f, W/f)
    7. at each t_i: the UNet predicts (eps_u, eps_c) from the scheduler's scaled input [x, x] at t_i
       and [c_0, c]; eps = eps_u + w (eps_c - eps_u); the scheduler's step moves the UNSCALED x on.
       image = D(x_0 / scaling_factor), from [-1, 1] to [0, 1], clamped   (D: the VAE decoder)

The functions below are, in order: steps 3, 5 and the whole of it, then step 5 of another
program over the same components, `StableDiffusionImg2ImgPipeline` (which timesteps an image
edited with `strength` runs). Each equals the pipeline's own tensors on the same inputs
(`pipe.encode_prompt`, `pipe.prepare_latents`, `pipe(..., output_type="latent")`,
`retrieve_timesteps` + `StableDiffusionImg2ImgPipeline.get_timesteps`).
"""

import inspect

import torch

__all__ = ["encode_prompt", "prepare_latents", "generate", "img2img_timesteps"]


def encode_prompt(tokenizer, text_encoder, prompts, device):
    """The prompt embeddings c = E(prompt), as `StableDiffusionPipeline.encode_prompt(...)[0]`.

    The tokenizer turns each prompt into ids [BOS, w_1, ..., w_k, EOS, PAD, ..., PAD], always
    of length L = tokenizer.model_max_length (77 for SD's CLIP, 16 for tiny-sd), however short
    or long the prompt (which arguments of the tokenizer call do that: read the pipeline's
    call). The text encoder (CLIP's text
    transformer, Radford et al. 2021) maps them to its LAST hidden state (after the final layer
    norm), one D-vector per position, padding positions included: the UNet cross-attends to all
    L of them (Rombach et al. 2022, eq. 3, with tau_theta(y) = the text encoder). No attention
    mask is passed (SD's text encoder config does not ask for one, and the UNet was trained on
    embeddings made without it). The pooled output is not used by SD 1.x/2.x.

    Args:
        tokenizer: a `CLIPTokenizer` (or any Hugging Face tokenizer with `model_max_length`).
        text_encoder: a `CLIPTextModel`: `text_encoder(input_ids)[0]` is the last hidden state.
        prompts: a list of B strings, or one string (then B = 1).
        device: where the token ids go (the text encoder's device).

    Returns:
        (B, L, D) float tensor on `device` in the text encoder's dtype, L = model_max_length,
        D = text_encoder.config.hidden_size.
    """
    # TODO: the text path of StableDiffusionPipeline.encode_prompt (diffusers/pipelines/stable_diffusion/
    # TODO: pipeline_stable_diffusion.py, clip_skip=None; Rombach et al. 2022, eq. 3): ids of length L, then the
    # TODO: encoder's last hidden state, (B, L, D) on `device` in the encoder's dtype.
    # Stuck? hint("lab06", "encode_prompt") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab06): encode_prompt")


def prepare_latents(batch_size, num_channels, height, width, vae_scale_factor, generator,
                    init_noise_sigma, dtype, device):
    """The starting latents x_T = init_noise_sigma * eps, as `StableDiffusionPipeline.prepare_latents`.

    The denoiser works in the VAE's latent space, f = vae_scale_factor times smaller than the
    image per side (Rombach et al. 2022, Sec. 3.1: x in R^{H x W x 3} -> z in R^{h x w x c},
    f = H / h), so the noise has the LATENT shape (B, C, H // f, W // f), (batch, channels,
    rows, columns): height goes before width.

    eps ~ N(0, I) is drawn from `generator` exactly as diffusers' `randn_tensor` draws it: read
    it for the device it draws on (why does the same seed give the same latents on every
    machine?), the dtype, and what it does with a list of B generators (why does each image
    then depend on its own seed only?).

    `init_noise_sigma` is the std of x_T the scheduler expects: 1 for the DDPM-type
    schedulers (DDPM, DDIM, PNDM, DPM-Solver: x_T = sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps is
    almost pure eps), about sigma_max for the Euler/Karras-type ones (Karras et al. 2022,
    "Elucidating the Design Space...", work with x = x_0 + sigma eps, std sqrt(sigma^2 + 1)):
    `EulerDiscreteScheduler` returns sqrt(sigma_max^2 + 1) for "leading" spacing and sigma_max
    itself for "linspace"/"trailing" (14.6 for SD's schedule), sigma_max being that of the
    FIRST timestep after `set_timesteps`.

    Args:
        batch_size: B.
        num_channels: C, `unet.config.in_channels` (4 for SD).
        height, width: the IMAGE size in pixels (multiples of vae_scale_factor).
        vae_scale_factor: f, 2 ** (len(vae.config.block_out_channels) - 1).
        generator: a `torch.Generator`, a list of B of them, or None (the global RNG).
        init_noise_sigma: `scheduler.init_noise_sigma`, a float or a 0-d tensor.
        dtype: the latents' dtype (the pipeline uses the prompt embeddings' dtype).
        device: where the latents go.

    Returns:
        (B, C, height // f, width // f) tensor of `dtype` on `device`.

    Raises:
        ValueError: a list of generators whose length is not batch_size.
    """
    # TODO: StableDiffusionPipeline.prepare_latents with latents=None and diffusers' randn_tensor
    # TODO: (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py; diffusers/utils/torch_utils.py):
    # TODO: the latent shape, the draw from `generator` (one or a list), the scaling by init_noise_sigma.
    # Stuck? hint("lab06", "prepare_latents") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab06): prepare_latents")


def generate(components, prompt, negative_prompt=None, num_inference_steps=25, guidance_scale=7.5,
             generator=None, height=None, width=None):
    """Text to image with the pipeline's components, the loop of `StableDiffusionPipeline.__call__`
    written out (see the module docstring for the steps). Its latents equal
    `pipe(..., output_type="latent").images` and its images `pipe(..., output_type="pt").images`
    on the same inputs, for any scheduler (DDIM, Euler, DPM++ 2M, ...).

    Classifier-free guidance (Ho & Salimans 2022, eq. 6, diffusers' convention w = 1 + w'):
    eps = eps_u + w (eps_c - eps_u), with ONE UNet forward on the batch [uncond, cond]
    (unconditional first, as the pipeline), and only when w > 1 (`do_classifier_free_guidance`;
    for w <= 1 the pipeline runs the conditional branch alone).

    Per step, `scheduler.scale_model_input(x, t)` is what the UNet sees (the identity for
    DDPM-type schedulers, x / sqrt(sigma_t^2 + 1) for Euler-type ones) while `scheduler.step`
    gets the UNSCALED x_t. Which extra arguments `scheduler.step` gets (and when) is the
    pipeline's `prepare_extra_step_kwargs`: read it (eta keeps its default here, 0).
    The latents live on the UNet's device.

    The decoder undoes the scaling of the latent space (Rombach et al. 2022, Sec. 4.3.2 and
    App. D.1: the latents were multiplied by scaling_factor = 1 / std during training): image =
    vae.decode(x_0 / scaling_factor), in [-1, 1], then mapped to [0, 1] and clamped (the
    pipeline's postprocess).

    Args:
        components: `pipe.components`, a dict with "tokenizer", "text_encoder", "unet",
            "scheduler" and "vae" (other entries are ignored).
        prompt: a string or a list of B strings.
        negative_prompt: None (the empty prompt ""), a string (for every prompt) or a list of B
            strings; used only when guidance_scale > 1. (The pipeline itself takes a string
            negative prompt only with a string prompt: `encode_prompt` raises TypeError when
            their types differ; repeating it for every prompt is this function's extension.)
        num_inference_steps: n, passed to `scheduler.set_timesteps(n)`.
        guidance_scale: w, a float.
        generator: a `torch.Generator` (or a list of B) for the starting noise and the
            scheduler's steps.
        height, width: image size in pixels; None: unet.config.sample_size * f (64 for
            tiny-sd, 512 for SD 1.5), each on its own (the pipeline itself resets both when
            either is missing; the check passes both or neither).

    Returns:
        (images, latents): images (B, 3, height, width) in [0, 1]; latents (B, C, height / f,
        width / f), the final x_0 before decoding.
    """
    # TODO: StableDiffusionPipeline.__call__ written out (diffusers/pipelines/stable_diffusion/
    # TODO: pipeline_stable_diffusion.py, its steps 3, 4, 5, 7 and the decode; Ho & Salimans 2022, eq. 6, as
    # TODO: diffusers writes it), calling your encode_prompt and prepare_latents by name.
    # Stuck? hint("lab06", "generate") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab06): generate")


def img2img_timesteps(scheduler, num_inference_steps, strength, device=None):
    """The timesteps img2img runs for a given `strength`, as step 5 of
    `StableDiffusionImg2ImgPipeline.__call__`: `retrieve_timesteps(scheduler, n, device)` (which
    sets the schedule), then `StableDiffusionImg2ImgPipeline.get_timesteps(n, strength, device)`
    (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion_img2img.py).

    SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
    Differential Equations", Sec. 3): the input image is noised to an intermediate time t_0 and
    the reverse process runs from there. Which of the n steps of `scheduler.set_timesteps(n)`
    img2img runs for strength s, how many, and how diffusers rounds n * s: read `get_timesteps`.

    Two things make this more than slicing a list of n numbers, and both are in the source:
    - `scheduler.timesteps` does not always hold one entry per step (Heun's list has 2 n - 1
      entries, PNDM's n + 1): what does `scheduler.order` change in the slicing?
    - A stateful scheduler counts its steps (`step_index`) and must be told where the run
      begins: with which method, when (`set_timesteps` resets it), and which schedulers have
      no such method and are left as they are?

    Args:
        scheduler: any diffusers scheduler; its schedule is (re)set here, for n steps, on `device`
            (what `retrieve_timesteps` does).
        num_inference_steps: n, an integer >= 1.
        strength: s, a number in (0, 1]: 1 runs the whole schedule, smaller values fewer steps.
        device: where the timesteps go (None: the scheduler's default, the CPU).

    Returns:
        (timesteps, num_steps_run): timesteps, a 1-D tensor, the tail of `scheduler.timesteps`
        (same dtype and device, first entry t_start); num_steps_run, an integer, the number of
        the n steps that are run (k, not the length of `timesteps`). The scheduler is left with
        the full n-step schedule and, where it has `set_begin_index`, its begin index set to
        the position of t_start in `scheduler.timesteps`.
    """
    # TODO: retrieve_timesteps, then StableDiffusionImg2ImgPipeline.get_timesteps (diffusers/pipelines/
    # TODO: stable_diffusion/pipeline_stable_diffusion_img2img.py; SDEdit, Meng et al. 2022, Sec. 3):
    # TODO: set the schedule, keep its last k steps, tell the scheduler where it begins.
    # Stuck? hint("lab06", "img2img_timesteps") in the notebook shows the next hint.
    raise NotImplementedError("TODO(lab06): img2img_timesteps")
