"""The grader: exact scores on a corpus of hostile submissions, a class of twenty learners
end to end through the CLI, isolation, integrity, determinism, seed streams.

Workers are forked from one server that has torch imported (helpers.grading.forkserver),
so a whole class costs seconds; one test runs the slow path (a fresh interpreter per
worker) and checks it grades the same.
"""
from __future__ import annotations

import csv
import json
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import grade, labs
from helpers.labs import find_lab, repo_root

TIMEOUT = 20  # generous on a loaded 2-core machine
CORPUS = Path(__file__).parent / "grading"
LAB01 = repo_root() / "helpers/solutions/lab01_forward_noise.py"
needs_lab01 = pytest.mark.skipif(not LAB01.exists(), reason="lab01 solution not written yet")
FUNCS = ["make_betas", "alphas_cumprod", "add_noise", "snr", "rescale_zero_terminal_snr"]


def reference_function(name: str) -> str:
    """The source of lab 01's reference ``name`` (markers and all): the good functions of the
    class of twenty, current with the lab."""
    import inspect

    from helpers.solutions import lab01_forward_noise as ref01

    return inspect.getsource(getattr(ref01, name)).rstrip() + "\n"


ON_TOP = "# On top of lab 01's reference"


def current_lab01(text: str) -> str:
    """A corpus file as a learner's: a case written "on top of lab 01's reference" (its first
    line says so) is the reference solution with the case's text appended, so its definitions
    replace the reference's and its top-level code runs at load; any other file (a case that must
    stand alone, like one that imports the reference instead of defining a function) as it is."""
    if not text.startswith(ON_TOP):
        return text
    return LAB01.read_text(encoding="utf-8").rstrip() + "\n\n\n# ---- the case ----\n" + text


def statuses(rows):
    return {r.function: r.status for r in rows}


# --------------------------------------------------------------------------- the fake lab

