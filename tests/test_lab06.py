"""Lab 06 (pipeline components): the reference equals the pipeline on tiny-sd (its prompt
embeddings, starting latents, and the whole loop for DDIM, Euler and DPM++ 2M and more), passes
its checks, and every check is proven able to fail: each planted bug below fails with its
specific hint."""
from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from helpers.checks import lab06_pipeline_components as checks
from labtools import checker
from helpers.checks._core import CheckFailed
from helpers.evaluate import make_scheduler
from helpers.solutions import lab06_pipeline_components as ref

SEEDS = [0, 1, 2, 7]
NAMES = ["encode_prompt", "prepare_latents", "generate", "img2img_timesteps"]


run, fails = checker(checks)  # tests/labtools.py


@pytest.fixture(scope="module")
def pipe():
    return checks._tiny_sd()


# --------------------------------------------------------------------------- the reference

def test_encode_prompt_equals_pipeline(pipe):
    for prompts in (["a large red circle at the top left", "blue"], "", ["a b c " * 10]):
        with torch.no_grad():
            theirs = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)[0]
        mine = ref.encode_prompt(pipe.tokenizer, pipe.text_encoder, prompts, "cpu")
        assert mine.shape[1] == pipe.tokenizer.model_max_length
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("sigma", [1.0, 14.6, torch.tensor(3.25)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prepare_latents_equals_pipeline(pipe, sigma, dtype):
    for gens in (lambda: torch.Generator().manual_seed(3), lambda: [torch.Generator().manual_seed(s) for s in (4, 5)]):
        stand_in = type("S", (), {"vae_scale_factor": 8, "scheduler": type("T", (), {"init_noise_sigma": sigma})})
        theirs = StableDiffusionPipeline.prepare_latents(stand_in, 2, 4, 48, 80, dtype, torch.device("cpu"), gens())
        mine = ref.prepare_latents(2, 4, 48, 80, 8, gens(), sigma, dtype, "cpu")
        assert mine.shape == (2, 4, 6, 10) and mine.dtype == dtype
        assert torch.equal(mine, theirs)


def test_prepare_latents_per_sample_generators_do_not_depend_on_the_batch():
    one = ref.prepare_latents(1, 4, 64, 64, 8, [torch.Generator().manual_seed(9)], 1.0, torch.float32, "cpu")
    two = ref.prepare_latents(2, 4, 64, 64, 8, [torch.Generator().manual_seed(s) for s in (1, 9)], 1.0,
                              torch.float32, "cpu")
    assert torch.equal(one[0], two[1])
    with pytest.raises(ValueError):
        ref.prepare_latents(3, 4, 64, 64, 8, [torch.Generator()] * 2, 1.0, torch.float32, "cpu")


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler", "DPM++ 2M", "PNDM", "Euler a", "UniPC"])
def test_generate_equals_pipeline(pipe, scheduler):
    """Latents within 1e-4 of pipe(..., output_type="latent") (in fact bit for bit), images equal
    to the pipeline's output_type="pt", with a negative prompt, a non-square size and CFG on;
    and with guidance 1 (CFG off)."""
    prompts = ["a large red circle at the top left", "a small blue square at the center"]
    for negative, w, size in ((["green", "a triangle"], 6.5, (32, 64)), (None, 1.0, (64, 64))):
        sd = StableDiffusionPipeline(**dict(pipe.components, scheduler=make_scheduler(scheduler, pipe.scheduler.config)),
                                     requires_safety_checker=False)
        sd.set_progress_bar_config(disable=True)
        kw = dict(negative_prompt=negative, num_inference_steps=5, guidance_scale=w, height=size[0], width=size[1])
        lat = sd(prompts, generator=torch.Generator().manual_seed(11), output_type="latent", **kw).images
        img = sd(prompts, generator=torch.Generator().manual_seed(11), output_type="pt", **kw).images
        comps = dict(pipe.components, scheduler=make_scheduler(scheduler, pipe.scheduler.config))
        images, latents = ref.generate(comps, prompts, negative, 5, w, torch.Generator().manual_seed(11), *size)
        torch.testing.assert_close(latents, lat, atol=1e-4, rtol=1e-4)
        assert torch.equal(latents, lat) and torch.equal(images, img)


def test_generate_default_size_is_the_unets(pipe):
    comps = dict(pipe.components, scheduler=make_scheduler("DDIM", pipe.scheduler.config))
    images, latents = ref.generate(comps, "a red circle", None, 2, 5.0, torch.Generator().manual_seed(0))
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    assert latents.shape == (1, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    assert images.shape == (1, 3, pipe.unet.config.sample_size * f, pipe.unet.config.sample_size * f)
    assert 0 <= images.min() and images.max() <= 1


def test_checks_leave_global_random_state_and_tiny_sd_alone(pipe):
    state = torch.random.get_rng_state()
    before = checks._fingerprint(pipe)
    for name in NAMES:
        run(name, getattr(ref, name))
    assert torch.equal(state, torch.random.get_rng_state())
    assert not checks._changed(before, checks._fingerprint(checks._tiny_sd()))
    assert StableDiffusionPipeline.__call__ is inspect.getattr_static(StableDiffusionPipeline, "__call__")


# --------------------------------------------------------------------------- planted bugs: encode_prompt

def encode_variant(bug=None):
    def fn(tokenizer, text_encoder, prompts, device):
        if isinstance(prompts, str) and bug != "no_batch":
            prompts = [prompts]
        kw = dict(padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
        if bug == "longest":
            kw = dict(padding="longest", truncation=True)
        elif bug == "no_truncation":
            kw = dict(padding="max_length", max_length=tokenizer.model_max_length)
        elif bug == "hard_77":
            kw = dict(padding="max_length", max_length=77, truncation=True)
        tok = tokenizer(prompts, return_tensors="pt", **kw)
        ids = tok.input_ids.to(device)
        if bug == "one_by_one":  # correct: one prompt at a time, then cat
            return torch.cat([encode_variant()(tokenizer, text_encoder, [p], device) for p in prompts])
        with torch.no_grad():
            if bug == "mask":
                return text_encoder(ids, attention_mask=tok.attention_mask)[0]
            out = text_encoder(ids, output_hidden_states=True)
        if bug == "pooled":
            return out.pooler_output
        if bug == "pre_norm":
            return out.hidden_states[-1]
        if bug == "skip":
            return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(out.hidden_states[-2])
        if bug == "embeddings":
            return getattr(text_encoder, "text_model", text_encoder).embeddings(input_ids=ids)
        if bug == "no_batch":
            return out.last_hidden_state[0] if out.last_hidden_state.shape[0] == 1 and isinstance(prompts, str) \
                else out.last_hidden_state
        return out.last_hidden_state
    return fn


@pytest.mark.parametrize("bug", [None, "one_by_one"])
def test_encode_prompt_correct_variants_pass(bug):
    for seed in SEEDS:
        run("encode_prompt", encode_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("longest", "no padding to max_length"),
    ("no_truncation", "no truncation"),
    ("hard_77", "hard-coded max_length"),
    ("mask", "attention mask"),
    ("pooled", "pooled output"),
    ("pre_norm", "BEFORE the final layer norm"),
    ("skip", "penultimate layer"),
    ("embeddings", "token + position embeddings"),
    ("no_batch", "batch of ONE"),
])
def test_encode_prompt_bugs(bug, phrase):
    fails("encode_prompt", encode_variant(bug), phrase)


def test_encode_prompt_hard_coded_answer_fails():
    with pytest.raises(CheckFailed):
        run("encode_prompt", lambda tok, te, prompts, device: torch.zeros(2, 16, 64))


# --------------------------------------------------------------------------- planted bugs: prepare_latents

def latents_variant(bug=None):
    def fn(batch_size, num_channels, height, width, vae_scale_factor, generator, init_noise_sigma, dtype, device):
        f = 1 if bug == "undivided" else vae_scale_factor
        h, w = height // f, width // f
        shape = (batch_size, num_channels, w, h) if bug == "swapped" else (batch_size, num_channels, h, w)
        if bug == "channels_last":
            shape = (batch_size, h, w, num_channels)
        if bug == "randn_tensor":  # correct: diffusers' own helper
            if isinstance(generator, list) and len(generator) != batch_size:
                raise ValueError("one generator per sample")
            return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype) * init_noise_sigma
        if bug == "global_rng":
            noise = torch.randn(shape, dtype=dtype)
        elif isinstance(generator, list):
            if bug == "first_only":
                noise = torch.randn(shape, generator=generator[0], dtype=dtype)
            elif bug == "list_unhandled":
                noise = torch.randn(shape, generator=generator, dtype=dtype)
            else:
                if bug != "no_value_error" and len(generator) != batch_size:
                    raise ValueError("one generator per sample")
                noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=dtype) for g in generator])
        else:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32 if bug == "cast" else dtype).to(dtype)
        noise = noise.to(device)
        s = init_noise_sigma
        return {"no_sigma": noise, "divide": noise / s, "squared": noise * s * s}.get(bug, noise * s)
    return fn


