"""tiny-controlnet and tiny-dit: they load offline with checksums verified, belong to the
shipped tiny-sd, stay in the size budget, do what their cards say on a small batch, and
rebuild from `python -m helpers.train` (smoke configuration), and their cards render from
their stored measurements. Also: a fresh ControlNet leaves tiny-sd exactly unchanged."""

import csv
import json
import shutil

import pytest
import torch

from helpers import evaluate, shapes, zoo
from helpers.dit import TinyDiT, TinyDiTConfig, build_transformer, generate_dit
from helpers.train import card, cli, registry
from helpers.train.tiny_controlnet import TinyControlNetConfig, build_controlnet

CN = zoo.ASSETS / "tiny-controlnet"
DIT = zoo.ASSETS / "tiny-dit"


@pytest.fixture(scope="module")
def sd():
    return zoo.load_pipeline("tiny-sd", device="cpu")


@pytest.fixture(scope="module")
def cn_pipe():
    pipe = zoo.load_controlnet_pipeline(device="cpu")
    pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
    return pipe


@pytest.fixture(scope="module")
def dit():
    return zoo.load_dit(device="cpu")


# ----------------------------------------------------------------------------- the folders

def test_controlnet_folder_loads_offline_with_checksums():
    from diffusers import ControlNetModel

    zoo.verify(CN)
    cfg = json.loads((CN / "config.json").read_text())
    assert cfg["_class_name"] == "ControlNetModel"
    assert list(CN.glob("*.safetensors")) and not list(CN.rglob("*.bin"))
    assert (CN / "README.md").exists() and (CN / "train_log.csv").exists()
    model = ControlNetModel.from_pretrained(CN, local_files_only=True)    # the plain diffusers way
    assert model.config.cross_attention_dim == 64
    loaded = zoo.load_controlnet(device="cpu")                             # the zoo way: verified
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters()))


def test_dit_folder_loads_offline_with_checksums():
    from diffusers import PixArtTransformer2DModel

    zoo.verify(DIT)
    tr = PixArtTransformer2DModel.from_pretrained(DIT / "transformer", local_files_only=True)
    c = tr.config
    assert (c.in_channels, c.out_channels, c.sample_size, c.caption_channels) == (4, 4, 8, 64)
    assert not tr.use_additional_conditions                                # no resolution/aspect inputs
    sched = json.loads((DIT / "scheduler" / "scheduler_config.json").read_text())
    sd_sched = json.loads((zoo.ASSETS / "tiny-sd" / "scheduler" / "scheduler_config.json").read_text())
    assert sched == sd_sched                                               # tiny-sd's noise schedule
    assert (DIT / "README.md").exists() and (DIT / "train_log.csv").exists()


def test_both_belong_to_the_shipped_tiny_sd(tmp_path):
    sd_path = zoo.ASSETS / "tiny-sd"
    zoo.check_base("tiny-controlnet", CN, sd_path)
    zoo.check_base("tiny-dit", DIT, sd_path)
    # a model trained on another tiny-sd is refused, with the command that fixes it
    copy = tmp_path / "tiny-controlnet"
    shutil.copytree(CN, copy)
    info = json.loads((copy / "train_info.json").read_text())
    info["base"]["sha256"]["unet/diffusion_pytorch_model.safetensors"] = "0" * 64
    (copy / "train_info.json").write_text(json.dumps(info))
    with pytest.raises(zoo.ZooError, match="python -m helpers.train tiny-controlnet"):
        zoo.check_base("tiny-controlnet", copy, sd_path)


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / "tiny-dit"
    shutil.copytree(DIT, copy)
    w = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(zoo.ZooError, match="transformer/diffusion_pytorch_model.safetensors: checksum differs"):
        zoo.verify(copy)


def test_weights_budget():
    mine = sum(p.stat().st_size for d in (CN, DIT) for p in d.rglob("*.safetensors"))
    total = sum(p.stat().st_size for p in zoo.ASSETS.rglob("*.safetensors"))
    assert mine <= 10e6 and total <= zoo.WEIGHTS_BUDGET, (mine, total)


def test_redirect_settings_point_at_other_folders(tmp_path, monkeypatch):
    for name, src in (("tiny-controlnet", CN), ("tiny-dit", DIT)):
        copy = tmp_path / name
        shutil.copytree(src, copy)
        (copy / zoo.MANIFEST).unlink()                                     # not needed for overrides
        monkeypatch.setenv(zoo.env_var(name), str(copy))
    assert zoo.env_var("tiny-controlnet") == "DIFFUSION_LABS_MODEL_TINY_CONTROLNET"
    assert isinstance(zoo.load_pipeline("tiny-dit", device="cpu"), TinyDiT)
    assert type(zoo.load_pipeline("tiny-controlnet", device="cpu")).__name__ == "StableDiffusionControlNetPipeline"
    monkeypatch.setenv(zoo.env_var("tiny-dit"), str(tmp_path / "nowhere"))
    with pytest.raises((OSError, ValueError)):                             # not found / not a Hub id
        zoo.load_dit(device="cpu")


