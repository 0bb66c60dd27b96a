"""The instructor's grader: run every lab's checks on learners' exercise files.

    python -m helpers.grade SUBMISSIONS/ --out grades/        # a class: one subfolder (or .zip) per learner
    python -m helpers.grade SUBMISSIONS/ --lab 01 02 --timeout 60 --memory 4096 --jobs 2
    python -m helpers.grade --starters alice/ --json alice.json   # one learner (default ./starters)

A class run writes ``grades.csv`` (one row per learner, one column per lab, a total),
``grades.json`` (every function's status, message and time, the seed) and
``feedback/<learner>.md`` (the notebook checks' hints), with a progress bar over learners.

Determinism. The checks draw their inputs from the ``"grade"`` stream
(``make_generator(seed, name, "grade")``; notebooks use ``"notebook"``), with ``--seed``
(default :data:`DEFAULT_SEED`) recorded in every output: the same submission with the same
seed gets the same score, and nothing a notebook showed reproduces the grader's inputs.
Workers run with one compute thread; parallel workers (``--jobs``) change only the order in
which rows are computed, never their content (the outputs are sorted by learner and lab).

Isolation: one process per (learner, lab). The workers are forked from a fork server
(:mod:`helpers.grading.forkserver`) that imported torch, diffusers and the checks once and
never runs learner code, so a class costs about a second per learner and lab instead of
the 5-15 s a fresh interpreter spends importing torch; ``--no-fork`` (or a server that
fails to start) runs ``python -m helpers.grading.worker JOB`` per job instead, with the
same grades. Each worker has:

- a fresh empty working folder (the learner's file is a copy in it; the job and the report
  file live in a sibling folder), a new session (so the whole process group is killed);
- a time limit per lab (``--timeout``, counted from when the checker is imported, so
  torch's import time on a loaded machine does not eat it; the worker's startup has its
  own generous limit);
- ``RLIMIT_AS`` (``--memory`` MB, default 4096), no core files, a 64 MiB file-size limit,
  one thread (see :mod:`helpers.grading.sandbox`);
- no network and no subprocesses: an audit hook (which cannot be removed) refuses
  sockets, name lookups, process creation and ``ctypes`` library loading from the moment
  the learner's file is loaded;
- its stdout and stderr on a pipe (a FIFO for forked workers) drained by a thread that
  keeps the first :data:`OUTPUT_LIMIT` bytes and counts the rest: megabytes of printing neither flood the
  terminal nor deadlock, and the head is shown in the feedback.

The worker records each row in its report file as soon as it is known (written with
functions captured before the learner's code loads). ``sys.exit`` and a ``MemoryError`` are
reported by the check runner with the learner's line, as that function's row. An infinite
loop, ``os._exit`` or a segfault kills the worker while it checks one function: that row
says what happened (timed out, exited with code N, crashed with SIGSEGV, ...) and a new
worker grades the functions after it (:func:`rows_from_state` turns each worker's report
into rows; :mod:`helpers.grading.launch` starts and waits for the workers). An import-time
exception, a file that does not parse, a missing file or an unreadable zip fail the lab's
rows, each saying why. The run always goes on to the next learner.

Integrity (monkeypatching). Before the learner's file is loaded, the worker runs every
check once on the reference (warming caches and lazy imports, and proving the checker
works), then takes a :class:`helpers.grading.integrity.Snapshot`: the identity (and
``__code__``/defaults) of every callable of torch, builtins, the check, core, runner and
solution modules and of the classes they hold (``torch.Tensor``, ``DDPMScheduler``, ...),
the contents of their constants (tolerance tables), and their sets of names. It verifies
the snapshot after the file loads (a change fails every row of the lab: "submission
modified torch/the checker while loading: torch.allclose") and after every check (a change
fails that row, even if the function patched things only while it was being called), then
restores the recorded objects and verifies again before the next check (what cannot be
restored fails the remaining rows). An exercise that *is* the reference (imported from
``helpers.solutions``), whose code comes from another file, or that calls the reference
while being checked (a ``sys.setprofile`` hook watches calls from the learner's file; the
contract's fallback substitutions are allowed) fails with a message saying so. Besides, a
function returning a hard-coded tensor fails because the grader's inputs are random and
differ from the notebook's. The limit: code in
the worker can still corrupt memory through ``ctypes`` or forge the report; grade
untrusted submissions in a container (the grader runs learners' code with your
privileges).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.grading import outputs, sandbox
from helpers.grading import submissions as subs_mod
from helpers.grading.forkserver import ForkServer
from helpers.grading.launch import Exit, launch
from helpers.grading.worker import STREAM
from helpers.labs import LabInfo, available_labs, find_lab, repo_root, starters_dir

DEFAULT_SEED = 20240601
DEFAULT_TIMEOUT = 120.0  # seconds per lab, once the checker is imported
DEFAULT_MEMORY_MB = sandbox.DEFAULT_MEMORY_MB
STARTUP_LIMIT = 300.0  # seconds for the worker to import torch/diffusers and the checks
OUTPUT_LIMIT = 16 * 1024  # bytes of a worker's stdout+stderr kept


@dataclass
class Row:
    lab: str
    function: str
    status: str  # passed | failed | todo | error
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    """One learner's grade: ``rows`` over all labs graded; ``lab_info[lab]``: how its worker
    ended (``outcome``), its captured output (truncated), its wall time."""

    starters: str
    seed: int
    rows: list[Row] = field(default_factory=list)
    lab_info: dict[str, dict] = field(default_factory=dict)

    def score(self, lab: str | None = None) -> tuple[int, int]:
        """(passed, total), for one lab or all."""
        rows = [r for r in self.rows if lab is None or r.lab == lab]
        return sum(r.status == "passed" for r in rows), len(rows)

    def to_dict(self) -> dict:
        labs = list(dict.fromkeys(r.lab for r in self.rows))
        passed, total = self.score()
        return {
            "starters": self.starters, "seed": self.seed, "stream": STREAM,
            "passed": passed, "total": total,
            "labs": {lab: {**dict(zip(("passed", "total"), self.score(lab))), **self.lab_info.get(lab, {})}
                     for lab in labs},
            "rows": [asdict(r) for r in self.rows],
        }


@dataclass
class LabResult:
    rows: list[Row]
    outcome: str = "finished"  # finished | timed out after ... | the process crashed (SIGSEGV) | ...
    output: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------- worker side

def _module_root(module_name: str) -> str:
    """The sys.path entry a module was imported from (to re-import it in the worker)."""
    spec = importlib.util.find_spec(module_name)
    path = Path(spec.origin).resolve().parent
    for _ in range(module_name.count(".")):
        path = path.parent
    return str(path)


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
        advice = " (out of memory?)" if sig == "SIGKILL" else ""
        return f"the process crashed ({sig})", advice
    return f"the process exited with code {code}", " (does your code call os._exit or sys.exit?)"


def _names(info: LabInfo) -> list[str]:
    return list(importlib.import_module(info.solution_module).__all__)


def _job_path(info: LabInfo) -> list[str]:
    return sorted({_module_root(info.solution_module), _module_root(info.check_module)})


def _worker_env() -> dict:
    env = sandbox.worker_env()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo_root())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _read_state(state_file: Path) -> dict:
    """The worker's last report (``{"phase", "current", "rows", ...}``), or the start state."""
    try:
        state = json.loads(state_file.read_text())
        if isinstance(state, dict):
            return state
    except (OSError, ValueError):
        pass
    return {"phase": "start", "current": None, "rows": []}


