"""The two helpers every tests/test_labNN.py uses to run a lab's checks (one place)."""
from __future__ import annotations

import pytest

from helpers.checks._core import CheckFailed, make_generator


def checker(checks):
    """``run(name, fn, seed)`` runs ``checks.check_<name>`` on ``fn`` with the test stream's
    generator; ``fails(name, fn, phrase, seeds)`` asserts that it fails for every seed with a
    message containing ``phrase`` (the hint of the planted bug)."""

    def run(name, fn, seed=0):
        getattr(checks, f"check_{name}")(fn, make_generator(seed, name, "test"))

    def fails(name, fn, phrase, seeds=(0, 1, 2)):
        for seed in seeds:
            with pytest.raises(CheckFailed) as info:
                run(name, fn, seed)
            assert phrase in str(info.value), f"seed {seed}: {phrase!r} not in:\n{info.value}"

    return run, fails


def write_pristine_starter(lab: str, folder, monkeypatch):
    """Write ``lab``'s pristine starter (every exercise TODO) into ``folder`` and point the course
    at it (``DIFFUSION_LABS_STARTERS``, no forced mode); returns the starter's path."""
    from helpers.labs import find_lab
    from helpers.make_starters import strip_solutions

    info = find_lab(lab)
    path = folder / f"{info.slug}.py"
    path.write_text(strip_solutions(info.solution_path.read_text(), info.key))
    monkeypatch.setenv("DIFFUSION_LABS_STARTERS", str(folder))
    monkeypatch.delenv("DIFFUSION_LABS_MODE", raising=False)
    return path

