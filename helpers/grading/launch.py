"""Start one grading worker and wait for it: forked from the fork server, or a fresh
interpreter. One interface for both: :func:`launch` returns an :class:`Exit` (exit code,
timed out, captured output); :class:`Deadline` is the one time limit both paths use.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.grading.forkserver import FifoDrain

_job_ids = iter(range(1, 1 << 62))


@dataclass
class Exit:
    """How a worker ended: ``code`` (None if unknown: killed, or the server died),
    ``timed_out``, and the head of its stdout+stderr."""

    code: int | None
    timed_out: bool
    output: str


class Deadline:
    """``timeout`` seconds counted from when the checker is ready (the worker's report file
    exists: torch's import time on a loaded machine does not count), and at most
    ``startup + timeout`` seconds in all."""

    def __init__(self, state_file: Path, timeout: float, startup: float):
        self.state_file, self.timeout, self.startup = state_file, timeout, startup
        self.start, self.ready = time.monotonic(), None

    def expired(self) -> bool:
        now = time.monotonic()
        if self.ready is None and self.state_file.exists():
            self.ready = now
        return ((self.ready is not None and now - self.ready > self.timeout)
                or now - self.start > self.startup + self.timeout)


class PipeDrain(threading.Thread):
    """Reads a pipe to its end, keeping the first ``limit`` bytes and counting the rest."""

    def __init__(self, pipe, limit: int):
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


def _kill_group(pid: int) -> None:
    """Kill the worker's whole process group (the learner's code may have spawned children)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _forked(server, job: dict, ctl: Path, work: Path, deadline: Deadline, limit: int) -> Exit | None:
    """Run ``job`` as a child of the fork server; None if the server cannot start it."""
    fifo = ctl / f"output{next(_job_ids)}"
    os.mkfifo(fifo, 0o600)
    drain = FifoDrain(fifo, limit)
    drain.start()
    job = {**job, "id": f"job{next(_job_ids)}", "fifo": str(fifo), "cwd": str(work)}
    try:
        pid = server.start(job)
    except RuntimeError:
        drain.stop()
        return None
    code, timed_out = None, False
    while True:
        code = server.wait_exit(job["id"], 0.05)
        if code is not None or server.dead:
            break
        if deadline.expired():
            timed_out = True
            break
    if code is None:
        _kill_group(pid)
        code = server.wait_exit(job["id"], 10)
    drain.stop()
    return Exit(code, timed_out, drain.text())


def _subprocess(job: dict, ctl: Path, work: Path, deadline: Deadline, limit: int, env: dict) -> Exit:
    """Run ``job`` in a fresh interpreter: ``python -m helpers.grading.worker JOB_FILE``."""
    job_file = ctl / f"job{next(_job_ids)}.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, "-m", "helpers.grading.worker", str(job_file)],
                            cwd=work, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    drain = PipeDrain(proc.stdout, limit)
    drain.start()
    timed_out = False
    while proc.poll() is None:
        if deadline.expired():
            timed_out = True
            break
        time.sleep(0.05)
    _kill_group(proc.pid)
    proc.wait()
    drain.join(timeout=5)
    try:
        proc.stdout.close()
    except OSError:
        pass
    return Exit(proc.returncode, timed_out, drain.text())


def launch(job: dict, ctl: Path, work: Path, *, timeout: float, startup: float, output_limit: int,
           env: dict, server=None) -> Exit:
    """Run one worker on ``job`` (its ``out`` is the report file) and wait for it: as a child
    of ``server`` (a :class:`helpers.grading.forkserver.ForkServer`) when given and alive, else
    as a fresh interpreter. Never raises for anything the worker does."""
    state_file = Path(job["out"])
    if server is not None:
        done = _forked(server, job, ctl, work, Deadline(state_file, timeout, startup), output_limit)
        if done is not None:
            return done
        state_file.unlink(missing_ok=True)  # the server is gone: run this job the slow way
    return _subprocess(job, ctl, work, Deadline(state_file, timeout, startup), output_limit, env)