def rows_from_state(lab: str, order: list[str], state: dict, ended: Exit,
                    timeout: float) -> tuple[list[Row], str, list[str]]:
    """Turn one worker's report into rows (pure: no process, no file).

    Args:
        lab: the lab key of the rows.
        order: the functions this worker was to check, in teaching order.
        state: the worker's report (:func:`_read_state`).
        ended: how the worker ended.
        timeout: the time limit it had (for the message).

    Returns:
        ``(rows, outcome, rerun)``: one row per function of ``order`` (well-formed reported
        rows, once each; an error row for the rest); ``outcome`` "finished" or what happened
        (timed out, crashed, exited); ``rerun``: the functions the worker never reached
        because it died while checking an earlier one, which a new worker can grade (their
        rows here say "not run").
    """
    rows, seen = [], set()
    for r in state.get("rows", []):  # accept only well-formed rows of this lab's functions, once each
        if not isinstance(r, dict) or r.get("function") not in order or r["function"] in seen:
            continue
        seen.add(r["function"])
        status = r.get("status") if r.get("status") in ("passed", "failed", "todo", "error") else "error"
        rows.append(Row(lab, r["function"], status, str(r.get("message", "")),
                        float(r.get("seconds", 0.0) or 0.0)))
    if (state.get("phase") == "done" and not ended.timed_out) or (len(seen) == len(order) and not ended.timed_out):
        return sorted(rows, key=lambda r: order.index(r.function)), "finished", []
    reason, advice = _exit_reason(ended.code, ended.timed_out, timeout)
    phase, current = state.get("phase"), state.get("current")
    if state.get("worker_error") and not ended.timed_out:
        reason, advice = "the grader itself failed (a course bug, not your code)", ""
    where = {"start": "while starting the checker", "import": "while importing your file",
             "check": f"while checking {current}"}.get(phase, "")
    rerun = []
    for n in order:
        if n in seen:
            continue
        if n == current or phase != "check":
            msg = f"{reason} {where}{advice}"
        else:
            msg = f"not run: {reason} {where}"
            if phase == "check" and current in order and not state.get("worker_error"):
                rerun.append(n)
        if state.get("worker_error"):
            msg += "\nchecker error: " + state["worker_error"].strip().splitlines()[-1]
        rows.append(Row(lab, n, "error", msg.strip()))
    return sorted(rows, key=lambda r: order.index(r.function)), reason, rerun


