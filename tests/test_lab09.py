"""Lab 09 (ControlNet): the reference equals diffusers' pipeline, passes its checks, and every
check is proven able to fail: each planted bug below fails with its specific hint."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.checks import lab09_controlnet as checks
from labtools import checker
from helpers.checks._core import CheckFailed
from helpers.solutions import lab09_controlnet as ref

SEEDS = [0, 1, 2, 7, 2024]
NAMES = ["zero_conv", "controlnet_unet_step", "make_control_image", "controlnet_keep", "guess_mode_scales",
         "ip_adapter_attention"]

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


_run, _fails = checker(checks)  # tests/labtools.py
run = _run


def fails(name, fn, phrase, seeds=(0, 1)):  # two seeds: these checks run real models
    _fails(name, fn, phrase, seeds)


# --------------------------------------------------------------------------- the reference

@pytest.fixture(scope="module")
def tiny_pipe():
    """tiny-sd + tiny-controlnet as a StableDiffusionControlNetPipeline (weights loaded directly,
    so this test does not depend on the zoo's manifest)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from helpers.zoo import ASSETS, load_pipeline
    sd = load_pipeline("tiny-sd", device="cpu")
    cn = ControlNetModel.from_pretrained(ASSETS / "tiny-controlnet", local_files_only=True).eval()
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet, controlnet=cn,
        scheduler=sd.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scale", [0.7, 1.0])
def test_reference_equals_the_pipelines_own_call(tiny_pipe, scale):
    """Record every UNet and ControlNet call of a real pipeline run (guidance on, 2 prompts with
    different maps) and recompute the UNet's output with the reference: bit for bit."""
    import PIL.Image

    from helpers import shapes
    pipe = tiny_pipe
    batch = shapes.make_batch(2, seed=3)
    masks = batch["mask"]  # (2, 1, 64, 64)
    pil = [PIL.Image.fromarray((m[0].numpy() * 255).astype("uint8")) for m in masks]
    calls, conds = [], []
    h1 = pipe.unet.register_forward_hook(lambda m, a, kw, out: calls.append((a, kw, out)), with_kwargs=True)
    h2 = pipe.controlnet.register_forward_pre_hook(lambda m, a, kw: conds.append(kw["controlnet_cond"]),
                                                   with_kwargs=True)
    try:
        pipe(batch["captions"], image=pil, num_inference_steps=3, guidance_scale=5.0,
             controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        h1.remove()
        h2.remove()
    assert len(calls) >= 3  # PNDM (tiny-sd's scheduler) makes one extra call
    control = ref.make_control_image(masks)
    assert torch.equal(torch.cat([control] * 2), conds[0])  # prepare_image's output, guidance-doubled
    with torch.no_grad():
        for args, kw, out in calls:
            x, t = args[0], args[1]
            mine = ref.controlnet_unet_step(pipe.unet, pipe.controlnet, x, t, kw["encoder_hidden_states"], control,
                                            scale)
            assert torch.equal(mine, out[0])


def test_fresh_controlnet_leaves_the_unet_exactly_unchanged(tiny_pipe):
    from diffusers import ControlNetModel

    fresh = ControlNetModel.from_unet(tiny_pipe.unet, conditioning_embedding_out_channels=(8, 16, 32, 32)).eval()
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 64, generator=g)
    image = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        alone = tiny_pipe.unet(x, 500, encoder_hidden_states=emb).sample
        assert torch.equal(ref.controlnet_unet_step(tiny_pipe.unet, fresh, x, 500, emb, image, 1.0), alone)


# --------------------------------------------------------------------------- planted bugs: zero_conv

def zc_variant(bug):
    def fn(c):
        conv = nn.Conv2d(c, c, 3 if bug == "3x3" else 1, padding=1 if bug == "3x3" else 0, bias=bug != "no_bias")
        if bug == "default_init":
            return conv
        nn.init.zeros_(conv.weight)
        if conv.bias is not None and bug != "bias_random":
            nn.init.zeros_(conv.bias)
        if bug == "frozen":
            conv.requires_grad_(False)
        return conv
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("default_init", "non-zero zero-conv"),
    ("bias_random", "non-zero zero-conv"),
    ("3x3", "not a 1x1 convolution"),
    ("frozen", "frozen"),
    ("no_bias", "no bias"),
])
def test_zero_conv_bugs(bug, phrase):
    fails("zero_conv", zc_variant(bug), phrase)


