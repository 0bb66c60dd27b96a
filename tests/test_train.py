"""`python -m helpers.train tiny-sd` (helpers/train/cli.py, tiny_sd.py) end to end, in its
minutes-long smoke configuration: the folder it writes is a StableDiffusionPipeline that
loads and samples, with a loss log, training info and a checksum manifest."""

import csv
import json

import pytest
import torch

from helpers import zoo
from helpers.train import cli, tiny_sd


def test_quick_training_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "tiny-sd"
    cli.main(["tiny-sd", "--quick", "--no-eval", "--out", str(out)])
    info = json.loads((out / "train_info.json").read_text())
    assert info["model"] == "tiny-sd"
    assert info["config"]["unet_steps"] == tiny_sd.TinySDConfig.quick().unet_steps
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
    cfg = tiny_sd.TinySDConfig.quick()
    a = tiny_sd.build_components(cfg, tokenizer_dir=tmp_path / "a")
    b = tiny_sd.build_components(cfg, tokenizer_dir=tmp_path / "b")
    for m_a, m_b in zip((a[0], a[2], a[3]), (b[0], b[2], b[3])):
        for p, q in zip(m_a.parameters(), m_b.parameters()):
            assert torch.equal(p, q)


def test_step_options_apply_only_to_models_that_have_them(tmp_path, capsys):
    """--steps is tiny-controlnet's and tiny-dit's, --unet-steps tiny-sd's, --base not
    tiny-sd's: the wrong one is refused before anything trains."""
    for argv in (["tiny-sd", "--steps", "3"], ["tiny-dit", "--unet-steps", "3"], ["tiny-sd", "--base", "x"]):
        with pytest.raises(SystemExit):
            cli.main(argv + ["--quick", "--no-eval", "--out", str(tmp_path / "never")])
        assert "does not apply" in capsys.readouterr().err
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.tmp").exists()


def test_set_overrides_config_fields_typed_as_their_defaults(tmp_path, capsys):
    """--set FIELD=VALUE: ints, floats, bools and tuples as the default's type; an unknown field
    or a missing value is refused before anything trains."""
    assert cli.config_value(3, "7") == 7 and isinstance(cli.config_value(3, "7"), int)
    assert cli.config_value(0.5, "1e-3") == 1e-3
    assert cli.config_value(True, "false") is False and cli.config_value(False, "1") is True
    assert cli.config_value((16, 32), "8,16") == (8, 16)
    assert cli.config_value(None, "12.5") == 12.5
    with pytest.raises(ValueError):
        cli.config_value(True, "maybe")
    for bad in ("nope=1", "batch="):
        with pytest.raises(SystemExit):
            cli.main(["tiny-sd", "--quick", "--no-eval", "--set", bad, "--out", str(tmp_path / "never")])
        assert "--set" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_set_reaches_the_trained_config(tmp_path):
    out = tmp_path / "tiny-sd"
    cli.main(["tiny-sd", "--quick", "--no-eval", "--set", "unet_steps=3", "--out", str(out)])
    assert json.loads((out / "train_info.json").read_text())["config"]["unet_steps"] == 3
