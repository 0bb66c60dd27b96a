"""The shipped tiny-sd: loads offline with the real from_pretrained, checksums, schedulers,
a judge sanity check on generated images, and the zoo's redirect setting."""

import json
import shutil

import pytest
import torch

from helpers import evaluate, shapes, zoo

TINY_SD = zoo.ASSETS / "tiny-sd"


@pytest.fixture(scope="module")
def pipe():
    return zoo.load_pipeline("tiny-sd", device="cpu")


def test_folder_is_a_stable_diffusion_pipeline():
    index = json.loads((TINY_SD / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert part in index and (TINY_SD / part).is_dir()
    assert list(TINY_SD.rglob("*.safetensors")), "weights must be safetensors"
    assert not list(TINY_SD.rglob("*.bin")), "no pickled weights"
    assert (TINY_SD / "README.md").exists() and (TINY_SD / zoo.MANIFEST).exists()


def test_sd_like_configuration(pipe):
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 4
    s = pipe.scheduler.config
    assert (s.beta_schedule, s.beta_start, s.beta_end, s.num_train_timesteps, s.prediction_type) == \
        ("scaled_linear", 0.00085, 0.012, 1000, "epsilon")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # the scaling factor is measured, not SD's 0.18215: latents of real images have unit std
    batch = shapes.make_batch(64, seed=3)
    with torch.no_grad():
        z = pipe.vae.encode(batch["pixel_values"]).latent_dist.sample() * pipe.vae.config.scaling_factor
    assert 0.8 < z.std().item() < 1.25


def test_weights_budget():
    total = sum(p.stat().st_size for p in zoo.ASSETS.rglob("*.safetensors"))
    mine = sum(p.stat().st_size for p in TINY_SD.rglob("*.safetensors"))
    assert mine <= 15e6 and total <= zoo.WEIGHTS_BUDGET, (mine, total)


def test_checksums_verified_and_damage_explained(tmp_path):
    zoo.verify(TINY_SD)
    copy = tmp_path / "tiny-sd"
    shutil.copytree(TINY_SD, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])                            # truncated
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")  # LFS pointer
    (copy / "text_encoder" / "model.safetensors").unlink()                 # missing
    with pytest.raises(zoo.ZooError) as e:
        zoo.verify(copy)
    msg = str(e.value)
    assert "unet/diffusion_pytorch_model.safetensors: checksum differs" in msg
    assert "vae/diffusion_pytorch_model.safetensors: is a Git LFS pointer" in msg
    assert "text_encoder/model.safetensors: missing" in msg


def test_tokenizer_handles_unknown_words(pipe):
    tok = pipe.tokenizer
    ids = tok("a large red circle at the top left").input_ids
    assert len(ids) == 10 and tok.unk_token_id not in ids[1:-1]            # bos + 8 words + eos
    odd = tok("an orange zebra, please!").input_ids                        # unknown words
    assert odd[0] == tok.bos_token_id and odd[-1] == tok.eos_token_id and len(odd) > 4
    emb = pipe.encode_prompt("zebra", "cpu", 1, False)[0]
    assert torch.isfinite(emb).all()


@pytest.mark.parametrize("name", list(evaluate.SCHEDULERS))
def test_every_sd_scheduler_makes_finite_images(pipe, name):
    pipe.scheduler = evaluate.make_scheduler(name, pipe.scheduler.config)
    images = evaluate.generate(pipe, ["a small blue circle at the center"] * 2, guidance_scale=4.0, steps=6)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert images.std() > 0.05                                             # not a blank


def test_generated_images_follow_the_prompt(pipe):
    pipe.scheduler = evaluate.make_scheduler("DPM++ 2M", pipe.scheduler.config)
    acc = evaluate.judge_accuracy(pipe, n=16, guidance_scale=7.5, steps=20, seed=11)
    assert acc["color"] >= 0.75 and acc["shape"] >= 0.6, acc
    # and a planted wrong target list scores far lower: the sanity check can fail
    caps, attrs = evaluate.eval_prompts(16, seed=11)
    images = evaluate.generate(pipe, caps, 7.5, 20, seed=11)
    wrong = [shapes.Attributes(a.shape, shapes.SHAPES and next(c for c in shapes.COLORS if c != a.color),
                               a.size, a.position) for a in attrs]
    assert shapes.judge(images, targets=wrong).accuracy["color"] <= 0.25


def test_redirect_setting_points_at_another_folder(tmp_path, monkeypatch):
    copy = tmp_path / "my-model"
    shutil.copytree(TINY_SD, copy)
    (copy / zoo.MANIFEST).unlink()                                         # not needed for overrides
    monkeypatch.setenv(zoo.env_var("tiny-sd"), str(copy))
    assert zoo.env_var("tiny-sd") == "DIFFUSION_LABS_MODEL_TINY_SD"
    assert zoo.model_path("tiny-sd") == str(copy)
    p = zoo.load_pipeline("tiny-sd", device="cpu")
    assert p.unet.config.sample_size == 8
    monkeypatch.setenv(zoo.env_var("tiny-sd"), str(tmp_path / "nowhere"))
    with pytest.raises((OSError, ValueError)):  # no such folder, and not a Hub id either
        zoo.load_pipeline("tiny-sd", device="cpu")


def test_unknown_model_is_a_clear_error():
    with pytest.raises(zoo.ZooError, match="unknown or missing zoo model"):
        zoo.load_pipeline("tiny-nothing")


def test_generation_in_a_background_process_equals_generation_here(pipe):
    """Lab 03 runs part of its sampler study in a second process (evaluate.in_background): the
    images must be the ones this process makes with the same sampler, overrides and seed."""
    caps = ["a small blue circle at the center", "a large red square at the top left"]
    job = evaluate.in_background(evaluate.generate_with_sampler, "tiny-sd", "DDPM", caps, 4, 4.0,
                                 seed=3, steps_offset=0)
    sd_config = pipe.scheduler.config
    here, _ = evaluate.generate_with_sampler(pipe, "DDPM", caps, 4, 4.0, seed=3, config=sd_config,
                                             steps_offset=0)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.steps_offset == 0 and sd_config.steps_offset == 1  # override applied
    there, seconds = job.result(timeout=300)
    assert there.shape == here.shape == (2, 3, 64, 64) and seconds > 0
    assert torch.allclose(there, here, atol=1e-4), (there - here).abs().max()
    # the comparison can fail: another seed gives other images
    other = evaluate.generate(pipe, caps, 4.0, 4, seed=4, batch_size=2)
    assert (other - there).abs().max() > 0.05


def test_a_background_failure_is_raised_by_result():
    job = evaluate.in_background(evaluate.generate_with_sampler, "no-such-model", "DDPM", ["a red circle"], 2)
    with pytest.raises(zoo.ZooError, match="no-such-model"):
        job.result(timeout=300)
