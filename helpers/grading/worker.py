"""The grader's worker: one lab's checks on one learner's file, in its own process.

Started by :mod:`helpers.grade` either as ``python -m helpers.grading.worker JOB_FILE`` (a
fresh interpreter) or as a child of :mod:`helpers.grading.forkserver` (:func:`main` with
the job). It sets its limits (:mod:`helpers.grading.sandbox`), warms the checks up on the
reference, snapshots what the checks rely on (:mod:`helpers.grading.integrity`), loads the
learner's file and checks each function, writing its state (phase, current function, rows)
to the job's report file after every step, with functions captured before any learner code
runs. The parent turns that state into rows (:func:`helpers.grade.rows_from_state`).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from helpers.grading import sandbox
from helpers.labs import LabInfo

STREAM = "grade"  # the checks' random stream when grading (notebooks use "notebook")
MODIFIED = "submission modified torch/the checker"

# captured before any learner code can rebind them (the worker writes its report with these)
_json_dumps, _open, _replace = json.dumps, open, os.replace
_getprofile, _setprofile = sys.getprofile, sys.setprofile


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


def run(job: dict, state: dict, save, warm: dict | None = None) -> None:
    """Run one lab's checks on one learner file, recording progress with ``save()``.
    ``warm``: the warm-up statuses when the fork server already ran them on the reference.
    ``job["done"]``: ``{function: status}`` already graded by an earlier worker of this lab
    (one that hung or crashed): those are not checked again, and the ones that did not pass
    are replaced by the reference, as the runner's fallback does."""
    sys.path[:0] = [p for p in job["path"] if p not in sys.path]
    info = LabInfo(**job["info"])
    import torch

    torch.set_num_threads(1)
    from helpers.exercise import StarterImportError, load_module, names, run_lab_checks
    from helpers.grading import integrity

    done = job.get("done") or {}
    order = [n for n in names(info) if n not in done]
    t0 = time.perf_counter()
    checks = importlib.import_module(info.check_module)
    state["import_s"] = round(time.perf_counter() - t0, 3)
    ref = importlib.import_module(info.solution_module)
    # warm-up on the reference: lazy imports and caches settle before the snapshot
    if warm is None:
        warm = warm_up(info)
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

    for name, status in done.items():  # graded by an earlier worker: its fallback, as if checked here
        if status != "passed" and hasattr(ref, name):
            setattr(module, name, getattr(ref, name))
    run_lab_checks(info, module, job["seed"], stream=STREAM, fallback=True, on_result=on_result, skip=done)
    _setprofile(None)
    state.update(phase="done")
    save()


def warm_up(info: LabInfo) -> dict:
    """Run the lab's checks once on the reference: lazy imports and caches settle before the
    integrity snapshot, and a broken checker shows up (as non-passed statuses)."""
    from helpers.exercise import run_lab_checks

    return {n: r.status for n, r in run_lab_checks(info, None, 0, stream=STREAM + "-warmup",
                                                   fallback=False).items()}


def main(job_file: str | None = None, job: dict | None = None, warm: dict | None = None) -> None:
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
        run(job, state, save, warm)
    except BaseException:
        state["worker_error"] = traceback.format_exc(limit=-3)
        try:
            save()
        except BaseException:  # noqa: BLE001
            pass
        raise


if __name__ == "__main__":
    main(sys.argv[1])
