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
fails to start) runs ``python -m helpers.grade --worker JOB`` per job instead, with the
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
functions captured before the learner's code loads), so an infinite loop, ``sys.exit``
(reported by the check runner with the learner's line), ``os._exit``, a segfault, a
``MemoryError`` or an import-time exception fails the current and remaining rows of that
lab only; the parent turns what is missing into ``error`` rows saying what happened
(timed out, exited with code N, crashed with SIGSEGV, ...). A file that does not parse, a
missing file or an unreadable zip are rows too. The run always goes on to the next learner.

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
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helpers.grading import sandbox
from helpers.labs import LabInfo, available_labs, find_lab, repo_root, starters_dir

DEFAULT_SEED = 20240601
DEFAULT_TIMEOUT = 120.0  # seconds per lab, once the checker is imported
DEFAULT_MEMORY_MB = sandbox.DEFAULT_MEMORY_MB
STARTUP_LIMIT = 300.0  # seconds for the worker to import torch/diffusers and the checks
OUTPUT_LIMIT = 16 * 1024  # bytes of a worker's stdout+stderr kept
STREAM = "grade"
MODIFIED = "submission modified torch/the checker"

# captured before any learner code can rebind them (the worker writes its report with these)
_json_dumps, _open, _replace = json.dumps, open, os.replace
_getprofile, _setprofile = sys.getprofile, sys.setprofile


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


def _not_yours(obj, module, ref) -> str:
    """Why ``obj`` (the learner's exercise) is not the learner's own code ("" if it is):
    the reference itself, or a function/class defined outside the learner's file."""
    name = getattr(obj, "__name__", "?")
    if obj is None:
        return ""
    if any(obj is v for v in vars(ref).values()):
        return f"{name} is the reference solution imported from {ref.__name__}, not your code."
    try:  # a decorated function (@torch.no_grad()): judge the function it wraps
        import inspect

        obj = inspect.unwrap(obj) if callable(obj) else obj
    except ValueError:
        pass
    code = getattr(obj, "__code__", None)
    if code is not None and code.co_filename != module.__file__:
        return (f"{name} is not defined in your file (its code comes from {Path(code.co_filename).name}): "
                f"write your own.")
    if isinstance(obj, type) and obj.__module__ != module.__name__:
        return f"{name} is not defined in your file (it comes from {obj.__module__}): write your own."
    return ""


class _RefCallWatch:
    """A ``sys.setprofile`` hook that records calls of the reference's functions made from
    the learner's file, except calls of a reference the runner substituted for one of the
    learner's functions that did not pass (the contract's fallback)."""

    def __init__(self, module, ref):
        import inspect

        self.file, self.module_dict = module.__file__, vars(module)
        ref_file = getattr(ref, "__file__", None)
        self.codes: dict = {}  # code object -> (name in ref, the object ref holds)
        for name, v in vars(ref).items():
            if not callable(v) or isinstance(v, type):
                continue
            try:
                inner = inspect.unwrap(v)
            except ValueError:
                continue
            code = getattr(inner, "__code__", None)
            if code is not None and code.co_filename == ref_file:
                self.codes[code] = (name, v)
        self.calls: list[str] = []

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code in self.codes:
            back, hops = frame.f_back, 0
            while back is not None and hops < 3 and any(k in back.f_code.co_filename
                                                        for k in ("contextlib", "functools")):
                back, hops = back.f_back, hops + 1  # through a decorator's wrapper
            if back is not None and back.f_code.co_filename == self.file:
                name, fn = self.codes[frame.f_code]
                if self.module_dict.get(name) is not fn:
                    self.calls.append(name)


def _worker(job: dict, state: dict, save, warm: dict | None = None) -> None:
    """Run one lab's checks on one learner file, recording progress with ``save()``.
    ``warm``: the warm-up statuses when a zygote already ran it (see :class:`Zygote`)."""
    sys.path[:0] = [p for p in job["path"] if p not in sys.path]
    info = LabInfo(**job["info"])
    import torch

    torch.set_num_threads(1)
    from helpers.exercise import StarterImportError, load_module, names, run_lab_checks
    from helpers.grading import integrity

    order = names(info)
    t0 = time.perf_counter()
    checks = importlib.import_module(info.check_module)
    state["import_s"] = round(time.perf_counter() - t0, 3)
    ref = importlib.import_module(info.solution_module)
    # warm-up on the reference: lazy imports and caches settle before the snapshot
    if warm is None:
        warm = _warm_up(info)
    state["warmup"] = warm
    state["warmup_s"] = round(time.perf_counter() - t0 - state["import_s"], 3)
    sandbox.block_network()
    snap = integrity.snapshot_for(checks, ref, extra=[sys.modules[__name__], sandbox, integrity])
    state["snapshot_s"] = round(time.perf_counter() - t0 - state["import_s"] - state["warmup_s"], 3)
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
    changed = snap.changes()
    if changed:
        left = snap.restore()
        msg = f"{MODIFIED} while loading your file: {', '.join(changed[:8])}" + \
              (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "") + \
              "\nA submission may not change torch, the checks or the reference solution."
        state["rows"] = [dict(function=n, status="failed", message=msg) for n in order]
        state.update(phase="done", integrity=changed, unrestored=left)
        save()
        return
    state.update(phase="check", current=order[0] if order else None)
    save()
    tainted: list[str] = []
    not_yours = {n: why for n in order if (why := _not_yours(getattr(module, n, None), module, ref))}
    profiler = _RefCallWatch(module, ref)
    ref_calls = profiler.calls
    _setprofile(profiler)

    def on_result(res):
        status, message = res.status, res.message
        if _getprofile() is not profiler:
            _setprofile(profiler)
            status, message = "failed", f"{MODIFIED} while {res.name} was checked: sys.setprofile"
        changed = snap.changes()
        if res.name in not_yours:
            status, message = "failed", not_yours[res.name]
        elif ref_calls and status == "passed":
            status = "failed"
            message = (f"{res.name} calls the reference solution ({', '.join(sorted(set(ref_calls)))}) "
                       f"instead of computing it: write your own code.")
        ref_calls.clear()
        if changed:
            left = snap.restore()
            status = "failed"
            message = (f"{MODIFIED} while {res.name} was checked: {', '.join(changed[:8])}"
                       + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
                       + "\nA submission may not change torch, the checks or the reference solution.")
            state.setdefault("integrity", []).extend(changed)
            if left:
                tainted[:] = left
        elif tainted:
            status = "failed"
            message = f"not checked: {MODIFIED} earlier and it could not be restored: {', '.join(tainted[:8])}"
        if status != "passed" and res.status == "passed" and hasattr(ref, res.name):
            setattr(module, res.name, getattr(ref, res.name))  # as the runner's fallback does
        state["rows"].append(dict(function=res.name, status=status, message=message, seconds=res.seconds))
        done = len(state["rows"])
        state["current"] = order[done] if done < len(order) else None
        save()

    run_lab_checks(info, module, job["seed"], stream=STREAM, fallback=True, on_result=on_result)
    _setprofile(None)
    state.update(phase="done")
    save()


def _warm_up(info: LabInfo) -> dict:
    """Run the lab's checks once on the reference: lazy imports and caches settle before the
    integrity snapshot, and a broken checker shows up (as non-passed statuses)."""
    from helpers.exercise import run_lab_checks

    return {n: r.status for n, r in run_lab_checks(info, None, 0, stream=STREAM + "-warmup",
                                                   fallback=False).items()}


def _worker_main(job_file: str | None = None, job: dict | None = None, warm: dict | None = None) -> None:
    """Limits first, then ``_worker``; a failure of the checker itself (a course bug) is
    recorded in the report file."""
    job = job if job is not None else json.loads(Path(job_file).read_text())
    sandbox.set_limits(job.get("memory_mb"))
    out = job["out"]
    state = {"phase": "start", "current": None, "rows": []}

    def save():
        tmp = out + ".tmp"
        with _open(tmp, "w") as fh:
            fh.write(_json_dumps(state))
        _replace(tmp, out)

    try:
        _worker(job, state, save, warm)
    except BaseException:  # noqa: BLE001
        state["worker_error"] = traceback.format_exc(limit=-3)
        try:
            save()
        except BaseException:  # noqa: BLE001
            pass
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
        advice = " (out of memory?)" if sig == "SIGKILL" else ""
        return f"the process crashed ({sig})", advice
    return f"the process exited with code {code}", " (does your code call os._exit or sys.exit?)"


class _Drain(threading.Thread):
    """Reads a pipe to its end, keeping the first ``limit`` bytes and counting the rest."""

    def __init__(self, pipe, limit: int = OUTPUT_LIMIT):
        super().__init__(daemon=True)
        self.pipe, self.limit, self.head, self.total = pipe, limit, bytearray(), 0

    def run(self):
        try:
            while True:
                chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
                if not chunk:
                    break
                self.total += len(chunk)
                if len(self.head) < self.limit:
                    self.head += chunk[: self.limit - len(self.head)]
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        s = self.head.decode("utf-8", "replace")
        if self.total > len(self.head):
            s += f"\n[... {self.total - len(self.head)} more bytes not shown]"
        return s


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


def _names(info: LabInfo) -> list[str]:
    return list(importlib.import_module(info.solution_module).__all__)


def _job_path(info: LabInfo) -> list[str]:
    return sorted({_module_root(info.solution_module), _module_root(info.check_module)})


def _worker_env() -> dict:
    env = sandbox.worker_env()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo_root())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _wait_server(server, job_id: str, state_file: Path, timeout: float) -> tuple[int | None, bool]:
    """Like :func:`_wait` for a fork-server child: (exit code or None, timed out)."""
    start, ready = time.monotonic(), None
    while True:
        code = server.wait_exit(job_id, 0.05)
        if code is not None:
            return code, False
        if server.dead:
            return None, False
        now = time.monotonic()
        if ready is None and state_file.exists():
            ready = now
        if (ready is not None and now - ready > timeout) or now - start > STARTUP_LIMIT + timeout:
            return None, True


