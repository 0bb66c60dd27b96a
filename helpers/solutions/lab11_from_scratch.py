"""Lab 11: train a diffusion model from scratch, in pixel space.

Everything the earlier labs took apart, put back together and trained:

    data      x_0: images of the shapes world at 32x32, in [-1, 1], and a class label per
              image (its colour and shape; label K = num_classes is the NULL label)
    forward   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps       (Lab 01's add_noise,
              Ho et al. 2020, eq. 4)
    model     eps_theta(x_t, t, y): a UNet (Ronneberger et al. 2015, as DDPM uses it, Ho et
              al. 2020 App. B): residual blocks at two or more resolutions, a down path whose
              features are concatenated into the up path (the skips), the sinusoidal timestep
              embedding (Lab 07) through an MLP, plus a learned embedding of the label, ADDED
              inside every residual block
    loss      E_{t, x_0, eps} [ w_t | target - eps_theta(x_t, t, y) |^2 ], t ~ U{0 .. T-1}
              (Ho et al. 2020, eq. 14 for target = eps, w_t = 1); the target is eps, v
              (Salimans & Ho 2022) or x_0; w_t the Min-SNR-gamma weight (Hang et al. 2023)
    CFG       the label replaced by the null label with probability p while training, so one
              network is both eps(x_t, t, y) and eps(x_t, t, null); sampling mixes them:
              eps_u + w (eps_c - eps_u) (Ho & Salimans 2022, eq. 6; Lab 04)
    sampling  a reverse step (Lab 02's DDPM step or Lab 03's DDIM step) over a list of
              timesteps

The exercises, in order: a residual block equal to diffusers' `ResnetBlock2D`, the UNet
around it, the regression target and the Min-SNR weights of diffusers' training scripts, one
training step, and the sampling loop with classifier-free guidance. The solution module is
self-contained: the learner's own Lab 01 / 02 / 03 / 07 functions are passed in as arguments.
"""

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

__all__ = ["ResBlock", "TinyUNet", "diffusion_target", "min_snr_loss_weights", "training_step", "sample_cfg"]


