"""`python -m helpers.train tiny-sd` end to end, in its minutes-long smoke configuration:
the folder it writes is a StableDiffusionPipeline that loads and samples, with a loss log,
training info and a checksum manifest."""

import csv
import json

import torch

from helpers import train, zoo


def test_quick_training_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "tiny-sd"
    train.main(["tiny-sd", "--quick", "--no-eval", "--out", str(out)])
    info = json.loads((out / "train_info.json").read_text())
    assert info["config"]["unet_steps"] == train.TinySDConfig.quick().unet_steps
    assert set(info["params"]) == {"vae", "text_encoder", "unet"}
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert {r["phase"] for r in rows} == {"vae", "unet"}
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    zoo.verify(out)                                                        # manifest written
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a small red circle at the center", num_inference_steps=2, output_type="pt").images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()
    assert pipe.vae.config.scaling_factor == info["scaling_factor"] != 0.18215


def test_initialisation_is_reproducible_from_its_seed(tmp_path):
    cfg = train.TinySDConfig.quick()
    a = train.build_components(cfg, tokenizer_dir=tmp_path / "a")
    b = train.build_components(cfg, tokenizer_dir=tmp_path / "b")
    for m_a, m_b in zip((a[0], a[2], a[3]), (b[0], b[2], b[3])):
        for p, q in zip(m_a.parameters(), m_b.parameters()):
            assert torch.equal(p, q)