_job_ids = iter(range(1, 1 << 62))


def run_lab(info: LabInfo, path: str | os.PathLike | None, seed: int = DEFAULT_SEED,
            timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB,
            missing: str | None = None, server=None) -> LabResult:
    """Grade one lab of one learner in a worker process (a child of ``server``, a
    :class:`helpers.grading.forkserver.ForkServer`, when given); never raises."""
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
        state_file = ctl / "state.json"
        job = {"info": asdict(info), "file": str(learner_file), "seed": seed, "out": str(state_file),
               "memory_mb": memory_mb, "path": _job_path(info)}
        code, timed_out, output = None, False, ""
        if server is not None:
            from helpers.grading.forkserver import FifoDrain

            fifo = ctl / "output"
            os.mkfifo(fifo, 0o600)
            drain = FifoDrain(fifo, OUTPUT_LIMIT)
            drain.start()
            job.update(id=f"job{next(_job_ids)}", fifo=str(fifo), cwd=str(work))
            try:
                pid = server.start(job)
            except RuntimeError:
                pid = None
            if pid is not None:
                code, timed_out = _wait_server(server, job["id"], state_file, timeout)
                if code is None:
                    try:  # kill the whole group: the learner's code may have spawned children
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    code = server.wait_exit(job["id"], 10)
            drain.stop()
            output = drain.text()
            if pid is None:  # the server is gone: run this job the slow way
                server = None
                for f in (state_file,):
                    f.unlink(missing_ok=True)
        if server is None:
            job_file = ctl / "job.json"
            job_file.write_text(json.dumps(job))
            proc = subprocess.Popen([sys.executable, "-m", "helpers.grade", "--worker", str(job_file)],
                                    cwd=work, env=_worker_env(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            drain = _Drain(proc.stdout)
            drain.start()
            timed_out = _wait(proc, state_file, timeout)
            try:  # kill the whole group: the learner's code may have spawned children
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            code = proc.returncode
            drain.join(timeout=5)
            try:
                proc.stdout.close()
            except OSError:
                pass
            output = drain.text()
        try:
            state = json.loads(state_file.read_text())
            if not isinstance(state, dict):
                raise ValueError
        except (OSError, ValueError):
            state = {"phase": "start", "current": None, "rows": []}
        if os.environ.get("DIFFUSION_LABS_GRADE_DEBUG"):
            print({k: v for k, v in state.items() if k != "rows"}, file=sys.stderr)
    rows, seen = [], set()
    for r in state.get("rows", []):  # accept only well-formed rows of this lab's functions, once each
        if not isinstance(r, dict) or r.get("function") not in order or r["function"] in seen:
            continue
        seen.add(r["function"])
        status = r.get("status") if r.get("status") in ("passed", "failed", "todo", "error") else "error"
        rows.append(Row(info.key, r["function"], status, str(r.get("message", "")),
                        float(r.get("seconds", 0.0) or 0.0)))
    outcome = "finished"
    if (state.get("phase") != "done" or timed_out) and not (len(seen) == len(order) and not timed_out):
        reason, advice = _exit_reason(code, timed_out, timeout)
        if state.get("worker_error") and not timed_out:
            reason, advice = "the grader itself failed (a course bug, not your code)", ""
        outcome = reason
        where = {"start": "while starting the checker", "import": "while importing your file",
                 "check": f"while checking {state.get('current')}"}.get(state.get("phase"), "")
        for n in order:
            if n not in seen:
                msg = f"{reason} {where}{advice}" if n == state.get("current") or state.get("phase") != "check" \
                    else f"not run: {reason} {where}"
                if state.get("worker_error"):
                    msg += "\nchecker error: " + state["worker_error"].strip().splitlines()[-1]
                rows.append(Row(info.key, n, "error", msg.strip()))
    rows.sort(key=lambda r: order.index(r.function))
    return LabResult(rows, outcome, output, round(time.perf_counter() - t0, 2))


def grade_lab(info: LabInfo, path: str | os.PathLike, seed: int = DEFAULT_SEED,
              timeout: float = DEFAULT_TIMEOUT, memory_mb: int | None = DEFAULT_MEMORY_MB) -> list[Row]:
    """Grade one lab of one learner: the rows for the lab's functions, never raising."""
    return run_lab(info, path, seed, timeout, memory_mb).rows


def _lab_info(res: LabResult) -> dict:
    return {"outcome": res.outcome, "output": res.output, "seconds": res.seconds}


def start_server(infos: list[LabInfo]):
    """A fork server with torch and these labs' checks imported, or None (then every job
    starts a fresh ``--worker`` process) if it cannot start."""
    from helpers.grading.forkserver import ForkServer

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
    from helpers.grading import outputs, submissions as subs_mod

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
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1])
        return 0
    if argv[:1] == ["--forkserver"]:
        from helpers.grading.forkserver import server_main

        server_main(argv[1])
        return 0
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
