"""Checks of Lab 09 (ControlNet): one ``check_<name>(fn, gen)`` per exercise.

Every check draws fresh inputs from ``gen`` and compares the learner's output with the
reference solution AND with diffusers on the same inputs:

- ``zero_conv``: the conv diffusers builds for each residual (``zero_module(nn.Conv2d(c, c, 1))``
  in ``ControlNetModel``), its output (zero) and its gradient (not zero) on random inputs;
- ``controlnet_unet_step``: a small random UNet2DConditionModel and a ControlNetModel made from
  it with ``from_unet`` whose zero convs are then filled with random numbers (a fresh
  ControlNet returns zeros, which would make every wiring bug invisible), called the way
  ``StableDiffusionControlNetPipeline.__call__`` calls them (``conditioning_scale`` passed to
  the ControlNet, the control image doubled by ``torch.cat`` for the guidance batch);
- ``make_control_image``: ``StableDiffusionControlNetPipeline.prepare_image`` on the same maps
  given as grey-scale PIL images, and ``helpers.zoo.control_image``;
- ``controlnet_keep``: the lines of the installed ``StableDiffusionControlNetPipeline.__call__``
  that build ``controlnet_keep`` (read with ``inspect`` and run on the same random windows), and
  ``check_inputs``' ValueErrors;
- ``guess_mode_scales``: ``torch.logspace`` as ``ControlNetModel.forward`` uses it, and the
  forward itself (its residuals with ``guess_mode=True`` against ``guess_mode=False``).
- ``ip_adapter_attention``: diffusers' ``IPAdapterAttnProcessor2_0`` called on a real
  ``Attention`` module (the ``attn2`` of a random UNet, and Attention layers with other widths,
  a residual connection and an output rescale), with random to_k_ip / to_v_ip, text and image
  tokens and scales (0 included: then the layer's plain ``AttnProcessor2_0``).

When the output matches what a typical bug returns, the message names that bug (the
``diagnose`` candidates below).
"""
from types import SimpleNamespace

import torch
from torch import nn

from helpers.checks._core import (require_raises, CheckFailed, as_numbers, assert_close, choice, describe,
                                  describe_exception, randint, randn, require, require_unchanged, uniform)
from helpers.solutions import lab09_controlnet as ref

LAB = "lab09"

TOL = dict(atol=1e-5, rtol=1e-4)

EQ_STEP = ("ControlNet (Zhang et al. 2023, sec. 3.2) as StableDiffusionControlNetPipeline.__call__'s denoising loop "
           "(step 8): the ControlNet call (controlnet_cond, conditioning_scale), its down and mid residuals, and the "
           "UNet call that takes both; ControlNetModel.forward's '# 6. scaling' shows which residuals "
           "conditioning_scale multiplies; under guidance (2B latents, B maps) the control image is doubled in the "
           "batch's [uncond; cond] order, as the pipeline's prepare_image does")
EQ_IMAGE = ("the pipeline's prepare_image on grey PIL images (its control_image_processor, a VaeImageProcessor "
            "with do_convert_rgb=True, do_normalize=False; read VaeImageProcessor.preprocess): RGB (3 equal "
            "channels), float32, uint8 values brought to [0, 1] and kept there, shape (B, 3, H, W)")


# --------------------------------------------------------------------------- zero_conv

def check_zero_conv(fn, gen):
    from diffusers.models.controlnets.controlnet import zero_module

    for _ in range(3):
        c = randint(gen, 1, 48)
        name = f"zero_conv({c})"
        conv = fn(c)
        require(isinstance(conv, nn.Conv2d), f"{name}: expected an nn.Conv2d, got {describe(conv)}.")
        theirs = zero_module(nn.Conv2d(c, c, kernel_size=1))  # what ControlNetModel builds
        require(tuple(conv.kernel_size) == tuple(theirs.kernel_size),
                f"Likely bug: not a 1x1 convolution.\n{name}: kernel_size {tuple(conv.kernel_size)}, expected (1, 1) "
                f"(a zero conv only mixes channels; read how ControlNetModel.__init__ builds controlnet_down_blocks).")
        require((conv.in_channels, conv.out_channels) == (c, c),
                f"{name}: expected {c} input and {c} output channels, got {conv.in_channels} -> {conv.out_channels}.")
        require(tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1,
                f"{name}: expected stride 1, dilation 1, groups 1 (the residual keeps the feature map's size); got "
                f"stride {tuple(conv.stride)}, dilation {tuple(conv.dilation)}, groups {conv.groups}.")
        require(conv.bias is not None,
                f"{name}: no bias. ControlNet's zero convs have a bias (nn.Conv2d's default), zero-initialised "
                f"like the weight.")
        for pname in ("weight", "bias"):
            p = getattr(conv, pname)
            require(torch.count_nonzero(p.detach()) == 0,
                    f"Likely bug: a non-zero zero-conv: the {pname} is not zero-initialised "
                    f"(max |{pname}| = {p.detach().abs().max().item():.3g}).\n{name}: nn.Conv2d initialises weight and "
                    f"bias randomly; both must start at zero, as diffusers' zero_module makes them. A non-zero "
                    f"zero conv makes a fresh ControlNet change the pretrained UNet's output before any training.")
            require(p.requires_grad,
                    f"Likely bug: the zero conv is frozen.\n{name}: {pname}.requires_grad is False. It is the part "
                    f"that learns: zero at the start, trained like the rest of the ControlNet copy.")
        # zero output for any input, non-zero gradient (the reason training can start)
        x = torch.randn(randint(gen, 1, 3), c, randint(gen, 2, 6), randint(gen, 2, 6), generator=gen)
        r = torch.randn(x.shape, generator=gen)
        conv.zero_grad(set_to_none=True)
        out = conv(x)
        assert_close(f"{name}(x)", out.detach(), torch.zeros_like(x), atol=0.0, rtol=0.0)
        (out * r).sum().backward()
        expected = torch.einsum("bohw,bihw->oi", r, x)[..., None, None]  # dL/dW = sum_pixels dL/dy x^T
        assert_close(f"{name}: gradient of sum(conv(x) * r) with respect to the weight", conv.weight.grad,
                     expected, atol=1e-4, rtol=1e-4,
                     hint="the gradient into a zero conv is dL/dy times its input, not zero: the weight must be a "
                          "trainable nn.Parameter used in forward.")