@pytest.mark.parametrize("bug", [None, "randn_tensor"])
def test_prepare_latents_correct_variants_pass(bug):
    for seed in SEEDS:
        run("prepare_latents", latents_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_sigma", "init_noise_sigma missing"),
    ("divide", "you divided by init_noise_sigma"),
    ("squared", "squared"),
    ("undivided", "not divided by vae_scale_factor"),
    ("swapped", "height and width swapped"),
    ("channels_last", "channels last"),
    ("global_rng", "not drawn from `generator`"),
    ("cast", "draw in `dtype` directly"),
    ("first_only", "drew the whole batch from the first one"),
    ("list_unhandled", "list of generators is not handled"),
    ("no_value_error", "expected a ValueError"),
])
def test_prepare_latents_bugs(bug, phrase):
    fails("prepare_latents", latents_variant(bug), phrase)


def test_prepare_latents_hard_coded_answer_fails():
    with pytest.raises(CheckFailed):
        run("prepare_latents", lambda *a: torch.zeros(2, 4, 8, 8))


# --------------------------------------------------------------------------- planted bugs: generate

def generate_variant(bug=None):
    """generate written out again (not the reference), with one bug switched on."""

    def encode(tokenizer, text_encoder, prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids.to(text_encoder.device))[0]

    @torch.no_grad()
    def fn(components, prompt, negative_prompt=None, num_inference_steps=25, guidance_scale=7.5, generator=None,
           height=None, width=None):
        tok, te, unet, sched, vae = (components[k] for k in ("tokenizer", "text_encoder", "unet", "scheduler", "vae"))
        if bug == "in_place":
            vae.train()
        prompts = [prompt] if isinstance(prompt, str) else prompt
        B = len(prompts)
        f = 1 if bug == "undivided" else 2 ** (len(vae.config.block_out_channels) - 1)
        height, width = height or 64, width or 64
        if bug == "raise_low_w" and guidance_scale <= 1:
            raise ValueError("guidance_scale must be > 1")
        cfg = (guidance_scale > 1 or bug == "always_cfg") and bug != "no_cfg"
        neg = [""] * B if negative_prompt is None or bug == "ignore_negative" else (
            [negative_prompt] * B if isinstance(negative_prompt, str) else negative_prompt)
        cond = encode(tok, te, prompts)
        uncond = encode(tok, te, neg)
        if bug == "pipeline":
            sd = StableDiffusionPipeline(**components, requires_safety_checker=False)
            return sd(prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, generator=generator, height=height, width=width,
                      output_type="latent").images
        sigma_early = sched.init_noise_sigma
        sched.set_timesteps(num_inference_steps)
        shape = (B, unet.config.in_channels, height // f, width // f)
        latents = randn_tensor(shape, generator=generator, dtype=cond.dtype)
        if bug != "no_init_sigma":
            latents = latents * (sigma_early if bug == "sigma_early" else sched.init_noise_sigma)
        timesteps = list(reversed(sched.timesteps)) if bug == "reversed" else sched.timesteps
        if bug == "many_steps":
            timesteps = list(sched.timesteps) * 50
        for t in timesteps:
            if bug == "two_forwards" and cfg:  # correct: uncond and cond in two calls of B
                x = sched.scale_model_input(latents, t)
                eu = unet(x, t, encoder_hidden_states=uncond).sample
                ec = unet(x, t, encoder_hidden_states=cond).sample
                eps = eu + guidance_scale * (ec - eu)
            else:
                x = torch.cat([latents] * 2) if cfg else latents
                if bug != "no_scale_input":
                    x = sched.scale_model_input(x, t)
                if bug == "step_scaled":
                    latents = x[:B]
                emb = torch.cat([cond, uncond] if bug == "swap" else [uncond, cond]) if cfg else cond
                eps = unet(x, t, encoder_hidden_states=emb).sample
                if cfg:
                    eu, ec = eps.chunk(2)
                    eps = eu + guidance_scale * (ec - eu)
            latents = sched.step(eps, t, latents).prev_sample
        sf = vae.config.scaling_factor
        z = latents if bug == "decode_no_div" else (latents * sf if bug == "decode_mul" else latents / sf)
        images = vae.decode(z).sample
        if bug != "no_postprocess":
            images = (images / 2 + 0.5).clamp(0, 1)
        if bug == "swapped_outputs":
            return latents, images
        return images, latents

    return fn


@pytest.mark.parametrize("bug", [None, "two_forwards"])
def test_generate_correct_variants_pass(bug):
    for seed in (0, 1):
        run("generate", generate_variant(bug), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_cfg", "unconditional branch is missing"),
    ("swap", "CFG order swapped"),
    ("ignore_negative", "negative prompt ignored"),
    ("no_init_sigma", "init_noise_sigma missing"),
    ("sigma_early", "init_noise_sigma read BEFORE"),
    ("no_scale_input", "scale_model_input missing"),
    ("step_scaled", "overwrote the latents"),
    ("undivided", "wrong latent size"),
    ("decode_no_div", "without dividing by scaling_factor"),
    ("decode_mul", "latents * scaling_factor"),
    ("no_postprocess", "in [-1, 1]"),
    ("reversed", "timesteps are"),
    ("many_steps", "more steps than the pipeline"),
    ("swapped_outputs", "(latents, images)"),
    ("in_place", "changed the components in place"),
    ("raise_low_w", "guidance_scale <= 1 not handled"),
    ("always_cfg", "CFG ran with guidance_scale"),
    ("pipeline", "calls StableDiffusionPipeline"),
])
def test_generate_bugs(bug, phrase):
    fails("generate", generate_variant(bug), phrase, seeds=(0, 1))


