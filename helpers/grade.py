"""The instructor's grader: run every lab's checks on a learner's exercise files.

    python -m helpers.grade                          # grade ./starters (or $DIFFUSION_LABS_STARTERS)
    python -m helpers.grade --starters alice/ --lab 01 02 --json alice.json

Each lab runs in its own subprocess with a timeout, so a learner's infinite loop,
``sys.exit``, ``os._exit``, segfault, flood of output or import-time exception only fails
that lab's remaining rows. The worker writes each row to a JSON file as soon as it is
known; the parent turns whatever is missing into ``error`` rows with the reason.

Seeds: grading draws its inputs from the ``"grade"`` stream (the notebooks use
``"notebook"``), so no seed printed in a notebook reproduces the grader's inputs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.labs import LabInfo, available_labs, find_lab, repo_root, starters_dir

DEFAULT_SEED = 20240601
DEFAULT_TIMEOUT = 120.0  # seconds per lab
STARTUP_LIMIT = 300.0  # seconds for the worker to import torch/diffusers and the checks
STREAM = "grade"


@dataclass
class Row:
    lab: str
    function: str
    status: str  # passed | failed | todo | error
    message: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """One learner's grade: ``rows`` over all labs graded."""

    starters: str
    seed: int
    rows: list[Row] = field(default_factory=list)

    def score(self, lab: str | None = None) -> tuple[int, int]:
        """(passed, total), for one lab or all."""
        rows = [r for r in self.rows if lab is None or r.lab == lab]
        return sum(r.status == "passed" for r in rows), len(rows)

    def to_dict(self) -> dict:
        labs = sorted({r.lab for r in self.rows})
        passed, total = self.score()
        return {
            "starters": self.starters, "seed": self.seed, "stream": STREAM,
            "passed": passed, "total": total,
            "labs": {lab: dict(zip(("passed", "total"), self.score(lab))) for lab in labs},
            "rows": [asdict(r) for r in self.rows],
        }


# --------------------------------------------------------------------------- worker side

def _module_root(module_name: str) -> str:
    """The sys.path entry a module was imported from (to re-import it in the worker)."""
    spec = importlib.util.find_spec(module_name)
    path = Path(spec.origin).resolve().parent
    for _ in range(module_name.count(".")):
        path = path.parent
    return str(path)


def _worker(job_file: str) -> None:
    """Run one lab's checks on one learner file; write progress to ``job["out"]``."""
    job = json.loads(Path(job_file).read_text())
    sys.path[:0] = job["path"]
    out = Path(job["out"])
    state = {"phase": "start", "current": None, "rows": []}

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, out)

    # silence the learner: their prints go nowhere (the parent also discards our output)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    info = LabInfo(**job["info"])
    from helpers.exercise import StarterImportError, load_module, names, run_lab_checks

    order = names(info)
    importlib.import_module(info.check_module)  # torch, diffusers: before the clock starts
    state.update(phase="import", current=None)
    save()
    try:
        module = load_module(job["file"])
    except StarterImportError as exc:
        state["rows"] = [dict(function=n, status="error", message=f"your file could not be loaded: {exc}")
                         for n in order]
        state.update(phase="done")
        save()
        return
    state.update(phase="check", current=order[0] if order else None)
    save()

    def on_result(res):
        state["rows"].append(dict(function=res.name, status=res.status, message=res.message,
                                  seconds=res.seconds))
        done = len(state["rows"])
        state["current"] = order[done] if done < len(order) else None
        save()

    run_lab_checks(info, module, job["seed"], stream=STREAM, fallback=True, on_result=on_result)
    state.update(phase="done")
    save()


def _worker_main(job_file: str) -> None:
    """``_worker``, recording a failure of the checker itself (a course bug) in the state."""
    try:
        _worker(job_file)
    except BaseException:  # noqa: BLE001
        out = Path(json.loads(Path(job_file).read_text())["out"])
        state = json.loads(out.read_text()) if out.exists() else {"phase": "start", "rows": []}
        state["worker_error"] = traceback.format_exc(limit=-3)
        out.write_text(json.dumps(state))
        raise


# --------------------------------------------------------------------------- parent side

def _exit_reason(code: int | None, timed_out: bool, timeout: float) -> tuple[str, str]:
    """(what happened, advice) for a worker that did not finish."""
    if timed_out:
        return f"timed out after {timeout:g} s", " (an infinite loop? a very slow loop?)"
    if code is not None and code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return f"the process crashed ({sig})", ""
    return f"the process exited with code {code}", " (does your code call os._exit or sys.exit?)"


