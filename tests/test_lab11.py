"""Lab 11 (train from scratch): the reference equals diffusers, passes its checks, and every
check is proven able to fail: each planted bug below fails with its specific hint; equivalent
correct forms pass."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.training_utils import compute_snr
from torch import nn

from helpers.checks import lab11_from_scratch as checks
from helpers.solutions import lab02_denoising_step as lab02
from helpers.solutions import lab03_scheduler_reading as lab03
from helpers.solutions import lab11_from_scratch as ref
from labtools import checker

SEEDS = [0, 1, 2, 3, 7, 123, 2024]
run, fails = checker(checks)


# --------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("cin,cout", [(8, 16), (16, 16), (24, 8)])
def test_resblock_equals_resnetblock2d(cin, cout):
    torch.manual_seed(0)
    mine = ref.ResBlock(cin, cout, 20, groups=8)
    theirs = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=20, groups=8, eps=1e-6)
    theirs.load_state_dict(mine.state_dict())
    x, e = torch.randn(2, cin, 6, 5), torch.randn(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(mine(x, e), theirs(x, e), atol=1e-6, rtol=1e-5)


def test_resblock_is_the_block_inside_unet2dmodel():
    """A UNet2DModel ResNet block is a ResBlock (UNet2DModel builds them with its norm_eps, 1e-5 by default)."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, norm_eps=1e-6,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    block = unet.down_blocks[1].resnets[0]
    mine = ref.ResBlock(16, 32, block.time_emb_proj.in_features, groups=8)
    mine.load_state_dict(block.state_dict())
    x, e = torch.randn(2, 16, 8, 8), torch.randn(2, block.time_emb_proj.in_features)
    with torch.no_grad():
        torch.testing.assert_close(mine(x, e), block(x, e), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_target_and_weights_equal_the_training_script(ptype):
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    t = torch.tensor([0, 1, 250, 999])
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    target = {"epsilon": eps, "sample": x0, "v_prediction": sched.get_velocity(x0, eps, t)}[ptype]
    assert torch.equal(ref.diffusion_target(x0, eps, t, sched.alphas_cumprod, ptype), target)
    snr = compute_snr(sched, t)
    w = torch.stack([snr, 5.0 * torch.ones_like(t)], dim=1).min(dim=1)[0]
    w = {"epsilon": w / snr, "v_prediction": w / (snr + 1), "sample": w}[ptype]
    torch.testing.assert_close(ref.min_snr_loss_weights(t, sched.alphas_cumprod, 5.0, ptype), w, atol=0, rtol=1e-6)


def test_sample_cfg_with_lab03_ddim_step_equals_ddimscheduler():
    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    sched.set_timesteps(6)
    torch.manual_seed(0)
    model = checks._Toy(4, 1000).eval()
    x, y = torch.randn(3, 3, 6, 6), torch.tensor([0, 3, 1])
    acp = sched.alphas_cumprod

    def step(eps, t, prev_t, x):
        return lab03.ddim_step(eps, t, prev_t, x, acp, sched.final_alpha_cumprod)

    got = ref.sample_cfg(model, x, y, sched.timesteps, step, 3.0, 4)
    exp = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            tb = torch.full((3,), int(t))
            e_u, e_c = model(exp, tb, torch.full_like(y, 4)), model(exp, tb, y)
            exp = sched.step(e_u + 3.0 * (e_c - e_u), t, exp).prev_sample
    torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)


def test_sample_cfg_runs_lab02_ddpm_steps():
    """With Lab 02's DDPM step over all T timesteps the loop is DDPM's Algorithm 2 with CFG."""
    sched = DDPMScheduler(num_train_timesteps=20, clip_sample=False)
    torch.manual_seed(0)
    model = checks._Toy(2, 20).eval()
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    z = torch.randn(20, 2, 3, 4, 4)

    def step(eps, t, prev_t, x):
        return lab02.ddpm_step(eps, t, prev_t, x, sched.alphas_cumprod, z[t])

    got = ref.sample_cfg(model, x, y, torch.arange(19, -1, -1), step, 2.0, 2)
    exp = x.clone()
    with torch.no_grad():
        for t in range(19, -1, -1):
            tb = torch.full((2,), t)
            e_u, e_c = model(exp, tb, torch.full_like(y, 2)), model(exp, tb, y)
            exp = lab02.ddpm_step(e_u + 2.0 * (e_c - e_u), t, t - 1, exp, sched.alphas_cumprod, z[t])
    torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ref.__all__)
