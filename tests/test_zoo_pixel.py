"""tiny-pixel and its variants (Lab 11): they load offline with checksums verified through the
real UNet2DModel.from_pretrained (float16 on disk, float32 loaded), differ from the main model
in one setting each, fit the weights budget, their cards render from the stored measurements,
and the training module runs and is reproducible from its seed."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import evaluate, zoo
from helpers.train import cli, registry, tiny_pixel
from helpers.train.card import render_stored_card

NAMES = zoo.PIXEL_MODELS
FOLDERS = {n: zoo.ASSETS / n for n in NAMES}
BUDGET = 10e6  # bytes of safetensors for the five folders together (issue 16)


@pytest.mark.parametrize("name", NAMES)
def test_folder_loads_offline_with_checksums_as_float32(name):
    zoo.verify(FOLDERS[name])
    unet, sched = zoo.load_pixel(name, device="cpu")
    assert unet.dtype == torch.float32 and unet.config.num_class_embeds == evaluate.NUM_PIXEL_CLASSES + 1
    assert unet.config.sample_size == evaluate.PIXEL_SIZE
    assert sched.config.prediction_type == ("epsilon" if name == "tiny-pixel-eps" else "v_prediction")
    from safetensors import safe_open
    with safe_open(str(FOLDERS[name] / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = unet(x, torch.tensor([10, 900]), class_labels=torch.tensor([0, evaluate.NUM_PIXEL_CLASSES])).sample
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_weights_budget():
    total = sum(sum(p.stat().st_size for p in f.rglob("*.safetensors")) for f in FOLDERS.values())
    assert total <= BUDGET, total


def test_variants_differ_in_one_setting_each():
    cfgs = {n: json.loads((FOLDERS[n] / "train_info.json").read_text())["config"] for n in NAMES}
    main = cfgs["tiny-pixel"]
    expected = {"tiny-pixel-linear": {"schedule"}, "tiny-pixel-sqrt": {"schedule"}, "tiny-pixel-minsnr": {"min_snr_gamma"},
                "tiny-pixel-eps": {"prediction_type"}}
    for n, keys in expected.items():
        assert {k for k in main if main[k] != cfgs[n][k]} == keys, n
    schedules = {n: zoo.load_pixel(n, device="cpu")[1].alphas_cumprod for n in NAMES}
    assert torch.equal(schedules["tiny-pixel"], schedules["tiny-pixel-minsnr"])
    assert not torch.allclose(schedules["tiny-pixel"], schedules["tiny-pixel-linear"])


def test_sqrt_schedule_is_diffusion_lms():
    """alphas_cumprod[i] = abar((i + 1) / T) / abar(0) with abar(u) = 1 - sqrt(u + 1e-4) (Li et al. 2022; the
    betas are built like diffusers' betas_for_alpha_bar, which divides by abar(0) = 0.99 the same way)."""
    acp = torch.cumprod(1 - tiny_pixel.sqrt_betas(1000).double(), 0)
    for i in (0, 10, 100, 500, 900):
        expected = (1 - math.sqrt((i + 1) / 1000 + 1e-4)) / (1 - math.sqrt(1e-4))
        assert math.isclose(acp[i].item(), expected, rel_tol=1e-5, abs_tol=1e-7)
    shipped = zoo.load_pixel("tiny-pixel-sqrt", device="cpu")[1].alphas_cumprod
    torch.testing.assert_close(shipped, acp.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_card_renders_from_its_stored_measurements(name):
    assert render_stored_card(FOLDERS[name]) == (FOLDERS[name] / "README.md").read_text()


def test_main_model_card_reaches_90_percent_on_colour_and_shape():
    m = json.loads((FOLDERS["tiny-pixel"] / "metrics.json").read_text())
    best = m["grid"][f"{m['best_guidance']:g}"]
    assert best["color"] >= 0.9 and best["shape"] >= 0.9, best


def test_registry_names_every_variant():
    for n in NAMES:
        assert registry.model(n).NAME == n
    assert registry.model("tiny-pixel-linear").Config().schedule == "linear"
    assert registry.model("tiny-pixel-minsnr").Config().min_snr_gamma == 5.0
    assert registry.model("tiny-pixel").Config().min_snr_gamma is None
    assert registry.model("tiny-pixel-eps").Config().prediction_type == "epsilon"


def test_quick_training_writes_a_loadable_folder_reproducibly(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"q{k}"
        cli.main(["tiny-pixel-sqrt", "--quick", "--no-eval", "--out", str(out), "--seed", "3"])
        zoo.verify(out)
        unet, sched = zoo.load_pixel(folder=out, device="cpu")
        assert json.loads((out / "train_info.json").read_text())["model"] == "tiny-pixel-sqrt"
        outs.append(torch.cat([p.flatten() for p in unet.parameters()]))
    assert torch.equal(outs[0], outs[1])
