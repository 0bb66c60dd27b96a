"""Checks of Lab 06 (pipeline components): one ``check_<name>(fn, gen)`` per exercise.

The checks run on the course's tiny Stable Diffusion (tiny-sd, the shipped folder, whatever
``DIFFUSION_LABS_MODEL_TINY_SD`` says, so a check stays fast): random prompts made of the
tokenizer's own words, random batch sizes, image sizes, guidance scales, step counts and
seeds. Each output is compared with the reference solution AND with the pipeline itself
(``pipe.encode_prompt``, ``StableDiffusionPipeline.prepare_latents``, ``pipe(...,
output_type="latent")`` with DDIM, Euler and DPM++ 2M). When the output matches what a
typical bug returns, the message names that bug; ``generate`` also says at which stage (text
embeddings, starting latents, timesteps) its UNet inputs first differ from the pipeline's.

The learner's ``generate`` gets deep copies of tiny-sd's components (the check's own copy
stays pristine) with a hook on the UNet that stops a run at once when the latents have the
wrong size or the loop runs far more UNet calls than the pipeline.
"""
import contextlib
import copy
import functools
import io
import math
import types

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor

from helpers.checks._core import (require_raises, CheckFailed, as_number, assert_close, choice, describe, describe_exception,
                                  randint, uniform)
from helpers.solutions import lab06_pipeline_components as ref

LAB = "lab06"

# Tolerances, |got - expected| <= atol + rtol * |expected| elementwise.
# encode_prompt: the same tokens through the same encoder; only a different but equivalent
# computation (e.g. batching prompts one by one) moves the result, by float32 rounding.
TOL_EMBEDS = dict(atol=1e-5, rtol=1e-5)
# prepare_latents: the same draws; only the multiplication by init_noise_sigma may round.
TOL_LATENTS = {torch.float32: dict(atol=1e-6, rtol=1e-6), torch.float16: dict(atol=1e-3, rtol=1e-3)}
# generate: what the lab promises, 1e-4 (a correct loop gives the pipeline's latents bit for
# bit; two UNet forwards of B instead of one of 2B differ by ~1e-6).
TOL_GENERATE = dict(atol=1e-4, rtol=1e-4)

SCHEDULERS = {"DDIM": DDIMScheduler, "Euler": EulerDiscreteScheduler, "DPM++ 2M": DPMSolverMultistepScheduler}

ENCODE_HINT = ("StableDiffusionPipeline.encode_prompt, its `if prompt_embeds is None` branch with clip_skip=None: the "
               "tokenizer call (padded to tokenizer.model_max_length, truncated), the ids on `device`, no attention "
               "mask for this text encoder, and its last hidden state, (B, L, D).")
PADDING_HINT = ("pad every prompt to tokenizer.model_max_length (read the tokenizer call in encode_prompt): the UNet was trained on (B, L, D) embeddings with L = model_max_length "
                "(77 for SD, 16 for tiny-sd) and cross-attends to the padding positions too; padding=\"longest\" "
                "pads only to the longest prompt of the batch.")
TRUNCATION_HINT = ("a prompt longer than model_max_length tokens must be cut (the text encoder has only that many "
                   "position embeddings): read the tokenizer call in encode_prompt and the warning after it, where "
                   "the pipeline drops the rest.")
LATENTS_HINT = ("StableDiffusionPipeline.prepare_latents: the shape (B, C, height and width divided by "
                "vae_scale_factor), noise drawn by diffusers' randn_tensor (utils/torch_utils.py: in `dtype`, on the "
                "generator's device, then moved; a list of generators draws sample i from generator i), scaled by "
                "the scheduler's init_noise_sigma (its last line).")
GENERATE_HINT = ("follow the numbered steps of StableDiffusionPipeline.__call__: 3 encode the prompts and the negative "
                 "ones (\"\" when none) into the batch [uncond, cond]; 4 set the timesteps; 5 prepare the latents; 7 "
                 "the denoising loop (scale_model_input on the doubled latents, one UNet forward, the split, the "
                 "guidance line, scheduler.step); then lab 05's decode and the image processor's postprocess to "
                 "[0, 1].")


# --------------------------------------------------------------------------- tiny-sd, once

def _quietly(check):
    """Run a check with diffusers' and transformers' loggers at ERROR: the pipeline's own
    truncation warning, tokenizer notices and progress bars are not the learner's business."""
    @functools.wraps(check)
    def run(fn, gen):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        try:
            return check(fn, gen)
        finally:
            diffusers_logging.set_verbosity(levels[0])
            transformers_logging.set_verbosity(levels[1])
    return run


_TINY_SD = {}  # filled by the first check (the grader's warm-up), never changed afterwards