# --------------------------------------------------------------------------- controlnet_unet_step

def _models(gen):
    """A small random UNet and a ControlNet from it, zero convs (and the conditioning
    embedding's last conv, also zero-initialised in diffusers) filled with random numbers."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    c1 = choice(gen, (8, 16))
    d = choice(gen, (8, 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(randint(gen, 0, 2**31 - 1))
        unet = UNet2DConditionModel(
            sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(c1, 16, 16),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=d, attention_head_dim=4, norm_num_groups=4).eval()
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8)).eval()
        with torch.no_grad():
            for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
                conv.weight.normal_(0, 0.3)
                conv.bias.normal_(0, 0.1)
            # the conditioning embedding with PyTorch's default init barely depends on the map (its
            # biases dominate: two different maps changed the UNet's output by 4e-5), so a map given
            # to the wrong row slipped through; with gain 2 it changes the output by 0.2 or more
            for conv in cn.controlnet_cond_embedding.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.normal_(0, 2.0 / conv.weight[0].numel() ** 0.5)
                    conv.bias.normal_(0, 0.1)
    return unet, cn, d


def _masks(gen, b, hw):
    """b different random rectangles, (b, 1, hw, hw) in {0, 1}."""
    m = torch.zeros(b, 1, hw, hw)
    for i in range(b):
        y0, x0 = randint(gen, 0, hw // 2), randint(gen, 0, hw // 2)
        m[i, :, y0:y0 + randint(gen, 4, hw // 2), x0:x0 + randint(gen, 4, hw // 2)] = 1
        if i and torch.equal(m[i], m[i - 1]):  # two equal maps would hide a map given to the wrong row
            m[i] = 1 - m[i]
    return m


@torch.no_grad()
def _pipeline_call(unet, cn, x, t, emb, image, s, *, mid_scale=None, down_scale=None, interleave=False,
                   no_mid=False, swap_mid=False, normalise=False, no_controlnet=False):
    """The pipeline's two calls (conditioning_scale given to the ControlNet), or a typical bug."""
    if normalise:
        image = image * 2 - 1
    if x.shape[0] != image.shape[0]:
        k = x.shape[0] // image.shape[0]
        image = image.repeat_interleave(k, dim=0) if interleave else torch.cat([image] * k)
    if no_controlnet:
        return unet(x, t, encoder_hidden_states=emb).sample
    down, mid = cn(x, t, encoder_hidden_states=emb, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
    ds = s if down_scale is None else down_scale
    ms = s if mid_scale is None else mid_scale
    down, mid = [r * ds for r in down], mid * ms
    if swap_mid:
        down, mid = [*down[:-1], mid], down[-1]
    return unet(x, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                mid_block_additional_residual=None if no_mid else mid).sample


def _diagnose(unet, cn, x, t, emb, image, s):
    def call(**kw):
        import warnings
        try:
            with warnings.catch_warnings():  # the no-mid probe is diffusers' deprecated T2I-Adapter path:
                warnings.simplefilter("ignore", FutureWarning)  # its FutureWarning is ours, not the learner's
                return _pipeline_call(unet, cn, x, t, emb, image, s, **kw)
        except RuntimeError:  # a bug that crashes is explained where the learner's call fails
            return None
    out = [("conditioning_scale not applied to the mid residual: it scales the mid residual too (ControlNetModel."
            "forward, '# 6. scaling').",
            call(mid_scale=1.0)),
           ("conditioning_scale not applied to the down residuals: it scales every one of them.", call(down_scale=1.0)),
           ("conditioning_scale not applied at all: the pipeline multiplies every residual by it.",
            call(down_scale=1.0, mid_scale=1.0)),
           ("conditioning_scale applied twice (passed to the ControlNet AND multiplied afterwards).",
            call(down_scale=s * s, mid_scale=s * s)),
           ("mid residual not added: the UNet takes it as an argument of its own (read the pipeline's unet call).",
            call(no_mid=True)),
           ("residuals added at the wrong blocks: the mid residual went to the last skip connection and the last down "
            "residual to the mid block. Pass the ControlNet's lists as they come.", call(swap_mid=True)),
           ("the ControlNet's residuals are ignored: this is the UNet alone (diffusers adds them only when BOTH "
            "down_block_additional_residuals and mid_block_additional_residual are given).", call(no_controlnet=True)),
           ("control image normalised to [-1, 1]: ControlNet maps stay in [0, 1] (do_normalize=False).",
            call(normalise=True))]
    if x.shape[0] != image.shape[0] and image.shape[0] > 1:
        out.append(("control image doubled with repeat_interleave: the guidance batch is [all uncond; all cond], so "
                    "rows i and B + i need map i (see how prepare_image doubles it).", call(interleave=True)))
    return out


def _step_case(fn, gen, unet, cn, d, b, cfg, s, as_tensor):
    hw = 4
    n = 2 * b if cfg else b
    x = torch.randn(n, 4, hw, hw, generator=gen)
    emb = torch.randn(n, randint(gen, 3, 7), d, generator=gen)
    image = _masks(gen, b, 8 * hw).expand(-1, 3, -1, -1).contiguous()
    t_int = randint(gen, 0, 999)
    t = torch.tensor(t_int) if as_tensor else t_int
    name = (f"controlnet_unet_step(latents {tuple(x.shape)}, timestep={t!r}, text_embeddings {tuple(emb.shape)}, "
            f"control_image {tuple(image.shape)}, conditioning_scale={s:.3g})")
    try:
        with torch.no_grad():
            got = fn(unet, cn, x.clone(), t, emb.clone(), image.clone(), s)
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        if cfg and b > 1:
            raise CheckFailed(f"Likely bug: control image not doubled for the guidance batch.\n{name} raised "
                              f"{describe_exception(exc)}\nHint: latents and text_embeddings have 2B rows "
                              f"[uncond; cond], the control image B: double it in that order, as "
                              f"prepare_image does under guidance.") from exc
        raise CheckFailed(f"Likely bug: residuals added at the wrong blocks (their order or number changed).\n"
                          f"{name} raised {describe_exception(exc)}\nHint: pass the ControlNet's down residuals "
                          f"as one list in the order it returns them (one per UNet skip connection), and its mid "
                          f"residual as mid_block_additional_residual (both: given down residuals without a mid one, diffusers' "
                          f"UNet takes them for T2I-Adapter's intra-block residuals, which have other shapes).") from exc
    expected = _pipeline_call(unet, cn, x, t, emb, image, s)
    try:
        assert_close(name, got, expected, **TOL, hint=EQ_STEP)
    except CheckFailed:  # only now run the typical bugs, to name the one that matches
        assert_close(name, got, expected, **TOL, hint=EQ_STEP, diagnose=_diagnose(unet, cn, x, t, emb, image, s))
    with torch.no_grad():
        mine = ref.controlnet_unet_step(unet, cn, x, t, emb, image, s)
    assert_close(name + " (against the reference)", got, mine, **TOL, hint=EQ_STEP)


def check_controlnet_unet_step(fn, gen):
    unet, cn, d = _models(gen)
    scale = lambda: choice(gen, (0.35, 0.6, 1.4, 1.8)) + 0.1 * float(torch.rand((), generator=gen))  # noqa: E731
    _step_case(fn, gen, unet, cn, d, randint(gen, 2, 3), False, scale(), False)  # no guidance
    _step_case(fn, gen, unet, cn, d, randint(gen, 2, 3), True, scale(), True)    # guidance batch
    _step_case(fn, gen, unet, cn, d, 1, True, scale(), False)                    # one map, guidance
    _step_case(fn, gen, unet, cn, d, 2, True, 1.0, True)                         # the default scale
    # s = 0 is the UNet alone
    x = torch.randn(2, 4, 4, 4, generator=gen)
    emb = torch.randn(2, 5, d, generator=gen)
    image = _masks(gen, 2, 32).expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        got = fn(unet, cn, x, 10, emb, image, 0.0)
        alone = unet(x, 10, encoder_hidden_states=emb).sample
    assert_close("controlnet_unet_step(..., conditioning_scale=0.0) against the UNet alone", got, alone, **TOL,
                 hint="with s = 0 every residual is 0: the UNet's own output.")


# --------------------------------------------------------------------------- make_control_image

def _prepare_image(maps_u8, device="cpu"):
    """The pipeline's prepare_image on grey PIL images (no guidance doubling)."""
    import PIL.Image
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.image_processor import VaeImageProcessor

    proc = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)  # the pipeline's
    pil = [PIL.Image.fromarray(m) for m in maps_u8]
    b, (h, w) = len(pil), maps_u8[0].shape
    return StableDiffusionControlNetPipeline.prepare_image(
        SimpleNamespace(control_image_processor=proc), pil, w, h, b, 1, device, torch.float32)


