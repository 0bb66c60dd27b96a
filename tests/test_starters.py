"""Starters are generated from the solutions and never drift; every pristine exercise is TODO."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from helpers import labs
from helpers.exercise import load_module
from helpers.make_starters import MarkerError, main, starter_text, strip_solutions
from labtools import write_pristine_starter

LABS = labs.available_labs()
ids = [i.slug for i in LABS]


@pytest.mark.parametrize("info", LABS, ids=ids)
def test_committed_starter_is_up_to_date(info):
    path = labs.repo_root() / "starters" / f"{info.slug}.py"
    assert path.exists(), f"{path} missing: run `python -m helpers.make_starters`"
    assert path.read_text(encoding="utf-8") == starter_text(info), \
        "starter out of date: run `python -m helpers.make_starters`"


def test_make_starters_check_cli():
    r = subprocess.run([sys.executable, "-m", "helpers.make_starters", "--check"],
                       capture_output=True, text=True, cwd=labs.repo_root())
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_cli_reports_stale(tmp_path, capsys):
    if not LABS:
        pytest.skip("no lab yet")
    assert main(["--out", str(tmp_path)]) == 0
    target = tmp_path / f"{LABS[0].slug}.py"
    target.write_text(target.read_text() + "# edited by hand\n")
    assert main(["--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "-# edited by hand" in out and "out of date" in out


@pytest.mark.parametrize("info", LABS, ids=ids)
def test_every_pristine_exercise_is_todo(info):
    """Calling (or instantiating) each exercise of the pristine starter raises
    NotImplementedError("TODO(labNN): name") -- whatever the arguments."""
    mod = load_module(labs.repo_root() / "starters" / f"{info.slug}.py")
    ref = load_module(info.solution_path)
    assert mod.__all__ == ref.__all__
    for name in mod.__all__:
        obj = getattr(mod, name)
        targets = [obj] if not inspect.isclass(obj) else [
            f for f in vars(obj).values() if inspect.isfunction(f) and
            "NotImplementedError" in inspect.getsource(f)]
        assert targets, f"{name}: no TODO in the starter"
        for f in targets:
            n_args = len([p for p in inspect.signature(f).parameters.values()
                          if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
            with pytest.raises(NotImplementedError, match=rf"TODO\({info.key}\)"):
                f(*[None] * n_args)


SOLUTION = '''\
class Net:
    def forward(self, x):
        """doc"""
        # BEGIN SOLUTION
        # HINT: return x
        # HINT:
        #   not a hint: part of the solution
        return x
        # END SOLUTION


def f(x):
    # BEGIN SOLUTION
    return x
    # END SOLUTION
'''


def test_strip_solutions_replaces_blocks():
    out = strip_solutions(SOLUTION, "lab42")
    assert out == '''\
class Net:
    def forward(self, x):
        """doc"""
        # TODO: return x
        # TODO:
        raise NotImplementedError("TODO(lab42): Net.forward")


def f(x):
    raise NotImplementedError("TODO(lab42): f")
'''


@pytest.mark.parametrize("bad, line, what", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", 2, "without a matching '# END"),
    ("def f():\n    return 1\n    # END SOLUTION\n", 3, "without a matching '# BEGIN"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    # END SOLUTION\n", 3, "nested"),
])
def test_unmatched_markers_raise_with_line(tmp_path, bad, line, what):
    p = tmp_path / "lab42_bad.py"
    p.write_text(bad)
    with pytest.raises(MarkerError, match=rf"lab42_bad.py:{line}: .*{what}"):
        strip_solutions(p.read_text(), "lab42", str(p))


@pytest.mark.parametrize("info", LABS, ids=ids)
def test_pristine_starter_in_a_notebook_uses_every_reference(info, monkeypatch, capsys):
    """What a learner sees on first opening the lab: every function TODO, the references used."""
    from helpers.exercise import exercise, reference

    monkeypatch.delenv("DIFFUSION_LABS_STARTERS", raising=False)
    monkeypatch.delenv("DIFFUSION_LABS_MODE", raising=False)
    ex = exercise(info.key)
    assert set(ex.status.values()) == {"todo"}
    assert all(getattr(ex, n) is getattr(reference(info), n) for n in ex.status)
    assert f"{len(ex.status)} of {len(ex.status)} functions replaced by the reference" in capsys.readouterr().out


@pytest.mark.parametrize("info", LABS, ids=ids)
def test_check_on_pristine_starter_is_all_todo(info, tmp_path, monkeypatch, capsys):
    """check() on a learner's untouched starter: one TODO row per exercise, 0 passed."""
    from helpers.exercise import check, names

    write_pristine_starter(info.key, tmp_path, monkeypatch)
    results = check(info.key, seed=0)
    assert [r.name for r in results] == names(info)
    assert [r.status for r in results] == ["todo"] * len(results)
    assert f"0/{len(results)} passed" in capsys.readouterr().out


@pytest.mark.parametrize("info", LABS, ids=ids)
def test_references_pass_their_own_checks_in_solutions_mode(info, monkeypatch):
    from helpers.exercise import check

    monkeypatch.setenv("DIFFUSION_LABS_MODE", "solutions")
    for seed in (0, 1):
        rows = check(info.key, seed=seed)
        assert [r.status for r in rows] == ["passed"] * len(rows), [(r.name, r.message) for r in rows]