def _load():
    """The shipped tiny-sd pipeline on the CPU (checksum-verified), whatever
    DIFFUSION_LABS_MODEL_TINY_SD says, with no progress bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from helpers.zoo import ASSETS, verify

    path = ASSETS / "tiny-sd"
    verify(path)
    bars = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for m in bars:  # loading bars are not the learner's business
        m.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, requires_safety_checker=False, local_files_only=True,
                dtype=torch.float32)
    finally:
        for m in bars:
            m.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def _tiny_sd():
    """tiny-sd, loaded once (the grader's warm-up does it before it snapshots the checker)."""
    if "pipe" not in _TINY_SD:
        pipe = _load()
        _TINY_SD["pipe"] = pipe
        _TINY_SD["words"] = tuple(sorted(w[:-4] for w in pipe.tokenizer.get_vocab()
                                         if w.endswith("</w>") and w[:-4].isalpha() and len(w) >= 7))
    return _TINY_SD["pipe"]


def _restore(pipe):
    """Put pristine components into the shared pipeline object (after a learner's function
    changed them in place), keeping the object itself: the checker's state stays as it was."""
    fresh = _load()
    for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        setattr(pipe, name, getattr(fresh, name))


def _prompt(gen, lo, hi):
    """A prompt of lo..hi random words of tiny-sd's vocabulary."""
    _tiny_sd()
    words = _TINY_SD["words"]
    return " ".join(choice(gen, words) for _ in range(randint(gen, lo, hi)))


def _n_tokens(pipe, prompt):
    return len(pipe.tokenizer(prompt).input_ids)


def _short_prompts(gen, pipe, n):
    """n prompts of different token lengths, every one at most L - 4 tokens long, so padding
    to the longest is never padding to model_max_length."""
    L = pipe.tokenizer.model_max_length
    out = []
    while len(out) < n:
        p = _prompt(gen, 1, max(1, (L - 6) // 2))
        if _n_tokens(pipe, p) <= L - 4 and all(_n_tokens(pipe, p) != _n_tokens(pipe, q) for q in out):
            out.append(p)
    return out


def _long_prompt(gen, pipe):
    L = pipe.tokenizer.model_max_length
    while True:
        p = _prompt(gen, L + 2, L + 8)
        if _n_tokens(pipe, p) > L + 2:
            return p


# --------------------------------------------------------------------------- encode_prompt

def _ids(pipe, prompts, **kw):
    kw = {"padding": "max_length", "max_length": pipe.tokenizer.model_max_length, "truncation": True, **kw}
    return pipe.tokenizer(prompts, return_tensors="pt", **kw)


@torch.no_grad()
def _encode_bugs(pipe, prompts):
    """What typical wrong encode_prompt return on these prompts."""
    te = pipe.text_encoder
    tok = _ids(pipe, prompts)
    out = te(tok.input_ids, output_hidden_states=True)
    inner = getattr(te, "text_model", te)  # transformers 5 flattened CLIPTextModel (no .text_model)
    norm = inner.final_layer_norm
    return [
        ("you passed the attention mask to the text encoder. StableDiffusionPipeline does not (its text encoder "
         "config has no use_attention_mask): the UNet was trained on embeddings computed without it, and the "
         "padding positions' embeddings change with it.", te(tok.input_ids, attention_mask=tok.attention_mask)[0]),
        ("you took hidden_states[-1], the last layer BEFORE the final layer norm; the pipeline uses "
         "the last_hidden_state (after final_layer_norm; encode_prompt with clip_skip=None).", out.hidden_states[-1]),
        ("you took the penultimate layer (\"clip skip\", hidden_states[-2]); the pipeline's default (clip_skip=None) "
         "is the last hidden state.", norm(out.hidden_states[-2])),
        ("you took the penultimate layer (hidden_states[-2], without the final layer norm); the pipeline uses the "
         "last hidden state (clip_skip=None).", out.hidden_states[-2]),
        ("you returned the token + position embeddings (the text encoder's input), not its output: run the whole "
         "text encoder.", inner.embeddings(input_ids=tok.input_ids)),
    ]


def _call_encode(fn, name, pipe, prompts, device="cpu"):
    plist = [prompts] if isinstance(prompts, str) else prompts
    too_long = any(_n_tokens(pipe, p) > pipe.tokenizer.model_max_length for p in plist)
    try:
        with torch.no_grad():
            return fn(pipe.tokenizer, pipe.text_encoder, prompts, device)
    except NotImplementedError:
        raise
    except Exception as exc:
        msg = str(exc).lower()
        if "max_position_embeddings" in msg or "sequence length" in msg or "position" in msg or \
                (too_long and "truncation" in msg):
            raise CheckFailed(f"Likely bug: token ids longer than tokenizer.model_max_length (no truncation, or a "
                              f"hard-coded max_length such as SD's 77).\n{name} raised "
                              f"{describe_exception(exc)}\nHint: {TRUNCATION_HINT}") from exc
        if "pad" in msg or "same length" in msg or "expected sequence" in msg:
            raise CheckFailed(f"Likely bug: no padding to max_length.\n{name} raised {describe_exception(exc)}\n"
                              f"Hint: {PADDING_HINT}") from exc
        raise


def _encode_shape(name, got, expected):
    if not isinstance(got, torch.Tensor) or got.shape == expected.shape:
        return
    B, L, D = expected.shape
    if got.ndim == 3 and got.shape[0] == B and got.shape[2] == D and got.shape[1] < L:
        raise CheckFailed(f"Likely bug: no padding to max_length: your embeddings have {got.shape[1]} positions, the "
                          f"pipeline's {L} (tokenizer.model_max_length).\n{name}: expected shape {tuple(expected.shape)}, "
                          f"got {tuple(got.shape)}.\nHint: {PADDING_HINT}")
    if got.ndim == 2 and tuple(got.shape) == (B, D):
        raise CheckFailed(f"Likely bug: you returned the pooled output (one vector per prompt, .pooler_output); "
                          f"SD 1.x/2.x condition the UNet on the whole sequence, the last hidden state.\n{name}: expected shape {tuple(expected.shape)}, got "
                          f"{tuple(got.shape)}.\nHint: {ENCODE_HINT}")
    if got.ndim == 2 and tuple(got.shape) == (L, D):
        raise CheckFailed(f"Likely bug: one string is a batch of ONE prompt: return (1, L, D), as the pipeline does "
                          f"([prompt]).\n{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}.\n"
                          f"Hint: {ENCODE_HINT}")


@_quietly
def check_encode_prompt(fn, gen):
    """tiny-sd's tokenizer and text encoder on: a batch of short prompts of different lengths,
    one string, a batch with a prompt longer than model_max_length, and empty prompts (the
    unconditional input); each compared with pipe.encode_prompt(...)[0] and the reference."""
    pipe = _tiny_sd()
    B = randint(gen, 2, 4)
    cases = [
        _short_prompts(gen, pipe, B),
        _short_prompts(gen, pipe, 1)[0],  # one string
        _short_prompts(gen, pipe, randint(gen, 1, 2)) + [_long_prompt(gen, pipe)],
        [""] * randint(gen, 1, 3),
    ]
    for prompts in cases:
        shown = prompts if isinstance(prompts, str) else [p if len(p) < 60 else p[:57] + "..." for p in prompts]
        name = f"encode_prompt(tiny-sd tokenizer, tiny-sd text_encoder, {shown!r}, 'cpu')"
        got = _call_encode(fn, name, pipe, prompts)
        with torch.no_grad():
            theirs = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)[0]
            expected = ref.encode_prompt(pipe.tokenizer, pipe.text_encoder, prompts, "cpu")
        _encode_shape(name, got, expected)
        plist = [prompts] if isinstance(prompts, str) else prompts
        assert_close(name, got, expected, **TOL_EMBEDS, diagnose=_encode_bugs(pipe, plist), hint=ENCODE_HINT)
        assert_close(f"{name} vs StableDiffusionPipeline.encode_prompt(...)[0]", got, theirs, **TOL_EMBEDS)

    if torch.cuda.is_available():  # the device argument: the ids must follow the text encoder
        te = copy.deepcopy(pipe.text_encoder).to("cuda")
        prompts = _short_prompts(gen, pipe, 2)
        name = f"encode_prompt(tokenizer, text_encoder on cuda, {prompts!r}, 'cuda')"
        try:
            with torch.no_grad():
                got = fn(pipe.tokenizer, te, prompts, torch.device("cuda"))
        except NotImplementedError:
            raise
        except Exception as exc:
            raise CheckFailed(f"Likely bug: device not kept.\n{name} raised {describe_exception(exc)}\nHint: the "
                              f"token ids must be on `device` before the text encoder (read where encode_prompt "
                              f"moves them).") from exc
        expected = ref.encode_prompt(pipe.tokenizer, te, prompts, torch.device("cuda"))
        assert_close(name, got, expected, atol=1e-4, rtol=1e-4, hint=ENCODE_HINT)


# --------------------------------------------------------------------------- prepare_latents

def _pipeline_latents(B, C, H, W, f, generator, sigma, dtype, device):
    """diffusers' own StableDiffusionPipeline.prepare_latents, on a stand-in `self` that has
    just what it reads (vae_scale_factor and scheduler.init_noise_sigma)."""
    stand_in = types.SimpleNamespace(vae_scale_factor=f, scheduler=types.SimpleNamespace(init_noise_sigma=sigma))
    return StableDiffusionPipeline.prepare_latents(stand_in, B, C, H, W, dtype, torch.device(device), generator)


def _seeded(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds] if isinstance(seeds, list) else \
        torch.Generator().manual_seed(seeds)


def _latent_bugs(B, C, H, W, f, seeds, sigma, dtype):
    shape = (B, C, H // f, W // f)
    noise = randn_tensor(shape, generator=_seeded(seeds), dtype=dtype)
    s = float(sigma)
    bugs = [
        ("init_noise_sigma missing: the scheduler expects x_T with std init_noise_sigma (about sigma_max for Euler, "
         "1 for DDIM); read the last line of prepare_latents.", noise.clone()),
        ("you divided by init_noise_sigma; it is the std the noise must get (the last line of prepare_latents).",
         noise / s),
        ("you multiplied by init_noise_sigma squared: init_noise_sigma is already a standard deviation.",
         noise * s * s),
        ("you multiplied by sqrt(init_noise_sigma): init_noise_sigma is already a standard deviation.",
         noise * s ** 0.5),
    ]
    if dtype != torch.float32:
        cast = randn_tensor(shape, generator=_seeded(seeds), dtype=torch.float32).to(dtype)
        bugs.append((f"drawn in float32, then cast to {dtype}: draw in `dtype` directly, "
                     f"as diffusers' randn_tensor; the same seed gives other {dtype} numbers the other way.", cast * s))
    if isinstance(seeds, list):
        first = torch.randn(shape, generator=torch.Generator().manual_seed(seeds[0]), dtype=dtype)
        bugs.append(("a list of generators: you drew the whole batch from the first one. Sample i comes from "
                     "generator i (read randn_tensor's list branch).", first * s))
    return bugs


def _latent_shape(name, got, B, C, H, W, f):
    if not isinstance(got, torch.Tensor):
        return
    shape = tuple(got.shape)
    expected = (B, C, H // f, W // f)
    if shape == expected:
        return
    why = {
        (B, C, H, W): "height and width not divided by vae_scale_factor: the latents are f times smaller than the "
                      "image per side",
        (B, C, W // f, H // f): "height and width swapped: the shape is (B, C, height // f, width // f), rows first",
        (B, H // f, W // f, C): "channels last: diffusers' latents are (B, C, h, w), channels first",
        (B, C, H * f, W * f): "you multiplied height and width by vae_scale_factor; the latents are f times SMALLER",
    }.get(shape, "wrong latent shape")
    raise CheckFailed(f"Likely bug: {why}.\n{name}: expected shape {expected}, got {shape}.\nHint: {LATENTS_HINT}")


def _call_latents(fn, B, C, H, W, f, seeds, sigma, dtype, device, global_seed=0):
    """Call fn with freshly seeded generators, the global random state seeded with
    global_seed (so a function that ignores `generator` gives other numbers with another
    global_seed), and the caller's global random state left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(global_seed)  # the CPU one only: fork_rng restores it
        return fn(B, C, H, W, f, _seeded(seeds), sigma, dtype, device)


@_quietly
def check_prepare_latents(fn, gen):
    """Random batch, channels, non-square sizes, vae_scale_factor 8 or 16, init_noise_sigma as a
    float and as a 0-d tensor, float32 and float16, one generator and a list of generators;
    each compared with StableDiffusionPipeline.prepare_latents (diffusers' randn_tensor). Then
    a list of the wrong length (ValueError) and, with CUDA, a CPU generator for CUDA latents."""
    def size(f, odd=False):
        return f * (2 * randint(gen, 1, 5) + 1 if odd else randint(gen, 2, 12))

    cases = []
    for k in range(4):
        f = choice(gen, [8, 16]) if k else 8
        odd = k == 3  # float16 with an odd element count: drawing in float32 then casting differs there
        H = size(f, odd)
        W = size(f, odd)
        while W == H:
            W = size(f, odd)
        sigma = round(1.5 + 13.5 * float(torch.rand((), generator=gen)), 3)
        if k == 1:
            sigma = torch.tensor(sigma)  # what EulerDiscreteScheduler.init_noise_sigma is
        B = randint(gen, 2, 4)
        seeds = randint(gen, 0, 2**31 - 1)
        if k == 2:
            seeds = [randint(gen, 0, 2**31 - 1) for _ in range(B)]
        dtype = torch.float16 if k == 3 else torch.float32
        cases.append((B, randint(gen, 3, 6) if k else 4, H, W, f, seeds, sigma, dtype))

    for B, C, H, W, f, seeds, sigma, dtype in cases:
        gens = "[" + ", ".join(f"Generator(seed {s})" for s in seeds) + "]" if isinstance(seeds, list) \
            else f"Generator(seed {seeds})"
        name = (f"prepare_latents(batch_size={B}, num_channels={C}, height={H}, width={W}, vae_scale_factor={f}, "
                f"generator={gens}, init_noise_sigma={sigma!r}, dtype={dtype}, device='cpu')")
        try:
            got = _call_latents(fn, B, C, H, W, f, seeds, sigma, dtype, "cpu")
        except NotImplementedError:
            raise
        except TypeError as exc:
            if isinstance(seeds, list):
                raise CheckFailed(f"Likely bug: a list of generators is not handled.\n{name} raised "
                                  f"{describe_exception(exc)}\nHint: {LATENTS_HINT}") from exc
            raise
        _latent_shape(name, got, B, C, H, W, f)
        expected = _pipeline_latents(B, C, H, W, f, _seeded(seeds), sigma, dtype, "cpu")
        mine = ref.prepare_latents(B, C, H, W, f, _seeded(seeds), sigma, dtype, "cpu")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype and \
                not torch.allclose(got.double(), expected.double(), **TOL_LATENTS[dtype]):
            again = _call_latents(fn, B, C, H, W, f, seeds, sigma, dtype, "cpu", global_seed=1)
            if isinstance(again, torch.Tensor) and not torch.equal(again, got):
                raise CheckFailed(
                    f"Likely bug: the noise is not drawn from `generator`: two calls with generators seeded alike "
                    f"gave different latents (the global random state was used?).\n{name}\nHint: draw "
                    f"the noise from `generator`; that is what makes a seed reproduce an image. "
                    f"{LATENTS_HINT}")
        assert_close(name, got, mine, **TOL_LATENTS[dtype], diagnose=_latent_bugs(B, C, H, W, f, seeds, sigma, dtype),
                     hint=LATENTS_HINT)
        assert_close(f"{name} vs StableDiffusionPipeline.prepare_latents", got, expected, **TOL_LATENTS[dtype])

    # A list of generators of the wrong length: ValueError, as diffusers.
    name = "prepare_latents(batch_size=3, ..., generator=[2 generators], ...)"
    require_raises(name, lambda: fn(3, 4, 64, 64, 8, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
                                    1.0, torch.float32, "cpu"),
                   "one generator per sample, as diffusers' prepare_latents")

    if torch.cuda.is_available():  # a CPU generator, latents on the GPU: draw on the CPU, then move
        seed = randint(gen, 0, 2**31 - 1)
        name = f"prepare_latents(2, 4, 64, 64, 8, CPU Generator(seed {seed}), 1.0, torch.float32, device='cuda')"
        try:
            got = _call_latents(fn, 2, 4, 64, 64, 8, seed, 1.0, torch.float32, "cuda")
        except NotImplementedError:
            raise
        except Exception as exc:
            raise CheckFailed(f"Likely bug: drawn on `device` with a CPU generator.\n{name} raised "
                              f"{describe_exception(exc)}\nHint: {LATENTS_HINT}") from exc
        expected = _pipeline_latents(2, 4, 64, 64, 8, _seeded(seed), 1.0, torch.float32, "cuda")
        assert_close(name, got, expected, **TOL_LATENTS[torch.float32], hint=LATENTS_HINT)


# --------------------------------------------------------------------------- generate

class _UNetWatch:
    """Forward hooks on a UNet: record each call's inputs, and stop a run at once (CheckFailed
    from inside the learner's loop) when the latents have the wrong spatial size or the loop
    makes far more UNet calls than the pipeline."""

    def __init__(self, unet, latent_hw=None, max_calls=None):
        self.calls = []
        self.latent_hw, self.max_calls = latent_hw, max_calls
        self.handle = unet.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        names = ("sample", "timestep", "encoder_hidden_states")
        got = {n: (args[i] if i < len(args) else kwargs.get(n)) for i, n in enumerate(names)}
        sample = got["sample"]
        self.calls.append({n: v.detach().clone() if isinstance(v, torch.Tensor) else v for n, v in got.items()})
        if self.latent_hw and isinstance(sample, torch.Tensor) and tuple(sample.shape[-2:]) != self.latent_hw:
            h, w = self.latent_hw
            raise CheckFailed(
                f"Likely bug: wrong latent size: the UNet got latents of shape {tuple(sample.shape)}; for this image "
                f"size they are (..., {h}, {w}), height // vae_scale_factor by width // vae_scale_factor "
                f"(read how StableDiffusionPipeline.__init__ derives vae_scale_factor from the VAE's config).\nHint: {GENERATE_HINT}")
        if self.max_calls and len(self.calls) > self.max_calls:
            raise CheckFailed(
                f"your loop called the UNet more than {self.max_calls} times: more steps than the pipeline, which "
                f"calls it once per timestep of scheduler.timesteps (after scheduler.set_timesteps(num_inference_steps)).\nHint: "
                f"{GENERATE_HINT}")

    def remove(self):
        self.handle.remove()


@contextlib.contextmanager
def _no_pipeline_call():
    """While the learner's generate runs, calling StableDiffusionPipeline itself fails: the
    exercise is to write its loop out (its methods, e.g. encode_prompt, stay usable)."""
    original = StableDiffusionPipeline.__call__

    def refuse(*args, **kwargs):
        raise CheckFailed("your generate calls StableDiffusionPipeline(...)(...) itself; the exercise is to write "
                          f"its loop out from the components.\nHint: {GENERATE_HINT}")

    StableDiffusionPipeline.__call__ = refuse
    try:
        yield
    finally:
        StableDiffusionPipeline.__call__ = original


def _fresh_scheduler(pipe, name):
    return SCHEDULERS[name].from_config(pipe.scheduler.config)


def _components(pipe, scheduler_name):
    return dict(pipe.components, scheduler=_fresh_scheduler(pipe, scheduler_name))


def _fingerprint(pipe):
    """What an in-place change of the shared tiny-sd would alter: every parameter's and
    buffer's identity, version counter, dtype and device, and the tokenizer's settings."""
    fp = {}
    for comp in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, comp)
        for n, t in list(module.named_parameters()) + list(module.named_buffers()):
            fp[f"{comp}.{n}"] = (id(t), t._version, t.dtype, t.device, t.requires_grad)
        fp[comp] = (id(module), module.training)
    tok = pipe.tokenizer
    fp["tokenizer"] = (tok.model_max_length, tok.padding_side, tok.truncation_side, tok.pad_token)
    return fp


def _changed(before, after):
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)]


@torch.no_grad()
def _pipeline_run(pipe, sched_name, prompts, negative, steps, w, seed, height, width):
    """The pipeline's latents and images, and the UNet calls it made."""
    sd = StableDiffusionPipeline(**_components(pipe, sched_name), requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    watch = _UNetWatch(sd.unet)
    try:
        latents = sd(prompts, negative_prompt=negative, num_inference_steps=steps, guidance_scale=w,
                     generator=torch.Generator().manual_seed(seed), height=height, width=width,
                     output_type="latent").images
    finally:
        watch.remove()
    images = sd.vae.decode(latents / sd.vae.config.scaling_factor).sample
    images = sd.image_processor.postprocess(images, output_type="pt", do_denormalize=[True] * images.shape[0])
    return latents, images, watch.calls


@torch.no_grad()
def _loop(pipe, sched_name, prompts, negative, steps, w, seed, height, width, *, no_cfg=False, swap=False,
          ignore_negative=False, no_init_sigma=False, sigma_early=False, no_scale_input=False, step_scaled=False,
          paper_w=False, force_cfg=False):
    """The denoising loop written independently of the reference, with one bug switched on."""
    sched = _fresh_scheduler(pipe, sched_name)
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    h, wd = (height or 64) // f, (width or 64) // f
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    B = len(prompts)
    if isinstance(negative, str):
        negative = [negative] * B
    negs = [""] * B if (negative is None or ignore_negative) else list(negative)

    def enc(p):
        ids = _ids(pipe, p).input_ids
        return pipe.text_encoder(ids)[0]

    cfg = (w > 1 or force_cfg) and not no_cfg
    emb = torch.cat([enc(negs), enc(prompts)]) if cfg else enc(prompts)
    early = sched.init_noise_sigma  # before set_timesteps: that of the full training schedule
    sched.set_timesteps(steps)
    x = torch.randn((B, pipe.unet.config.in_channels, h, wd), generator=torch.Generator().manual_seed(seed))
    if not no_init_sigma:
        x = x * (early if sigma_early else sched.init_noise_sigma)
    for t in sched.timesteps:
        xin = torch.cat([x, x]) if cfg else x
        if not no_scale_input:
            xin = sched.scale_model_input(xin, t)
        if step_scaled:
            x = xin[:B]
        eps = pipe.unet(xin, t, encoder_hidden_states=emb).sample
        if cfg:
            u, c = eps.chunk(2)
            if swap:
                u, c = c, u
            eps = c + w * (c - u) if paper_w else u + w * (c - u)
        x = sched.step(eps, t, x).prev_sample
    return x


def _generate_bugs(pipe, sched_name, prompts, negative, steps, w, seed, height, width):
    """Typical wrong final latents on these inputs (only computed when the learner's differ)."""
    run = lambda **kw: _loop(pipe, sched_name, prompts, negative, steps, w, seed, height, width, **kw)  # noqa: E731
    bugs = [
        ("the unconditional branch is missing: with guidance_scale > 1 the UNet runs on [uncond, cond] and the "
         "guidance line combines both (lab 04); you used eps_c alone.", run(no_cfg=True)),
        ("CFG order swapped: the two halves of noise_pred.chunk(2) are taken in the wrong order. Build the batch "
         "[uncond, cond], the pipeline's order (step 3), and split it in that order.", run(swap=True)),
        ("you used the paper's (1 + w) convention, eps_c + w (eps_c - eps_u); diffusers' guidance_scale is "
         "the paper's 1 + w (lab 04).", run(paper_w=True)),
        ("init_noise_sigma missing: x_T's std is scheduler.init_noise_sigma (about sigma_max for Euler, 1 for "
         "DDIM and DPM++ 2M).", run(no_init_sigma=True)),
        ("init_noise_sigma read BEFORE scheduler.set_timesteps: for Euler it is the sigma of the first timestep of "
         "the schedule, so set the timesteps first (steps 4 and 5 of __call__, in that order).",
         run(sigma_early=True)),
        ("scale_model_input missing: the UNet must see the scheduler's scaled input (scale_model_input in step 7; "
         "it changes the input for Euler, not for DDIM).", run(no_scale_input=True)),
        ("you overwrote the latents with scale_model_input's output: the UNet sees the scaled latents, but "
         "scheduler.step must get the UNSCALED x_t.", run(step_scaled=True)),
    ]
    if w <= 1:
        bugs.insert(0, (f"CFG ran with guidance_scale = {w} <= 1: the pipeline guides only when guidance_scale > 1 "
                        f"(do_classifier_free_guidance); otherwise the UNet runs once on the prompts alone and its "
                        f"prediction is used as it is.", run(force_cfg=True)))
    if negative is not None and w > 1:
        bugs.append(("negative prompt ignored: the unconditional branch encodes the negative prompt (\"\" only when "
                     "there is none).", run(ignore_negative=True)))
    return bugs


def _image_bugs(pipe, latents):
    sf = pipe.vae.config.scaling_factor
    with torch.no_grad():
        raw = pipe.vae.decode(latents / sf).sample
        bugs = [
            ("decoded without dividing by scaling_factor: the latent space was scaled by scaling_factor "
             "(vae.config.scaling_factor) for the UNet; undo that before decoding (lab 05).",
             (pipe.vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)),
            ("decoded latents * scaling_factor; the pipeline undoes encode's scaling before decoding (lab 05).",
             (pipe.vae.decode(latents * sf).sample / 2 + 0.5).clamp(0, 1)),
            ("the images are the VAE's output in [-1, 1]; the pipeline maps them to [0, 1] (VaeImageProcessor.postprocess).",
             raw),
            ("not clamped to [0, 1], as VaeImageProcessor.denormalize does.", raw / 2 + 0.5),
            ("mapped with (x + 1) without halving: read VaeImageProcessor.denormalize.", (raw + 1).clamp(0, 1)),
        ]
    return bugs


def _first_difference(calls, expected_calls, B):
    """Where the learner's UNet inputs first differ from the pipeline's, in words. Two forwards
    per step (uncond, then cond) are fine: the calls of the first timestep are pooled."""
    if not calls:
        return "your generate never called components['unet']."

    def t_of(c):
        t = c["timestep"]
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            return int(t)
        return int(t) if isinstance(t, (int, float)) else None

    ts = [t_of(c) for c in calls]
    exp_ts = [t_of(c) for c in expected_calls]
    steps = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    if steps != exp_ts:
        more = f"your loop ran more steps than the pipeline's {len(exp_ts)}: " if len(steps) > len(exp_ts) else ""
        return (f"{more}the UNet's timesteps are {ts}, the pipeline's {exp_ts} (scheduler.timesteps after "
                f"set_timesteps(num_inference_steps), one step per timestep, in that order).")
    first = [c for c in calls[:2] if t_of(c) == ts[0]]

    def rows(key):
        out = set()
        for c in first:
            x = c[key]
            if isinstance(x, torch.Tensor):
                out |= {tuple(r.flatten().double().round(decimals=4).tolist()) for r in x}
        return out

    def expected_rows(x):
        return {tuple(r.flatten().double().round(decimals=4).tolist()) for r in x}

    ee = expected_calls[0]["encoder_hidden_states"]
    got_e = rows("encoder_hidden_states")
    if expected_rows(ee[-B:]) - got_e:
        return ("the text embeddings the UNet gets at the first step do not contain the prompts' embeddings "
                "(your encode_prompt of the prompts).")
    if ee.shape[0] == 2 * B and expected_rows(ee[:B]) - got_e:
        return ("the text embeddings the UNet gets at the first step lack the unconditional ones (the negative "
                "prompt, or \"\" when there is none).")
    if expected_rows(expected_calls[0]["sample"][:B]) - rows("sample"):
        return ("the latents the UNet gets at the first step differ from the pipeline's scaled initial noise: "
                "look at prepare_latents, init_noise_sigma and scale_model_input.")
    return ("the UNet's inputs at the first step are the pipeline's: look at the guidance line and at "
            "scheduler.step (unscaled latents, its prev_sample).")


@_quietly
def check_generate(fn, gen):
    """DDIM, Euler and DPM++ 2M in random order on tiny-sd; each with random prompts (1 or 2),
    negative prompts or none, a guidance scale in (2, 9) (in [0, 0.95] for one of the three:
    no CFG), 3 steps, a seed, and the default or a non-square image size. The latents must equal pipe(..., output_type="latent")
    and the images the pipeline's decode and postprocess, within 1e-4."""
    pipe = _tiny_sd()
    order = [list(SCHEDULERS)[i] for i in torch.randperm(len(SCHEDULERS), generator=gen).tolist()]
    sizes = [(None, None), choice(gen, [(32, 64), (64, 32)]), choice(gen, [(None, None), (64, 64), (32, 64)])]
    kinds = [("list", None), ("list", "list"), ("str", choice(gen, [None, "str"]))]  # (prompt, negative prompt)
    kinds = [kinds[i] for i in torch.randperm(3, generator=gen).tolist()]
    unguided = randint(gen, 0, 2)  # the case run without CFG (guidance_scale <= 1)
    before = _fingerprint(pipe)
    for k, sched_name in enumerate(order):
        B = randint(gen, 1, 2) if kinds[k][0] == "list" else 1
        prompts = _short_prompts(gen, pipe, B)
        negative = [_prompt(gen, 1, 3) for _ in range(B)] if kinds[k][1] == "list" else None
        if kinds[k][0] == "str":
            prompts = prompts[0]
            negative = _prompt(gen, 1, 3) if kinds[k][1] == "str" else None
        steps = 3
        w = round(2 + 7 * float(torch.rand((), generator=gen)), 2)
        if k == unguided:
            w = round(uniform(gen, 0.0, 0.95), 2)
        seed = randint(gen, 0, 2**31 - 1)
        height, width = sizes[k]
        exp_latents, exp_images, exp_calls = _pipeline_run(pipe, sched_name, prompts, negative, steps, w, seed,
                                                           height, width)
        watch = _UNetWatch(pipe.unet, latent_hw=tuple(exp_latents.shape[-2:]), max_calls=4 * len(exp_calls) + 4)
        name = (f"generate(tiny-sd components with {sched_name}, prompt={prompts!r}, negative_prompt={negative!r}, "
                f"num_inference_steps={steps}, guidance_scale={w}, generator=Generator(seed {seed}), "
                f"height={height}, width={width})")
        try:
            with torch.random.fork_rng(devices=[]), _no_pipeline_call():
                out = fn(_components(pipe, sched_name), prompts, negative, steps, w, torch.Generator().manual_seed(seed),
                         height=height, width=width)
        except (NotImplementedError, CheckFailed):
            raise
        except Exception as exc:
            # the timesteps first: a wrong loop may crash at any scale, the guidance_scale <= 1 case included
            where = _first_difference(watch.calls, exp_calls, exp_latents.shape[0]) if watch.calls else ""
            if w <= 1 and "timesteps are" not in where:
                raise CheckFailed(f"Likely bug: guidance_scale <= 1 not handled: the pipeline then runs without CFG "
                                  f"(do_classifier_free_guidance = guidance_scale > 1): the prompts' embeddings alone, "
                                  f"one UNet batch of B, its prediction used as it is.\n{name} raised "
                                  f"{describe_exception(exc)}\nHint: {GENERATE_HINT}") from exc
            if "timesteps are" in where:
                raise CheckFailed(f"Likely bug: wrong timesteps.\n{name} raised {describe_exception(exc)}\n"
                                  f"where it first differs: {where}\nHint: {GENERATE_HINT}") from exc
            raise
        finally:
            watch.remove()
            changed = _changed(before, _fingerprint(pipe))
            if changed:
                _restore(pipe)
        if changed:
            raise CheckFailed(f"{name}: your generate changed the components in place ({', '.join(changed[:3])}"
                              f"{', ...' if len(changed) > 3 else ''}): a pipeline's parts are shared and must come "
                              f"out as they went in (no .to(...), .half(), in-place edits of weights or settings).")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise CheckFailed(f"{name}: expected a pair (images, latents), got {describe(out)}"
                              f"{' of length ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}.")
        images, latents = out
        if isinstance(latents, torch.Tensor) and isinstance(images, torch.Tensor) and \
                latents.shape == exp_images.shape and images.shape == exp_latents.shape:
            raise CheckFailed(f"{name}: you returned (latents, images); the order is (images, latents).")
        if isinstance(latents, torch.Tensor) and tuple(latents.shape) != tuple(exp_latents.shape):
            raise CheckFailed(f"{name}: latents of shape {tuple(latents.shape)}, expected {tuple(exp_latents.shape)} "
                              f"(B, unet.config.in_channels, height // f, width // f).\nHint: {GENERATE_HINT}")
        ok = isinstance(latents, torch.Tensor) and latents.dtype == exp_latents.dtype and \
            torch.allclose(latents.double(), exp_latents.double(), **TOL_GENERATE)
        if not ok:
            where = _first_difference(watch.calls, exp_calls, exp_latents.shape[0])
            bugs = _generate_bugs(pipe, sched_name, prompts, negative, steps, w, seed, height, width)
            assert_close(f"{name}: final latents", latents, exp_latents, **TOL_GENERATE, diagnose=bugs,
                         hint=f"where it first differs: {where}\n{GENERATE_HINT}")
        ok = isinstance(images, torch.Tensor) and images.shape == exp_images.shape and \
            images.dtype == exp_images.dtype and torch.allclose(images.double(), exp_images.double(), **TOL_GENERATE)
        if not ok:
            assert_close(f"{name}: images", images, exp_images, **TOL_GENERATE, diagnose=_image_bugs(pipe, exp_latents),
                         hint="the pipeline's decode (lab 05) and VaeImageProcessor.postprocess to [0, 1] (its denormalize).")


# --------------------------------------------------------------------------- img2img_timesteps

# The schedulers img2img_timesteps is judged on: order 1 with a begin index (Euler, DPM++ 2M),
# order 1 without one (DDIM, PNDM, whose list has n + 1 entries), order 2 (Heun: two entries per
# step, 2 n - 1 in all). (KDPM2, order 2 too, is left out: its constructor takes seconds.)
IMG2IMG_SCHEDULERS = {"DDIM": DDIMScheduler, "Euler": EulerDiscreteScheduler,
                      "DPM++ 2M": DPMSolverMultistepScheduler, "PNDM": PNDMScheduler,
                      "Heun": HeunDiscreteScheduler}
IMG2IMG_HINT = ("StableDiffusionImg2ImgPipeline.__call__, step 4: retrieve_timesteps sets the full n-step schedule, "
                "then get_timesteps keeps the steps strength asks for; read how it computes init_timestep and "
                "t_start (the rounding, the cap at n, positions counted in scheduler.order entries) and where it "
                "sets the begin index (only where the scheduler has set_begin_index).")
# Typical strengths (n, s) as people pass them, where counting the skipped steps as
# ceil(n * (1 - s)) gives another answer than diffusers' int(n * s) (1 - 0.7 is 0.30000000000000004
# in floating point): (10, 0.7), (20, 0.85), ... Only pairs whose float product n * s is not just
# below an integer (there int() and an exact decimal reading would disagree).
TYPICAL_STRENGTHS = [(n, s) for n in (10, 20, 25, 30, 40, 50) for s in [k / 20 for k in range(4, 20)]
                     if not (0 < round(n * s) - n * s < 1e-9) and math.ceil(n * (1 - s)) != n - min(int(n * s), n)]


def _img2img_scheduler(gen, name):
    """A scheduler of class `name` with a random training schedule and spacing."""
    spacing = choice(gen, ["leading", "trailing", "linspace"])
    config = dict(num_train_timesteps=choice(gen, [1000, randint(gen, 300, 999)]), timestep_spacing=spacing,
                  steps_offset=choice(gen, [0, 1]) if spacing == "leading" else 0,
                  beta_schedule=choice(gen, ["scaled_linear", "linear"]))
    if name == "PNDM":
        config["skip_prk_steps"] = True  # as Stable Diffusion ships it
    return IMG2IMG_SCHEDULERS[name](**config)


def _full_schedule(sched, n, device=None):
    fresh = type(sched).from_config(sched.config)
    fresh.set_timesteps(n, device=device)
    return fresh


def _img2img_bugs(sched, n, s):
    """What typical wrong img2img_timesteps return on these inputs (the timesteps only)."""
    full = _full_schedule(sched, n).timesteps
    order = sched.order
    k = min(int(n * s), n)
    skip = n - k
    bugs = []
    if order > 1:
        bugs.append((f"scheduler.order missing: {type(sched).__name__} has order {order}, {order} entries of "
                     f"scheduler.timesteps per step; positions count scheduler.order entries per step (get_timesteps' t_start).", full[skip:]))
    bugs += [
        ("you kept the FIRST steps of the schedule; img2img keeps the LAST k = int(n * strength) (the image enters "
         "part way down, at t_start, and the loop runs from there to the end).", full[:k * order]),
        ("strength read as the fraction of steps SKIPPED; it is the fraction RUN: k = int(n * strength) steps are "
         "kept, n - k skipped (strength 1 runs everything).", full[int(n * s) * order:]),
        (f"round(n * strength); diffusers rounds DOWN: int(n * strength) (here n * strength = {n * s!r}).",
         full[(n - min(round(n * s), n)) * order:]),
        ("set_timesteps(int(n * strength)), a coarser schedule of k steps; img2img keeps the last k steps of the "
         "n-step schedule: set_timesteps(n), then slice.", _full_schedule(sched, max(k, 1)).timesteps),
    ]
    skip_ceil = math.ceil(n * (1 - s))
    if skip_ceil != skip:
        bugs.append((f"you counted the skipped steps as ceil(n * (1 - strength)) = {skip_ceil}; in floating point "
                     f"1 - strength is not exact (n * (1 - {s!r}) = {n * (1 - s)!r}). Count the kept steps as "
                     f"get_timesteps does (here {k}).", full[skip_ceil * order:]))
    return bugs


def _call_img2img(fn, name, sched, n, s, device):
    try:
        if device is None:
            return fn(sched, n, s)
        return fn(sched, n, s, device)
    except NotImplementedError:
        raise
    except AttributeError as exc:
        if "set_begin_index" in str(exc) or "begin_index" in str(exc):
            raise CheckFailed(f"Likely bug: {type(sched).__name__} has no set_begin_index (DDIM, PNDM and DDPM look "
                              f"timesteps up by value): call it only where the scheduler has it, "
                              f"as get_timesteps checks.\n{name} raised "
                              f"{describe_exception(exc)}\nHint: {IMG2IMG_HINT}") from exc
        raise


@_quietly
def check_img2img_timesteps(fn, gen):
    """DDIM, Euler, DPM++ 2M, PNDM and Heun in random order, each with a random training
    schedule, spacing and offset, a random n and strength (one typical pair such as n = 10,
    s = 0.7, one strength 1.0, the others k + a fraction of a step), on a scheduler that was
    last set to another number of steps. Compared with retrieve_timesteps +
    StableDiffusionImg2ImgPipeline.get_timesteps on a twin scheduler and with the reference:
    the timesteps exactly, the number of steps (an integer), the scheduler's schedule and
    begin index afterwards."""
    names = [list(IMG2IMG_SCHEDULERS)[i] for i in torch.randperm(len(IMG2IMG_SCHEDULERS), generator=gen).tolist()]
    typical = randint(gen, 0, len(names) - 1)
    whole = choice(gen, [i for i, m in enumerate(names) if i != typical and m != "Heun"])  # Heun skips steps
    for i, sched_name in enumerate(names):
        sched = _img2img_scheduler(gen, sched_name)
        if i == typical:
            n, s = choice(gen, TYPICAL_STRENGTHS)
        else:
            n = randint(gen, 3, 30)
            if i == whole:
                s = 1.0
            else:  # k steps and a fraction of the next: rounding up and down disagree on the half above 0.5
                frac = uniform(gen, 0.55, 0.9) if i % 2 else uniform(gen, 0.1, 0.45)
                s = round((randint(gen, 1, n - 1) + frac) / n, 4)
        n_before = choice(gen, [m for m in (4, 7, 12, 40) if m != n])
        sched.set_timesteps(n_before)  # a scheduler used before, as a pipeline's is
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(0)
        device = choice(gen, [None, "cpu"])
        spec = (f"{sched_name} ({type(sched).__name__}, order {sched.order}, timestep_spacing="
                f"{sched.config.timestep_spacing!r}, num_train_timesteps={sched.config.num_train_timesteps}, last set "
                f"to {n_before} steps)")
        name = f"img2img_timesteps({spec}, num_inference_steps={n}, strength={s!r}" + \
            (")" if device is None else f", device={device!r})")

        twin = type(sched).from_config(sched.config)
        retrieve_timesteps(twin, n, device)
        theirs, theirs_k = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=twin), n, s,
                                                                        device)
        mine_sched = type(sched).from_config(sched.config)
        mine, mine_k = ref.img2img_timesteps(mine_sched, n, s, device)

        previous = sched.timesteps.clone()
        out = _call_img2img(fn, name, sched, n, s, device)
        full = twin.timesteps
        if not (sched.timesteps.shape == full.shape and torch.equal(sched.timesteps.cpu(), full.cpu())):
            now = sched.timesteps
            if now.shape == previous.shape and torch.equal(now.cpu(), previous.cpu()):
                why = (f"Likely bug: scheduler.set_timesteps(num_inference_steps) not called: the scheduler still holds "
                       f"its previous {n_before}-step schedule; img2img_timesteps sets it (retrieve_timesteps in the "
                       f"pipeline, just before get_timesteps).\n")
            elif len(now) == len(_full_schedule(sched, max(min(int(n * s), n), 1)).timesteps) and n * s < n:
                why = ("Likely bug: set_timesteps(int(n * strength)), a coarser schedule of k steps; img2img keeps the "
                       "last k steps of the n-step schedule: set_timesteps(n), then slice.\n")
            else:
                why = ""
            raise CheckFailed(f"{why}{name}: afterwards scheduler.timesteps has {len(now)} entries, expected the full "
                              f"{n}-step schedule ({len(full)} entries): call scheduler.set_timesteps(num_inference_steps) "
                              f"and slice a copy, do not change the scheduler's list.\nHint: {IMG2IMG_HINT}")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise CheckFailed(f"{name}: expected a pair (timesteps, num_steps_run), got {describe(out)}"
                              f"{' of length ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}.")
        got, got_k = out
        assert_close(f"{name}: timesteps", got, mine, atol=0, rtol=0, hint=IMG2IMG_HINT,
                     diagnose=_img2img_bugs(sched, n, s))
        assert_close(f"{name}: timesteps vs StableDiffusionImg2ImgPipeline.get_timesteps", got, theirs, atol=0, rtol=0)
        k = as_number(f"{name}: num_steps_run", got_k, integer=True)
        if k != theirs_k:
            why = {len(theirs): f"that is len(timesteps); with {type(sched).__name__} the list has "
                                f"{len(theirs)} entries for {theirs_k} steps: return the number of STEPS run, n - "
                                f"skipped.",
                   n - theirs_k: "that is the number of steps SKIPPED; return the number run, n - skipped.",
                   n: "that is n; img2img runs only the last int(n * strength) steps."}.get(k)
            raise CheckFailed(f"{'Likely bug: ' + why if why else ''}\n{name}: num_steps_run {k}, expected {theirs_k} "
                              f"(StableDiffusionImg2ImgPipeline.get_timesteps' second value).\nHint: {IMG2IMG_HINT}"
                              .lstrip())
        if hasattr(twin, "set_begin_index"):
            begin, expected = sched.begin_index, twin.begin_index
            if begin != expected:
                if begin is None:
                    why = ("set_begin_index not called, or called BEFORE set_timesteps (which resets it to None): "
                           "a stateful scheduler would start its sigmas at the first entry, not at t_start.")
                elif expected and begin == expected // sched.order and sched.order > 1:
                    why = (f"begin index without scheduler.order: {type(sched).__name__} has {sched.order} entries "
                           f"per step, so t_start sits at (n - k) * order.")
                else:
                    why = "the begin index is the position of t_start in scheduler.timesteps."
                raise CheckFailed(f"Likely bug: {why}\n{name}: scheduler.begin_index is {begin}, expected {expected} "
                                  f"(as after StableDiffusionImg2ImgPipeline.get_timesteps).\nHint: {IMG2IMG_HINT}")
        assert mine_k == theirs_k and torch.equal(mine, theirs), "reference differs from diffusers"