HOSTILE = {
    "infinite loop": ("def double(x):\n    while True:\n        pass\n\ndef quad(x):\n    return 4 * x\n",
                      {"double": "timed out", "quad": None}),  # a new worker grades quad
    "os._exit": ("import os\n\ndef double(x):\n    os._exit(7)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "exited with code 7 while checking double", "quad": None}),
    "sys.exit": ("import sys\n\ndef double(x):\n    sys.exit(2)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "SystemExit: 2", "quad": None}),
    "syntax error": ("def double(x):\n    return x +\n",
                     {"double": "SyntaxError", "quad": "SyntaxError"}),
    "import-time exception": ("import torch\nraise RuntimeError('no GPU here')\n",
                              {"double": "RuntimeError: no GPU here", "quad": "line 2"}),
    "import-time os._exit": ("import os\nos._exit(0)\n",
                             {"double": "while importing your file", "quad": "exited with code 0"}),
    "segfault": ("import ctypes\n\ndef double(x):\n    ctypes.string_at(0)\n\ndef quad(x):\n    return 4 * x\n",
                 {"double": "crashed (SIGSEGV)", "quad": None}),
    "huge output": ("def double(x):\n    for _ in range(20000):\n        print('spam' * 100)\n    return 2 * x\n\n"
                    "def quad(x):\n    return 4 * x\n", {"double": None, "quad": None}),
}


def test_fake_lab_class_hostile_pristine_and_solution(fake_lab, tmp_path):
    """Every hostile case, a pristine starter and a solution copy, graded as one class."""
    subs = tmp_path / "subs"
    for i, (body, _) in enumerate(HOSTILE.values()):
        fake_lab.write(body, subs / f"h{i}")
    fake_lab.write_pristine(subs / "pristine")
    fake_lab.write_solution_copy(subs / "solution")
    learners = {lr.name: lr for lr in grade.grade_class(subs, ["lab99"], out=None, timeout=5, jobs=2,
                                                        progress=False)}
    assert statuses(learners["pristine"].report.rows) == {"double": "todo", "quad": "todo"}
    assert learners["solution"].report.score() == (2, 2)
    for i, (case, (_, expected)) in enumerate(HOSTILE.items()):
        rows = learners[f"h{i}"].report.rows
        assert [r.function for r in rows] == ["double", "quad"], case
        for r in rows:
            want = expected[r.function]
            if want is None:
                assert r.status == ("error" if "SystemExit" in r.message else "passed"), (case, r)
            else:
                assert r.status == "error" and want in r.message, (case, r)
    out = learners["h7"].report.lab_info["lab99"]["output"]  # huge output: kept head, counted tail
    assert out.startswith("spam") and len(out) < grade.OUTPUT_LIMIT + 200 and "more bytes not shown" in out


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


def test_report_json_and_table_single_learner_slow_path(fake_lab, tmp_path):
    """One lab of one learner: a fresh interpreter (no fork server)."""
    fake_lab.write("def double(x):\n    return 2 * x\n\ndef quad(x):\n    return x\n", tmp_path / "l")
    report = grade.grade_learner(tmp_path / "l", labs=["lab99"], seed=5, timeout=TIMEOUT, fork=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["seed"] == 5 and data["stream"] == "grade"
    assert (data["passed"], data["total"]) == (1, 2) and data["labs"]["lab99"]["passed"] == 1
    assert data["labs"]["lab99"]["total"] == 2 and data["labs"]["lab99"]["outcome"] == "finished"
    assert {r["function"]: r["status"] for r in data["rows"]} == {"double": "passed", "quad": "failed"}
    assert set(data["rows"][0]) == {"lab", "function", "status", "message", "seconds"}
    text = grade.format_report(report)
    assert "lab99: 1/2" in text and "total: 1/2 (50%)" in text and "seed 5" in text


# --------------------------------------------------------------------------- seeds

def test_grade_and_notebook_seed_streams_differ():
    from helpers.checks._core import make_generator

    a = make_generator(1, "f", "notebook").initial_seed()
    assert a != make_generator(1, "f", grade.STREAM).initial_seed()
    assert a == make_generator(1, "f", "notebook").initial_seed() != make_generator(1, "g").initial_seed()


@needs_lab01
def test_answer_tuned_to_the_notebook_fails_the_grader():
    """A learner who replays what the notebook's check asked (same seed) passes the notebook
    check and fails the grader: the grader's inputs come from another stream."""
    from helpers.checks import lab01_forward_noise as checks
    from helpers.checks._core import make_generator, run_check
    from helpers.solutions import lab01_forward_noise as ref

    seed = grade.DEFAULT_SEED
    recorded = []

    def recorder(abar):
        recorded.append(ref.snr(abar))
        return recorded[-1]

    assert run_check(checks.check_snr, recorder, make_generator(seed, "snr", "notebook")).status == "passed"
    replay = list(recorded)

    def tuned():
        calls = iter(replay)
        return lambda abar: next(calls).clone()

    assert run_check(checks.check_snr, tuned(), make_generator(seed, "snr", "notebook")).status == "passed"
    res = run_check(checks.check_snr, tuned(), make_generator(seed, "snr", grade.STREAM))
    assert res.status == "failed", res


# --------------------------------------------------------------------------- integrity (in-process)

def test_snapshot_detects_and_restores_patches():
    import types

    from helpers.grading.integrity import Snapshot

    mod = types.ModuleType("fake_checks_mod")
    mod.TOL = {"f32": {"atol": 1e-6}}

    def ref_fn(x):
        return 2 * x

    mod.ref_fn = ref_fn
    mod.torch = torch
    snap = Snapshot([mod], [torch])
    assert snap.changes() == []
    real_allclose, real_code = torch.allclose, ref_fn.__code__
    try:
        torch.allclose = lambda *a, **k: True
        mod.TOL["f32"]["atol"] = 1e9
        ref_fn.__code__ = (lambda x: x).__code__
        mod.isinstance = lambda *a: True
        changed = snap.changes()
        assert {"torch.allclose", "fake_checks_mod.TOL", "fake_checks_mod.ref_fn",
                "fake_checks_mod.isinstance (added)"} <= set(changed), changed
        assert snap.restore() == []
    finally:
        torch.allclose = real_allclose
        ref_fn.__code__ = real_code
    assert torch.allclose is real_allclose and mod.TOL == {"f32": {"atol": 1e-6}} and mod.ref_fn(3) == 6
    assert not hasattr(mod, "isinstance") and snap.changes() == []


# --------------------------------------------------------------------------- the corpus (lab01)

P, F, T, E = "passed", "failed", "todo", "error"
from helpers.grading.worker import MODIFIED  # noqa: E402
# learner -> {function: (status, substring of the message or None)}
EXPECTED = {
    "perfect": {f: (P, None) for f in FUNCS},
    "perfect_zip": {f: (P, None) for f in FUNCS},
    "pristine": {f: (T, "TODO(lab01)") for f in FUNCS},
    "empty_folder": {f: (E, "file not found") for f in FUNCS},
    "bad_zip": {f: (E, "could not read the zip") for f in FUNCS},
    "hardcoded": {**{f: (F, None) for f in FUNCS}, "rescale_zero_terminal_snr": (P, None)},
    "huge_output": {f: (P, None) for f in FUNCS},
    "import_error": {f: (E, "could not be loaded: RuntimeError: this file needs a GPU") for f in FUNCS},
    "syntax_error": {f: (E, "SyntaxError") for f in FUNCS},
    # a hang or a crash costs only its own row: a new worker grades the functions after it
    "infinite_loop": {"make_betas": (P, None), "alphas_cumprod": (E, "timed out after 8 s while checking alphas_cumprod"),
                      "add_noise": (P, None), "snr": (P, None), "rescale_zero_terminal_snr": (P, None)},
    "segfault": {"make_betas": (P, None), "alphas_cumprod": (E, "crashed (SIGSEGV)"),
                 "add_noise": (P, None), "snr": (P, None), "rescale_zero_terminal_snr": (P, None)},
    "sys_exit": {"make_betas": (P, None), "alphas_cumprod": (P, None), "add_noise": (E, "SystemExit: 3"),
                 "snr": (P, None), "rescale_zero_terminal_snr": (P, None)},
    "os_exit": {"make_betas": (P, None), "alphas_cumprod": (P, None), "add_noise": (P, None),
                "snr": (E, "exited with code 0 while checking snr"), "rescale_zero_terminal_snr": (P, None)},
    "memory_hog": {"make_betas": (P, None), "alphas_cumprod": (E, "can't allocate memory"),
                   "add_noise": (P, None), "snr": (P, None), "rescale_zero_terminal_snr": (P, None)},
    "network_and_processes": {"make_betas": (E, "blocked by the grader"), "alphas_cumprod": (P, None),
                              "add_noise": (P, None), "snr": (E, "blocked by the grader: starting a process"),
                              "rescale_zero_terminal_snr": (P, None)},
    "patch_torch_at_import": {f: (F, f"{MODIFIED} while loading your file: torch.allclose") for f in FUNCS},
    "patch_checker_at_import": {f: (F, "helpers.checks._core.assert_close") for f in FUNCS},
    "patch_reference_at_import": {f: (F, "helpers.solutions.lab01_forward_noise.snr") for f in FUNCS},
    "patch_in_call": {"make_betas": (P, None), "alphas_cumprod": (P, None),
                      "add_noise": (F, f"{MODIFIED} while add_noise was checked: "
                                       "helpers.checks.lab01_forward_noise.TOL_XT"),
                      "snr": (F, "helpers.solutions.lab01_forward_noise.snr, torch.allclose"),
                      "rescale_zero_terminal_snr": (P, None)},
    "typical_bugs": {"make_betas": (F, "Likely bug: you returned the plain linear schedule"),
                     "alphas_cumprod": (P, None), "snr": (P, None),
                     "add_noise": (F, "Likely bug: missing square root on the noise coefficient"),
                     "rescale_zero_terminal_snr": (P, None)},
    "uses_reference": {"make_betas": (F, "is the reference solution imported from"),
                       "alphas_cumprod": (F, "is not defined in your file"),
                       "add_noise": (F, "calls the reference solution"), "snr": (P, None),
                       "rescale_zero_terminal_snr": (P, None)},
}


def _copy_solutions(folder: Path, keys=None):
    folder.mkdir(parents=True, exist_ok=True)
    for info in labs.available_labs():
        if keys is None or info.key in keys:
            shutil.copy(info.solution_path, folder / f"{info.slug}.py")


def build_corpus(root: Path) -> Path:
    subs = root / "corpus"
    for case in sorted(p for p in CORPUS.iterdir() if p.is_dir() and p.name != "parts"):
        shutil.copytree(case, subs / case.name)
        f = subs / case.name / "lab01_forward_noise.py"
        if f.exists():
            f.write_text(current_lab01(f.read_text()))
    _copy_solutions(subs / "perfect", ["lab01"])
    (subs / "pristine").mkdir()
    shutil.copy(repo_root() / "starters/lab01_forward_noise.py", subs / "pristine")
    with zipfile.ZipFile(subs / "perfect_zip.zip", "w") as zf:  # a zip of starters/, with a slip attempt
        zf.write(LAB01, "starters/lab01_forward_noise.py")
        zf.writestr("../../evil.py", "print('zip slip')")
    (subs / "bad_zip.zip").write_bytes(b"this is not a zip")
    (subs / "empty_folder").mkdir()
    return subs


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    subs = build_corpus(root)
    learners = grade.grade_class(subs, ["lab01"], out=root / "out", timeout=8, jobs=2, progress=False)
    return {lr.name: lr for lr in learners}, root


@needs_lab01
def test_corpus_is_complete(corpus_run):
    learners, root = corpus_run
    assert sorted(learners) == sorted(EXPECTED)
    assert not (root / "evil.py").exists() and not (root.parent / "evil.py").exists()


@needs_lab01
@pytest.mark.parametrize("learner", sorted(EXPECTED))
def test_corpus_exact_scores(corpus_run, learner):
    lr = corpus_run[0][learner]
    rows = {r.function: r for r in lr.report.rows}
    assert list(rows) == FUNCS
    for f, (status, text) in EXPECTED[learner].items():
        assert rows[f].status == status, (f, rows[f])
        if text:
            assert text in rows[f].message, (f, rows[f].message)
    want = sum(s == P for s, _ in EXPECTED[learner].values())
    assert lr.report.score() == (want, len(FUNCS))


@needs_lab01
def test_corpus_slow_path_grades_the_same(corpus_run, tmp_path):
    """The fallback without the fork server (a fresh interpreter per worker) gives the same rows."""
    learners, root = corpus_run
    for name in ("typical_bugs", "patch_in_call"):
        rows = grade.grade_lab(find_lab("lab01"), root / "corpus" / name / "lab01_forward_noise.py", timeout=TIMEOUT)
        assert [(r.function, r.status, r.message) for r in rows] == \
            [(r.function, r.status, r.message) for r in learners[name].report.rows]


# --------------------------------------------------------------------------- a class of twenty

def _function_sources(path: Path) -> tuple[str, dict[str, str]]:
    """(header, {name: source of the top-level def})."""
    text = path.read_text()
    parts = re.split(r"(?m)^(?=def )", text)
    return parts[0], {re.match(r"def (\w+)", p).group(1): p.rstrip() + "\n\n\n" for p in parts[1:]}


def make_class(root: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """Twenty learners: sixteen with every mix of correct/buggy functions (in a shuffled
    order of names), a zip, and three from the hostile corpus. Returns the folder and each
    learner's expected statuses."""
    head, bad = _function_sources(CORPUS / "parts/buggy.py")
    head = "import math\nimport torch\n" + head
    good = {f: reference_function(f) + "\n\n" for f in FUNCS}  # the one good file: lab 01's reference
    bad["rescale_zero_terminal_snr"] = ("def rescale_zero_terminal_snr(betas):\n"
                                        "    return betas.clone()  # forgot to rescale\n\n\n")
    subs, expected = root / "class", {}
    names = [f"learner{i:02d}" for i in range(20)]
    random.Random(0).shuffle(names)
    for mask in range(16):  # the fifth function goes with the first: all good at 15, all bad at 0
        name = names[mask]
        bits = [mask >> i & 1 for i in range(4)] + [mask & 1]
        body = head + "".join(good[f] if bit else bad[f] for bit, f in zip(bits, FUNCS))
        (subs / name / "starters").mkdir(parents=True)
        (subs / name / "starters" / "lab01_forward_noise.py").write_text(body)
        expected[name] = {f: P if bit else F for bit, f in zip(bits, FUNCS)}
    with zipfile.ZipFile(subs / f"{names[16]}.zip", "w") as zf:
        zf.writestr("lab01_forward_noise.py", head + good["make_betas"] + bad["alphas_cumprod"]
                    + good["add_noise"] + good["snr"] + good["rescale_zero_terminal_snr"])
    expected[names[16]] = {"make_betas": P, "alphas_cumprod": F, "add_noise": P, "snr": P, "rescale_zero_terminal_snr": P}
    for name, case, exp in [(names[17], "infinite_loop", [P, E, P, P, P]), (names[18], "patch_in_call", [P, P, F, F, P]),
                            (names[19], "segfault", [P, E, P, P, P])]:
        shutil.copytree(CORPUS / case, subs / name)
        f = subs / name / "lab01_forward_noise.py"
        f.write_text(current_lab01(f.read_text()))
        expected[name] = dict(zip(FUNCS, exp))
    return subs, expected


@needs_lab01
def test_class_of_twenty_end_to_end(tmp_path):
    """`python -m helpers.grade SUBMISSIONS --out OUT` on twenty learners: CSV, JSON, feedback."""
    subs, expected = make_class(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "helpers.grade", str(subs), "--lab", "01", "--out", str(out),
           "--timeout", "8", "--jobs", "2", "--seed", "7"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "20 learners graded [seed 7]" in run.stdout
    assert len(run.stdout) < 20000 and len(run.stderr) < 20000  # no learner output reaches the terminal

    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert [r["learner"] for r in rows] == sorted(expected)
    assert list(rows[0]) == ["learner", "lab01", "total", "max", "percent", "seed"]
    for r in rows:
        want = sum(s == P for s in expected[r["learner"]].values())
        assert (int(r["lab01"]), int(r["total"]), int(r["max"]), r["seed"]) == (want, want, len(FUNCS), "7"), r
        assert float(r["percent"]) == round(100 * want / len(FUNCS), 1)

    data = json.loads((out / "grades.json").read_text())
    assert data["seed"] == 7 and data["stream"] == "grade" and data["labs"] == {"lab01": {"functions": FUNCS, "max": len(FUNCS)}}
    assert [lr["learner"] for lr in data["learners"]] == sorted(expected)
    for lr in data["learners"]:
        assert {r["function"]: r["status"] for r in lr["rows"]} == expected[lr["learner"]], lr["learner"]
        assert all(set(r) == {"lab", "function", "status", "message", "seconds"} for r in lr["rows"])
        assert lr["labs"]["lab01"]["outcome"]

    fb = {p.stem: p.read_text() for p in (out / "feedback").glob("*.md")}
    assert sorted(fb) == sorted(expected)
    all_bad = [n for n, e in expected.items() if set(e.values()) == {F}][0]
    text = fb[all_bad]
    assert f"Score: **0/{len(FUNCS)}**" in text and "seed 7" in text
    for hint in ("Likely bug: you returned the plain linear schedule", "Likely bug: you returned the inverse",
                 "Likely bug: missing square root on the noise coefficient"):
        assert hint in text
    all_good = [n for n, e in expected.items() if set(e.values()) == {P}][0]
    assert f"Score: **{len(FUNCS)}/{len(FUNCS)}**" in fb[all_good] and "Likely bug" not in fb[all_good]

    # Deterministic: the same class, graded again one worker at a time, gets the same rows.
    again = grade.grade_class(subs, ["lab01"], out=None, seed=7, timeout=8, jobs=1, progress=False)
    for lr in again:
        before = [lr2 for lr2 in data["learners"] if lr2["learner"] == lr.name][0]["rows"]
        assert [(r.function, r.status, r.message) for r in lr.report.rows] == \
            [(r["function"], r["status"], r["message"]) for r in before], lr.name


# --------------------------------------------------------------------------- the real labs, CLI

REAL = [i for i in labs.available_labs()]


@needs_lab01
def test_cli_real_labs_pristine_zero_and_solutions_full(tmp_path):
    """`python -m helpers.grade --starters` on every real lab: pristine starters 0, solution copies 100%."""
    sol = tmp_path / "sol"
    _copy_solutions(sol)
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


# --------------------------------------------------------------------------- rows from a worker's state

def test_rows_from_state_is_pure_and_names_what_to_rerun():
    from helpers.grading.launch import Exit

    order = ["a", "b", "c"]
    finished = {"phase": "done", "current": None,
                "rows": [{"function": n, "status": "passed", "message": ""} for n in order]}
    rows, outcome, rerun = grade.rows_from_state("lab99", order, finished, Exit(0, False, ""), 5)
    assert [r.status for r in rows] == ["passed"] * 3 and outcome == "finished" and rerun == []
    hung = {"phase": "check", "current": "b", "rows": [{"function": "a", "status": "passed"},
                                                       {"function": "zzz", "status": "passed"},  # not ours
                                                       {"function": "a", "status": "failed"}]}  # twice
    rows, outcome, rerun = grade.rows_from_state("lab99", order, hung, Exit(None, True, ""), 5)
    assert [(r.function, r.status) for r in rows] == [("a", "passed"), ("b", "error"), ("c", "error")]
    assert "timed out after 5 s while checking b" in rows[1].message and rows[2].message.startswith("not run")
    assert outcome == "timed out after 5 s" and rerun == ["c"]
    at_import = {"phase": "import", "current": None, "rows": []}
    rows, outcome, rerun = grade.rows_from_state("lab99", order, at_import, Exit(0, False, ""), 5)
    assert rerun == [] and all("while importing your file" in r.message for r in rows)  # no retry: same file
    broken = {**hung, "worker_error": "Traceback ...\nKeyError: 'x'"}
    rows, outcome, rerun = grade.rows_from_state("lab99", order, broken, Exit(1, False, ""), 5)
    assert rerun == [] and "course bug" in outcome and "checker error: KeyError" in rows[2].message


def test_two_hanging_functions_cost_two_rows(fake_lab, tmp_path):
    """Each hang gets its own worker restart; the function between them is graded."""
    fake_lab.write("def double(x):\n    while True:\n        pass\n\ndef quad(x):\n    while True:\n        pass\n",
                   tmp_path / "l")
    res = grade.run_lab(fake_lab.info, tmp_path / "l" / f"{fake_lab.info.slug}.py", timeout=3)
    assert [(r.function, r.status) for r in res.rows] == [("double", "error"), ("quad", "error")]
    assert all("timed out after 3 s while checking" in r.message for r in res.rows)
    assert res.outcome == "timed out after 3 s; then timed out after 3 s"
