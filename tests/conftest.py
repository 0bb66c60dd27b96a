"""Shared fixtures: no network for the whole session, and a tiny fake lab.

The fake lab (``lab99``) is a solution module and a check module written to a tmp dir and
registered in :mod:`helpers.labs`, so the machinery is tested without depending on any real
lab's content.
"""
from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")


class NetworkBlocked(RuntimeError):
    """Raised by any attempt to reach the network during the tests."""


_LOCAL = {"localhost", "127.0.0.1", "::1", "", None}


def _host(address):
    return address[0] if isinstance(address, tuple) else None


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Block every non-local connection (and name lookup) for the whole test session.
    Loopback and Unix sockets stay allowed (subprocess plumbing, Jupyter kernels)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_create = socket.getaddrinfo, socket.create_connection

    def guard(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in _LOCAL:
            raise NetworkBlocked(f"network access blocked in tests: connect to {address!r}")

    def connect(sock, address):
        guard(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        guard(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else host
        if h not in _LOCAL:
            raise NetworkBlocked(f"network access blocked in tests: lookup of {h!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        if _host(address) not in _LOCAL:
            raise NetworkBlocked(f"network access blocked in tests: connect to {address!r}")
        return real_create(address, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket.socket, "connect_ex", connect_ex)
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    mp.setattr(socket, "create_connection", create_connection)
    yield
    mp.undo()


# --------------------------------------------------------------------------- the fake lab

FAKE_SOLUTION = '''\
"""Fake lab 99: two tiny exercises, the second calls the first."""
import torch

__all__ = ["double", "quad"]


def double(x):
    """2 x.  x: (N,) -> (N,)"""
    # BEGIN SOLUTION
    # HINT: multiply by two
    return 2 * x
    # END SOLUTION


def quad(x):
    """4 x = double(double(x)).  x: (N,) -> (N,)"""
    # BEGIN SOLUTION
    # HINT: call double twice
    return double(double(x))
    # END SOLUTION
'''

FAKE_CHECKS = '''\
import torch
from helpers.checks._core import assert_close, randint
import fake_sol99 as ref


def check_double(fn, gen):
    x = torch.randn(randint(gen, 3, 8), generator=gen)
    assert_close("double(x)", fn(x), ref.double(x), atol=1e-6, rtol=1e-6,
                 hint="double means 2 * x",
                 diagnose=[("you returned x unchanged", x), ("you squared x", x * x)])


def check_quad(fn, gen):
    x = torch.randn(5, generator=gen)
    assert_close("quad(x)", fn(x), ref.quad(x), atol=1e-6, rtol=1e-6)
'''


class FakeLab:
    """Handle on the registered fake lab: ``info``, ``starters`` (the folder), helpers to
    write a learner file."""

    def __init__(self, root: Path, info, starters: Path):
        self.root, self.info, self.starters = root, info, starters

    @property
    def starter(self) -> Path:
        return self.starters / f"{self.info.slug}.py"

    def write(self, body: str, folder: Path | None = None) -> Path:
        """Write a learner file (``body`` is dedented) into the starters folder (or ``folder``)."""
        path = (folder or self.starters) / f"{self.info.slug}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body), encoding="utf-8")
        return path

    def write_solution_copy(self, folder: Path) -> Path:
        return self.write(FAKE_SOLUTION, folder)

    def write_pristine(self, folder: Path | None = None) -> Path:
        from helpers.make_starters import strip_solutions

        return self.write(strip_solutions(FAKE_SOLUTION, self.info.key), folder)


@pytest.fixture
def fake_lab(tmp_path, monkeypatch):
    """Register lab99 (solution ``fake_sol99``, checks ``fake_check99``) and point
    ``DIFFUSION_LABS_STARTERS`` to an empty tmp folder."""
    from helpers import labs

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_sol99.py").write_text(FAKE_SOLUTION)
    (mods / "fake_check99.py").write_text(FAKE_CHECKS)
    monkeypatch.syspath_prepend(str(mods))
    starters = tmp_path / "starters"
    starters.mkdir()
    monkeypatch.setenv("DIFFUSION_LABS_STARTERS", str(starters))
    monkeypatch.delenv("DIFFUSION_LABS_MODE", raising=False)
    info = labs.LabInfo("lab99", "lab99_fake", 99, "Fake Lab",
                        solution_module="fake_sol99", check_module="fake_check99")
    monkeypatch.setitem(labs.REGISTERED, "lab99", info)
    yield FakeLab(tmp_path, info, starters)
    import sys

    for m in ("fake_sol99", "fake_check99"):
        sys.modules.pop(m, None)