def test_reference_passes_every_seed(name):
    for seed in SEEDS:
        run(name, getattr(ref, name), seed)


def test_training_step_lowers_the_loss_of_a_tinyunet():
    """A few optimiser steps on one batch: the reference pieces train (the loss falls)."""
    torch.manual_seed(0)
    model = ref.TinyUNet(3, channels=(8, 16), emb_dim=16, groups=4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    acp = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    x0, y = torch.rand(8, 3, 8, 8) * 2 - 1, torch.randint(0, 3, (8,))
    losses = []
    for i in range(40):
        loss = ref.training_step(model, x0, y, acp, lab02_add_noise, torch.Generator().manual_seed(i % 4),
                                 p_uncond=0.1, null_label=3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])


def lab02_add_noise(x0, eps, t, acp):
    a = acp.to(x0)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


# --------------------------------------------------------------------------- planted bugs: ResBlock

def resblock_bug(bug):
    class Block(nn.Module):
        def __init__(self, in_channels, out_channels, emb_dim, groups=8):
            super().__init__()
            eps = 1e-5 if bug == "eps" else 1e-6
            self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
            self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            name = "emb_proj" if bug == "names" else "time_emb_proj"
            setattr(self, name, nn.Linear(emb_dim, out_channels))
            self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            always = bug == "always_shortcut"
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels or always \
                else None

        def forward(self, x, emb):
            proj = getattr(self, "emb_proj", None) or self.time_emb_proj
            h = self.conv1(F.silu(self.norm1(x)))
            e = proj(emb if bug == "no_emb_act" else F.silu(emb))[:, :, None, None]
            if bug != "late_emb":
                h = h + e
            h = self.conv2(F.silu(self.norm2(h)))
            if bug == "late_emb":
                h = h + e
            if bug == "no_residual":
                return h
            return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h
    return Block


