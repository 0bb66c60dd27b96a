"""Colab, simulated: the first code cell of every notebook (helpers.setup.COLAB_BOOTSTRAP).

In Colab (``google.colab`` imported) the cell clones the course into /content/diffusion-labs
(unless that folder exists), installs requirements.txt there, changes into it and puts it
first on ``sys.path`` (the running kernel does not see the editable install pip just made);
after it, ``import helpers`` and ``setup()`` must work. Outside Colab it does nothing.

Nothing is cloned or installed: ``google.colab`` is a fake module, ``subprocess.run`` and
``os.chdir`` record what they are asked, and ``os.path.isdir`` answers for the clone folder.
The import test runs in a fresh interpreter where this checkout's own install is hidden and
the clone folder is mapped (by an import path hook) onto this checkout, so ``helpers`` can
only come in through the path the cell inserts.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import types

import nbformat
import pytest

from helpers import labs
from helpers.setup import COLAB_BOOTSTRAP, REPO_URL

ROOT = labs.repo_root()
CLONE = "/content/diffusion-labs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_code_cell(path) -> str:
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    assert cells, f"{path.name} has no code cell"
    return cells[0]


class Colab:
    """Records what the cell asks of the machine."""

    def __init__(self):
        self.runs, self.chdirs, self.isdir_asked = [], [], []


@pytest.fixture
def simulate(monkeypatch):
    """``simulate(source, in_colab, clone_exists)`` runs ``source`` with the machine patched
    and returns (record, the sys.path it left)."""

    def run(source: str, in_colab: bool, clone_exists: bool):
        rec = Colab()
        real_isdir = os.path.isdir
        if in_colab:
            monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)

        def fake_run(*args, **kwargs):
            rec.runs.append((args, kwargs))
            return subprocess.CompletedProcess(args, 0)

        def fake_isdir(path):
            if os.fspath(path) == CLONE:
                rec.isdir_asked.append(path)
                return clone_exists
            return real_isdir(path)

        monkeypatch.setattr(subprocess, "run", fake_run)
        monkeypatch.setattr(os, "chdir", rec.chdirs.append)
        monkeypatch.setattr(os.path, "isdir", fake_isdir)
        monkeypatch.setattr(sys, "path", list(sys.path))
        exec(compile(source, "<first code cell>", "exec"), {"__name__": "__main__"})
        path = list(sys.path)
        monkeypatch.undo()
        return rec, path

    return run


def assert_clone_and_install(runs):
    """One shell command: clone REPO_URL into CLONE, cd there, pip install -r requirements.txt."""
    assert len(runs) == 1, f"expected one subprocess.run, got {runs}"
    (args, kwargs) = runs[0]
    assert kwargs.get("shell") is True and kwargs.get("check") is True, \
        "the clone/install must run through the shell (cd, &&) and fail the cell if it fails"
    steps = [shlex.split(s) for s in args[0].split("&&")]
    assert steps[0][:2] == ["git", "clone"] and steps[0][-2:] == [REPO_URL, CLONE], steps[0]
    assert steps[1] == ["cd", CLONE], steps[1]
    assert steps[2][:2] == ["pip", "install"] and steps[2][-2:] == ["-r", "requirements.txt"], steps[2]
    assert len(steps) == 3, steps


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_cell_is_the_bootstrap(nb):
    assert first_code_cell(nb).strip() == COLAB_BOOTSTRAP.strip(), \
        f"{nb.name}: the first code cell must be helpers.setup.COLAB_BOOTSTRAP, verbatim"


@pytest.mark.parametrize("clone_exists", [False, True], ids=["fresh", "cloned"])
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_in_colab(nb, clone_exists, simulate):
    rec, path = simulate(first_code_cell(nb), in_colab=True, clone_exists=clone_exists)
    assert rec.isdir_asked, "the cell must look for the clone folder before cloning"
    if clone_exists:
        assert rec.runs == [], "the folder exists (a second run, or a re-opened notebook): clone nothing"
    else:
        assert_clone_and_install(rec.runs)
    assert rec.chdirs == [CLONE], "the cell must change into the clone (starters/ are found from there)"
    assert path[0] == CLONE, "the clone must be first on sys.path (this kernel does not see pip's editable install)"
    assert path.count(CLONE) == 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_outside_colab_the_cell_does_nothing(nb, simulate):
    before = list(sys.path)
    rec, path = simulate(first_code_cell(nb), in_colab=False, clone_exists=False)
    assert rec.runs == [] and rec.chdirs == [] and rec.isdir_asked == []
    assert path == before


def test_requirements_install_the_course_and_keep_colabs_torch():
    """What the cell's `pip install -r requirements.txt` needs from that file: it installs
    the course library (`-e .`) and does not cap torch (Colab's CUDA build stays)."""
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert "-e ." in lines
    torch = [line for line in lines if line.split(">")[0].split("<")[0].split("=")[0].strip() == "torch"]
    assert torch and not any(op in torch[0] for op in ("==", "<", "~=")), torch


# Run in a fresh interpreter (argv: repo root, clone folder, "0"/"1" clone exists, the cell).
IMPORT_SCRIPT = textwrap.dedent('''\
    import importlib.machinery as m, importlib.util, json, os, subprocess, sys, types
    from pathlib import Path
    root, clone, exists, cell = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]

    # Hide the ways this checkout is importable: requirements.txt's editable install (its
    # finder) and path entries that are the checkout itself.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root.resolve()]
    sys.path_importer_cache.clear()
    assert importlib.util.find_spec("helpers") is None, \
        f"helpers importable before the cell (installed without -e?): {importlib.util.find_spec('helpers').origin}"

    # The clone folder holds this checkout: a path hook maps it onto the repository root.
    details = [(m.SourceFileLoader, m.SOURCE_SUFFIXES), (m.SourcelessFileLoader, m.BYTECODE_SUFFIXES)]
    def hook(entry):
        if entry != clone:
            raise ImportError
        return m.FileFinder(str(root), *details)
    sys.path_hooks.insert(0, hook)

    # Colab, simulated.
    sys.modules["google.colab"] = types.ModuleType("google.colab")
    runs, chdirs = [], []
    real = subprocess.run, os.chdir, os.path.isdir
    subprocess.run = lambda *a, **k: runs.append([a[0], k]) or subprocess.CompletedProcess(a, 0)
    os.chdir = chdirs.append
    os.path.isdir = lambda p: exists if p == clone else real[2](p)
    exec(compile(cell, "<first code cell>", "exec"), {"__name__": "__main__"})
    subprocess.run, os.chdir, os.path.isdir = real

    import helpers
    from helpers.setup import setup
    from helpers.exercise import exercise, check
    device = setup()
    print(json.dumps({"runs": runs, "chdirs": chdirs, "path0": sys.path[0], "device": str(device),
                      "helpers": helpers.__file__}))
''')


@pytest.mark.parametrize("clone_exists", [False, True], ids=["fresh", "cloned"])
def test_after_the_cell_helpers_import_and_setup_runs(tmp_path, clone_exists):
    cells = sorted({first_code_cell(nb) for nb in NOTEBOOKS})
    assert cells
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIFFUSION_LABS_STARTERS")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    for cell in cells:  # all equal to COLAB_BOOTSTRAP (tested above): one run unless they differ
        proc = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT, str(ROOT), CLONE, str(int(clone_exists)), cell],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        versions = proc.stdout.strip().splitlines()[-2]
        assert out["helpers"] == str(ROOT / "helpers" / "__init__.py"), "helpers came from elsewhere"
        assert out["path0"] == CLONE and out["chdirs"] == [CLONE]
        if clone_exists:
            assert out["runs"] == []
        else:
            assert_clone_and_install([(tuple(out["runs"][0][:1]), out["runs"][0][1])] if out["runs"] else [])
        assert out["device"] in ("cpu", "cuda")
        assert versions.startswith("python ") and "diffusers " in versions, versions