def _maps(gen):
    """A random batch of one-channel maps: (levels (B, H, W) uint8, kind)."""
    from helpers import shapes

    b, h, w = randint(gen, 1, 4), 8 * randint(gen, 2, 8), 8 * randint(gen, 2, 8)
    m = torch.zeros(b, 1, h, w)
    for i in range(b):
        y0, x0 = randint(gen, 0, h // 2), randint(gen, 0, w // 2)
        m[i, :, y0:y0 + randint(gen, 3, h // 2), x0:x0 + randint(gen, 3, w // 2)] = 1
    return (m[:, 0] * 255).to(torch.uint8), (shapes.edges(m)[:, 0] * 255).to(torch.uint8)


def _image_case(fn, name, arg, levels):
    got = fn(arg.clone())
    expected = _prepare_image(levels.numpy())
    if isinstance(got, torch.Tensor) and got.shape != expected.shape:
        b, _, h, w = expected.shape
        if tuple(got.shape) in ((b, 1, h, w), (b, h, w)):
            raise CheckFailed(f"Likely bug: one channel: the ControlNet's conditioning embedding takes 3 (RGB).\n"
                              f"{name}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}. The pipeline "
                              f"converts a grey PIL image to RGB, but passes a 1-channel tensor on unchanged.")
        if tuple(got.shape) == (b, h, w, 3):
            raise CheckFailed(f"Likely bug: channels last.\n{name}: expected {tuple(expected.shape)} (B, 3, H, W), "
                              f"got {tuple(got.shape)}.")
    lv = levels.float()[:, None].expand(-1, 3, -1, -1)
    diag = [("normalised to [-1, 1]: the pipeline's control_image_processor has do_normalize=False; keep [0, 1].",
             expected * 2 - 1),
            ("uint8 values not divided by 255: the pipeline's images are in [0, 1].", lv),
            ("inverted map (1 - x): keep white where the map is on.", 1 - expected)]
    assert_close(name, got, expected, atol=1e-6, rtol=0, hint=EQ_IMAGE, diagnose=diag)


def check_make_control_image(fn, gen):
    from helpers.zoo import control_image

    for _ in range(2):
        masks, edges = _maps(gen)
        for levels, kind in ((masks, "mask"), (edges, "edge map")):
            as_float = (levels.float() / 255)[:, None]  # (B, 1, H, W) in {0, 1}
            _image_case(fn, f"make_control_image(float {kind} {tuple(as_float.shape)})", as_float, levels)
            _image_case(fn, f"make_control_image(bool {kind} {tuple(as_float.shape)})", as_float > 0.5, levels)
            _image_case(fn, f"make_control_image(uint8 0..255 {kind} {tuple(levels.shape)})", levels, levels)
            _image_case(fn, f"make_control_image(float {kind} {tuple(levels.shape)}, no channel dim)",
                        as_float[:, 0], levels)
    # grey levels (a soft map: depth-like), exactly representable as 8-bit
    b, h, w = randint(gen, 1, 3), 16, 24
    levels = torch.randint(0, 256, (b, h, w), generator=gen, dtype=torch.uint8)
    _image_case(fn, f"make_control_image(float grey levels {(b, 1, h, w)})", (levels.float() / 255)[:, None], levels)
    _image_case(fn, f"make_control_image(uint8 grey levels {(b, h, w)})", levels, levels)
    # the zoo's helper, which the notebook uses for tiny-controlnet, agrees
    m = (masks.float() / 255)[:, None]
    assert_close("make_control_image(mask) against helpers.zoo.control_image(mask)", fn(m), control_image(m),
                 atol=0, rtol=0, hint=EQ_IMAGE)


# --------------------------------------------------------------------------- controlnet_keep

EQ_KEEP = ("StableDiffusionControlNetPipeline.__call__: the block under '# align format for control guidance' "
           "(how a lone number is matched to the other list, or to K ControlNets) and the one under '# 7.2 Create "
           "tensor stating which controlnets to keep' (which steps count as inside a window, ties included; one "
           "number per step for K = 1, a list of K for K > 1); step i of N covers [i / N, (i + 1) / N]")


def _diffusers_keep(num_steps, start, end, k):
    """``controlnet_keep`` computed by the installed diffusers' own lines: the two blocks of
    ``StableDiffusionControlNetPipeline.__call__`` that align the windows and build the list,
    read with ``inspect`` and run on these inputs (a ControlNetModel, or a MultiControlNetModel
    of k nets, stands in for ``controlnet``: only its type and ``len(nets)`` are read)."""
    import inspect
    import textwrap

    from diffusers import ControlNetModel
    from diffusers.pipelines.controlnet import pipeline_controlnet as module

    src = inspect.getsource(module.StableDiffusionControlNetPipeline.__call__)

    def block(first, last, upto_last_line):
        i = src.rindex("\n", 0, src.index(first)) + 1
        j = src.index(last, i)
        j = src.index("\n", j) + 1 if upto_last_line else src.rindex("\n", 0, j) + 1
        return textwrap.dedent(src[i:j])

    code = (block("# align format for control guidance", "# 1. Check inputs", False)
            + block("controlnet_keep = []", "controlnet_keep.append(", True))
    if k == 1:
        net = ControlNetModel.__new__(ControlNetModel)
    else:
        net = module.MultiControlNetModel.__new__(module.MultiControlNetModel)
        object.__setattr__(net, "nets", [None] * k)
    scope = dict(vars(module), controlnet=net, timesteps=list(range(num_steps)),
                 control_guidance_start=start, control_guidance_end=end)
    exec(compile(code, "<diffusers StableDiffusionControlNetPipeline.__call__>", "exec"), scope)
    return scope["controlnet_keep"]


def _fraction(gen, n, low, high):
    """A window bound: mostly a step boundary k / N (where a tie decides), drawn only where every
    float form of the comparison agrees (k / N * N == k, in float32 too), else a random number."""
    import numpy as np

    if choice(gen, (True, True, False)):
        ks = [k for k in range(low, high + 1)
              if (k / n) * n == k and np.float32(k) / np.float32(n) == np.float32(k / n)]
        if ks:
            return choice(gen, ks) / n
    return round(uniform(gen, low / n, high / n), 6)


def _window(gen, n):
    s = _fraction(gen, n, 0, n - 1) if choice(gen, (True, True, False)) else 0.0
    e = _fraction(gen, n, 0, n) if choice(gen, (True, True, False)) else 1.0
    if e < s:  # a valid window: start < end (bounds kept as drawn: no new rounding at a tie)
        s, e = e, s
    if e == s:
        e = 1.0 if s < 1.0 else e
    if e <= s:
        s, e = 0.0, 1.0
    return s, e


def _keep_bugs(n, starts, ends, k):
    """What typical bugs return, on the aligned windows."""
    def make(rule):
        rows = [[1.0 if rule(i, s, e) else 0.0 for s, e in zip(starts, ends)] for i in range(n)]
        return [r[0] if k == 1 else r for r in rows]
    return [
        ("a step that starts exactly at control_guidance_start is dropped: in the pipeline a tie counts as inside "
         "(read the comparison in step 7.2).", make(lambda i, s, e: i / n > s and (i + 1) / n <= e)),
        ("a step that ends exactly at control_guidance_end is dropped: in the pipeline a tie counts as inside "
         "(read the comparison in step 7.2).", make(lambda i, s, e: i / n >= s and (i + 1) / n < e)),
        ("the window's end is judged by where the step starts (i / N <= end): the pipeline requires the whole "
         "step inside.", make(lambda i, s, e: i / n >= s and i / n <= e)),
        ("the window's start is judged by where the step ends ((i + 1) / N >= start): the pipeline requires "
         "the step to START inside the window.", make(lambda i, s, e: (i + 1) / n >= s and (i + 1) / n <= e)),
        ("the weights are inverted: 1.0 means the ControlNet is ON for that step.",
         make(lambda i, s, e: not (i / n >= s and (i + 1) / n <= e))),
        ("steps counted from 1 (i + 1 and i + 2 over N): step i (0-based) covers [i / N, (i + 1) / N].",
         make(lambda i, s, e: (i + 1) / n >= s and (i + 2) / n <= e)),
    ]


def _keep_str(rows):
    if rows and isinstance(rows[0], list):
        return "[" + ", ".join("".join(str(int(v)) for v in r) for r in rows) + "] (per step: one digit per ControlNet)"
    return "".join(str(int(v)) for v in rows) + " (one digit per step)"


def _keep_case(fn, n, start, end, k):
    name = f"controlnet_keep({n}, {start!r}, {end!r}, num_controlnets={k})"
    expected = _diffusers_keep(n, start, end, k)
    mine = ref.controlnet_keep(n, start, end, k)
    assert mine == expected, f"the reference disagrees with diffusers on {name}"  # the check's own sanity
    got = fn(n, start, end, k)
    require(isinstance(got, (list, tuple)) or (isinstance(got, torch.Tensor) and got.ndim >= 1),
            f"{name}: expected a list of {n} entries (one per step), got {describe(got)}.")
    require(len(got) == n, f"{name}: expected {n} entries (one per step), got {len(got)}.")
    if k == 1:
        if isinstance(got[0], (list, tuple)):
            raise CheckFailed(f"Likely bug: a list per step for ONE ControlNet.\n{name}: entry 0 is {got[0]!r}; with "
                              f"one ControlNet the pipeline keeps keeps[0], a number per step.\nHint: {EQ_KEEP}.")
        values = list(as_numbers(name, got, n))
    else:
        values = []
        for i, row in enumerate(got):
            if not isinstance(row, (list, tuple, torch.Tensor)) or (isinstance(row, torch.Tensor) and row.ndim != 1):
                raise CheckFailed(f"Likely bug: one number per step for {k} ControlNets.\n{name}: entry {i} is "
                                  f"{describe(row)}; with several ControlNets each step holds a list of {k} weights, "
                                  f"one per ControlNet.\nHint: {EQ_KEEP}.")
            values.append(list(as_numbers(f"{name}, entry {i}", row, k)))
    if values != expected:
        bug = next((hint for hint, cand in _keep_bugs(n, *_aligned(start, end, k), k) if cand == values), None)
        first = next(i for i, (a, b) in enumerate(zip(values, expected)) if a != b)
        raise CheckFailed((f"Likely bug: {bug}\n" if bug else "")
                          + f"{name}:\n  got      {_keep_str(values)}\n  expected {_keep_str(expected)}\n"
                          f"  first difference at step {first}: got {values[first]!r}, expected {expected[first]!r} "
                          f"(step {first} covers [{first}/{n}, {first + 1}/{n}] of the steps).\nHint: {EQ_KEEP}.")


def _aligned(start, end, k):
    many = list  # the pipeline aligns lists only (isinstance(..., list)), as the docstring says
    if isinstance(start, many) and not isinstance(end, many):
        return list(start), [end] * len(start)
    if isinstance(end, many) and not isinstance(start, many):
        return [start] * len(end), list(end)
    if not isinstance(start, many):
        return [start] * k, [end] * k
    return list(start), list(end)


def _keep_raises(fn, n, start, end, k, why):
    require_raises(f"controlnet_keep({n}, {start!r}, {end!r}, num_controlnets={k})", lambda: fn(n, start, end, k),
                   f"{why}, as the pipeline's check_inputs", likely="Likely bug: an invalid window accepted.\n")


def check_controlnet_keep(fn, gen):
    _keep_case(fn, 10, 0.0, 1.0, 1)  # the default: every step
    _keep_case(fn, 10, 0.0, 0.5, 1)  # the lab's halves
    _keep_case(fn, 10, 0.5, 1.0, 1)
    for _ in range(6):  # one ControlNet, random windows (step boundaries included)
        n = randint(gen, 1, 30)
        _keep_case(fn, n, *_window(gen, n), 1)
    for _ in range(4):  # several ControlNets: lists, and a lone number repeated
        n, k = randint(gen, 2, 25), randint(gen, 2, 3)
        windows = [_window(gen, n) for _ in range(k)]
        starts, ends = [w[0] for w in windows], [w[1] for w in windows]
        form = choice(gen, ("lists", "number start", "number end", "numbers"))
        if form == "number start":
            starts = min(starts)  # below every end: each window had start < end
        elif form == "number end":
            ends = max(ends)
        elif form == "numbers":
            starts, ends = windows[0]
        _keep_case(fn, n, starts, ends, k)
    n = randint(gen, 3, 20)  # one ControlNet given lists of one window
    s, e = _window(gen, n)
    _keep_case(fn, n, [s], [e], 1)
    # invalid windows: check_inputs' ValueErrors
    n = randint(gen, 2, 20)
    _keep_raises(fn, n, 0.6, 0.4, 1, "start >= end")
    _keep_raises(fn, n, 0.5, 0.5, 1, "start >= end")
    _keep_raises(fn, n, -0.1, 0.5, 1, "start < 0")
    _keep_raises(fn, n, 0.0, 1.2, 1, "end > 1")
    _keep_raises(fn, n, [0.0, 0.2], [1.0, 0.8, 0.9], 3, "start and end lists of different lengths")
    _keep_raises(fn, n, [0.0, 0.2, 0.1], [1.0, 0.8, 0.9], 2, "3 windows for 2 ControlNets")


# --------------------------------------------------------------------------- guess_mode_scales

EQ_GUESS = ("ControlNetModel.forward, '# 6. scaling', its guess_mode branch: N + 1 float32 factors times s, the "
            "first N for the down residuals in order, the last for the mid one (read the torch call there: "
            "its endpoints and its spacing)")


def _guess_bugs(n, s):
    import math
    m = n + 1
    return [("evenly spaced in linear scale (linspace from 0.1 to 1): the factors are evenly spaced in LOG "
             "scale.", torch.linspace(0.1, 1.0, m) * s),
            ("reversed: your first factor is the largest and your last the smallest; read which end of the "
             "progression the shallowest residual gets.",
             torch.logspace(-1, 0, m).flip(0) * s),
            ("conditioning_scale not applied: every factor includes s.", torch.logspace(-1, 0, m)),
            ("natural log scale (base e): the factors go from 10^-1 to 10^0 (torch.logspace's base is 10).",
             torch.logspace(-1, 0, m, base=math.e) * s),
            ("the exponents run from 0 to 1: from 10^-1 (0.1) to 10^0 (1), times s.", torch.logspace(0, 1, m) * s)]


def _guess_case(fn, n, s):
    name = f"guess_mode_scales({n}, conditioning_scale={s:g})"
    got = fn(n, s)
    expected = torch.logspace(-1, 0, n + 1) * s  # (N + 1,), what ControlNetModel.forward computes
    if isinstance(got, torch.Tensor) and got.shape == (n,):
        raise CheckFailed(f"Likely bug: {n} factors, one per down residual only.\n{name}: expected shape ({n + 1},): "
                          f"the {n} down factors AND the mid one (the last), N + 1 points in the logspace.\n"
                          f"Hint: {EQ_GUESS}.")
    truth = torch.logspace(-1, 0, n + 1, dtype=torch.float64) * s  # float64 ground truth
    tol = dict(atol=1e-7 * max(abs(s), 1e-3), rtol=1e-6)  # float32 rounding of values up to |s|
    assert_close(name + " against the float64 ground truth", got, truth.float(), **tol, hint=EQ_GUESS,
                 diagnose=_guess_bugs(n, s))
    assert_close(name + " against diffusers' torch.logspace", got, expected, **tol, hint=EQ_GUESS)
    assert_close(name + " (against the reference)", got, ref.guess_mode_scales(n, s), **tol, hint=EQ_GUESS)


def check_guess_mode_scales(fn, gen):
    for _ in range(4):
        _guess_case(fn, randint(gen, 1, 14), choice(gen, (1.0, round(uniform(gen, 0.1, 2.0), 3))))
    _guess_case(fn, 12, 1.0)  # SD 1.5's twelve down residuals
    # ControlNetModel.forward itself: its guess-mode residuals are the normal ones times the factors
    unet, cn, d = _models(gen)
    x = torch.randn(2, 4, 4, 4, generator=gen)
    emb = torch.randn(2, 5, d, generator=gen)
    image = _masks(gen, 2, 32).expand(-1, 3, -1, -1).contiguous()
    s = round(uniform(gen, 0.3, 1.7), 3)
    with torch.no_grad():
        plain = cn(x, 10, encoder_hidden_states=emb, controlnet_cond=image, conditioning_scale=1.0, return_dict=False)
        guess = cn(x, 10, encoder_hidden_states=emb, controlnet_cond=image, conditioning_scale=s, guess_mode=True,
                   return_dict=False)
    residuals, guessed = [*plain[0], plain[1]], [*guess[0], guess[1]]
    got = fn(len(plain[0]), s)
    factors = as_numbers(f"guess_mode_scales({len(plain[0])}, {s:g})", got, len(residuals))
    for i, (r, gr) in enumerate(zip(residuals, guessed)):
        which = "the mid residual" if i == len(residuals) - 1 else f"down residual {i}"
        top = gr.abs().max().item()
        assert_close(f"ControlNetModel(..., conditioning_scale={s:g}, guess_mode=True): {which} against the normal "
                     f"one times your factor {factors[i]:.7g}", r * factors[i], gr, atol=1e-6 * max(top, 1.0),
                     rtol=1e-5, hint=EQ_GUESS)


# --------------------------------------------------------------------------- ip_adapter_attention

EQ_IP = ("IP-Adapter (Ye et al. 2023, sec. 3.2, eq. 5) as IPAdapterAttnProcessor2_0.__call__ "
         "(diffusers/models/attention_processor.py): the text attention with the layer's to_q/to_k/to_v, a SECOND "
         "attention of the same queries over the image tokens with to_k_ip/to_v_ip (its own softmax, the same "
         "heads), added times the scale BEFORE attn.to_out; then the residual connection and rescale_output_factor "
         "as the processor's last lines")


def _mha(attn, q_in, kv_in, to_k, to_v, heads=None, scaled=True):
    """Multi-head attention of the layer's queries over kv_in (no output projection): (B, N, inner)."""
    h = attn.heads if heads is None else heads
    q, k, v = attn.to_q(q_in), to_k(kv_in), to_v(kv_in)
    b, n, inner = q.shape
    split = lambda t: t.view(b, -1, h, inner // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = q @ k.transpose(-1, -2)
    if scaled:
        w = w / (inner // h) ** 0.5
    return (w.softmax(-1) @ v).transpose(1, 2).reshape(b, n, inner)


def _finish(attn, out, x):
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


def _ip_bugs(attn, x, c, im, k_ip, v_ip, s):
    """What typical bugs return on the same inputs."""
    out = lambda t: _finish(attn, attn.to_out[1](attn.to_out[0](t)), x)  # noqa: E731
    text = _mha(attn, x, c, attn.to_k, attn.to_v)
    image = _mha(attn, x, im, k_ip, v_ip)

    class _Cat:  # keys/values of the text and the image tokens side by side: ONE softmax over both
        def __init__(self, text_proj, image_proj, image_scale=1.0):
            self.t, self.i, self.s = text_proj, image_proj, image_scale

        def __call__(self, states):
            return torch.cat([self.t(states[:, :c.shape[1]]), self.s * self.i(states[:, c.shape[1]:])], dim=1)

    both = torch.cat([c, im], dim=1)
    bugs = [
        ("one softmax over the text and image tokens together (concatenated keys and values): IP-Adapter's "
         "attention is DECOUPLED, two softmaxes whose outputs are added, so the image tokens do not take attention "
         "weight away from the text.", out(_mha(attn, x, both, _Cat(attn.to_k, k_ip), _Cat(attn.to_v, v_ip, s)))),
        ("one softmax over the text and image tokens together, the scale not applied: two separate softmaxes, "
         "the image one times the scale.", out(_mha(attn, x, both, _Cat(attn.to_k, k_ip), _Cat(attn.to_v, v_ip)))),
        ("the scale multiplies the text attention instead of the image one.", out(s * text + image)),
        ("the scale is not applied: the image attention is added times scale.", out(text + image)),
        ("the image tokens went through the layer's own to_k / to_v: they have their own projections, to_k_ip "
         "and to_v_ip (the 'decoupled' part of the adapter's weights).",
         out(text + s * _mha(attn, x, im, attn.to_k, attn.to_v))),
        ("the two attentions went through attn.to_out separately (to_out(text) + scale * to_out(image)): the "
         "processor adds them BEFORE the output projection, whose bias then counts once.",
         _finish(attn, attn.to_out[0](text) + s * attn.to_out[0](image), x)),
        ("a single head: split the projections into attn.heads heads, as the processor's view/transpose do.",
         out(_mha(attn, x, c, attn.to_k, attn.to_v, heads=1) + s * _mha(attn, x, im, k_ip, v_ip, heads=1))),
        ("the attention logits are not divided by sqrt(head_dim) (scaled_dot_product_attention does it).",
         out(_mha(attn, x, c, attn.to_k, attn.to_v, scaled=False) + s * _mha(attn, x, im, k_ip, v_ip, scaled=False))),
        ("the residual connection / rescale_output_factor of the layer are not applied (the processor's last "
         "lines).", attn.to_out[1](attn.to_out[0](text + s * image))),
    ]
    return bugs


def _ip_layers(gen):
    """Real diffusers Attention layers: the attn2 of a random SD-shaped UNet, and layers built
    directly with other widths, a residual connection and an output rescale."""
    from diffusers.models.attention_processor import Attention

    unet, _, d = _models(gen)
    attn2 = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    layers = [(choice(gen, attn2), d)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(randint(gen, 0, 2**31 - 1))
        c, d2 = choice(gen, (12, 16, 24)), choice(gen, (8, 20))
        layers.append((Attention(query_dim=c, cross_attention_dim=d2, heads=choice(gen, (2, 4)), dim_head=6), d2))
        layers.append((Attention(query_dim=c, cross_attention_dim=d2, heads=3, dim_head=4, bias=True,
                                 residual_connection=True, rescale_output_factor=uniform(gen, 1.5, 3.0)), d2))
    return [(a.eval(), dim) for a, dim in layers]


def _ip_case(fn, gen, attn, d, s):
    from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

    c = attn.to_q.in_features
    b, n, n_text, t = randint(gen, 1, 3), randint(gen, 4, 20), randint(gen, 3, 9), choice(gen, (4, randint(gen, 2, 6)))
    inner = attn.to_q.out_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(randint(gen, 0, 2**31 - 1))
        proc = IPAdapterAttnProcessor2_0(hidden_size=inner, cross_attention_dim=d, num_tokens=(t,), scale=s)
        with torch.no_grad():  # weights large enough that the image attention matters
            for lin in (proc.to_k_ip[0], proc.to_v_ip[0]):
                lin.weight.normal_(0, 1.0 / d ** 0.5)
    k_ip, v_ip = proc.to_k_ip[0], proc.to_v_ip[0]
    x = randn(gen, (b, n, c))
    text = randn(gen, (b, n_text, d))
    image = 2 * randn(gen, (b, t, d))  # distinct from the text tokens, sharper softmax
    name = (f"ip_adapter_attention(attn (heads={attn.heads}, inner {inner}, residual_connection="
            f"{attn.residual_connection}, rescale_output_factor={attn.rescale_output_factor:.3g}), hidden_states "
            f"{tuple(x.shape)}, text_states {tuple(text.shape)}, image_states {tuple(image.shape)}, scale={s:.3g})")
    before = [x.clone(), text.clone(), image.clone()]
    with torch.no_grad():
        got = fn(attn, x, text, image, k_ip, v_ip, s)
        expected = proc(attn, x, encoder_hidden_states=(text, [image[:, None]]))  # (B, 1 image, T, D)
    require_unchanged(name, before, [x, text, image])
    top = max(expected.abs().max().item(), 1.0)
    tol = dict(atol=2e-5 * top, rtol=1e-4)
    try:
        assert_close(name + " against IPAdapterAttnProcessor2_0", got, expected, **tol, hint=EQ_IP)
    except CheckFailed:
        with torch.no_grad():
            bugs = _ip_bugs(attn, x, text, image, k_ip, v_ip, s)
        assert_close(name + " against IPAdapterAttnProcessor2_0", got, expected, **tol, hint=EQ_IP, diagnose=bugs)
    if s == 0:
        with torch.no_grad():
            plain = AttnProcessor2_0()(attn, x, encoder_hidden_states=text)
        assert_close(name + " against the layer without the adapter (AttnProcessor2_0): at scale 0 the processor "
                     "skips the image branch", got, plain, **tol, hint=EQ_IP)
    with torch.no_grad():
        mine = ref.ip_adapter_attention(attn, x, text, image, k_ip, v_ip, s)
    assert_close(name + " (against the reference)", got, mine, **tol, hint=EQ_IP)


def check_ip_adapter_attention(fn, gen):
    scale = lambda: round(choice(gen, (0.3, 0.6, 1.3)) + 0.2 * uniform(gen, 0, 1), 3)  # noqa: E731
    layers = _ip_layers(gen)
    for attn, d in layers:
        _ip_case(fn, gen, attn, d, scale())
    _ip_case(fn, gen, *layers[0], 1.0)  # the default
    _ip_case(fn, gen, *layers[0], 0.0)  # the adapter off: the plain layer