def test_resblock_independent_form_passes():
    for seed in SEEDS:
        run("ResBlock", resblock_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_emb_act", "SiLU before time_emb_proj"),
    ("late_emb", "added after conv1"),
    ("no_residual", "the input (through conv_shortcut"),
    ("names", "Missing: ['time_emb_proj"),
    ("always_shortcut", "not in ResnetBlock2D: ['conv_shortcut"),
    ("eps", "eps=1e-6"),
])
def test_resblock_bugs(bug, phrase):
    fails("ResBlock", resblock_bug(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: TinyUNet

def unet_bug(bug):
    class UNet(ref.TinyUNet):
        def forward(self, x, t, labels):
            c0 = self.conv_in.out_channels
            temb = (ref.sinusoidal(t, c0) if bug == "own_embedding" else self.time_embedding(t, c0))
            emb = self.time_mlp(temb)
            if bug != "no_label":
                emb = emb + self.label_emb(labels)
            if bug == "no_time":
                emb = self.label_emb(labels) + 0 * self.time_mlp(temb)
            h = self.conv_in(x)
            skips = []
            for i, block in enumerate(self.down):
                h = block(h, emb)
                skips.append(h)
                if i < len(self.downsample):
                    h = self.downsample[i](h) if bug != "no_down" else h + 0 * self.downsample[i](h).mean()
            h = self.mid(h, emb)
            for j, block in enumerate(self.up):
                s = skips.pop()
                h = block(torch.cat([h, s], dim=1), emb)
                if j < len(self.upsample):
                    up = F.interpolate(h, scale_factor=2.0) if bug != "no_down" else h
                    h = self.upsample[j](up)
            return self.conv_out(F.silu(self.norm_out(h)))
    return UNet


class NoSkipUNet(nn.Module):
    """Down and up paths without skips (the up blocks take only what comes up)."""

    def __init__(self, num_classes, channels=(32, 64), emb_dim=128, time_embedding=None, groups=8):
        super().__init__()
        self.time_embedding = time_embedding or ref.sinusoidal
        c = list(channels)
        self.c0 = c[0]
        self.time_mlp = nn.Sequential(nn.Linear(c[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(3, c[0], 3, padding=1)
        self.down = nn.ModuleList([ref.ResBlock(a, b, emb_dim, groups) for a, b in zip([c[0]] + c[:-1], c)])
        self.mid = ref.ResBlock(c[-1], c[-1], emb_dim, groups)
        self.up = nn.ModuleList([ref.ResBlock(b, a, emb_dim, groups) for a, b in zip(c[:-1], c[1:])][::-1]
                                + [ref.ResBlock(c[0], c[0], emb_dim, groups)])
        self.conv_out = nn.Conv2d(c[0], 3, 3, padding=1)

    def forward(self, x, t, labels):
        emb = self.time_mlp(self.time_embedding(t, self.c0)) + self.label_emb(labels)
        h = self.conv_in(x)
        for i, b in enumerate(self.down):
            h = b(h, emb)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        for i, b in enumerate(self.up):
            h = b(h, emb)
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2.0)
        return self.conv_out(h)


class ZeroHeadUNet(ref.TinyUNet):
    """A correct UNet whose output conv starts at zero (as some implementations do)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)


def test_tinyunet_equivalent_forms_pass():
    for seed in SEEDS:
        run("TinyUNet", ZeroHeadUNet, seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_label", "label_emb.weight"),
    ("no_time", "get no gradient"),
    ("own_embedding", "time_embedding function given to __init__ was never called"),
    ("no_down", "smallest resolution"),
])
def test_tinyunet_bugs(bug, phrase):
    fails("TinyUNet", unet_bug(bug), phrase)


def test_tinyunet_without_skips_fails():
    fails("TinyUNet", NoSkipUNet, "concatenation of its input and the matching skip")


# --------------------------------------------------------------------------- planted bugs: targets, weights

def target_bug(bug):
    def fn(sample, noise, timesteps, alphas_cumprod, prediction_type):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(prediction_type)
        if prediction_type == "epsilon":
            return sample if bug == "swap" else noise
        if prediction_type == "sample":
            return noise if bug == "swap" else sample
        a = (alphas_cumprod.to(sample.device) if bug == "float32_abar" else alphas_cumprod.to(sample))[timesteps]
        while a.dim() < sample.dim():
            a = a.unsqueeze(-1)
        if bug == "sign":
            return a.sqrt() * sample - (1 - a).sqrt() * noise
        if bug == "no_sqrt":
            return a * noise - (1 - a) * sample
        return a.sqrt() * noise - (1 - a).sqrt() * sample
    return fn


def test_diffusion_target_equivalent_form_passes():
    for seed in SEEDS:
        run("diffusion_target", target_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [("swap", "they are swapped"), ("sign", "sign or the order"),
                                        ("no_sqrt", "square roots"), ("float32_abar", "abar_t stayed float32")])
def test_diffusion_target_bugs(bug, phrase):
    fails("diffusion_target", target_bug(bug), phrase)


def test_diffusion_target_must_raise_on_unknown_type():
    def fn(sample, noise, timesteps, alphas_cumprod, prediction_type):
        return ref.diffusion_target(sample, noise, timesteps, alphas_cumprod, prediction_type) \
            if prediction_type in ("epsilon", "v_prediction", "sample") else noise
    fails("diffusion_target", fn, "expected a ValueError")


def snr_bug(bug):
    def fn(timesteps, alphas_cumprod, gamma, prediction_type):
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(prediction_type)
        a = alphas_cumprod[timesteps].double()
        snr = a / (1 - a)
        if bug == "no_square":
            snr = snr.sqrt()
        w = snr.clamp(min=gamma) if bug == "max" else snr.clamp(max=gamma)
        if bug == "no_min":
            w = torch.full_like(snr, gamma)
        div = {"epsilon": snr, "v_prediction": snr + 1, "sample": 1}[prediction_type]
        if bug == "v_as_eps" and prediction_type == "v_prediction":
            div = snr
        return (w / div).float()
    return fn


def test_min_snr_equivalent_form_passes():
    """float64 SNR from abar / (1 - abar), torch.clamp instead of the stacked min."""
    for seed in SEEDS:
        run("min_snr_loss_weights", snr_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [("max", "not max"), ("v_as_eps", "SNR_t + 1"),
                                        ("no_square", "not squared"), ("no_min", "the min with SNR_t is missing")])
def test_min_snr_bugs(bug, phrase):
    fails("min_snr_loss_weights", snr_bug(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: training_step

def step_bug(bug):
    def fn(model, x0, labels, alphas_cumprod, add_noise, generator, p_uncond=0.1, null_label=None,
           prediction_type="epsilon", snr_gamma=None):
        B, T = x0.shape[0], len(alphas_cumprod)
        t = torch.randint(1 if bug == "t_from_1" else 0, T, (B,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        u = torch.rand(B, generator=generator)
        y = labels.clone()
        if bug == "in_place":
            y = labels
        if bug != "no_drop":
            y[(u >= p_uncond) if bug == "drop_inverted" else (u < p_uncond)] = null_label
        xt = add_noise(x0, noise, t, alphas_cumprod) if bug != "own_noise" else \
            lab02_add_noise(x0, noise, t, alphas_cumprod)
        pred = model(xt, t, y)
        target = ref.diffusion_target(x0, noise, t, alphas_cumprod, "epsilon" if bug == "eps_target" else prediction_type)
        w = torch.ones(B) if snr_gamma is None or bug == "no_weights" else \
            ref.min_snr_loss_weights(t, alphas_cumprod, snr_gamma, prediction_type)
        loss = (w[:, None, None, None] * (pred - target) ** 2).mean()       # the same mean, another order
        return loss.detach() if bug == "detached" else loss
    return fn


def test_training_step_equivalent_form_passes():
    for seed in SEEDS:
        run("training_step", step_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_drop", "no label is replaced"),
    ("drop_inverted", "not where u >= p_uncond"),
    ("no_weights", "multiplied by its Min-SNR weight"),
    ("eps_target", "depends on the prediction type"),
    ("t_from_1", "not from 1"),
    ("own_noise", "add_noise given as an argument was never called"),
    ("in_place", "changed x0, labels or alphas_cumprod in place"),
    ("detached", "no gradient"),
])
def test_training_step_bugs(bug, phrase):
    fails("training_step", step_bug(bug), phrase)


# --------------------------------------------------------------------------- planted bugs: sample_cfg

def cfg_bug(bug):
    @torch.no_grad()
    def fn(model, x_T, labels, timesteps, step, guidance_scale, null_label):
        x = x_T.clone()
        null = torch.full_like(labels, null_label)
        ts = [int(t) for t in timesteps]
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            if bug == "prev_minus_one":
                prev = t - 1
            if bug == "last_prev_zero" and i + 1 == len(ts):
                prev = 0
            tb = torch.full((x.shape[0],), t)
            e_c, e_u = model(x, tb, labels), model(x, tb, null)       # two calls: also correct
            if bug == "reversed":
                e_c, e_u = e_u, e_c
            eps = e_c if bug == "no_guidance" else e_u + guidance_scale * (e_c - e_u)
            x = step(eps, t, prev, x)
        return x
    return fn


def test_sample_cfg_two_calls_form_passes():
    for seed in SEEDS:
        run("sample_cfg", cfg_bug(None), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("reversed", "pushes away from the unconditional"),
    ("no_guidance", "only the conditional prediction"),
    ("prev_minus_one", "t' is the next timestep"),
    ("last_prev_zero", "-1 after the last"),
])
def test_sample_cfg_bugs(bug, phrase):
    fails("sample_cfg", cfg_bug(bug), phrase)


@pytest.mark.parametrize("name", ["diffusion_target", "min_snr_loss_weights", "sample_cfg"])
def test_hard_coded_answer_fails(name):
    def fn(*args, **kwargs):
        return torch.zeros(2)
    with pytest.raises(checks.CheckFailed):
        run(name, fn, 0)


def test_check_schedules_have_no_clipping():
    """DDPMScheduler's default clip_sample=True would clip x_0 in the comparison loop."""
    _, sched = checks._schedule(torch.Generator().manual_seed(0))
    assert sched.config.clip_sample is False
