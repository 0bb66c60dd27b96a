"""The grader: scores, isolation of hostile learner files, JSON report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import grade, labs
from helpers.labs import find_lab, repo_root

TIMEOUT = 20  # generous on a loaded 2-core machine; the worker starts in ~1-3 s


def statuses(rows):
    return {r.function: r.status for r in rows}


def test_pristine_fake_starter_scores_zero(fake_lab):
    rows = grade.grade_lab(fake_lab.info, fake_lab.write_pristine(), timeout=TIMEOUT)
    assert statuses(rows) == {"double": "todo", "quad": "todo"}


def test_solution_copy_scores_full(fake_lab, tmp_path):
    report = grade.grade_learner(tmp_path / "sol" if fake_lab.write_solution_copy(tmp_path / "sol") else None,
                                 labs=["lab99"], timeout=TIMEOUT)
    assert report.score() == (2, 2)


HOSTILE = {
    "infinite loop": ("def double(x):\n    while True:\n        pass\n\ndef quad(x):\n    return 4 * x\n",
                      {"double": "timed out", "quad": "not run: timed out"}),
    "os._exit": ("import os\n\ndef double(x):\n    os._exit(7)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "exited with code 7 while checking double", "quad": "not run"}),
    "sys.exit": ("import sys\n\ndef double(x):\n    sys.exit(2)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "SystemExit: 2", "quad": None}),
    "syntax error": ("def double(x):\n    return x +\n",
                     {"double": "SyntaxError", "quad": "SyntaxError"}),
    "import-time exception": ("import torch\nraise RuntimeError('no GPU here')\n",
                              {"double": "RuntimeError: no GPU here", "quad": "line 2"}),
    "import-time os._exit": ("import os\nos._exit(0)\n",
                             {"double": "while importing your file", "quad": "exited with code 0"}),
    "segfault": ("import ctypes\n\ndef double(x):\n    ctypes.string_at(0)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "crashed (SIGSEGV)", "quad": "not run"}),
    "huge output": ("def double(x):\n    for _ in range(200000):\n        print('spam' * 100)\n    return 2 * x\n\n"
                    "def quad(x):\n    return 4 * x\n", {"double": None, "quad": None}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_learner_file_fails_only_its_rows(fake_lab, tmp_path, case):
    body, expected = HOSTILE[case]
    path = fake_lab.write(body, tmp_path / "learner")
    timeout = 3 if case == "infinite loop" else TIMEOUT
    rows = grade.grade_lab(fake_lab.info, path, timeout=timeout)
    assert [r.function for r in rows] == ["double", "quad"]
    for r in rows:
        want = expected[r.function]
        if want is None:
            assert r.status == ("error" if "SystemExit" in r.message else "passed"), r
        else:
            assert r.status == "error" and want in r.message, r


def test_one_bad_lab_does_not_touch_another(fake_lab, tmp_path, monkeypatch):
    """Two labs in one run: lab98 (a copy of lab99) hangs; lab99 still scores full."""
    other = labs.LabInfo("lab98", "lab98_fake", 98, "Fake Too",
                         solution_module="fake_sol99", check_module="fake_check99")
    monkeypatch.setitem(labs.REGISTERED, "lab98", other)
    folder = tmp_path / "learner"
    fake_lab.write_solution_copy(folder)
    (folder / "lab98_fake.py").write_text("while True:\n    pass\n")
    report = grade.grade_learner(folder, labs=["lab98", "lab99"], timeout=3)
    assert report.score("lab99") == (2, 2) and report.score("lab98") == (0, 2)
    assert all("while importing your file" in r.message for r in report.rows if r.lab == "lab98")


def test_missing_file(fake_lab, tmp_path):
    rows = grade.grade_lab(fake_lab.info, tmp_path / "nope.py", timeout=TIMEOUT)
    assert statuses(rows) == {"double": "error", "quad": "error"} and "not found" in rows[0].message


def test_report_json_and_table(fake_lab, tmp_path):
    fake_lab.write("def double(x):\n    return 2 * x\n\ndef quad(x):\n    return x\n", tmp_path / "l")
    report = grade.grade_learner(tmp_path / "l", labs=["lab99"], seed=5, timeout=TIMEOUT)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["seed"] == 5 and data["stream"] == "grade"
    assert (data["passed"], data["total"]) == (1, 2) and data["labs"] == {"lab99": {"passed": 1, "total": 2}}
    assert {r["function"]: r["status"] for r in data["rows"]} == {"double": "passed", "quad": "failed"}
    assert set(data["rows"][0]) == {"lab", "function", "status", "message", "seconds"}
    text = grade.format_report(report)
    assert "lab99: 1/2" in text and "total: 1/2 (50%)" in text and "seed 5" in text


def test_grade_and_notebook_seed_streams_differ():
    from helpers.checks._core import make_generator

    a = make_generator(1, "f", "notebook").initial_seed()
    assert a != make_generator(1, "f", grade.STREAM).initial_seed()
    assert a == make_generator(1, "f", "notebook").initial_seed() != make_generator(1, "g").initial_seed()


# --------------------------------------------------------------------------- the real labs, CLI

REAL = [i for i in labs.available_labs()]


@pytest.mark.skipif(not (repo_root() / "helpers/solutions/lab01_forward_noise.py").exists(),
                    reason="lab01 solution not written yet")
def test_cli_real_labs_pristine_zero_and_solutions_full(tmp_path):
    """`python -m helpers.grade` on every real lab: pristine starters 0, solution copies 100%."""
    sol = tmp_path / "sol"
    sol.mkdir()
    for info in REAL:
        shutil.copy(info.solution_path, sol / f"{info.slug}.py")
    cmd = [sys.executable, "-m", "helpers.grade", "--timeout", "300"]
    pristine = subprocess.run(cmd + ["--starters", str(repo_root() / "starters"), "--json", str(tmp_path / "p.json")],
                              capture_output=True, text=True, cwd=tmp_path)
    assert pristine.returncode == 0, pristine.stderr
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["passed"] == 0 and p["total"] > 0
    assert all(r["status"] == "todo" for r in p["rows"]), p["rows"]
    full = subprocess.run(cmd + ["--starters", str(sol), "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    s = json.loads((tmp_path / "s.json").read_text())
    assert full.returncode == 0 and s["passed"] == s["total"] == p["total"], full.stdout
    assert "total: " in full.stdout and "(100%)" in full.stdout
    assert find_lab("lab01").key in s["labs"]
