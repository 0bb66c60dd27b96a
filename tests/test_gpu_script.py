"""scripts/gpu_nbval.sh (nbval over every notebook, one or --jobs N at a time, with a time table) and the
shell entry points' syntax. Fast: a dry run over the real notebooks, real runs only over two
tiny notebooks, and the install step with a recording stand-in for pip."""
from __future__ import annotations

import datetime
import os
import re
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers import labs

ROOT = labs.repo_root()
SCRIPT = ROOT / "scripts" / "gpu_nbval.sh"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def run_script(*args, python=sys.executable, env=None, timeout=240):
    e = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    e.update(PYTHON=str(python), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def rows(table: str) -> dict[str, list[str]]:
    """The per-notebook table: first column -> the other columns."""
    out = {}
    for line in table.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cols) == 5 and cols[0] not in ("notebook", "---"):
            out[cols[0]] = cols[1:]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny notebooks: ok (2 cells pass), bad (the second cell raises)."""
    d = tmp_path_factory.mktemp("tiny")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("print(x + 1)")]), d / "ok.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('planted failure')")]),
                   d / "bad.ipynb")
    return d


@pytest.mark.parametrize("path", ["scripts/gpu_nbval.sh", ".ci/run", "scripts/test.sh"])
def test_shell_syntax(path):
    proc = subprocess.run(["bash", "-n", str(ROOT / path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_and_bad_usage(tmp_path):
    proc = run_script("--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout and "gpu_nbval.md" in proc.stdout
    assert run_script("--frobnicate", "--out", tmp_path).returncode == 2
    proc = run_script("--out", tmp_path, "--no-install", tmp_path / "absent.ipynb")
    assert proc.returncode == 2 and "no notebook" in proc.stderr


def test_dry_run_over_every_notebook(tmp_path):
    """The table part: one row per notebook in notebooks/, device, versions and date as found."""
    assert NOTEBOOKS
    proc = run_script("--dry-run", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "gpu_nbval.md").read_text()
    log = (tmp_path / "gpu_nbval.log").read_text()
    assert list(rows(table)) == [p.stem for p in NOTEBOOKS]
    assert all(r[0] == "not run (dry run)" for r in rows(table).values())
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"| device | {device} |" in table
    for name in ("diffusers", "transformers", "nbval"):
        assert f"| {name} | {version(name)} |" in table
    assert f"| torch | {torch.__version__}" in table
    assert f"| date | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}" in table
    for p in NOTEBOOKS:  # the command each notebook would get: nbval, lax, this interpreter
        assert re.search(rf"-m pytest --nbval-lax --nbval-current-env .* notebooks/{p.name}\n", log), p.name
    assert "install" not in log


def test_real_run_passes_and_fails_and_times(tmp_path, tiny):
    proc = run_script("--no-install", "--out", tmp_path, "--save", tiny / "ok.ipynb", tiny / "ok.ipynb", tiny / "bad.ipynb")
    assert proc.returncode == 1, "a failing notebook must fail the script"
    table = (tmp_path / "gpu_nbval.md").read_text()
    r = rows(table)
    assert r["ok"][:2] == ["passed", "2/2"] and r["bad"][:2] == ["FAILED (exit 1)", "1/2"], table
    for name in ("ok", "bad"):
        wall, cpu = map(float, r[name][2:])
        assert 0 < wall < 200 and 0 < cpu < 200
    total = r["**total, 2 notebooks**"]
    assert total[0] == "1 passed, 1 failed"
    assert float(total[2]) == pytest.approx(float(r["ok"][2]) + float(r["bad"][2]), abs=0.11)
    elapsed = r["**elapsed, 2 notebooks, 1 at a time**"]
    assert float(elapsed[2]) >= float(total[2]) - 0.5, "one at a time: the runs' walls add up to the elapsed time"
    assert "| notebooks at a time | 1 (--jobs) |" in table
    assert "planted failure" in (tmp_path / "gpu_nbval.log").read_text(), "the log keeps nbval's output"
    saved = nbformat.read(tmp_path / "ok.ipynb", as_version=4)
    assert saved.cells[1].outputs[0]["text"].strip() == "2", "--save keeps the executed notebook's outputs"
    assert "| device | " in table and "| GPU | " in table


def test_jobs_run_notebooks_at_once(tmp_path):
    """--jobs 2: two notebooks that each sleep 6 s take well under the sum of their walls, each
    still gets its own row (in the notebooks' order, whatever finished first), a failure still
    fails the script, and each run gets OMP_NUM_THREADS = cores / jobs when it is unset."""
    for name, extra in (("a_sleeps", ""), ("b_sleeps", "raise ValueError('planted')")):
        cells = [new_code_cell("import os, time; time.sleep(6); print(os.environ.get('OMP_NUM_THREADS'))")]
        cells += [new_code_cell(extra), new_code_cell("print('after the error')")] if extra else []
        nbformat.write(new_notebook(cells=cells), tmp_path / f"{name}.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH", "OMP_NUM_THREADS")}
    env.update(PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--jobs", "2", "--no-install", "--out", str(tmp_path / "out"),
                           "--save", str(tmp_path / "b_sleeps.ipynb"),
                           str(tmp_path / "a_sleeps.ipynb"), str(tmp_path / "b_sleeps.ipynb")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = (tmp_path / "out" / "gpu_nbval.md").read_text()
    r = rows(table)
    assert list(r)[:2] == ["a_sleeps", "b_sleeps"]
    assert r["a_sleeps"][:2] == ["passed", "1/1"] and r["b_sleeps"][:2] == ["FAILED (exit 1)", "2/3"], table
    saved = nbformat.read(tmp_path / "out" / "b_sleeps.ipynb", as_version=4)  # every cell ran, the error kept
    assert saved.cells[1].outputs[0]["ename"] == "ValueError" and "after the error" in saved.cells[2].outputs[0]["text"]
    assert "-- save b_sleeps: FAILED" in (tmp_path / "out" / "gpu_nbval.log").read_text()
    total, elapsed = float(r["**total, 2 notebooks**"][2]), float(r["**elapsed, 2 notebooks, 2 at a time**"][2])
    assert elapsed < total - 3, f"two runs at once: elapsed {elapsed} s against {total} s one after the other"
    assert f"OMP_NUM_THREADS={max(1, (os.cpu_count() or 1) // 2)}" in table
    assert "| notebooks at a time | 2 (--jobs) |" in table
    assert run_script("--jobs", "0", "--out", tmp_path).returncode == 2


FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in for python: records pip calls (and the -r file's content) instead of running them;
# fails those whose arguments contain a word of $FAKE_PIP_FAIL; records nbval runs (and says
# they passed); anything else (the script's checks and device query) runs for real.
if [ "$1 $2" = "-m pip" ]; then
  echo "PIP $* | PYTHONPATH=${PYTHONPATH:-}" >> "$REC"
  prev=""; for a in "$@"; do [ "$prev" = "-r" ] && sed 's/^/REQ /' "$a" >> "$REC"; prev=$a; done
  for pat in ${FAKE_PIP_FAIL:-}; do case " $* " in *" $pat "*) exit 1 ;; esac; done
  exit 0
fi
case "$*" in *--nbval-lax*) echo "NBVAL | PYTHONPATH=${PYTHONPATH:-}" >> "$REC"; echo "2 passed in 0.1s"; exit 0 ;; esac
exec REAL "$@"
"""


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "python"
    path.write_text(FAKE_PYTHON.replace("REAL", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "diffusers-0.0.0-py3-none-any.whl").write_bytes(b"")
    return path, wheels, tmp_path / "record.txt"


def test_install_from_wheels_no_index(tmp_path, tiny, fake_python):
    python, wheels, rec = fake_python
    proc = run_script("--wheels", wheels, "--out", tmp_path / "out", tiny / "ok.ipynb", python=python,
                      env={"REC": str(rec)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = rec.read_text().splitlines()
    pips = [line for line in lines if line.startswith("PIP")]
    assert "--no-index" in pips[0] and f"--find-links {wheels}" in pips[0] and " -r " in pips[0]
    reqs = [line[4:] for line in lines if line.startswith("REQ")]
    assert any(r.startswith("diffusers") for r in reqs) and any(r.startswith("nbval") for r in reqs)
    assert not any(r.startswith(("torch", "-e")) for r in reqs), "the machine's own (CUDA) torch stays"
    assert "--no-deps" in pips[1] and "-e ." in pips[1] and "--no-index" in pips[1]
    assert "--target" not in rec.read_text()
    assert [line for line in lines if line.startswith("NBVAL")] == ["NBVAL | PYTHONPATH="]
    assert rows((tmp_path / "out" / "gpu_nbval.md").read_text())["ok"][:2] == ["passed", "2/2"]


def test_install_falls_back_to_target_and_pythonpath(tmp_path, tiny, fake_python):
    python, wheels, rec = fake_python
    site = tmp_path / "site"
    proc = run_script("--wheels", wheels, "--out", tmp_path / "out", tiny / "ok.ipynb", python=python,
                      env={"REC": str(rec), "FAKE_PIP_FAIL": "--find-links -e", "GPU_NBVAL_SITE": str(site)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = rec.read_text().splitlines()
    target = [line for line in lines if "--target" in line]
    assert target and "--no-deps" in target[0] and f"--target {site}" in target[0] and str(wheels) in target[0]
    assert [line for line in lines if line.startswith("NBVAL")] == [f"NBVAL | PYTHONPATH={ROOT}:{site}"]


def test_missing_packages_stop_the_run(tmp_path, tiny):
    """Without nbval (a bare interpreter) the script says what is missing and exits 2."""
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if not bare or subprocess.run([bare, "-c", "import nbval"], capture_output=True).returncode == 0:
        pytest.skip("no interpreter without nbval here")
    proc = run_script("--no-install", "--out", tmp_path, tiny / "ok.ipynb", python=bare)
    assert proc.returncode == 2 and "missing:" in proc.stdout and "nbval" in proc.stdout
