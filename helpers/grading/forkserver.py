"""A fork server for the grader's workers: torch, diffusers and the checks imported once.

A fresh ``python -m helpers.grading.worker`` spends seconds importing torch and diffusers
(5-15 s on a busy 2-core CPU), far more than the checks take. The fork server
(``python -m helpers.grading.forkserver SPEC``) imports them once, runs each lab's checks
once on the reference (the warm-up), then, for each job the parent sends on its stdin (one
JSON line), ``fork()``s a child that is exactly the worker: its own session (the parent
kills its whole process group on a timeout), limits, working folder, audit hook, integrity
snapshot, stdout/stderr on a FIFO the parent drains. Each (learner, lab) still runs in its
own process, started from the same clean, never-learner-touched state; the server itself
never runs a learner's code. It reports ``{"job", "pid"}`` when a child starts and
``{"job", "code"}`` (``os.waitstatus_to_exitcode``) when it ends.

The server is single-threaded (forking a threaded process is unsafe) and torch runs with
one thread, so the fork is safe. If it cannot start, the grader falls back to one
``python -m helpers.grading.worker`` process per job.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


# --------------------------------------------------------------------------- server side

def _send(msg: dict) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def server_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    sys.path[:0] = [p for p in spec["path"] if p not in sys.path]
    import importlib

    import torch

    torch.set_num_threads(1)
    from helpers.grading import worker
    from helpers.labs import LabInfo

    warm: dict[str, dict] = {}
    for d in spec["labs"]:
        info = LabInfo(**d)
        try:
            importlib.import_module(info.check_module)
            warm[info.key] = worker.warm_up(info)
        except BaseException as exc:  # noqa: BLE001 - the child will report it as a worker error
            warm[info.key] = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    sys.stderr.flush()
    _send({"ready": True, "warm": warm})
    children: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    buf = b""
    open_ = True
    while open_ or children:
        if open_:
            for _key, _ev in sel.select(timeout=0.02):
                chunk = os.read(0, 65536)
                if not chunk:
                    open_ = False
                    for pid in children:  # the parent is gone: end every child
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except OSError:
                            pass
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    job = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(job, warm.get(job["info"]["key"]))  # never returns
                    children[pid] = job["id"]
                    _send({"job": job["id"], "pid": pid})
        else:
            time.sleep(0.02)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            job_id = children.pop(pid, None)
            if job_id is not None and open_:
                try:
                    _send({"job": job_id, "code": os.waitstatus_to_exitcode(status)})
                except OSError:
                    open_ = False


def _child(job: dict, warm: dict | None) -> None:
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        fd = os.open(job["fifo"], os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
        os.chdir(job["cwd"])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from helpers.grading import worker

        if warm is not None and "error" in warm:
            warm = None
        worker.main(job=job, warm=warm)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - recorded in the report file by _worker_main
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


# --------------------------------------------------------------------------- parent side

class ForkServer:
    """The parent's handle on a fork server; thread-safe ``start``/``wait``."""

    def __init__(self, labs: list[dict], path: list[str], env: dict, cwd: str, startup: float = 600.0):
        spec = json.dumps({"labs": labs, "path": path})
        self.proc = subprocess.Popen([sys.executable, "-m", "helpers.grading.forkserver", spec],
                                     cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.lock = threading.Lock()
        self.pids: dict[str, int] = {}
        self.codes: dict[str, int] = {}
        self.cond = threading.Condition(self.lock)
        self.ready = threading.Event()
        self.warm: dict = {}
        self.dead = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(startup) or self.dead:
            self.close()
            raise RuntimeError("the grader's fork server did not start")

    def _read(self):
        try:
            for line in self.proc.stdout:
                msg = json.loads(line)
                with self.cond:
                    if msg.get("ready"):
                        self.warm = msg.get("warm", {})
                        self.ready.set()
                    elif "pid" in msg:
                        self.pids[msg["job"]] = msg["pid"]
                    elif "code" in msg:
                        self.codes[msg["job"]] = msg["code"]
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        with self.cond:
            self.dead = True
            self.ready.set()
            self.cond.notify_all()

    def start(self, job: dict) -> int:
        """Send ``job`` (with ``id``, ``fifo``, ``cwd``); returns the child's pid."""
        with self.cond:
            if self.dead:
                raise RuntimeError("the grader's fork server died")
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            if not self.cond.wait_for(lambda: job["id"] in self.pids or self.dead, timeout=60):
                raise RuntimeError("the grader's fork server did not start a worker")
            if self.dead and job["id"] not in self.pids:
                raise RuntimeError("the grader's fork server died")
            return self.pids[job["id"]]

    def exit_code(self, job_id: str) -> int | None:
        with self.lock:
            return self.codes.get(job_id)

    def wait_exit(self, job_id: str, timeout: float) -> int | None:
        with self.cond:
            self.cond.wait_for(lambda: job_id in self.codes or self.dead, timeout=timeout)
            return self.codes.pop(job_id, None)

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FifoDrain(threading.Thread):
    """Reads a FIFO (opened non-blocking, so a writer that never comes cannot hang us) until
    ``stop()``, keeping the first ``limit`` bytes and counting the rest."""

    def __init__(self, path: Path, limit: int):
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.limit, self.head, self.total = limit, bytearray(), 0
        self._halt = threading.Event()

    def _read_some(self) -> bool:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            return False
        if not chunk:
            return False
        self.total += len(chunk)
        if len(self.head) < self.limit:
            self.head += chunk[: self.limit - len(self.head)]
        return True

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        while not self._halt.is_set():
            if sel.select(timeout=0.05):
                if not self._read_some():
                    time.sleep(0.02)  # no writer yet, or it closed
        while self._read_some():
            pass
        sel.close()
        os.close(self.fd)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)

    def text(self) -> str:
        s = self.head.decode("utf-8", "replace")
        if self.total > len(self.head):
            s += f"\n[... {self.total - len(self.head)} more bytes not shown]"
        return s


if __name__ == "__main__":
    server_main(sys.argv[1])
