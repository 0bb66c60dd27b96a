"""scripts/seed_sweep.py: it passes the references and reports (exit 1) a reference that fails."""
from __future__ import annotations

import torch

from helpers.labs import find_lab
from helpers.solutions import lab01_forward_noise as ref01
from scripts import seed_sweep


def test_references_pass_a_short_sweep():
    assert seed_sweep.sweep([find_lab("lab01")], seeds=2, streams=["notebook", "grade"]) == []


def test_a_failing_reference_is_reported_with_its_seed(monkeypatch, capsys):
    good = ref01.make_betas
    monkeypatch.setattr(ref01, "make_betas", lambda *a, **k: good(*a, **k) * torch.tensor(1.01))
    assert seed_sweep.main(["01", "--seeds", "2", "--stream", "grade"]) == 1
    out = capsys.readouterr().out
    assert "FAIL lab01 make_betas stream=grade seed=0" in out and "FAIL lab01 make_betas stream=grade seed=1" in out