def run_lab(info: LabInfo, path: str | os.PathLike | None, seed: int = DEFAULT_SEED,
            timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
            missing: str | None = None, server=None) -> LabResult:
    """Grade one lab of one learner in worker processes (children of ``server``, a
    :class:`helpers.grading.forkserver.ForkServer`, when given); never raises.

    A function that hangs or crashes its worker costs only its own row: a new worker grades
    the functions after it (each with the full ``timeout``), with the ones already graded
    kept as they were."""
    order = _names(info)
    t0 = time.perf_counter()
    if path is None or not Path(path).is_file():
        why = missing or f"file not found: {path if path is not None else info.slug + '.py'}"
        return LabResult([Row(info.key, n, "error", why) for n in order], "no file")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="diffusion-labs-grade-") as tmp:
        work, ctl = Path(tmp) / "work", Path(tmp) / "ctl"
        work.mkdir()
        ctl.mkdir(mode=0o700)
        try:
            learner_file = work / f"{info.slug}.py"
            shutil.copyfile(path, learner_file)
        except OSError as exc:
            return LabResult([Row(info.key, n, "error", f"could not read {path.name}: {exc}") for n in order],
                             "no file")
        graded: dict[str, Row] = {}
        outcomes, outputs, pending = [], [], list(order)
        for attempt in range(1, len(order) + 1):  # each attempt grades at least one function
            done = {n: r.status for n, r in graded.items() if n not in pending}
            state_file = ctl / f"state{attempt}.json"
            job = {"info": asdict(info), "file": str(learner_file), "seed": seed, "out": str(state_file),
                   "memory_mb": memory_mb, "path": _job_path(info), "done": done}
            ended = launch(job, ctl, work, timeout=timeout, startup=STARTUP_LIMIT, output_limit=OUTPUT_LIMIT,
                           env=_worker_env(), server=server)
            state = _read_state(state_file)
            if os.environ.get("DIFFUSION_LABS_GRADE_DEBUG"):
                print({k: v for k, v in state.items() if k != "rows"}, file=sys.stderr)
            rows, outcome, pending = rows_from_state(info.key, pending, state, ended, timeout)
            graded.update((r.function, r) for r in rows)  # a pending row says "not run" until graded
            outputs.append(ended.output)
            if outcome != "finished":
                outcomes.append(outcome)
            if not pending:
                break
    outcome = "finished" if not outcomes else "; then ".join(outcomes)
    output = "\n[a new worker graded the functions after that]\n".join(outputs)
    rows = sorted(graded.values(), key=lambda r: order.index(r.function))
    return LabResult(rows, outcome, output, round(time.perf_counter() - t0, 2))