# --------------------------------------------------------------------------- the setup cell:
# versions printed with the tested range (requirements.txt); a warning, never a failure, outside

import warnings  # noqa: E402

from helpers import setup as setup_mod  # noqa: E402


def test_tested_ranges_come_from_requirements():
    ranges = setup_mod.tested_ranges()
    assert set(ranges) == set(setup_mod.TESTED_PACKAGES), "requirements.txt must give diffusers and transformers a range"
    from packaging.specifiers import SpecifierSet

    for name, spec in ranges.items():
        ops = {s.operator for s in SpecifierSet(spec)}
        assert ops & {">=", ">", "~=", "=="} and ops & {"<", "<=", "~=", "=="}, \
            f"{name}{spec}: give a lower and an upper bound (the range the course is tested with)"


def test_tested_ranges_parsing(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# diffusers>=9 in a comment\ntorch>=2.4\ndiffusers >= 0.30, <0.40  # tested\n"
                   "diffusers-extra>=1\ntransformers[torch]>=4.5,<5 ; python_version>'3'\n-e .\n")
    assert setup_mod.tested_ranges(req) == {"diffusers": ">=0.30,<0.40", "transformers": ">=4.5,<5"}
    assert setup_mod.tested_ranges(tmp_path / "absent.txt") == {}