def test_zero_conv_hand_written_passes():
    for seed in SEEDS:
        run("zero_conv", zc_variant(None), seed)


# --------------------------------------------------------------------------- planted bugs: controlnet_unet_step

def step_variant(bug):
    """The pipeline's call written out independently, with one bug switched on."""
    def fn(unet, controlnet, latents, timestep, text_embeddings, control_image, conditioning_scale=1.0):
        s = conditioning_scale
        img = control_image * 2 - 1 if bug == "normalise" else control_image
        k = latents.shape[0] // img.shape[0]
        if bug == "not_doubled":
            pass
        elif bug == "interleave":
            img = img.repeat_interleave(k, dim=0)
        elif k > 1:
            img = torch.cat([img] * k)
        if bug == "unet_only":
            return unet(latents, timestep, encoder_hidden_states=text_embeddings).sample
        # passing the scale to the ControlNet is the pipeline's own way, and right
        down, mid = controlnet(latents, timestep, encoder_hidden_states=text_embeddings, controlnet_cond=img,
                               conditioning_scale=s if bug in (None, "twice") else 1.0, return_dict=False)
        if bug in ("mid_unscaled", "twice"):
            down = [d * s for d in down]
        if bug == "twice":
            mid = mid * s
        if bug in ("down_unscaled", "swap_mid", "reversed", "no_mid", "no_down", "not_doubled", "interleave",
                   "normalise"):
            mid = mid * s
            if bug != "down_unscaled":
                down = [d * s for d in down]
        if bug == "swap_mid":
            down, mid = [*down[:-1], mid], down[-1]
        if bug == "reversed":
            down = down[::-1]
        return unet(latents, timestep, encoder_hidden_states=text_embeddings,
                    down_block_additional_residuals=None if bug == "no_down" else down,
                    mid_block_additional_residual=None if bug == "no_mid" else mid).sample
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("mid_unscaled", "conditioning_scale not applied to the mid residual"),
    ("down_unscaled", "conditioning_scale not applied to the down residuals"),
    ("unscaled", "conditioning_scale not applied at all"),
    ("twice", "conditioning_scale applied twice"),
    ("swap_mid", "residuals added at the wrong blocks"),
    ("reversed", "residuals added at the wrong blocks"),
    ("no_mid", "residuals added at the wrong blocks"),
    ("not_doubled", "control image not doubled for the guidance batch"),
    ("interleave", "repeat_interleave"),
    ("normalise", "normalised to [-1, 1]"),
    ("unet_only", "residuals are ignored"),
    ("no_down", "residuals are ignored"),
])
def test_controlnet_unet_step_bugs(bug, phrase):
    fails("controlnet_unet_step", step_variant(bug), phrase)


def test_controlnet_unet_step_pipeline_style_passes():
    for seed in SEEDS[:3]:
        run("controlnet_unet_step", step_variant(None), seed)


# --------------------------------------------------------------------------- planted bugs: make_control_image

def img_variant(bug):
    def fn(mask):
        m = mask if mask.ndim == 4 else mask[:, None]
        m = m.float() if bug == "no_255" else (m.float() / 255 if m.dtype == torch.uint8 else m.float())
        if bug == "one_channel":
            return m
        m = m.repeat(1, 3, 1, 1)
        if bug == "normalise":
            return m * 2 - 1
        if bug == "inverted":
            return 1 - m
        if bug == "channels_last":
            return m.permute(0, 2, 3, 1)
        if bug == "float64":
            return m.double()
        return m
    return fn


@pytest.mark.parametrize("bug,phrase", [
    ("normalise", "normalised to [-1, 1]"),
    ("no_255", "not divided by 255"),
    ("one_channel", "one channel"),
    ("inverted", "inverted map"),
    ("channels_last", "channels last"),
    ("float64", "wrong dtype"),
])
def test_make_control_image_bugs(bug, phrase):
    fails("make_control_image", img_variant(bug), phrase)


