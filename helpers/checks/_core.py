"""Shared tools of every check module: comparisons with precise messages, and the runner
that turns one check into a :class:`Result` without ever crashing.

A check (see docs/CONTRACT.md) is ``check_<name>(fn, gen) -> None``: it draws random inputs
from the ``torch.Generator`` ``gen``, calls the learner's ``fn`` and compares with the
reference, raising :class:`CheckFailed` with a message a learner can act on.
"""
from __future__ import annotations

import contextvars
import hashlib
import linecache
import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

STATUSES = ("passed", "failed", "todo", "error")


class CheckFailed(AssertionError):
    """A learner's function ran but gave a wrong answer; the message says how."""


# --------------------------------------------------------------------------- inputs

def make_generator(seed: int, name: str, stream: str = "notebook") -> torch.Generator:
    """A CPU generator for the check of ``name``, derived from (stream, seed, name), so one
    function's inputs do not depend on which other checks ran. The grader uses
    ``stream="grade"``: a notebook seed never reproduces the grader's inputs."""
    digest = hashlib.sha256(f"{stream}:{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    """A random float in ``[low, high)`` drawn from ``gen`` (in float64)."""
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))


def randn(gen: torch.Generator, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal values of ``shape`` drawn from ``gen`` in float64, then cast to
    ``dtype``: the same numbers, rounded, whatever the dtype a check tests."""
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def random_seed(gen: torch.Generator) -> int:
    """A seed for a model's initialisation or a pipeline's generator, drawn from ``gen``."""
    return randint(gen, 0, 2**31 - 1)


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """A random int in ``[low, high]`` (both included) drawn from ``gen``."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def choice(gen: torch.Generator, options: Sequence[Any]) -> Any:
    """A random element of ``options`` drawn from ``gen``."""
    return options[randint(gen, 0, len(options) - 1)]


# --------------------------------------------------------------------------- comparisons

def describe(t: Any) -> str:
    """``tensor(shape=(2, 3), dtype=torch.float32, device=cpu)``, or the type of a non-tensor."""
    if isinstance(t, torch.Tensor):
        return f"tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    if isinstance(t, (int, float, bool)):
        return f"{type(t).__name__} {t!r}"
    return type(t).__name__ if t is not None else "None"


def require_raises(name: str, call: Callable[[], Any], why: str, *, error: type = ValueError,
                   likely: str = "", note: str = "", passthrough: tuple = (NotImplementedError,),
                   learner_file: str | os.PathLike | None = None) -> None:
    """Check that ``call()`` (the learner's function on an invalid input, described by ``name``)
    raises ``error``, as diffusers does. Another exception, or a return, fails with "expected a
    ValueError (``why``)"; ``likely`` (a "Likely bug: ..." line) opens the message when the call
    returned, ``note`` ends both messages. Exceptions in ``passthrough`` are re-raised (a TODO's
    NotImplementedError by default; pass ``()`` where raising it is the typical bug)."""
    try:
        got = call()
    except passthrough:
        raise
    except error:
        return
    except Exception as exc:
        raise CheckFailed(f"{name}: expected a {error.__name__} ({why}), got "
                          f"{describe_exception(exc, learner_file)}.{note}") from exc
    raise CheckFailed(f"{likely}{name}: expected a {error.__name__} ({why}), but it returned {describe(got)}.{note}")


def require_unchanged(name: str, before, after, what: str = "its inputs") -> None:
    """Fail when a tensor of ``before`` (copies taken before the call) differs from the same
    position of ``after`` (the objects after the call): the learner's function wrote into
    an input in place."""
    for a, b in zip(before, after):
        if isinstance(a, torch.Tensor) and not torch.equal(a, b):
            raise CheckFailed(f"{name}: your function changed {what} in place; build new tensors.")


# The return-type rule of every check: values are judged, not types. Where a docstring asks
# for a number, a Python int/float, a NumPy scalar or a one-element tensor are all accepted;
# where it asks for an integer, also an integral float (4.0); where it asks for a tuple of
# numbers, also a list or a torch.Size. Anything else fails with a message that says what came.

def as_number(name: str, got: Any, *, integer: bool = False) -> float | int:
    """``got`` as a Python float (``integer``: an int), by the rule above; CheckFailed otherwise."""
    kind = "an integer" if integer else "a number"
    value = got
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise CheckFailed(f"{name}: expected {kind}, got {describe(got)} ({got.numel()} values).")
        value = got.detach().cpu().double().item() if got.is_floating_point() else got.detach().cpu().item()
    elif hasattr(got, "item") and getattr(got, "size", None) == 1:  # a NumPy scalar or 1-element array
        value = got.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailed(f"{name}: expected {kind}, got {describe(got)}.")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise CheckFailed(f"{name}: expected an integer, got {value!r} (a fraction: // instead of /?).")
        return int(value)
    return float(value)


def as_numbers(name: str, got: Any, length: int | None = None, *, integer: bool = False) -> tuple:
    """``got`` (a tuple, list, torch.Size or 1-D tensor of numbers) as a tuple of Python numbers,
    by the rule above; CheckFailed when it is not a sequence, or not of ``length``."""
    if isinstance(got, torch.Tensor) and got.ndim == 1:
        got = got.tolist()
    if not isinstance(got, (tuple, list)):  # torch.Size is a tuple
        raise CheckFailed(f"{name}: expected a tuple of {length or 'some'} numbers, got {describe(got)}.")
    if length is not None and len(got) != length:
        raise CheckFailed(f"{name}: expected {length} values, got {len(got)}: {tuple(got)!r}.")
    return tuple(as_number(f"{name}[{i}]", v, integer=integer) for i, v in enumerate(got))


def require(condition: bool, message: str) -> None:
    """Raise ``CheckFailed(message)`` unless ``condition``."""
    if not condition:
        raise CheckFailed(message)


def _matches(got: torch.Tensor, cand: Any, atol: float, rtol: float) -> bool:
    if not isinstance(cand, torch.Tensor) or cand.shape != got.shape:
        return False
    try:
        return bool(torch.allclose(got.detach().double().cpu(), cand.detach().double().cpu(),
                                   atol=atol, rtol=rtol, equal_nan=False))
    except RuntimeError:
        return False


def distinct(got: float, expected: float) -> tuple[str, str]:
    """``got`` and ``expected`` printed with as many significant digits as it takes (6 to
    17) for the two to read differently when they differ: never "got 0.0697139, expected
    0.0697139"."""
    for digits in range(6, 18):
        a, b = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        if a != b or got == expected:
            return a, b
    return repr(got), repr(expected)


def assert_close(name: str, got: Any, expected: torch.Tensor, *, atol: float, rtol: float,
                 hint: str | None = None,
                 diagnose: Sequence[tuple[str, Any]] | None = None) -> None:
    """Check ``|got - expected| <= atol + rtol * |expected|`` elementwise, after checking
    that ``got`` is a tensor of the right shape, dtype and device, and finite where
    ``expected`` is.

    ``diagnose``: ``[(hint, candidate), ...]`` where each candidate is what a known typical
    bug returns on the same inputs; if ``got`` matches one, its hint leads the message.
    ``hint``: added at the end of any failure message (e.g. the equation to re-read).
    """
    def fail(msg: str) -> None:
        lead = ""
        if diagnose and isinstance(got, torch.Tensor):
            for label, cand in diagnose:
                if _matches(got, cand, atol, rtol):
                    lead = f"Likely bug: {label}\n"
                    break
        tail = f"\nHint: {hint}" if hint else ""
        raise CheckFailed(f"{lead}{name}: {msg}{tail}")

    if not isinstance(got, torch.Tensor):
        fail(f"expected a torch.Tensor, got {describe(got)}")
    if tuple(got.shape) != tuple(expected.shape):
        fail(f"wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    if got.dtype != expected.dtype:
        fail(f"wrong dtype: expected {expected.dtype}, got {got.dtype}")
    if got.device != expected.device:
        fail(f"wrong device: expected {expected.device}, got {got.device}")
    g, e = got.detach(), expected.detach()
    if g.is_floating_point() or g.is_complex():
        bad = ~torch.isfinite(g) & torch.isfinite(e)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            fail(f"{int(bad.sum())} non-finite value(s) (NaN/inf); first at index {idx}: "
                 f"got {g[idx].item()}, expected {e[idx].item()}")
    as64 = lambda t: t.cpu().to(torch.complex128 if t.is_complex() else torch.float64)  # noqa: E731
    g64, e64 = as64(g), as64(e)
    err = (g64 - e64).abs()
    tol = atol + rtol * e64.abs()
    both_nan = torch.isnan(g64) & torch.isnan(e64)
    wrong = (err > tol) & ~both_nan
    if err.numel() and wrong.any():
        idx = tuple(int(i) for i in wrong.nonzero()[0])
        max_abs = float(err[~both_nan].max())
        e_max = float(e64.abs().max())
        rel = max_abs / max(e_max, 1e-12)  # relative to the largest |expected|, not elementwise
        g_i, e_i = g64[idx].item(), e64[idx].item()
        if isinstance(g_i, complex):
            shown = (f"{g_i:.6g}", f"{e_i:.6g}")
        else:
            shown = distinct(g_i, e_i)
        fail(f"{int(wrong.sum())} of {err.numel()} values differ (atol={atol:g}, rtol={rtol:g}); "
             f"max abs error {max_abs:.3g}, relative error {rel:.3g} (of the largest |expected|, {e_max:.3g}); "
             f"first at index {idx}: got {shown[0]}, expected {shown[1]}")


# --------------------------------------------------------------------------- running

@dataclass
class Result:
    """The outcome of one check: ``status`` is one of ``STATUSES``."""

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


# the learner's file while run_check runs a check: a check that catches the learner's
# exception and describes it (describe_exception(exc)) still names the learner's line
_LEARNER_FILE: contextvars.ContextVar = contextvars.ContextVar("learner_file", default=None)


def other_device() -> str:
    """Where a check calls a function off the CPU, as the notebooks do on a GPU: ``"cuda"`` when
    there is one, else PyTorch's ``"meta"`` device (tensors with a shape and dtype, no data), on
    which a tensor made without ``device=`` still meets the inputs in an op and fails."""
    return "cuda" if torch.cuda.is_available() else "meta"


META_NOTE = " (the 'meta' device stands in for a GPU: its tensors have a shape and dtype but no data)"


def is_device_error(exc: BaseException, device: str) -> bool:
    """Whether ``exc`` is PyTorch's complaint about tensors on two devices, one of them ``device``."""
    text = str(exc)
    return "device" in text and torch.device(device).type in text


def device_timesteps(t: torch.Tensor, device: str) -> list[torch.Tensor]:
    """Timesteps as the notebooks hand them to a function whose samples are on ``device``: on the
    CPU, and on a GPU also on the samples' device (where ``set_timesteps(device=...)`` puts a
    sampler's and a training loop draws them; diffusers accepts both). A meta tensor has no values
    to index with, so off a GPU only the first."""
    return [t, t.to(device)] if device == "cuda" else [t]


def device_case(name: str, fn: Callable, args: Sequence[Any], device: str, *, hint: str,
                like: torch.Tensor | None = None) -> Any:
    """``fn(*args)``, its tensors placed on ``device`` (from :func:`other_device`), judged for the
    device only: a raise is a device bug ("device not kept"), and so is a result that is not a
    tensor on ``device`` (of ``like``'s shape, when ``like`` is given; with ``like`` None, a result
    that is not a tensor is left to the other cases). On "meta" only a raise that names the device
    is judged: any other comes from meta tensors holding no values (right code may read them),
    which the CPU cases judge, and ``None`` is returned. Returns the result."""
    note = "" if device == "cuda" else META_NOTE
    try:
        got = fn(*args)
    except NotImplementedError:
        if device == "meta":
            return None
        raise
    except Exception as exc:
        if device == "meta" and not is_device_error(exc, device):
            return None
        raise CheckFailed(f"Likely bug: device not kept: a tensor made on the CPU.\n{name}{note} raised "
                          f"{describe_exception(exc)}\nHint: {hint}") from exc
    wrong = (not isinstance(got, torch.Tensor) or got.shape != like.shape) if like is not None else False
    if wrong or (isinstance(got, torch.Tensor) and got.device.type != torch.device(device).type):
        want = f"{describe(like)}" if like is not None else f"a result on {device}"
        raise CheckFailed(f"Likely bug: device not kept: the result must come back on its inputs' device.\n"
                          f"{name}{note}: expected {want}, got {describe(got)}.\nHint: {hint}")
    return got


def describe_exception(exc: BaseException, learner_file: str | os.PathLike | None = None) -> str:
    """``ZeroDivisionError: division by zero\\n  at lab01_x.py line 12, in add_noise: x / 0``:
    the exception and the last traceback frame inside ``learner_file`` (default: the file
    of the learner whose check is running), or the last frame at all, marked "(not in your
    file)", when none is in the learner's file."""
    learner_file = learner_file if learner_file is not None else _LEARNER_FILE.get()
    head = f"{type(exc).__name__}: {exc}".rstrip(": ") if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if learner_file and _same_file(f.filename, str(learner_file))]
    frame = mine[-1] if mine else (frames[-1] if frames else None)
    if frame is None:
        return head
    line = frame.line or linecache.getline(frame.filename, frame.lineno).strip()
    where = "at" if mine else "(not in your file) at"
    return f"{head}\n  {where} {os.path.basename(frame.filename)} line {frame.lineno}, " \
           f"in {frame.name}: {line.strip()}"


def run_check(check_fn: Callable, obj: Any, gen: torch.Generator,
              learner_file: str | os.PathLike | None = None, name: str | None = None) -> Result:
    """Run ``check_fn(obj, gen)`` and classify: passed; ``CheckFailed`` -> failed;
    ``NotImplementedError`` -> todo; any other exception (``SystemExit`` included) ->
    error, naming the line of ``learner_file`` it came from. Only ``KeyboardInterrupt``
    propagates."""
    name = name or check_fn.__name__.removeprefix("check_")
    t0 = time.perf_counter()
    token = _LEARNER_FILE.set(learner_file)
    try:
        check_fn(obj, gen)
        status, message = "passed", ""
    except KeyboardInterrupt:
        raise
    except NotImplementedError as exc:
        status, message = "todo", str(exc) or "TODO"
    except CheckFailed as exc:
        status, message = "failed", str(exc)
    except BaseException as exc:  # noqa: BLE001 - a learner's bug must never crash us
        status, message = "error", describe_exception(exc, learner_file)
    finally:
        _LEARNER_FILE.reset(token)
    return Result(name, status, message, round(time.perf_counter() - t0, 4))