def grade_lab(info: LabInfo, path: str | os.PathLike, seed: int = DEFAULT_SEED,
              timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB) -> list[Row]:
    """Grade one lab of one learner: the rows for the lab's functions, never raising."""
    return run_lab(info, path, seed, timeout, memory_mb).rows


def _lab_info(res: LabResult) -> dict:
    return {"outcome": res.outcome, "output": res.output, "seconds": res.seconds}


def start_server(infos: list[LabInfo]):
    """A fork server with torch and these labs' checks imported, or None (then every job
    starts a fresh ``python -m helpers.grading.worker`` process) if it cannot start."""
    try:
        return ForkServer([asdict(i) for i in infos], sorted({p for i in infos for p in _job_path(i)}),
                          _worker_env(), tempfile.gettempdir(), startup=STARTUP_LIMIT)
    except (RuntimeError, OSError):
        return None


class _NoServer:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _server(infos: list[LabInfo], fork: bool):
    server = start_server(infos) if fork else None
    return server if server is not None else _NoServer()


def grade_learner(starters: str | os.PathLike | None = None, labs=None, seed: int = DEFAULT_SEED,
                  timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
                  fork: bool = True) -> Report:
    """Grade one learner's folder of exercise files (default: ``starters_dir()``).
    ``labs``: keys/numbers/LabInfos (default: every lab whose solution exists).
    ``fork``: start the workers from a fork server (faster; see :mod:`helpers.grading.forkserver`)."""
    folder = Path(starters) if starters else starters_dir()
    infos = [find_lab(x) for x in labs] if labs else available_labs()
    report = Report(str(folder), seed)
    with _server(infos, fork and len(infos) > 1) as server:
        for info in infos:
            res = run_lab(info, folder / f"{info.slug}.py", seed, timeout, memory_mb, server=server)
            report.rows += res.rows
            report.lab_info[info.key] = _lab_info(res)
    return report


# --------------------------------------------------------------------------- a class

@dataclass
class LearnerResult:
    name: str
    source: str
    report: Report


def grade_class(submissions: str | os.PathLike, labs=None, out: str | os.PathLike | None = "grades",
                seed: int = DEFAULT_SEED, timeout: float = DEFAULT_TIMEOUT,
                memory_mb: int | None = DEFAULT_MEMORY_MB, jobs: int = 1,
                progress: bool = True, fork: bool = True) -> list[LearnerResult]:
    """Grade every learner of ``submissions`` (one subfolder or ``.zip`` each) on ``labs``
    (default: all available), ``jobs`` workers at a time; write the outputs under ``out``
    (``None``: write nothing). Returns the learners in name order."""
    infos = [find_lab(x) for x in labs] if labs else available_labs()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="diffusion-labs-subs-") as scratch, _server(infos, fork) as server:
        subs = subs_mod.discover(submissions, [i.slug for i in infos], Path(scratch))
        tasks = [(s, info) for s in subs for info in infos]
        results: dict[tuple[str, str], LabResult] = {}
        remaining = {s.name: len(infos) for s in subs}
        lock = threading.Lock()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(subs), desc="grading", unit="learner", file=sys.stderr)

        def one(task):
            sub, info = task
            if sub.problem:
                order = _names(info)
                res = LabResult([Row(info.key, n, "error", sub.problem) for n in order], "no file")
            else:
                res = run_lab(info, sub.files.get(info.slug), seed, timeout, memory_mb, server=server,
                              missing=sub.notes.get(info.slug)
                              or (f"file not found: no {info.slug}.py in {Path(sub.source).name}"))
            with lock:
                results[(sub.name, info.key)] = res
                remaining[sub.name] -= 1
                if bar is not None and remaining[sub.name] == 0:
                    bar.update(1)
                    bar.set_postfix_str(sub.name)
            return res

        if jobs <= 1:
            for task in tasks:
                one(task)
        else:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, tasks))
        if bar is not None:
            bar.close()
    learners = []
    for s in subs:
        rep = Report(s.source, seed)
        for info in infos:
            res = results[(s.name, info.key)]
            rep.rows += res.rows
            rep.lab_info[info.key] = _lab_info(res)
        learners.append(LearnerResult(s.name, s.source, rep))
    if out is not None:
        meta = {"timeout_s": timeout, "memory_mb": memory_mb, "jobs": jobs, "fork_server": fork,
                "graded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
                "wall_s": round(time.time() - t0, 1), "submissions": str(submissions)}
        outputs.write_all(Path(out), learners, {i.key: _names(i) for i in infos},
                          {i.key: i.name for i in infos}, seed, STREAM, meta)
    return learners