def test_make_control_image_variant_passes():
    for seed in SEEDS:
        run("make_control_image", img_variant(None), seed)


# --------------------------------------------------------------------------- the control branch is large

@pytest.mark.parametrize("seed", range(12))
def test_control_image_in_the_wrong_rows_changes_the_output_far_beyond_tolerance(seed):
    """Issue 15: repeat_interleave instead of doubling the control image slipped by a hair (3 of 384
    values, 2e-5 against atol 1e-5 at seed 5): the check's conditioning embedding now makes the
    map matter, so on every seed the wrong rows move the output by far more than the tolerance."""
    from helpers.checks._core import make_generator
    gen = make_generator(seed, "controlnet_unet_step", "test")
    unet, cn, d = checks._models(gen)
    x, emb = torch.randn(4, 4, 4, 4, generator=gen), torch.randn(4, 5, d, generator=gen)
    image = checks._masks(gen, 2, 32).expand(-1, 3, -1, -1).contiguous()
    right = checks._pipeline_call(unet, cn, x, 500, emb, image, 0.5)
    wrong = checks._pipeline_call(unet, cn, x, 500, emb, image, 0.5, interleave=True)
    assert (right - wrong).abs().max().item() > 1000 * (checks.TOL["atol"] + checks.TOL["rtol"] * right.abs().max().item())


def test_interleave_fails_on_more_seeds():
    fails("controlnet_unet_step", step_variant("interleave"), "repeat_interleave", seeds=(3, 4, 5))


# --------------------------------------------------------------------------- controlnet_keep

def test_reference_keep_equals_the_pipelines_own_lines():
    for n, s, e, k in [(10, 0.0, 1.0, 1), (10, 0.3, 0.7, 1), (7, [0.0, 0.5], 1.0, 2), (5, 0.2, [0.8, 0.6, 1.0], 3)]:
        assert ref.controlnet_keep(n, s, e, k) == checks._diffusers_keep(n, s, e, k)