def _wait(proc: subprocess.Popen, state_file: Path, timeout: float) -> bool:
    """Wait for the worker; ``timeout`` counts from when the checker is ready (its own
    imports of torch/diffusers excluded, at most ``STARTUP_LIMIT``). True if it timed out."""
    start, ready = time.monotonic(), None
    while proc.poll() is None:
        now = time.monotonic()
        if ready is None and state_file.exists():
            ready = now
        if (ready is not None and now - ready > timeout) or now - start > STARTUP_LIMIT + timeout:
            return True
        time.sleep(0.05)
    return False


def grade_lab(info: LabInfo, path: str | os.PathLike, seed: int = DEFAULT_SEED,
              timeout: float = DEFAULT_TIMEOUT) -> list[Row]:
    """Grade one lab of one learner: the rows for the lab's functions, never raising."""
    order = list(importlib.import_module(info.solution_module).__all__)
    path = Path(path)
    if not path.is_file():
        return [Row(info.key, n, "error", f"file not found: {path}") for n in order]
    with tempfile.TemporaryDirectory(prefix="diffusion-labs-grade-") as tmp:
        job = {"info": asdict(info), "file": str(path.resolve()), "seed": seed,
               "out": str(Path(tmp) / "state.json"),
               "path": sorted({_module_root(info.solution_module), _module_root(info.check_module)})}
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(repo_root())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        env.pop("DIFFUSION_LABS_MODE", None)
        proc = subprocess.Popen([sys.executable, "-m", "helpers.grade", "--worker", str(job_file)],
                                cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        timed_out = _wait(proc, Path(job["out"]), timeout)
        try:  # kill the whole group: the learner's code may have spawned children
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        try:
            state = json.loads(Path(job["out"]).read_text())
        except (OSError, ValueError):
            state = {"phase": "start", "current": None, "rows": []}
    rows = [Row(info.key, r["function"], r["status"], r.get("message", ""), r.get("seconds", 0.0))
            for r in state["rows"]]
    if state["phase"] != "done" or timed_out:
        reason, advice = _exit_reason(proc.returncode, timed_out, timeout)
        where = {"start": "while starting the checker", "import": "while importing your file",
                 "check": f"while checking {state.get('current')}"}.get(state["phase"], "")
        seen = {r.function for r in rows}
        for n in order:
            if n not in seen:
                msg = f"{reason} {where}{advice}" if n == state.get("current") or state["phase"] != "check" \
                    else f"not run: {reason} {where}"
                if state.get("worker_error"):
                    msg += "\nchecker error: " + state["worker_error"].strip().splitlines()[-1]
                rows.append(Row(info.key, n, "error", msg.strip()))
    return rows


def grade_learner(starters: str | os.PathLike | None = None, labs=None, seed: int = DEFAULT_SEED,
                  timeout: float = DEFAULT_TIMEOUT) -> Report:
    """Grade one learner's folder of exercise files (default: ``starters_dir()``).
    ``labs``: keys/numbers/LabInfos (default: every lab whose solution exists)."""
    folder = Path(starters) if starters else starters_dir()
    infos = [find_lab(x) for x in labs] if labs else available_labs()
    report = Report(str(folder), seed)
    for info in infos:
        report.rows += grade_lab(info, folder / f"{info.slug}.py", seed, timeout)
    return report


def format_report(report: Report) -> str:
    from helpers.exercise import format_table

    table = format_table([[r.lab, r.function, r.status, r.message] for r in report.rows],
                         ["lab", "function", "status", "message"])
    lines = [f"Grading {report.starters}  [seed {report.seed}]", table, ""]
    for lab in dict.fromkeys(r.lab for r in report.rows):
        p, t = report.score(lab)
        lines.append(f"{lab}: {p}/{t}")
    p, t = report.score()
    lines.append(f"total: {p}/{t} ({100 * p / t:.0f}%)" if t else "total: 0/0")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1])
        return 0
    p = argparse.ArgumentParser(prog="python -m helpers.grade", description=__doc__.splitlines()[0])
    p.add_argument("--starters", type=Path, default=None,
                   help="folder with the learner's labNN_*.py (default: $DIFFUSION_LABS_STARTERS or starters/)")
    p.add_argument("--lab", nargs="+", default=None, help="labs to grade, e.g. 01 lab02 (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the checks (default {DEFAULT_SEED})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per lab")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    report = grade_learner(args.starters, args.lab, args.seed, args.timeout)
    print(format_report(report))
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