# ------------------------------------------------------------------ ControlNet's zero start

def test_fresh_controlnet_leaves_the_unet_exactly_unchanged(sd):
    from diffusers import ControlNetModel

    unet = sd.unet
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    c = torch.randn(3, 16, 64, generator=g)
    control = zoo.control_image(shapes.make_batch(3, seed=2)["mask"])
    with torch.no_grad():
        down, mid = cn(z, t, encoder_hidden_states=c, controlnet_cond=control, return_dict=False)
        plain = unet(z, t, encoder_hidden_states=c).sample
        with_cn = unet(z, t, encoder_hidden_states=c, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
    assert all(torch.count_nonzero(r) == 0 for r in (*down, mid))         # zero convolutions
    assert torch.equal(plain, with_cn)
    # the same check sees a trained ControlNet: it cannot pass by accident
    trained = zoo.load_controlnet(device="cpu")
    with torch.no_grad():
        down, mid = trained(z, t, encoder_hidden_states=c, controlnet_cond=control, return_dict=False)
        changed = unet(z, t, encoder_hidden_states=c, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
    assert not torch.equal(plain, changed)


def test_fresh_controlnet_pipeline_makes_tiny_sds_images_exactly(sd):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    cn = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        controlnet=cn, scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    batch = shapes.make_batch(2, seed=5)
    kw = dict(num_inference_steps=3, output_type="pt")
    a = sd(batch["captions"], generator=torch.Generator().manual_seed(0), **kw).images
    b = pipe(batch["captions"], image=zoo.control_image(batch["mask"]),
             generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(a, b)


# ---------------------------------------------------------------- quality on a small batch

def test_controlnet_shape_follows_the_map(cn_pipe):
    at1 = evaluate.controlnet_accuracy(cn_pipe, n=12, scale=1.0, steps=15, conflicting=True, seed=77)
    at0 = evaluate.controlnet_accuracy(cn_pipe, n=12, scale=0.0, steps=15, conflicting=True, seed=77)
    # the caption names another place and size; with the ControlNet on, the map wins
    assert at1["median_iou"] >= 0.7 and at1["color"] >= 0.75, at1
    assert at1["position_map"] >= 0.75, at1
    # and without it tiny-sd follows the caption: the IoU check can fail
    assert at0["median_iou"] <= 0.3 and at0["position_caption"] >= 0.5, at0


def test_dit_follows_the_prompt(dit):
    dit.scheduler = evaluate.make_scheduler("DPM++ 2M", dit.scheduler.config)
    caps, attrs = evaluate.eval_prompts(16, seed=11)
    images = evaluate.generate(dit, caps, guidance_scale=7.5, steps=20, seed=11)
    acc = shapes.judge(images, targets=attrs).accuracy
    assert acc["color"] >= 0.75 and acc["shape"] >= 0.6, acc
    wrong = [shapes.Attributes(a.shape, next(c for c in shapes.COLORS if c != a.color), a.size,
                               a.position) for a in attrs]
    assert shapes.judge(images, targets=wrong).accuracy["color"] <= 0.25


@pytest.mark.parametrize("name", list(evaluate.SCHEDULERS))
def test_every_sd_scheduler_samples_the_dit(dit, name):
    dit.scheduler = evaluate.make_scheduler(name, dit.scheduler.config)
    images = evaluate.generate(dit, ["a small blue circle at the center"] * 2, guidance_scale=4.0, steps=6)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert images.std() > 0.05


def test_generate_dit_is_the_written_out_loop(dit):
    """generate_dit = encode, scale_model_input, transformer, CFG, step, decode: rebuilt here
    by hand with DDIM on the same noise, it gives the same images."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(dit.scheduler.config)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    prompts = ["a large red circle at the top left", "a small cyan square, center"]
    got = generate_dit(dit.transformer, dit.vae, dit.tokenizer, dit.text_encoder, sched, prompts,
                       num_inference_steps=4, guidance_scale=5.0, latents=z)
    ids = dit.tokenizer(prompts + ["", ""], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        c = dit.text_encoder(ids).last_hidden_state
        cond, uncond = c[:2], c[2:]
        sched.set_timesteps(4)
        x = z.clone()
        for t in sched.timesteps:
            e_u = dit.transformer(x, encoder_hidden_states=uncond, timestep=t.repeat(2)).sample
            e_c = dit.transformer(x, encoder_hidden_states=cond, timestep=t.repeat(2)).sample
            x = sched.step(e_u + 5.0 * (e_c - e_u), t, x).prev_sample
        want = (dit.vae.decode(x / dit.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_flop_counter_counts_a_multiply_add_as_two():
    lin = torch.nn.Linear(8, 3, bias=False)
    assert evaluate.count_flops(lambda: lin(torch.randn(5, 8))) == 2 * 5 * 8 * 3


# ------------------------------------------------------------------------------ training

@pytest.mark.parametrize("name", ["tiny-controlnet", "tiny-dit"])
def test_quick_training_writes_a_loadable_folder(tmp_path, monkeypatch, name):
    out = tmp_path / name
    cli.main([name, "--quick", "--no-eval", "--out", str(out)])
    info = json.loads((out / "train_info.json").read_text())
    assert info["model"] == name and info["base"]["sha256"]
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert rows and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    zoo.verify(out)
    monkeypatch.setenv(zoo.env_var(name), str(out))
    pipe = zoo.load_pipeline(name, device="cpu")
    if name == "tiny-controlnet":
        mask = shapes.make_batch(1, seed=0)["mask"]
        img = pipe("a red circle", image=zoo.control_image(mask), num_inference_steps=2, output_type="pt").images
    else:
        img = pipe("a red circle", num_inference_steps=2, output_type="pt").images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_initialisation_is_reproducible_from_its_seed(sd):
    for make in (lambda: build_transformer(TinyDiTConfig()),
                 lambda: build_controlnet(sd.unet, TinyControlNetConfig.quick())):
        a, b = make(), make()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # PixArt-alpha's initialisation: the final projection starts at zero
    assert torch.count_nonzero(build_transformer(TinyDiTConfig()).proj_out.weight) == 0


def test_write_model_card_dispatches_on_the_model_name(tmp_path, monkeypatch):
    """train_info.json "model" picks the model's module (its measure and render_card, its
    default worker count); a folder without a model name is tiny-sd's."""
    from types import SimpleNamespace

    calls = []
    fake = {name: SimpleNamespace(
                NAME=name, WORKERS=w,
                measure=lambda folder, quick, workers, name=name: calls.append((name, quick, workers)) or {"m": name},
                render_card=lambda folder, m, info, name=name: f"card of {name}")
            for name, w in [("tiny-sd", 2), ("tiny-controlnet", 1), ("tiny-dit", 1)]}
    monkeypatch.setattr(registry, "MODELS", fake)
    for info, workers, expected in [({"model": "tiny-dit"}, None, ("tiny-dit", True, 1)),
                                    ({"model": "tiny-controlnet"}, 3, ("tiny-controlnet", True, 3)),
                                    ({}, None, ("tiny-sd", True, 2))]:
        (tmp_path / "train_info.json").write_text(json.dumps(info))
        metrics = {"m": expected[0], "measured_by": card.CARD_COMMAND}
        assert card.write_model_card(tmp_path, quick=True, workers=workers) == metrics
        assert calls[-1] == expected
        assert (tmp_path / "README.md").read_text() == f"card of {expected[0]}"
        assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_card_command_uses_each_models_own_worker_count(tmp_path, monkeypatch):
    """`python -m helpers.train.card <folder>` without --workers: the model's WORKERS."""
    seen = []
    monkeypatch.setattr(card, "write_model_card", lambda folder, quick, workers: seen.append(workers))
    monkeypatch.setattr(card, "write_manifest", lambda folder: None)
    card.main([str(tmp_path)])
    card.main([str(tmp_path), "--workers", "3"])
    assert seen == [None, 3]


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-controlnet", "tiny-dit"])
def test_shipped_card_renders_from_its_stored_measurements(name):
    """Each shipped README.md is exactly its model's render_card over the stored metrics.json
    and train_info.json: the card template and the measurements stay separate, and the
    checksummed cards are what the code writes."""
    folder = zoo.ASSETS / name
    info = json.loads((folder / "train_info.json").read_text())
    assert registry.model_of(info).NAME == name
    assert card.render_stored_card(folder) == (folder / "README.md").read_text()


def test_a_new_measurement_names_the_card_command():
    """Old metrics (no "measured_by") keep the command that measured them; new ones name
    `python -m helpers.train.card`."""
    folder = zoo.ASSETS / "tiny-dit"
    m = json.loads((folder / "metrics.json").read_text())
    info = json.loads((folder / "train_info.json").read_text())
    module = registry.model("tiny-dit")
    assert "python -m helpers.model_card helpers/assets/tiny-dit" in module.render_card(folder, m, info)
    fresh = module.render_card(folder, m | {"measured_by": card.CARD_COMMAND}, info)
    assert "python -m helpers.train.card helpers/assets/tiny-dit" in fresh and "model_card" not in fresh