def test_keep_seen_by_a_real_pipeline_run(tiny_pipe):
    """The conditioning_scale the pipeline gives the ControlNet at each step is s * keep[i]."""
    seen = []
    h = tiny_pipe.controlnet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["conditioning_scale"]),
                                                       with_kwargs=True)
    try:
        tiny_pipe(["a red circle"], image=torch.zeros(1, 3, 64, 64), num_inference_steps=5, guidance_scale=1.0,
                  controlnet_conditioning_scale=0.5, control_guidance_start=0.2, control_guidance_end=0.8,
                  generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        h.remove()
    steps = len(seen)  # PNDM may add a step
    assert seen == [0.5 * w for w in ref.controlnet_keep(steps, 0.2, 0.8)]


def keep_variant(form):
    """Equivalent textbook forms (must pass) and typical bugs (must fail)."""
    import math

    import numpy as np

    def fn(n, start=0.0, end=1.0, k=1):
        many = (list, tuple)
        if not isinstance(start, many) and not isinstance(end, many):
            starts, ends = [start] * (k if form != "no_repeat" else 1), [end] * (k if form != "no_repeat" else 1)
        else:
            m = len(start) if isinstance(start, many) else len(end)
            starts = list(start) if isinstance(start, many) else [start] * m
            ends = list(end) if isinstance(end, many) else [end] * m
        if form != "no_checks":
            if len(starts) != len(ends) or (k > 1 and len(starts) != k and form != "no_repeat"):
                raise ValueError("lengths")
            if any(s >= e or s < 0 or e > 1 for s, e in zip(starts, ends)):
                raise ValueError("window")
        rows = []
        for i in range(n):
            row = []
            for s, e in zip(starts, ends):
                if form == "index":  # first and last kept step from the bounds
                    on = math.ceil(s * n) <= i and i + 1 <= math.floor(e * n)
                elif form == "multiply":
                    on = i >= s * n and i + 1 <= e * n
                elif form == "strict_start":
                    on = i / n > s and (i + 1) / n <= e
                elif form == "strict_end":
                    on = i / n >= s and (i + 1) / n < e
                elif form == "end_by_start":
                    on = i / n >= s and i / n <= e
                elif form == "inverted":
                    on = not (i / n >= s and (i + 1) / n <= e)
                else:
                    on = i / n >= s and (i + 1) / n <= e
                row.append(1.0 if on else 0.0)
            rows.append(row)
        if form == "numpy":  # vectorised, float64
            i = np.arange(n)[:, None]
            rows = ((i / n >= np.array(starts)) & ((i + 1) / n <= np.array(ends))).astype(np.float64).tolist()
        if form == "torch32":  # vectorised in float32, as a tensor per step
            i = torch.arange(n, dtype=torch.float32)[:, None]
            t = ((i / n >= torch.tensor(starts)) & ((i + 1) / n <= torch.tensor(ends))).float()
            return [r[0] for r in t] if k == 1 else list(t)
        if form == "always_lists":
            return rows
        if form == "no_repeat" and k > 1 and len(starts) == 1:
            return [r[0] for r in rows]
        return [r[0] for r in rows] if k == 1 else rows
    return fn


@pytest.mark.parametrize("form", [None, "index", "multiply", "numpy", "torch32"])
def test_keep_equivalent_forms_pass_30_seeds(form):
    for seed in range(30):
        run("controlnet_keep", keep_variant(form), seed)


@pytest.mark.parametrize("bug,phrase", [
    ("strict_start", "starts exactly at control_guidance_start is dropped"),
    ("strict_end", "ends exactly at control_guidance_end is dropped"),
    ("end_by_start", "judged by where the step starts"),
    ("inverted", "inverted"),
    ("always_lists", "a list per step for ONE ControlNet"),
    ("no_checks", "invalid window accepted"),
])
def test_keep_bugs(bug, phrase):
    fails("controlnet_keep", keep_variant(bug), phrase, seeds=(0, 1, 2))


def test_keep_lone_number_not_repeated_fails():
    with pytest.raises(CheckFailed):
        for seed in range(5):
            run("controlnet_keep", keep_variant("no_repeat"), seed)


# --------------------------------------------------------------------------- guess_mode_scales

def guess_variant(form):
    import math

    import numpy as np

    def fn(n, s=1.0):
        m = n + 1
        if form == "pow":
            return 10 ** torch.linspace(-1, 0, m) * s
        if form == "numpy":
            return torch.tensor(np.logspace(-1, 0, m) * s, dtype=torch.float32)
        if form == "exp":
            return torch.exp(torch.linspace(math.log(0.1), 0.0, m, dtype=torch.float64)).float() * s
        if form == "list_of_floats":
            return [s * 10 ** (-1 + k / n) for k in range(m)]
        if form == "linspace":
            return torch.linspace(0.1, 1.0, m) * s
        if form == "reversed":
            return torch.logspace(-1, 0, m).flip(0) * s
        if form == "no_scale":
            return torch.logspace(-1, 0, m)
        if form == "no_mid":
            return torch.logspace(-1, 0, n) * s
        return torch.logspace(-1, 0, m) * s
    return fn


@pytest.mark.parametrize("form", ["pow", "numpy", "exp"])
def test_guess_equivalent_forms_pass_30_seeds(form):
    from helpers.checks._core import make_generator
    for seed in range(30):  # the numeric cases (the model-backed case runs in the test below)
        gen = make_generator(seed, "guess_mode_scales", "test")
        for _ in range(4):
            checks._guess_case(guess_variant(form), checks.randint(gen, 1, 14), checks.uniform(gen, 0.01, 3.0))
    run("guess_mode_scales", guess_variant(form), 0)


@pytest.mark.parametrize("bug,phrase", [
    ("linspace", "linear scale"),
    ("reversed", "reversed"),
    ("no_scale", "conditioning_scale not applied"),
    ("no_mid", "one per down residual only"),
    ("list_of_floats", "expected a torch.Tensor"),
])
def test_guess_bugs(bug, phrase):
    fails("guess_mode_scales", guess_variant(bug), phrase, seeds=(0, 1))


# --------------------------------------------------------------------------- fixes: tuples, warnings

def test_keep_tuple_window_is_rejected_like_the_pipeline():
    """diffusers aligns lists only (isinstance(..., list)); a tuple of windows fails in check_inputs with a
    TypeError. The docstring says a tuple is not accepted, and the reference fails the same way."""
    with pytest.raises(TypeError):
        checks._diffusers_keep(10, (0.0, 0.2), 1.0, 2)
    with pytest.raises(TypeError):
        ref.controlnet_keep(10, (0.0, 0.2), 1.0, 2)
    assert "tuple" not in ref.controlnet_keep.__doc__.split("Args:")[1]  # the Args name lists only


def test_step_check_bug_probes_print_no_future_warning():
    """The check's typical-bug probes include diffusers' deprecated T2I-Adapter path (down residuals without a
    mid one), which raises a FutureWarning; the check silences it (the learner did not cause it)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckFailed):
            run("controlnet_unet_step", step_variant("unscaled"))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


# --------------------------------------------------------------------------- ip_adapter_attention

def ip_variant(form):
    """Equivalent correct forms (None: scaled_dot_product_attention; "classic": diffusers' AttnProcessor way;
    "einsum") and typical bugs."""
    import torch.nn.functional as F

    def fn(attn, hidden_states, text_states, image_states, to_k_ip, to_v_ip, scale=1.0):
        x, b, n = hidden_states, hidden_states.shape[0], hidden_states.shape[1]
        h = 1 if form == "one_head" else attn.heads
        q = attn.to_q(x)
        k, v = attn.to_k(text_states), attn.to_v(text_states)
        if form == "shared_kv":
            ki, vi = attn.to_k(image_states), attn.to_v(image_states)
        else:
            ki, vi = to_k_ip(image_states), to_v_ip(image_states)
        if form == "classic":  # diffusers' AttnProcessor: heads folded into the batch, get_attention_scores
            def att(q_, k_, v_):
                probs = attn.get_attention_scores(attn.head_to_batch_dim(q_), attn.head_to_batch_dim(k_), None)
                return attn.batch_to_head_dim(torch.bmm(probs, attn.head_to_batch_dim(v_)))
        elif form == "einsum":
            def att(q_, k_, v_):
                d = q_.shape[-1] // h
                qh, kh, vh = (t.reshape(b, -1, h, d) for t in (q_, k_, v_))
                w = torch.einsum("bnhd,blhd->bhnl", qh, kh).mul(d ** -0.5).softmax(-1)
                return torch.einsum("bhnl,blhd->bnhd", w, vh).reshape(b, n, h * d)
        else:
            def att(q_, k_, v_):
                d = q_.shape[-1] // h
                sp = lambda t: t.view(b, -1, h, d).transpose(1, 2)  # noqa: E731
                if form == "unscaled":
                    w = (sp(q_) @ sp(k_).transpose(-1, -2)).softmax(-1)
                    o = w @ sp(v_)
                else:
                    o = F.scaled_dot_product_attention(sp(q_), sp(k_), sp(v_))
                return o.transpose(1, 2).reshape(b, n, h * d)
        if form == "concat":
            z = att(q, torch.cat([k, ki], 1), torch.cat([v, scale * vi], 1))
        elif form == "text_scaled":
            z = scale * att(q, k, v) + att(q, ki, vi)
        elif form == "no_scale":
            z = att(q, k, v) + att(q, ki, vi)
        else:
            z = att(q, k, v) + scale * att(q, ki, vi)
        if form == "out_twice":
            out = attn.to_out[0](att(q, k, v)) + scale * attn.to_out[0](att(q, ki, vi))
        else:
            out = attn.to_out[1](attn.to_out[0](z))
        if form == "no_residual":
            return out
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor
    return fn


@pytest.mark.parametrize("form", [None, "classic", "einsum"])
def test_ip_adapter_attention_equivalent_forms_pass(form):
    for seed in SEEDS:
        run("ip_adapter_attention", ip_variant(form), seed)


def test_ip_adapter_attention_reference_passes():
    for seed in SEEDS:
        run("ip_adapter_attention", ref.ip_adapter_attention, seed)


@pytest.mark.parametrize("bug,phrase", [
    ("concat", "one softmax over the text and image tokens together"),
    ("text_scaled", "the scale multiplies the text attention"),
    ("no_scale", "the scale is not applied"),
    ("shared_kv", "the layer's own to_k / to_v"),
    ("out_twice", "through attn.to_out separately"),
    ("one_head", "a single head"),
    ("unscaled", "not divided by sqrt(head_dim)"),
    ("no_residual", "residual connection / rescale_output_factor"),
])
def test_ip_adapter_attention_bugs(bug, phrase):
    fails("ip_adapter_attention", ip_variant(bug), phrase)


def test_ip_adapter_attention_in_place_fails():
    def fn(attn, hidden_states, text_states, image_states, to_k_ip, to_v_ip, scale=1.0):
        out = ref.ip_adapter_attention(attn, hidden_states, text_states, image_states, to_k_ip, to_v_ip, scale)
        image_states.mul_(0)
        return out
    fails("ip_adapter_attention", fn, "in place")


# --------------------------------------------------------------------------- hard-coded answers, machinery

@pytest.mark.parametrize("name", NAMES)
def test_hard_coded_answer_fails(name):
    fixed = torch.zeros(2, 4, 4, 4)
    with pytest.raises(CheckFailed):
        run(name, lambda *a, **k: fixed.clone())


# --------------------------------------------------------------- the lab's measurement helper

def test_controlnet_scores_is_controlnet_accuracy_image_by_image(tiny_pipe):
    """helpers.evaluate.controlnet_scores (the lab's per-image measurement) generates the same
    images as controlnet_accuracy (same eval set, seeds and calls): its per-image numbers average
    to controlnet_accuracy's; pipeline kwargs reach the pipeline; a callable stands in for it."""
    from helpers import evaluate

    acc = evaluate.controlnet_accuracy(tiny_pipe, n=4, scale=0.8, steps=2, conflicting=True, seed=5)
    got = evaluate.controlnet_scores(tiny_pipe, n=4, steps=2, conflicting=True, seed=5, controlnet_conditioning_scale=0.8)
    assert got["iou"].shape == (4,) and got["images"].shape == (4, 3, 64, 64)
    assert got["iou"].mean().item() == pytest.approx(acc["mean_iou"], abs=1e-4)
    for key, of, name in [("color", "caption", "color"), ("position", "map", "position_map"), ("size", "map", "size_map"),
                          ("position", "caption", "position_caption"), ("size", "caption", "size_caption")]:
        assert got[of][key].dtype == torch.bool
        assert got[of][key].float().mean().item() == pytest.approx(acc[name], abs=1e-4)
    off = evaluate.controlnet_scores(tiny_pipe, n=4, steps=2, seed=5, controlnet_conditioning_scale=0.0)
    seen = []

    def spy(**kw):
        seen.append(kw)
        return tiny_pipe(**kw)

    on = evaluate.controlnet_scores(spy, n=4, steps=2, seed=5, controlnet_conditioning_scale=0.8)
    assert seen and seen[0]["controlnet_conditioning_scale"] == 0.8 and seen[0]["image"].shape == (4, 3, 64, 64)
    assert not torch.equal(off["images"], on["images"])  # the scale reached the pipeline


def test_time_calls_times_in_turns_and_keeps_the_fastest():
    """helpers.memory.time_calls (lab 09's cost table): every function once per round, in turn,
    and each one's smallest wall time."""
    import time

    from helpers.memory import time_calls
    order, durations = [], {"a": iter([0.3, 0.05, 0.2]), "b": iter([0.1, 0.25, 0.001])}

    def make(name):
        def call():
            order.append(name)
            time.sleep(next(durations[name]))
        return call

    best = time_calls({"a": make("a"), "b": make("b")}, "cpu", repeats=3)
    assert order == ["a", "b"] * 3
    assert set(best) == {"a", "b"}
    assert 0.05 <= best["a"] < 0.2 and 0.001 <= best["b"] < 0.1  # the fastest round of each, whatever its position