def sinusoidal(timesteps, dim):
    """The default timestep embedding of TinyUNet: diffusers' `get_timestep_embedding` with
    the UNet2DModel's settings (cos half first, frequency shift 0). (B,) -> (B, dim)."""
    return get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class ResBlock(nn.Module):
    """A residual block with a timestep (and label) embedding, equal to diffusers'
    `ResnetBlock2D(in_channels, out_channels, temb_channels=emb_dim, groups=groups, eps=1e-6)`
    (diffusers/models/resnet.py; DDPM's block, Ho et al. 2020 App. B, after Zagoruyko &
    Komodakis 2016): its output, for the same weights, and its parameter names, so that
    `ResnetBlock2D.load_state_dict(block.state_dict())` works (strict).

    The state dict is the contract: the attributes are named as diffusers names them (norm1,
    conv1, time_emb_proj, norm2, conv2, and conv_shortcut, which is None when diffusers'
    block has no shortcut layer), with diffusers' shapes. Which layers those are, their kernel
    sizes and epsilons: `ResnetBlock2D.__init__` for the defaults above (no dropout, no
    up/down-sampling, time_embedding_norm "default"). The order of the operations, where the
    embedding enters and what it goes through first: `ResnetBlock2D.forward`.

    Args:
        in_channels, out_channels: widths (each divisible by groups).
        emb_dim: the width of the embedding given to forward.
        groups: GroupNorm groups.

    forward(x, emb): x (B, in_channels, H, W), emb (B, emb_dim) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels, out_channels, emb_dim, groups=8):
        super().__init__()
        # BEGIN SOLUTION
        # TODO: the layers of diffusers' ResnetBlock2D.__init__ (diffusers/models/resnet.py) for the
        # TODO: default settings, with its attribute names (see the docstring).
        # HINT 1: Read ResnetBlock2D.__init__ in diffusers/models/resnet.py for time_embedding_norm="default",
        # HINT 1: up=down=False, and how it decides use_in_shortcut.
        # HINT 2: Two GroupNorm + 3x3 conv pairs (the first changes the width), one Linear from the embedding
        # HINT 2: width to out_channels, and a 1x1 conv on the input only when the widths differ.
        # HINT 3: norm1 = GroupNorm(groups, in, eps=1e-6); conv1 = Conv2d(in, out, 3, padding=1);
        # HINT 3: time_emb_proj = Linear(emb_dim, out); norm2 = GroupNorm(groups, out, eps=1e-6);
        # HINT 3: conv2 = Conv2d(out, out, 3, padding=1); conv_shortcut = Conv2d(in, out, 1) if in != out else None.
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)  # convention: the docstring's attribute table
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)  # convention: the docstring's attribute table
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        # END SOLUTION

    def forward(self, x, emb):
        # BEGIN SOLUTION
        # TODO: ResnetBlock2D.forward for the default settings: the main path, the embedding added
        # TODO: per channel in the middle of it, and the residual connection.
        # HINT 1: Read ResnetBlock2D.forward (diffusers/models/resnet.py), from the first norm to the division
        # HINT 1: by output_scale_factor (1 here); note what temb goes through before time_emb_proj.
        # HINT 2: norm, SiLU, conv; add the projected embedding (after its own SiLU) as one value per channel;
        # HINT 2: norm, SiLU, conv; add the input, through the 1x1 conv when the widths differ.
        # HINT 3: h = conv1(silu(norm1(x))) + time_emb_proj(silu(emb))[:, :, None, None];
        # HINT 3: h = conv2(silu(norm2(h))); return (x or conv_shortcut(x)) + h.
        h = self.conv1(F.silu(self.norm1(x)))                              # (B, out, H, W)
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]          # one shift per channel
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h
        # END SOLUTION


class TinyUNet(nn.Module):
    """A small class-conditional UNet for pixel-space diffusion, built from ResBlock.

        emb = MLP(time_embedding(t, channels[0])) + label_emb(y)        (B, emb_dim)
        h   = conv_in(x)                                                (B, c_0, H, W)
        down: at each resolution i, ResBlock -> c_i (keep the output as the skip s_i), then
              halve H and W (a stride-2 3x3 conv) except after the last resolution
        mid:  one ResBlock at the lowest resolution
        up:   at each resolution, lowest first, concatenate s_i on the channels, ResBlock
              -> c_i, then double H and W (nearest, then a 3x3 conv) except at the top
        out = conv_out(SiLU(GroupNorm(h)))                              (B, 3, H, W)

    Every ResBlock gets `emb`: the timestep and the label reach every resolution (this is
    how diffusers' UNet2DModel uses `num_class_embeds`: the class embedding is added to the
    timestep embedding). The MLP is Linear(c_0, emb_dim), SiLU, Linear(emb_dim, emb_dim),
    like diffusers' `TimestepEmbedding`.

    Args:
        num_classes: K real labels 0 .. K-1; label K is the null label (CFG), so the label
            embedding has K + 1 rows.
        channels: widths c_0, c_1, ... of the resolutions (each divisible by `groups`).
        emb_dim: width of the time + label embedding.
        time_embedding: a function (timesteps (B,), dim) -> (B, dim), the sinusoidal
            embedding, kept as the attribute `time_embedding` and used by forward; None means
            `sinusoidal` (this module's: diffusers' get_timestep_embedding with
            flip_sin_to_cos=True, downscale_freq_shift=0, i.e. Lab 07's timestep_embedding
            with those arguments).
        groups: GroupNorm groups.

    forward(x, t, labels): x (B, 3, H, W), H and W divisible by 2^(len(channels) - 1);
    t (B,) long or float; labels (B,) long in 0 .. K. Returns (B, 3, H, W).
    """

    def __init__(self, num_classes, channels=(32, 64), emb_dim=128, time_embedding=None, groups=8):
        super().__init__()
        # BEGIN SOLUTION
        # TODO: the layers of the docstring's diagram: the embedding MLP and the label table, conv_in, a
        # TODO: ResBlock (+ downsampling conv) per resolution, the middle block, the up path's ResBlocks
        # TODO: (+ upsampling convs) whose inputs are wider by the skip, and the output head.
        # HINT 1: Compare with UNet2DModel.__init__ (diffusers/models/unets/unet_2d.py): time_proj,
        # HINT 1: time_embedding, class_embedding, conv_in, down_blocks, mid_block, up_blocks, conv_norm_out, conv_out.
        # HINT 2: Keep the layers in nn.ModuleList's so their parameters are registered; the up path runs over
        # HINT 2: the widths in reverse, and its ResBlock at resolution i takes (width coming up) + c_i channels.
        # HINT 3: time_mlp = Sequential(Linear(c0, emb_dim), SiLU(), Linear(emb_dim, emb_dim));
        # HINT 3: label_emb = Embedding(K + 1, emb_dim); down[i] = ResBlock(prev, c_i); downsample = Conv2d(c, c, 3, 2, 1);
        # HINT 3: up[i] = ResBlock(prev + c_i, c_i); upsample conv = Conv2d(c, c, 3, padding=1); head: GroupNorm, Conv2d(c0, 3, 3, padding=1).
        self.time_embedding = time_embedding or sinusoidal                  # convention: the docstring's default
        c = list(channels)
        self.time_mlp = nn.Sequential(nn.Linear(c[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(3, c[0], kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = c[0]
        for i, ch in enumerate(c):
            self.down.append(ResBlock(prev, ch, emb_dim, groups))
            if i < len(c) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, kernel_size=3, stride=2, padding=1))
            prev = ch
        self.mid = ResBlock(prev, prev, emb_dim, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(c))):
            self.up.append(ResBlock(prev + ch, ch, emb_dim, groups))       # + the skip's channels
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, kernel_size=3, padding=1))
            prev = ch
        self.norm_out = nn.GroupNorm(groups, c[0])
        self.conv_out = nn.Conv2d(c[0], 3, kernel_size=3, padding=1)
        # END SOLUTION

    def forward(self, x, t, labels):
        # BEGIN SOLUTION
        # TODO: the docstring's diagram: one embedding of t and the labels, then down (keeping each
        # TODO: resolution's output), middle, up (concatenating the matching skip), head.
        # HINT 1: UNet2DModel.forward (diffusers/models/unets/unet_2d.py) does the same with blocks: its steps 1
        # HINT 1: (time), 2 (pre-process), 3 (down, collecting res_samples), 4 (mid), 5 (up), 6 (post-process).
        # HINT 2: Embed t with self.time_embedding at width c_0 (cast to x's dtype), through the MLP, plus the label
        # HINT 2: table's row; keep a list of skips on the way down, pop it on the way up; cat on dim 1.
        # HINT 3: emb = time_mlp(time_embedding(t, c0).to(x.dtype)) + label_emb(labels); for each level: h = down[i](h, emb);
        # HINT 3: skips.append(h); h = downsample[i](h); ... h = up[j](cat([h, skips.pop()], 1), emb);
        # HINT 3: h = upsample[j](interpolate(h, scale_factor=2)); return conv_out(silu(norm_out(h))).
        c0 = self.conv_in.out_channels
        t = t.expand(x.shape[0]) if t.dim() == 0 else t                   # convention: one t for all
        emb = self.time_mlp(self.time_embedding(t, c0).to(x.dtype)) + self.label_emb(labels)   # (B, emb_dim)
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)                                  # H, W halved
        h = self.mid(h, emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
        # END SOLUTION


def diffusion_target(sample, noise, timesteps, alphas_cumprod, prediction_type):
    """The regression target of diffusion training, as diffusers' training scripts compute it
    ("Get the target for loss depending on the prediction type" in
    examples/text_to_image/train_text_to_image.py, a file of diffusers' repository, not of the
    installed package; the page says what it does). One target per prediction type:

        "epsilon"       what the model should predict for eps-prediction (Ho et al. 2020, eq. 14)
        "v_prediction"  v (Salimans & Ho 2022, sec. 4), exactly as the installed
                        `DDPMScheduler.get_velocity` computes it (read it: the dtype, device and
                        broadcasting of abar_t matter as much as the formula)
        "sample"        x_0-prediction's target

    Any other prediction_type raises ValueError (as the script does).

    Args:
        sample: (B, ...) x_0.
        noise: (B, ...) eps, same shape.
        timesteps: (B,) long.
        alphas_cumprod: (T,) the schedule's abar, float32.
        prediction_type: "epsilon", "v_prediction" or "sample".

    Returns:
        (B, ...) the target, same shape, dtype and device as sample (checked in float64 too,
        to 1e-10: compute it in the sample's dtype, as get_velocity does).
    """
    # BEGIN SOLUTION
    # TODO: the three cases of the training script (see the docstring), v exactly as
    # TODO: DDPMScheduler.get_velocity computes it (diffusers/schedulers/scheduling_ddpm.py).
    # HINT 1: Read the "Get the target for loss" lines of examples/text_to_image/train_text_to_image.py and
    # HINT 1: DDPMScheduler.get_velocity (it is Lab 02's get_velocity).
    # HINT 2: Return the noise or the sample as they are; for v, take abar per sample (cast and moved first),
    # HINT 2: give it trailing size-1 dimensions, combine noise and sample; raise for an unknown type.
    # HINT 3: a = alphas_cumprod.to(sample)[timesteps].view(-1, 1, ..., 1); v = a.sqrt() * noise - (1 - a).sqrt() * sample.
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return sample
    if prediction_type != "v_prediction":
        raise ValueError(f"Unknown prediction type {prediction_type}")
    abar = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timesteps.to(sample.device)]   # (B,)
    abar = abar.reshape(-1, *([1] * (sample.dim() - 1)))                   # (B, 1, ..., 1)
    return abar.sqrt() * noise - (1 - abar).sqrt() * sample
    # END SOLUTION


def min_snr_loss_weights(timesteps, alphas_cumprod, gamma, prediction_type):
    """Min-SNR-gamma loss weights (Hang et al. 2023, sec. 3.4), per sample, as diffusers'
    text-to-image training example applies them (its `if args.snr_gamma` branch).

    Min-SNR-gamma's idea, in x_0 terms: the loss of sample i should be its x_0 error
    |x_0 - x0_hat|^2 times min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t) as
    `diffusers.training_utils.compute_snr` computes it (Lab 01's snr). But the model is
    trained on another target, and for each target the plain MSE already equals the x_0 error
    times some factor of SNR_t. Work that factor out for each prediction type (write x0_hat in
    terms of the predicted eps, of the predicted v, or of itself; Lab 02's pred_original_sample
    has all three), and return the weight that turns the plain MSE into the Min-SNR loss.
    (diffusers' example gives "sample" the weight min(SNR_t, gamma) too.)

    Args:
        timesteps: (B,) long.
        alphas_cumprod: (T,) abar_0 .. abar_{T-1}, float32.
        gamma: a positive number (5 in the paper).
        prediction_type: "epsilon", "v_prediction" or "sample".

    Returns:
        (B,) float32 weights, on timesteps' device.
    """
    # BEGIN SOLUTION
    # TODO: SNR_t as compute_snr does (diffusers/training_utils.py), then the example's weights
    # TODO: for each prediction type (see the docstring).
    # HINT 1: Read compute_snr in diffusers/training_utils.py (installed), then write x0_hat from a predicted eps
    # HINT 1: (Lab 02's pred_original_sample): x0 - x0_hat is a multiple of eps - eps_hat. Square that multiple.
    # HINT 2: SNR_t = abar_t / (1 - abar_t) per sample (float32, on the timesteps' device); clamp it at gamma
    # HINT 2: from above; divide by SNR_t (epsilon), by SNR_t + 1 (v) or by nothing (sample).
    # HINT 3: a = alphas_cumprod.to(timesteps.device)[timesteps].float(); snr = a / (1 - a);
    # HINT 3: w = snr.clamp(max=gamma); w / snr or w / (snr + 1).
    acp = alphas_cumprod.to(timesteps.device)
    alpha = acp[timesteps].float().sqrt()
    sigma = (1.0 - acp[timesteps]).float().sqrt()
    snr = (alpha / sigma) ** 2                                             # (B,) as compute_snr
    clipped = torch.minimum(snr, torch.full_like(snr, float(gamma)))
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"Unknown prediction type {prediction_type}")
    # END SOLUTION


def training_step(model, x0, labels, alphas_cumprod, add_noise, generator, p_uncond=0.1, null_label=None,
                  prediction_type="epsilon", snr_gamma=None):
    """One diffusion training loss (no optimiser step): DDPM's Algorithm 1 (Ho et al. 2020)
    with a prediction type, Min-SNR weights and label dropout for classifier-free guidance
    (Ho & Salimans 2022, Algorithm 1). Random numbers, drawn from `generator` in THIS order
    (so a check can repeat them):

        1. t ~ U{0 .. T-1}, one per sample         (B,) integers
        2. eps ~ N(0, I), x0's shape
        3. u ~ U[0, 1), one per sample             (B,); sample i gets the null label where
                                                   u_i < p_uncond

    The rest is DDPM's Algorithm 1 with your own pieces: the noisy images by the given
    `add_noise` (Lab 01), the model's prediction on the labels after dropout, your
    diffusion_target, and the squared error. Its reduction is that of diffusers' training
    example with snr_gamma set: one mean squared error per sample, weighted by your
    min_snr_loss_weights (no weights when snr_gamma is None), then the batch mean.

    Args:
        model: a callable model(x_t, t, labels) -> (B, C, H, W) (a TinyUNet, or a UNet2DModel
            wrapped to return .sample).
        x0: (B, C, H, W) clean images.
        labels: (B,) long class labels (not modified).
        alphas_cumprod: (T,) float32; T = len(alphas_cumprod).
        add_noise: add_noise(original_samples, noise, timesteps, alphas_cumprod) -> x_t (Lab 01).
        generator: a torch.Generator (CPU), the only source of randomness.
        p_uncond: probability of the null label.
        null_label: the null label's index (required when p_uncond > 0).
        prediction_type: "epsilon", "v_prediction" or "sample".
        snr_gamma: None, or gamma for Min-SNR weights.

    Returns:
        a 0-dim tensor, the loss, differentiable with respect to the model's parameters.
    """
    # BEGIN SOLUTION
    # TODO: the docstring's recipe: the three draws in that order, the noisy images with the given
    # TODO: add_noise, the prediction on the (partly dropped) labels, the target, the weighted MSE.
    # HINT 1: diffusers' examples/text_to_image/train_text_to_image.py, the body of `for step, batch in
    # HINT 1: enumerate(train_dataloader)`, from "Sample noise" to "loss = loss.mean()".
    # HINT 2: Draw on the CPU with the generator, then move to x0's device; drop labels into a copy; compute the
    # HINT 2: per-sample MSE (mean over all but the batch), multiply by the weights (when snr_gamma), average.
    # HINT 3: t = randint(0, T, (B,)); eps = randn(x0.shape); drop = rand(B) < p_uncond; y = where(drop, null, labels);
    # HINT 3: per = ((model(add_noise(x0, eps, t, acp), t, y) - target) ** 2).mean(dim=(1, 2, 3)); loss = (w * per).mean().
    B = x0.shape[0]
    t = torch.randint(0, alphas_cumprod.shape[0], (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    drop = (torch.rand(B, generator=generator) < p_uncond).to(labels.device)
    if p_uncond > 0:
        labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    noisy = add_noise(x0, noise, t, alphas_cumprod)
    pred = model(noisy, t, labels)
    target = diffusion_target(x0, noise, t, alphas_cumprod, prediction_type)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)   # (B,)
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_loss_weights(t, alphas_cumprod, snr_gamma, prediction_type)
    return per_sample.mean()
    # END SOLUTION


@torch.no_grad()
def sample_cfg(model, x_T, labels, timesteps, step, guidance_scale, null_label):
    """Sampling with classifier-free guidance: the denoising loop of a diffusers pipeline
    (StableDiffusionPipeline.__call__, "7. Denoising loop"), written out for a class-conditional
    pixel model, with the guidance of Lab 04 (Ho & Salimans 2022, eq. 6) and the reverse update
    `step` given to you (Lab 03's DDIM step or Lab 02's DDPM step with the schedule bound in:
    step(model_output, timestep, prev_timestep, sample) -> x at prev_timestep). The update
    after the last timestep goes to prev_timestep -1, as Lab 03's steps expect. The pipeline
    evaluates the two predictions a timestep needs in one model call; so may you (the check
    accepts both, the numbers are the same).

    Args:
        model: model(x (N, C, H, W), t (N,) long, labels (N,) long) -> (N, C, H, W).
        x_T: (B, C, H, W) the starting noise.
        labels: (B,) long class labels.
        timesteps: (S,) long, descending (e.g. Lab 03's ddim_timesteps).
        step: the reverse update, as above (t and t' given as Python ints).
        guidance_scale: w (1: conditional only; 0: unconditional only).
        null_label: the null label's index.

    Returns:
        (B, C, H, W) the sample after the last step.
    """
    # BEGIN SOLUTION
    # TODO: the loop of the docstring: both predictions of a timestep in one call, the guided
    # TODO: combination (Lab 04), then the given step to the next timestep (-1 after the last).
    # HINT 1: StableDiffusionPipeline.__call__ (diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py),
    # HINT 1: "7. Denoising loop": torch.cat([latents] * 2), noise_pred.chunk(2), the guidance line, scheduler.step.
    # HINT 2: For each index i: double the batch (x twice; the labels and the null labels), one model call with
    # HINT 2: t repeated, split the output, guide, and call step with ints t and t' (timesteps[i + 1] or -1).
    # HINT 3: out = model(cat([x, x]), full((2B,), t), cat([null, labels])); eps_u, eps_c = out.chunk(2);
    # HINT 3: x = step(eps_u + w * (eps_c - eps_u), int(t), int(timesteps[i + 1]) if i + 1 < S else -1, x).
    x = x_T
    null = torch.full_like(labels, null_label)
    steps = [int(s) for s in timesteps]
    for i, t in enumerate(steps):
        prev_t = steps[i + 1] if i + 1 < len(steps) else -1
        t_batch = torch.full((2 * x.shape[0],), t, dtype=torch.long, device=x.device)
        eps_u, eps_c = model(torch.cat([x, x]), t_batch, torch.cat([null, labels])).chunk(2)
        eps = torch.lerp(eps_u, eps_c, guidance_scale)                     # eps_u + w (eps_c - eps_u)
        x = step(eps, t, prev_t, x)
    return x
    # END SOLUTION