def format_report(report: Report) -> str:
    from helpers.exercise import TABLE_WIDTH, format_table

    table = format_table([[r.lab, r.function, r.status, r.message] for r in report.rows],
                         ["lab", "function", "status", "message"])
    lines = [f"Grading {report.starters}  [seed {report.seed}]", table, ""]
    for r in report.rows:  # every failure's message whole (the table shows its first line, cut)
        if r.status in ("failed", "error") and (len(r.message) > TABLE_WIDTH or "\n" in r.message):
            lines += [f"{r.lab} {r.function}:", "  " + r.message.replace("\n", "\n  "), ""]
    for lab in dict.fromkeys(r.lab for r in report.rows):
        p, t = report.score(lab)
        lines.append(f"{lab}: {p}/{t}")
    p, t = report.score()
    lines.append(f"total: {p}/{t} ({100 * p / t:.0f}%)" if t else "total: 0/0")
    return "\n".join(lines)


def format_class(learners: list[LearnerResult], lab_keys: list[str]) -> str:
    from helpers.exercise import format_table

    rows = []
    for lr in learners:
        p, t = lr.report.score()
        rows.append([lr.name, *[f"{lr.report.score(k)[0]}/{lr.report.score(k)[1]}" for k in lab_keys],
                     f"{p}/{t}"])
    return format_table(rows, ["learner", *lab_keys, "total"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m helpers.grade", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:6]))
    p.add_argument("submissions", type=Path, nargs="?", default=None,
                   help="a class: folder with one subfolder (a learner's starters/) or .zip per learner")
    p.add_argument("--starters", type=Path, default=None,
                   help="one learner: folder with labNN_*.py (default: $DIFFUSION_LABS_STARTERS or starters/)")
    p.add_argument("--lab", nargs="+", default=None, help="labs to grade, e.g. 01 lab02 (default: all)")
    p.add_argument("--out", type=Path, default=Path("grades"),
                   help="class mode: folder for grades.csv, grades.json, feedback/ (default ./grades)")
    p.add_argument("--json", type=Path, default=None, help="one learner: also write the report as JSON here")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the checks (default {DEFAULT_SEED})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per lab (default %(default)s)")
    p.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB,
                   help="address-space limit per worker in MB, 0 for none (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="workers at a time (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-fork", action="store_true",
                   help="start every worker as a fresh interpreter instead of forking it from a server "
                        "that has torch imported (slower; same grades)")
    args = p.parse_args(argv)
    if args.submissions is not None and args.starters is not None:
        p.error("give either SUBMISSIONS (a class) or --starters (one learner), not both")
    try:
        labs = [find_lab(x) for x in args.lab] if args.lab else None
    except KeyError as exc:
        p.error(str(exc.args[0]))
    t0 = time.perf_counter()
    if args.submissions is not None:
        if not args.submissions.is_dir():
            p.error(f"not a folder: {args.submissions}")
        learners = grade_class(args.submissions, labs, args.out, args.seed, args.timeout, args.memory or None,
                               max(1, args.jobs), progress=not args.no_progress, fork=not args.no_fork)
        keys = [i.key for i in (labs or available_labs())]
        print(format_class(learners, keys))
        print(f"\n{len(learners)} learners graded [seed {args.seed}] in {time.perf_counter() - t0:.1f} s; "
              f"wrote {args.out / 'grades.csv'}, {args.out / 'grades.json'}, {args.out / 'feedback'}/")
        return 0
    report = grade_learner(args.starters, labs, args.seed, args.timeout, args.memory or None,
                           fork=not args.no_fork)
    print(format_report(report))
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
