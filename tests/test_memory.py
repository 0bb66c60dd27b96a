"""helpers.memory: the CPU/CUDA peak measurement is exact on known allocations (and leaves
cuBLAS's one-time workspace out), the convolution kernel is named and the im2col kernel's buffer
predicted exactly, the real-scale configs reproduce the published parameter counts, and the
analytic model agrees with what the profiler measures on tiny-sd with and without oneDNN."""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from helpers import memory
from helpers.solutions import lab10_memory as ref


def test_fmt_bytes():
    assert memory.fmt_bytes(512) == "512 B"
    assert memory.fmt_bytes(1536) == "1.5 KiB"
    assert memory.fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert memory.fmt_bytes(3 * 2**30) == "3.00 GiB"


def test_cpu_peak_of_known_allocations():
    """Two 4 MB tensors alive together, then one freed and a third made: the peak is 8 MB."""
    def fn():
        a = torch.empty(10**6)  # 4,000,000 bytes
        b = torch.empty(10**6)
        del a
        c = torch.empty(10**6)
        return b, c

    m = memory.measure_peak(fn, "cpu", resident=123)
    assert m.extra == 8_000_000
    assert m.peak == 8_000_123
    assert m.method.startswith("torch.profiler") and m.seconds >= 0
    assert isinstance(m.output, tuple) and m.output[0].numel() == 10**6
    assert any("empty" in op for op in m.at_peak)


def test_cpu_peak_ignores_what_existed_before():
    x = torch.ones(10**6)
    m = memory.measure_peak(lambda: x.mul_(2), "cpu")  # in place: nothing new
    assert m.extra < 100  # a scalar or two, never the 4 MB of x


def test_cpu_peak_is_not_lowered_by_earlier_garbage():
    """A cycle left by an earlier computation and collected during the call is not
    subtracted from the call's own peak: the profiler records no frees of blocks allocated
    before it started (measure_peak also collects garbage first, which CUDA needs)."""
    import gc

    class Node:
        pass

    gc.disable()  # keep the cycle alive until the measurement, as a busy notebook would
    try:
        a, b = Node(), Node()
        a.other, b.other, a.payload = b, a, torch.ones(4 * 10**6)  # 16 MB of garbage
        del a, b

        def fn():
            gc.collect()  # any allocation may trigger a collection; here it surely does
            return torch.empty(10**6)  # 4 MB

        m = memory.measure_peak(fn, "cpu")
    finally:
        gc.enable()
    assert m.extra == 4_000_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_of_known_allocations():  # pragma: no cover - CPU CI
    resident = torch.empty(2**20, device="cuda")  # noqa: F841 - counted by the CUDA counter

    def fn():
        a = torch.empty(2**20, device="cuda")
        b = torch.empty(2**20, device="cuda")
        return a, b

    m = memory.measure_peak(fn, "cuda", resident=5)
    assert m.extra == 8 * 2**20  # the resident 4 MiB above is not counted: it was there before
    assert m.peak == 8 * 2**20 + 5


def test_measure_peak_warms_cuda_up_before_resetting_the_peak(monkeypatch):
    """cuBLAS allocates its workspace (32 MiB on an H100/H200) at a device's first matrix product:
    measure_peak runs one before reset_peak_memory_stats, so a measured call is not charged for it.
    The CUDA calls are recorded, not made: this runs without a GPU."""
    calls = []
    monkeypatch.setattr(memory, "_warm_up_cuda", lambda device: calls.append("warm_up"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 150)
    m = memory.measure_peak(lambda: calls.append("fn") or "out", "cuda", resident=7)
    assert calls.index("warm_up") < calls.index("reset") < calls.index("fn")
    assert (m.extra, m.peak, m.output) == (50, 57, "out")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_warm_up_runs_a_matrix_product_on_the_device(device, monkeypatch):
    seen = []
    mm = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append(a.device.type) or mm(a, b))
    memory._warm_up_cuda(device)
    assert seen == [device]


@contextlib.contextmanager
def _onednn(enabled):
    with warnings.catch_warnings():  # the flag's setter warns about oneDNN's TF32 on Intel GPUs
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=enabled):
            yield


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    (3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 0, 1), (1, 2, 0, 1), (5, 1, 2, 1), (3, 1, "same", 1)])
def test_im2col_bytes_is_the_slow_kernels_measured_scratch(kernel, stride, padding, dilation):
    """Without oneDNN (as on PyTorch's macOS arm64 wheels) a float32 convolution at batch < 16 runs
    PyTorch's im2col kernel, whose scratch, measured (the call's extra less its output), is
    im2col_bytes exactly; a 1 x 1 convolution with stride 1 reads its input in place."""
    conv = torch.nn.Conv2d(8, 6, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, 8, 24, 20)
    with _onednn(False):
        assert memory.conv_kernels(lambda: conv(x)) == (memory.IM2COL,)
        m = memory.measure_peak(lambda: conv(x), "cpu")
    out = m.output.numel() * m.output.element_size()
    assert m.extra - out == memory.im2col_bytes(conv, 2, 24, 20)
    assert memory.im2col_bytes(conv, 2, 24, 20, torch.bfloat16) * 2 == memory.im2col_bytes(conv, 2, 24, 20)