def test_generate_hard_coded_answer_fails():
    with pytest.raises(CheckFailed):
        run("generate", lambda *a, **k: (torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 8, 8)))


# --------------------------------------------------------------------------- img2img_timesteps

@pytest.mark.parametrize("name", list(checks.IMG2IMG_SCHEDULERS))
@pytest.mark.parametrize("n,s", [(10, 0.6), (10, 0.7), (7, 1.0), (13, 0.33), (5, 0.25), (50, 0.57), (3, 0.99)])
def test_img2img_timesteps_equals_pipeline(name, n, s):
    """The reference equals retrieve_timesteps + StableDiffusionImg2ImgPipeline.get_timesteps, the
    scheduler's state included (full schedule, begin index)."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionImg2ImgPipeline

    kw = {"skip_prk_steps": True} if name == "PNDM" else {}
    mine_s, theirs_s = checks.IMG2IMG_SCHEDULERS[name](**kw), checks.IMG2IMG_SCHEDULERS[name](**kw)
    mine, k = ref.img2img_timesteps(mine_s, n, s)
    theirs_s.set_timesteps(n)
    theirs, theirs_k = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=theirs_s), n, s, "cpu")
    assert torch.equal(mine, theirs) and k == theirs_k == min(int(n * s), n)
    assert torch.equal(mine_s.timesteps, theirs_s.timesteps)
    assert getattr(mine_s, "begin_index", "none") == getattr(theirs_s, "begin_index", "none")


def test_img2img_timesteps_drives_the_img2img_loop(pipe):
    """What the exercise is for: with Heun (order 2) the pipeline's UNet sees exactly these
    timesteps, 2 k - 1 calls for k steps."""
    from diffusers import HeunDiscreteScheduler, StableDiffusionImg2ImgPipeline

    comps = dict(pipe.components, scheduler=HeunDiscreteScheduler.from_config(pipe.scheduler.config))
    i2i = StableDiffusionImg2ImgPipeline(**comps, requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    seen = []
    handle = i2i.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(float(a[1])), with_kwargs=True)
    try:
        i2i("a red circle", image=torch.rand(1, 3, 64, 64), strength=0.5, num_inference_steps=6, guidance_scale=1.0,
            output_type="latent", generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    ts, k = ref.img2img_timesteps(HeunDiscreteScheduler.from_config(pipe.scheduler.config), 6, 0.5)
    assert k == 3 and len(ts) == 2 * k - 1 and seen == [float(t) for t in ts]


def img2img_variant(bug=None):
    """img2img_timesteps written out again (not the reference), with one bug switched on."""
    import math

    def fn(scheduler, num_inference_steps, strength, device=None):
        n = num_inference_steps
        if bug == "begin_first" and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        if bug == "coarse":
            scheduler.set_timesteps(max(int(n * strength), 1), device=device)
        elif bug != "no_set":
            scheduler.set_timesteps(n, device=device)
        order = 1 if bug == "no_order" else scheduler.order
        k = {"round": min(round(n * strength), n)}.get(bug, math.floor(n * strength) if bug == "floor" else
                                                       min(int(strength * n), n))
        skip = n - k
        if bug == "ceil":
            skip = math.ceil(n * (1 - strength))
        if bug == "skipped":
            skip = int(n * strength)
        ts = scheduler.timesteps
        out = ts[:k * order] if bug == "head" else ts[skip * order:]
        if bug == "coarse":  # the whole k-step schedule
            out = ts
        if bug == "clone":  # correct: a copy of the slice, the step count as a float tensor, a list for the pair
            out = out.clone()
        begin = skip * (1 if bug == "begin_no_order" else order)
        if bug == "unconditional_begin":
            scheduler.set_begin_index(begin)
        elif hasattr(scheduler, "set_begin_index") and bug not in ("no_begin", "begin_first"):
            scheduler.set_begin_index(begin)
        if bug == "cut_list":
            scheduler.timesteps = out
        steps = {"len": len(out), "n": n, "return_skip": skip}.get(bug, n - skip)
        if bug == "clone":
            return [out, torch.tensor(float(steps))]
        return out, steps

    return fn


def img2img_pipeline_form(scheduler, num_inference_steps, strength, device=None):
    """Correct: diffusers' own code, on a stand-in pipeline."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps

    retrieve_timesteps(scheduler, num_inference_steps, device)
    return StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), num_inference_steps,
                                                        strength, device)


