"""What the grader's worker process does to itself before a learner's code runs.

- :func:`set_limits` (first thing, before torch is imported): ``RLIMIT_AS`` (address space,
  default 4 GiB: torch + diffusers need about 1.5 GiB of it), ``RLIMIT_CORE = 0`` (a
  segfault leaves no core file), ``RLIMIT_FSIZE`` (no file the learner writes grows past
  64 MiB). One compute thread (``torch.set_num_threads(1)``, set by the parent through
  ``OMP_NUM_THREADS``): deterministic reductions, and parallel workers do not fight.
- :func:`block_network` (after the checker is imported, just before the learner's file is
  loaded): a ``sys.addaudithook`` hook, which Python offers no way to remove, that refuses
  creating any socket other than ``AF_UNIX``, name lookups, ``connect``/``sendto``/``bind``,
  starting processes (``subprocess``, ``os.system``, ``os.exec*``, ``os.posix_spawn``,
  ``os.fork``) and loading a native library through ``ctypes`` (the way around the hook).
  A refused call raises ``PermissionError("blocked by the grader: ...")`` in the learner's
  code, which the row reports with the learner's line.
"""
from __future__ import annotations

import os
import resource
import socket
import sys

DEFAULT_MEMORY_MB = 4096
FILE_SIZE_LIMIT = 64 << 20

_BLOCKED_EVENTS = {
    "socket.getaddrinfo": "a network name lookup",
    "socket.gethostbyname": "a network name lookup",
    "socket.gethostbyaddr": "a network name lookup",
    "socket.connect": "a network connection",
    "socket.sendto": "sending over the network",
    "socket.bind": "opening a network port",
    "subprocess.Popen": "starting a process",
    "os.system": "starting a process",
    "os.exec": "starting a process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "starting a process",
    "os.forkpty": "starting a process",
    "pty.spawn": "starting a process",
    "ctypes.dlopen": "loading a native library",
    "urllib.Request": "a network request",
}


def set_limits(memory_mb: int | None = DEFAULT_MEMORY_MB) -> None:
    """Address-space, core-file and file-size limits of this process (and its children)."""
    def lower(which, value):
        try:
            soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, hard))
        except (ValueError, OSError):  # a platform without that limit: go on without it
            pass

    if memory_mb:
        lower(resource.RLIMIT_AS, int(memory_mb) << 20)
    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT)


def _audit(event: str, args: tuple) -> None:
    if event == "socket.__new__":
        family = args[1] if len(args) > 1 else None
        if family not in (socket.AF_UNIX, -1):
            raise PermissionError(f"blocked by the grader: network sockets are not allowed ({event})")
        return
    what = _BLOCKED_EVENTS.get(event)
    if what is not None:
        raise PermissionError(f"blocked by the grader: {what} is not allowed while grading ({event})")


_installed = False


def block_network() -> None:
    """Install the audit hook (once per process; it cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


def worker_env(base: dict | None = None) -> dict:
    """Environment of a worker: one compute thread, offline hub, no forced lab mode."""
    env = dict(os.environ if base is None else base)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8",
               MPLBACKEND="Agg", TQDM_DISABLE="1")
    env.pop("DIFFUSION_LABS_MODE", None)
    return env