def test_im2col_bytes_of_tiny_sds_widest_decoder_convolution():
    conv = torch.nn.Conv2d(32, 16, 3, padding=1)  # tiny-sd's decoder, last up block's first convolution
    assert memory.im2col_bytes(conv, 1, 256, 256) == 9 * 32 * 256 * 256 * 4 == 72 * memory.MiB


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_conv_kernels_names_onednn_and_its_scratch_is_at_most_one_input():
    conv = torch.nn.Conv2d(32, 16, 3, padding=1)
    x = torch.randn(1, 32, 64, 64)  # above oneDNN's small-input limit (N * C * H * W > 20480)
    with _onednn(True):
        assert memory.conv_kernels(lambda: conv(x)) == ("aten::mkldnn_convolution",)
        m = memory.measure_peak(lambda: conv(x), "cpu")
    scratch = m.extra - m.output.numel() * m.output.element_size()
    assert scratch <= 1.05 * x.numel() * x.element_size()  # oneDNN's copy of the input into its layout
    assert memory.conv_kernels(lambda: torch.ones(3) + 1) == ()


def test_time_call_and_transfer():
    assert memory.time_call(lambda: torch.ones(10).sum(), "cpu", repeats=2) > 0
    assert memory.transfer_seconds(25 * 10**9, 25.0) == pytest.approx(1.0)


def test_real_scale_configs_reproduce_published_parameter_counts():
    models = {m.name: m for m in memory.real_scale_models()}
    for (name, component), count in memory.PUBLISHED_PARAMS.items():
        assert models[name].params(component) == count, (name, component)
    for m in models.values():
        assert all(p.device.type == "meta" for c in m.components.values() for p in c.parameters())
    sd15, sdxl, flux = (models[k] for k in ("SD 1.5", "SDXL", "FLUX.1-dev"))
    assert memory.attention_facts(sd15.components["unet"]) == {"heads": 8, "attn_downsample": 1}
    assert memory.attention_facts(sdxl.components["unet"]) == {"heads": 10, "attn_downsample": 2}
    assert memory.attention_facts(flux.components["transformer"]) == {"heads": 24, "attn_downsample": 2}
    assert {memory.vae_decoder_channels(m.components["vae"]) for m in models.values()} == {256}
    assert flux.largest_component() == "transformer" and sdxl.largest_component() == "unet"


def test_real_scale_table_verdicts():
    rows = {(r["model"], r["size"], r["setting"]): r for r in memory.real_scale_table(ref.estimate_peak_memory)}
    assert all(rows[("SD 1.5", s, "SDPA")]["fits"] for s in (512, 1024))
    assert not rows[("SD 1.5", 1024, "classic attention")]["fits"]  # (2 * 8 * 16384^2) float16 scores, twice
    assert rows[("SDXL", 1024, "SDPA")]["fits"]
    assert rows[("SDXL", 1024, "SDPA")]["vae_decoder"] == 3 * 256 * 1024 * 1024 * 4  # float32 VAE
    assert not any(rows[("FLUX.1-dev", s, k)]["fits"] for s in (512, 1024)
                   for k in ("SDPA", "classic attention", "SDPA + model offload"))
    assert rows[("FLUX.1-dev", 1024, "float8 weights + model offload")]["fits"]
    assert rows[("FLUX.1-dev", 512, "SDPA")]["weights"] == 2 * sum(
        v for (m, _), v in memory.PUBLISHED_PARAMS.items() if m == "FLUX.1-dev")


@pytest.fixture(scope="module")
def tiny():
    from helpers.zoo import load_pipeline

    return load_pipeline("tiny-sd", device="cpu")


def _estimate_and_measure(pipe, res, attention):
    """Lab 10's comparison: the exercise's estimate, plus the im2col buffer of the decoder's widest
    full-resolution convolution where PyTorch's im2col kernel computes it, against the measurement."""
    processor = AttnProcessor() if attention == "classic" else AttnProcessor2_0()
    pipe.unet.set_attn_processor(processor)
    facts = memory.attention_facts(pipe.unet)
    n_params = sum(ref.param_bytes(m) for m in (pipe.unet, pipe.vae, pipe.text_encoder)) // 4
    est = ref.estimate_peak_memory(n_params, res, res, **facts, vae_channels=memory.vae_decoder_channels(pipe.vae),
                                   dtype=torch.float32, attention=attention)
    conv = pipe.vae.decoder.up_blocks[-1].resnets[0].conv1
    x = torch.zeros(1, conv.in_channels, res, res)
    workspace = memory.im2col_bytes(conv, 1, res, res) if memory.conv_kernels(lambda: conv(x)) == (memory.IM2COL,) else 0
    m = memory.measure_peak(lambda: pipe("a red circle", height=res, width=res, num_inference_steps=1,
                                         output_type="pt"), "cpu", resident=4 * n_params)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    return est["weights"] + max(est["attention"], est["vae_decoder"] + workspace), m.peak, workspace


@pytest.mark.parametrize("onednn", [True, False], ids=["oneDNN", "no oneDNN"])
@pytest.mark.parametrize("attention", ["classic", "sdpa"])
def test_estimate_within_20_percent_of_the_cpu_measurement(tiny, attention, onednn):
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    with _onednn(onednn):
        est, measured, workspace = _estimate_and_measure(tiny, 192, attention)
    assert (workspace > 0) == (not onednn)  # the im2col kernel ran exactly where oneDNN did not
    assert abs(est - measured) / measured < 0.2, (est, measured)
