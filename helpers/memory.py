"""Peak-memory measurement and analytic estimates (Lab 10).

    m = measure_peak(lambda: pipe(prompt, height=256, width=256), resident=weights_bytes)
    m.peak, m.extra, m.seconds, m.method, m.at_peak      # bytes, bytes, s, how, ops at the peak (CPU)
    conv_kernels(lambda: conv(x))                         # ("aten::mkldnn_convolution",): which library ran it
    im2col_bytes(conv, batch, height, width)              # PyTorch's im2col kernel's columns buffer
    seconds = time_call(lambda: pipe(prompt), device)
    models = real_scale_models()                          # SD 1.5, SDXL, FLUX.1-dev on the meta device
    rows = real_scale_table(estimate_peak_memory, param_bytes)

Measuring: ``extra`` is the most memory the call holds at any moment above what was allocated
when it started, and ``peak = resident + extra``, where ``resident`` is what the caller says was
already there and belongs to the measured footprint (the weights; 0 with CPU offload, whose
weights arrive during the call). Counting the weights this way, and not everything allocated,
keeps other objects alive in a notebook out of the number.

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before: bytes held by live tensors. Neither counts the CUDA context
  nor the allocator's cached but free blocks (``nvidia-smi`` shows those too). A small matrix
  product runs first: cuBLAS allocates its workspace (32 MiB on an H100/H200) at a device's first
  matrix product and keeps it, so a first product inside the measured call would count it as
  the call's. The workspaces cuDNN takes for a convolution during the call are counted: they
  are the call's.
- CPU: PyTorch's profiler with ``profile_memory=True`` records every allocation and free of the
  CPU allocator during the call, with its time; the running sum of those sizes, at its
  maximum, is ``extra``. The profiler also says which operators were running at that moment
  (``at_peak``).

Estimating: the formula is the lab's exercise `estimate_peak_memory` (helpers/solutions/
lab10_memory.py); the functions here only feed it the facts of real models, read from their
published configs instantiated on the meta device (no weights, no download): parameter counts,
the heads and token grid of the largest self-attention, the VAE decoder's channels.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["MiB", "GiB", "fmt_bytes", "Measurement", "measure_peak", "time_call", "count_forwards", "attention_facts",
           "vae_decoder_channels", "RealModel", "real_scale_models", "real_scale_table", "PUBLISHED_PARAMS",
           "transfer_seconds", "CONV_KERNELS", "IM2COL", "conv_kernels", "im2col_bytes"]

MiB, GiB = 2**20, 2**30


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.00 GiB' (binary units, as nvidia-smi and torch report)."""
    n = float(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- measuring

@dataclass
class Measurement:
    """One measured call. Bytes are ints: ``peak = resident + extra`` (see the module docstring)."""

    peak: int
    extra: int
    seconds: float
    method: str
    at_peak: tuple = ()
    output: Any = field(default=None, repr=False)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_allocation_trace(prof) -> list[tuple[int, int]]:
    """(time_ns, +/- bytes) of every CPU allocator event the profiler recorded, in time order."""
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:  # pragma: no cover - builds without kineto
        raise RuntimeError("this torch build's profiler has no kineto results: CPU peak memory cannot be measured")
    events = [(e.start_ns(), e.nbytes()) for e in results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return sorted(events)


def _ops_at(prof, t_ns: int, depth: int = 3) -> tuple:
    """Names of the innermost operators running at time t_ns (outermost first)."""
    spans = [(e.start_ns(), e.end_ns(), e.name()) for e in prof.profiler.kineto_results.events()
             if e.name() != "[memory]" and e.start_ns() <= t_ns <= e.end_ns()]
    spans.sort(key=lambda s: (s[0], -s[1]))
    return tuple(name for _, _, name in spans[-depth:])


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for a while: the profiler's C++ side prints a line at
    every start and stop, and the CPU allocator a warning, that no setting turns off. Python's
    own exceptions are raised, not printed, so nothing a learner needs is lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # pragma: no cover - no fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _warm_up_cuda(device) -> None:
    """One small matrix product on ``device``: cuBLAS allocates its workspace (32 MiB on Hopper,
    through PyTorch's caching allocator) at the first product on a device and stream, and keeps
    it. Run before ``reset_peak_memory_stats`` so that a measured call is not charged for it."""
    a = torch.ones(8, 8, device=device)
    torch.addmm(a, a, a)  # addmm and mm: cuBLAS (and cuBLASLt, which shares the workspace)
    a @ a


def measure_peak(fn: Callable[[], Any], device=None, resident: int = 0) -> Measurement:
    """Run ``fn()`` once under ``torch.no_grad`` and measure its peak memory and wall time.

    Args:
        fn: the call to measure (no arguments).
        device: where ``fn`` computes: "cuda" measures GPU memory, anything else CPU memory.
            None: CUDA if available.
        resident: bytes already on the device that stay alive during the call and belong to
            what is measured (the weights); added to the measured extra so that ``peak`` is
            comparable to an estimate of the whole footprint.

    The garbage collector runs first. On CUDA, garbage of an earlier computation freed during
    the call would otherwise be subtracted from the call's own peak; on the CPU the profiler
    records no frees of blocks allocated before it started, so the peak is safe either way.

    Returns:
        a :class:`Measurement` (its ``output`` is what ``fn`` returned). The time includes
        the profiler's overhead on the CPU (a few percent): use :func:`time_call` for latency.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gc.collect()  # CUDA: earlier garbage freed during the call would be subtracted from its peak
    if device.type == "cuda":
        _warm_up_cuda(device)  # cuBLAS's one-time workspace belongs to no measured call
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()
        _sync(device)
        seconds = time.perf_counter() - t0
        extra = torch.cuda.max_memory_allocated(device) - before
        return Measurement(int(resident + extra), int(extra), seconds, "torch.cuda.max_memory_allocated", (), out)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():
        t0 = time.perf_counter()
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        seconds = time.perf_counter() - t0
    current = extra = 0
    t_peak = None
    for t_ns, nbytes in _cpu_allocation_trace(prof):
        current += nbytes
        if current > extra:
            extra, t_peak = current, t_ns
    at_peak = _ops_at(prof, t_peak) if t_peak is not None else ()
    return Measurement(int(resident + extra), int(extra), seconds, "torch.profiler(profile_memory=True)", at_peak, out)


# --------------------------------------------------------------------------- convolution kernels
# The aten operator a convolution reaches names the library that computes it; aten/src/ATen/native/
# Convolution.cpp (_select_conv_backend) picks it. On a CPU, float32: oneDNN where PyTorch is built
# with it (x86 and Linux-aarch64 wheels) and torch.backends.mkldnn.enabled, except small single
# images (N * C * H * W <= 20480); else NNPACK for batches of 16 or more; else PyTorch's own
# slow_conv2d (im2col + one matrix product), as on the macOS arm64 wheels at small batches.
CONV_KERNELS = {
    "aten::mkldnn_convolution": "oneDNN",
    "aten::_slow_conv2d_forward": "PyTorch's im2col kernel, slow_conv2d",
    "aten::_nnpack_spatial_convolution": "NNPACK",
    "aten::cudnn_convolution": "cuDNN",
    "aten::miopen_convolution": "MIOpen",
    "aten::_mps_convolution": "Metal (MPS)",
    "aten::_conv_depthwise2d": "PyTorch's depthwise kernel",
    "aten::slow_conv_dilated2d": "PyTorch's dilated im2col kernel",
}
IM2COL = "aten::_slow_conv2d_forward"


def conv_kernels(fn: Callable[[], Any]) -> tuple:
    """The convolution kernels (keys of :data:`CONV_KERNELS`) that ``fn()`` reaches, in the order
    of their first call, read from PyTorch's profiler (CPU-side operator events, so a CUDA
    convolution is named too). Runs ``fn`` once under ``torch.no_grad``."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls = sorted((e.start_ns(), e.name()) for e in prof.profiler.kineto_results.events() if e.name() in CONV_KERNELS)
    return tuple(dict.fromkeys(name for _, name in calls))


def im2col_bytes(conv: torch.nn.Conv2d, batch: int, height: int, width: int, dtype=None) -> int:
    """Bytes of the columns buffer PyTorch's im2col kernel (slow_conv2d, aten/src/ATen/native/
    ConvolutionMM2d.cpp) allocates to run the undilated ``conv`` on a (batch, C_in, height, width)
    input: each output pixel's receptive field unfolded, C_in / groups x kh x kw values per output
    pixel and image (one group at a time), in ``dtype`` (None: the weight's). 0 for a 1 x 1
    convolution with stride 1 and no padding, which reads its input in place. oneDNN, NNPACK and
    cuDNN allocate other scratch: measure it with :func:`measure_peak`."""
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    if isinstance(conv.padding, str):  # "same" (stride 1) or "valid"
        ph, pw = ((dh * (kh - 1) // 2, dw * (kw - 1) // 2) if conv.padding == "same" else (0, 0))
    else:
        ph, pw = conv.padding
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return 0
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    itemsize = (dtype or conv.weight.dtype).itemsize
    return batch * conv.in_channels // conv.groups * kh * kw * out_h * out_w * itemsize


def time_call(fn: Callable[[], Any], device=None, repeats: int = 1) -> float:
    """The smallest wall time (s) of ``repeats`` calls of ``fn()`` under ``torch.no_grad``,
    synchronising CUDA so that queued kernels are counted. Warm up before (the first call at a
    new shape pays for kernel selection, cuDNN autotuning or torch.compile)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


class ForwardCount:
    """What :func:`count_forwards` yields: ``n``, the forward calls counted so far."""

    def __init__(self) -> None:
        self.n = 0


@contextlib.contextmanager
def count_forwards(module: torch.nn.Module):
    """Count the forward calls of ``module`` inside a ``with`` block (a forward hook, removed on
    exit even after an error), e.g. how many decoder calls a tiled or sliced VAE decode makes::

        with count_forwards(vae.decoder) as calls:
            vae.decode(latents)
        calls.n
    """
    count = ForwardCount()

    def hook(*_):
        count.n += 1

    handle = module.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def time_calls(fns: dict, device=None, repeats: int = 10) -> dict:
    """{name: the smallest wall time (s) of ``fns[name]()``} over ``repeats`` rounds, each round
    calling every function once in turn (via :func:`time_call`): a burst of other work on the
    machine then slows all of them alike, and each minimum is taken under the same conditions,
    which a ratio of two separately timed calls does not get on a busy machine. Warm up before."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], time_call(fn, device, repeats=1))
    return best


def transfer_seconds(nbytes: int, gb_per_s: float = 25.0) -> float:
    """Seconds to copy ``nbytes`` over a host-to-GPU link of ``gb_per_s`` GB/s (10^9 bytes/s;
    25 is a realistic PCIe 4.0 x16 rate for pinned memory, about half of it for pageable)."""
    return nbytes / (gb_per_s * 1e9)


# --------------------------------------------------------------------------- facts read from a model

def attention_facts(denoiser) -> dict:
    """Heads and token-grid downsampling of the denoiser's LARGEST self-attention (the one with
    the most tokens), read from the module itself (works on the meta device).

    UNet2DConditionModel: the first down block with attentions; its level i runs at the
    latent size / 2**i. FluxTransformer2DModel: every block attends over all tokens; the
    pipeline packs 2 x 2 latent pixels into one token (`_pack_latents`), so attn_downsample = 2.
    """
    if hasattr(denoiser, "down_blocks"):
        for level, block in enumerate(denoiser.down_blocks):
            if getattr(block, "attentions", None):
                attn = block.attentions[0].transformer_blocks[0].attn1
                return {"heads": attn.heads, "attn_downsample": 2**level}
        raise ValueError("this UNet has no attention in its down blocks")
    if hasattr(denoiser, "transformer_blocks"):
        return {"heads": denoiser.transformer_blocks[0].attn.heads, "attn_downsample": 2}
    raise TypeError(f"unknown denoiser {type(denoiser).__name__}")


def vae_decoder_channels(vae) -> int:
    """Channels of the VAE decoder's widest full-resolution feature map: the input of its last
    up block (256 for SD/SDXL/FLUX's VAE, 32 for tiny-sd's)."""
    return vae.decoder.up_blocks[-1].resnets[0].in_channels


# --------------------------------------------------------------------------- real models, on the meta device
# Written out from the published config.json files (only the keys that differ from the classes'
# defaults, plus those that define the architecture); the parameter counts below are the
# published ones, and tests/test_memory.py checks that these configs reproduce them exactly.

SD15_UNET = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)
FLUX_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-dev, transformer/config.json
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56))
SD_VAE = dict(  # vae/config.json of SD 1.5 and SDXL (sample_size 512 / 1024 does not change the weights)
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
FLUX_VAE = dict(SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower: SD 1.5's text_encoder, SDXL's and FLUX's text_encoder
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_G = dict(  # OpenCLIP ViT-bigG/14 text tower: SDXL's text_encoder_2 (CLIPTextModelWithProjection)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(  # google/t5-v1_1-xxl encoder: FLUX's text_encoder_2 (T5EncoderModel)
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)

PUBLISHED_PARAMS = {  # parameter counts published for these checkpoints
    ("SD 1.5", "unet"): 859_520_964, ("SD 1.5", "text_encoder"): 123_060_480, ("SD 1.5", "vae"): 83_653_863,
    ("SDXL", "unet"): 2_567_463_684, ("SDXL", "text_encoder"): 123_060_480,
    ("SDXL", "text_encoder_2"): 694_659_840, ("SDXL", "vae"): 83_653_863,
    ("FLUX.1-dev", "transformer"): 11_901_408_320, ("FLUX.1-dev", "text_encoder"): 123_060_480,
    ("FLUX.1-dev", "text_encoder_2"): 4_762_310_656, ("FLUX.1-dev", "vae"): 83_819_683,
}


@dataclass
class RealModel:
    """A real pipeline, sized from its components built on the meta device."""

    name: str
    repo: str
    components: dict  # name -> nn.Module on the meta device
    denoiser: str  # "unet" or "transformer"
    dtype: torch.dtype  # the dtype it is usually run in
    vae_dtype: torch.dtype  # the dtype its VAE decodes in
    cfg: bool  # classifier-free guidance doubles the denoiser's batch
    text_tokens: int  # text tokens inside the denoiser's self-attention (FLUX's joint attention)
    note: str = ""

    def params(self, component: str | None = None) -> int:
        """Parameter count of one component, or of all."""
        mods = [self.components[component]] if component else list(self.components.values())
        return sum(p.numel() for m in mods for p in m.parameters())

    def largest_component(self) -> str:
        return max(self.components, key=self.params)

    def facts(self) -> dict:
        """The keyword arguments of `estimate_peak_memory` that describe this model."""
        vae = self.components["vae"]
        return dict(**attention_facts(self.components[self.denoiser]), vae_channels=vae_decoder_channels(vae),
                    dtype=self.dtype, vae_dtype=self.vae_dtype, cfg=self.cfg, text_tokens=self.text_tokens,
                    vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))


def _meta(cls, config):
    with torch.device("meta"):
        return cls(**config) if isinstance(config, dict) else cls(config)


@functools.lru_cache(maxsize=1)
def real_scale_models() -> tuple:
    """SD 1.5, SDXL and FLUX.1-dev, every component built on the meta device from the configs
    above (a few seconds of CPU, no memory for weights)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        clip_l = lambda: _meta(CLIPTextModel, CLIPTextConfig(**CLIP_L))  # noqa: E731
        sd15 = RealModel(
            "SD 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5",
            {"unet": _meta(UNet2DConditionModel, SD15_UNET), "text_encoder": clip_l(),
             "vae": _meta(AutoencoderKL, SD_VAE)},
            "unet", torch.float16, torch.float16, True, 0)
        sdxl = RealModel(
            "SDXL", "stabilityai/stable-diffusion-xl-base-1.0",
            {"unet": _meta(UNet2DConditionModel, SDXL_UNET), "text_encoder": clip_l(),
             "text_encoder_2": _meta(CLIPTextModelWithProjection, CLIPTextConfig(**CLIP_G)),
             "vae": _meta(AutoencoderKL, SD_VAE)},
            "unet", torch.float16, torch.float32, True, 0,
            note="its VAE overflows in float16, so the pipeline upcasts it to float32 (vae.config.force_upcast)")
        flux = RealModel(
            "FLUX.1-dev", "black-forest-labs/FLUX.1-dev",
            {"transformer": _meta(FluxTransformer2DModel, FLUX_TRANSFORMER), "text_encoder": clip_l(),
             "text_encoder_2": _meta(T5EncoderModel, T5Config(**T5_XXL)), "vae": _meta(AutoencoderKL, FLUX_VAE)},
            "transformer", torch.bfloat16, torch.bfloat16, False, 512,
            note="guidance-distilled: one forward per step (no CFG batch); 512 T5 tokens join the image tokens")
    finally:
        hf_logging.set_verbosity(verbosity)
    return (sd15, sdxl, flux)


def real_scale_table(estimate: Callable, resolutions=(512, 1024), budget: int = 16 * GiB,
                     models=None) -> list[dict]:
    """Estimated peak memory of each real model at each resolution, one row per setting:

    - "SDPA": everything on the GPU, fused attention (diffusers' default with torch 2);
    - "classic attention": everything on the GPU, AttnProcessor (scores materialised);
    - "SDPA + model offload": `enable_model_cpu_offload()`: one component on the GPU at a time,
      estimated as the largest component's weights plus the activations (conservative: the
      VAE phase holds only the VAE);
    - FLUX only, "float8 weights + model offload": the transformer's weights in one byte each
      (a quantized checkpoint), activations in bfloat16.

    ``estimate`` is `estimate_peak_memory` (the learner's or the reference). Each row: model,
    height, setting, the estimate's terms, peak and ``fits`` (peak <= budget).
    """
    rows = []
    for m in models or real_scale_models():
        facts = m.facts()
        settings = [("SDPA", m.params(), {}), ("classic attention", m.params(), {"attention": "classic"}),
                    ("SDPA + model offload", m.params(m.largest_component()), {})]
        if m.name.startswith("FLUX"):
            settings.append(("float8 weights + model offload", m.params(m.largest_component()),
                             {"dtype": torch.float8_e4m3fn, "vae_dtype": m.vae_dtype}))
        for res in resolutions:
            for label, n_params, override in settings:
                kw = {**facts, "attention": "sdpa", **override}
                terms = estimate(n_params, res, res, **kw)
                rows.append({"model": m.name, "size": res, "setting": label, **terms,
                             "fits": terms["peak"] <= budget})
    return rows