@pytest.mark.parametrize("form", [None, "floor", "clone", "pipeline"])
def test_img2img_timesteps_equivalent_forms_pass_on_40_seeds(form):
    fn = img2img_pipeline_form if form == "pipeline" else img2img_variant(form)
    for seed in range(40):
        run("img2img_timesteps", fn, seed)


@pytest.mark.parametrize("bug,phrase", [
    ("no_order", "scheduler.order missing"),
    ("head", "kept the FIRST steps"),
    ("skipped", "fraction of steps SKIPPED"),
    ("round", "round(n * strength)"),
    ("coarse", "a coarser schedule"),
    ("no_set", "set_timesteps(num_inference_steps) not called"),
    ("ceil", "ceil(n * (1 - strength))"),
    ("len", "that is len(timesteps)"),
    ("return_skip", "number of steps SKIPPED"),
    ("n", "that is n"),
    ("no_begin", "set_begin_index not called"),
    ("begin_first", "BEFORE set_timesteps"),
    ("begin_no_order", "begin index without scheduler.order"),
    ("unconditional_begin", "has no set_begin_index"),
    ("cut_list", "expected the full"),
])
def test_img2img_timesteps_bugs(bug, phrase):
    fails("img2img_timesteps", img2img_variant(bug), phrase)


def test_img2img_timesteps_hard_coded_answer_fails():
    with pytest.raises(CheckFailed):
        run("img2img_timesteps", lambda sched, n, s, device=None: (torch.tensor([999, 500]), 2))


# --------------------------------------------------------------------------- machinery