def test_untested_versions():
    ranges = {"diffusers": ">=0.35,<0.44", "transformers": ">=4.50,<6"}
    assert setup_mod.untested_versions({"diffusers": "0.42.1", "transformers": "5.3.0"}, ranges) == []
    assert setup_mod.untested_versions({"diffusers": "0.43.0rc1", "transformers": "4.50.0"}, ranges) == []
    assert setup_mod.untested_versions({"diffusers": "not installed", "transformers": "x.y"}, ranges) == []
    assert setup_mod.untested_versions({"diffusers": "0.44.0"}, {}) == []
    for versions in ({"diffusers": "0.44.0"}, {"diffusers": "0.44.0.dev0"}, {"diffusers": "0.34.9"}):
        (msg,) = setup_mod.untested_versions(versions, ranges)
        assert msg.startswith(f"diffusers {versions['diffusers']} is outside") and "diffusers>=0.35,<0.44" in msg
        assert "pip install -r requirements.txt" in msg
    msgs = setup_mod.untested_versions({"diffusers": "1.0.0", "transformers": "6.0.0"}, ranges)
    assert [m.split()[0] for m in msgs] == ["diffusers", "transformers"]


def run_setup(monkeypatch, capsys, ranges):
    import matplotlib

    monkeypatch.setattr(setup_mod, "tested_ranges", lambda: ranges)
    with matplotlib.rc_context(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = setup_mod.setup()
    return device, capsys.readouterr().out, [w for w in caught if issubclass(w.category, setup_mod.UntestedVersionWarning)]


def test_setup_prints_the_range_and_warns_outside_it(monkeypatch, capsys):
    from importlib.metadata import version

    installed = version("diffusers")
    device, out, caught = run_setup(monkeypatch, capsys, {"diffusers": f"=={installed}", "transformers": ">=0.1"})
    assert device.type in ("cpu", "cuda") and caught == []
    assert f"diffusers {installed} (tested =={installed})" in out and "(tested >=0.1)" in out

    device, out, caught = run_setup(monkeypatch, capsys, {"diffusers": f">{installed}"})
    assert device.type in ("cpu", "cuda"), "outside the range setup() warns, it does not fail"
    assert len(caught) == 1 and f"diffusers {installed} is outside" in str(caught[0].message)
    assert caught[0].filename == __file__, "the warning must point at the caller (the notebook cell)"

    device, out, caught = run_setup(monkeypatch, capsys, {})  # no requirements.txt (pip-installed copy)
    assert "(tested" not in out and caught == [] and f"diffusers {installed}" in out
