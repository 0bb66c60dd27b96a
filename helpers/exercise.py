"""Load a learner's exercise file, check it, and fall back to the reference per function.

In a notebook::

    ex = exercise("lab01")     # ex.add_noise is yours if it passes its check, else the reference
    check("lab01")             # prints one row per function; check("lab01", seed=123) reproduces

Modes (argument ``mode`` or env ``DIFFUSION_LABS_MODE``):

- ``auto`` (default): each function that is TODO or fails its check is replaced by the
  reference, and a banner says which and why. The notebook always runs to the end.
- ``solutions``: the references only (CI, the solved notebooks); the starter is not read.
- ``starters``: the learner's code only, no fallback (to see your own bug happen).

The starter file is read and executed afresh on every call, so edits are picked up without
restarting the kernel; the returned object is a plain namespace of functions and classes.
"""
from __future__ import annotations

import html
import importlib
import itertools
import linecache
import os
import secrets
import sys
import types
from pathlib import Path
from typing import Any

from helpers.checks._core import Result, describe_exception, make_generator, run_check
from helpers.labs import LabInfo, find_lab, repo_root
from helpers.make_starters import is_legacy, solution_blocks

MODES = ("auto", "solutions", "starters")
_counter = itertools.count()


class StarterImportError(ImportError):
    """The learner's file could not be loaded (missing, syntax error, exception at import)."""


# --------------------------------------------------------------------------- loading

def load_module(path: str | os.PathLike, name: str | None = None) -> types.ModuleType:
    """Execute the Python file at ``path`` as a fresh module under a unique name.

    The source is compiled from disk on every call (no ``__pycache__``, whose mtime check
    can miss an edit made within the same second), and registered in ``linecache`` so that
    tracebacks show the lines of *this* version. Raises :class:`StarterImportError` with
    the reason and the line for any failure (``SystemExit`` included).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise StarterImportError(f"{path} does not exist (run `python -m helpers.make_starters`"
                                 " to regenerate a pristine starter)")
    source = path.read_text(encoding="utf-8")
    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    name = name or f"_diffusion_labs_{path.stem}_{next(_counter)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses & pickling look modules up here
    try:
        exec(compile(source, str(path), "exec"), module.__dict__)
    except KeyboardInterrupt:
        raise
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise StarterImportError(f"SyntaxError: {exc.msg}\n  at {path.name} line {exc.lineno}: "
                                 f"{(exc.text or '').strip()}") from None
    except BaseException as exc:  # noqa: BLE001
        sys.modules.pop(name, None)
        raise StarterImportError(describe_exception(exc, path)) from None
    finally:
        # forget earlier versions of the same file
        for old in [k for k in sys.modules if k.startswith(f"_diffusion_labs_{path.stem}_")]:
            if old != name:
                del sys.modules[old]
    return module


def reference(lab) -> types.ModuleType:
    """The lab's reference solution module."""
    return importlib.import_module(find_lab(lab).solution_module)


def names(lab) -> list[str]:
    """The exercise names of a lab, in teaching order (the solution module's ``__all__``)."""
    return list(reference(lab).__all__)


def run_lab_checks(info: LabInfo, module: types.ModuleType | None, seed: int,
                   stream: str = "notebook", fallback: bool = True,
                   on_result=None, skip=()) -> dict[str, Result]:
    """Check every exercise of ``module`` (``None``: the reference) in teaching order.

    With ``fallback``, a function that does not pass is replaced in ``module`` by the
    reference before the next is checked, so a later exercise that calls an earlier one is
    judged on its own code. ``on_result(result)`` is called after each check (the grader
    records progress with it). Names in ``skip`` are not checked (the grader's earlier
    worker graded them); each function's inputs come from its own random stream, so the
    others get the same inputs either way."""
    ref = reference(info)
    checks = importlib.import_module(info.check_module)
    target = module if module is not None else ref
    learner_file = getattr(module, "__file__", None)
    results: dict[str, Result] = {}
    for name in ref.__all__:
        if name in skip:
            continue
        fn = getattr(checks, f"check_{name}", None)
        if fn is None:
            res = Result(name, "error", f"no check_{name} in {info.check_module} (course bug)")
        elif not hasattr(target, name):
            res = Result(name, "error", f"{name} is missing from your file (was it renamed?)")
        else:
            res = run_check(fn, getattr(target, name), make_generator(seed, name, stream),
                            learner_file, name)
        if res.status in ("failed", "error") and hint_levels(info, name, numbered=True):
            res.message += f'\nMore help: hint("{info.key}", "{name}") shows the next hint.'
        results[name] = res
        if fallback and res.status != "passed" and module is not None:
            setattr(module, name, getattr(ref, name))
        if on_result:
            on_result(res)
    return results


# --------------------------------------------------------------------------- the API

class LabFunctions(types.SimpleNamespace):
    """The functions/classes of a lab as attributes (``ex.add_noise``), plus:

    - ``ex.status``: ``{name: "passed" | "failed" | "todo" | "error" | "reference"}``
    - ``ex.origin``: ``{name: "yours" | "reference"}``: which one ``ex.<name>`` is
    - ``ex.results``: ``{name: Result}`` of the checks (empty in solutions mode)
    - ``ex.banner``: the banner as plain text
    """

    def _repr_html_(self):
        return self.__dict__["_html"]

    def __repr__(self):
        return self.__dict__["banner"]


def _mode(mode: str | None) -> str:
    mode = (mode or os.environ.get("DIFFUSION_LABS_MODE") or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"DIFFUSION_LABS_MODE must be one of {MODES}, got {mode!r}")
    return mode


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(repo_root()))
    except ValueError:
        return str(path)


def _in_ipython() -> bool:
    ip = sys.modules.get("IPython")
    try:
        return ip is not None and ip.get_ipython() is not None and \
            "IPKernelApp" in ip.get_ipython().config
    except Exception:  # noqa: BLE001
        return False


def _show(text: str, html_box: str) -> None:
    if _in_ipython():
        from IPython.display import HTML, display

        display(HTML(html_box))
    else:
        print(text)


_WHY = {"todo": "TODO", "failed": "failed its check", "error": "raised an error"}


def _banner(info: LabInfo, mode: str, path: Path, status: dict, results: dict,
            import_error: str | None, seed: int | None) -> tuple[str, str]:
    """The banner as (plain text, HTML box): green when every function is the learner's
    and passes, amber otherwise."""
    head = f"{info.name} ({mode} mode) - {_rel(path)}"
    not_passed = [n for n, s in status.items() if s != "passed"]
    if mode == "solutions":
        lines, ok = ["Using the reference solution for every function (DIFFUSION_LABS_MODE=solutions)."], True
    elif import_error:  # auto mode only: starters mode raised
        lines = ["Your file could not be loaded:"] + ["    " + ln for ln in import_error.splitlines()]
        lines.append("Every function uses the reference until it loads.")
        ok = False
    elif not not_passed:
        lines, ok = [f"All {len(status)} functions are yours and pass their checks."], True
    else:
        verb = "used anyway (no fallback)" if mode == "starters" else "replaced by the reference"
        lines = [f"{len(not_passed)} of {len(status)} functions {verb}:"]
        for n in not_passed:
            first = results[n].message.splitlines()[0] if results[n].message else ""
            detail = f" ({first})" if first and status[n] != "todo" else ""
            lines.append(f"  - {n}: {_WHY.get(status[n], status[n])}{detail}")
        lines.append(f'Details: check("{info.key}")  [checks seed {seed}]')
        ok = False
    text = head + "\n" + "\n".join(lines)
    bg, edge = ("#e6f4ea", "#1e7e34") if ok else ("#fff4e0", "#b26a00")
    body = "<br>".join(html.escape(ln).replace("  ", "&nbsp;&nbsp;") for ln in lines)
    box = (f'<div style="background:{bg};border-left:6px solid {edge};padding:8px 12px;'
           f'margin:4px 0;font-family:sans-serif"><b>{html.escape(head)}</b><br>{body}</div>')
    return text, box


def exercise(lab, mode: str | None = None, seed: int | None = None) -> LabFunctions:
    """Return the lab's functions: the learner's where they pass, else the reference.

    Args:
        lab: ``"lab01"``, ``1``, ``"lab01_forward_noise"``, ...
        mode: ``"auto"`` | ``"solutions"`` | ``"starters"``; default ``$DIFFUSION_LABS_MODE``
            or ``"auto"``.
        seed: seed of the checks (default: fresh each call, shown in the banner).
    """
    info, mode = find_lab(lab), _mode(mode)
    ref = reference(info)
    path = info.starter_path
    status: dict[str, str] = {}
    origin: dict[str, str] = {}
    results: dict[str, Result] = {}
    import_error = None
    funcs: dict[str, Any] = {}
    if mode == "solutions":
        for n in ref.__all__:
            funcs[n], status[n], origin[n] = getattr(ref, n), "reference", "reference"
    else:
        try:
            module = load_module(path)
        except StarterImportError as exc:
            if mode == "starters":
                raise
            import_error, module = str(exc), None
        if module is None:
            for n in ref.__all__:
                results[n] = Result(n, "error", "your file could not be loaded")
                funcs[n], status[n], origin[n] = getattr(ref, n), "error", "reference"
        else:
            seed = secrets.randbelow(10**6) if seed is None else seed
            learner = {n: getattr(module, n, None) for n in ref.__all__}
            results = run_lab_checks(info, module, seed, fallback=(mode == "auto"))
            for n, res in results.items():
                status[n] = res.status
                yours = mode == "starters" or res.status == "passed"
                funcs[n] = learner[n] if yours and learner[n] is not None else getattr(ref, n)
                origin[n] = "yours" if funcs[n] is learner[n] else "reference"
    text, box = _banner(info, mode, path, status, results, import_error, seed)
    _show(text, box)
    ex = LabFunctions(**funcs)
    ex.__dict__.update(status=status, origin=origin, results=results, banner=text, _html=box,
                       lab=info.key, mode=mode, seed=seed)
    return ex


TABLE_WIDTH = 100  # characters of a message's first line in a table; the whole message follows it


def format_table(rows: list[list[str]], headers: list[str], width: int = TABLE_WIDTH) -> str:
    """A plain-text table; each cell keeps its first line, cut to ``width`` characters."""
    cells = [[(str(c).splitlines() or [""])[0][:width] for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*r).rstrip() for r in cells]
    return "\n".join(out)


class CheckResults(list):
    """The rows `check` printed; a short repr, so a cell ending in check(...) shows no list dump."""

    def __repr__(self):
        return f"<{sum(r.status == 'passed' for r in self)}/{len(self)} passed>"


def check(lab, seed: int | None = None) -> list[Result]:
    """Check the learner's file and print one row per function: passed, failed (why), TODO,
    error (with your file's line). In solutions mode the reference is checked instead.

    Args:
        seed: reuse a printed seed to reproduce a failure (default: fresh each call).
    """
    info, mode = find_lab(lab), _mode(None)
    seed = secrets.randbelow(10**6) if seed is None else seed
    if mode == "solutions":
        results = list(run_lab_checks(info, None, seed).values())
        where = "the reference (DIFFUSION_LABS_MODE=solutions)"
    else:
        where = _rel(info.starter_path)
        try:
            module = load_module(info.starter_path)
            results = list(run_lab_checks(info, module, seed, fallback=(mode == "auto")).values())
        except StarterImportError as exc:
            results = [Result(n, "error", f"file could not be loaded: {exc}") for n in names(info)]
    passed = sum(r.status == "passed" for r in results)
    print(f"{info.name}: checking {where}  [seed {seed}: check(\"{info.key}\", seed={seed}) reproduces]")
    print(format_table([[r.name, r.status.upper() if r.status != "passed" else "passed", r.message]
                        for r in results], ["function", "status", "message"]))
    for r in results:  # every failure's message whole (the table shows its first line, cut)
        if r.status in ("failed", "error") and (len(r.message) > TABLE_WIDTH or "\n" in r.message):
            print(f"\n{r.name}:\n  " + r.message.replace("\n", "\n  "))
    print(f"\n{passed}/{len(results)} passed")
    return CheckResults(results)


# --------------------------------------------------------------------------- hints on demand

HINT_NAMES = {1: "where to look", 2: "the plan", 3: "the formula"}
_hints_shown: dict[tuple[str, str], int] = {}


def hint_levels(lab, name: str, numbered: bool = False) -> list[str]:
    """The hints of exercise ``name`` of ``lab``, level 1 first, as written next to the
    solution (``# HINT n:`` lines, see :mod:`helpers.make_starters`). For a class, the hints
    of its methods, level by level. ``[]`` when none are written. ``numbered``: only the
    ``# HINT n:`` form, not the older unnumbered lines the starter already shows."""
    info = lab if isinstance(lab, LabInfo) else find_lab(lab)
    path = Path(reference(info).__file__)
    blocks = [b for b in solution_blocks(path.read_text(encoding="utf-8"), str(path))
              if (b.name == name or b.name.startswith(name + ".")) and not (numbered and is_legacy(b))]
    levels: list[str] = []
    for level in sorted({k for b in blocks for k in b.hints}):
        parts = []
        for b in blocks:
            text = " ".join(b.hints.get(level, []))
            if text:
                parts.append(f"{b.name}: {text}" if b.name != name else text)
        levels.append("\n".join(parts))
    return levels


def hint(lab, name: str, level: int | None = None) -> None:
    """Show the next hint for exercise ``name`` of ``lab``: each call shows one more level
    (1: where to look, 2: the plan in words, 3: the formula), then stays at the last.
    ``level`` shows that level instead (``level=1`` starts over).

    The levels you opened are remembered in this Python process only: nothing is recorded
    or sent anywhere, and the grader does not see them."""
    info = find_lab(lab)
    levels = hint_levels(info, name)
    if not levels:
        known = [n for n in names(info) if hint_levels(info, n)]
        text = f"No hints are written for {name!r} in {info.key}." + \
            (f" Exercises with hints: {', '.join(known)}." if known else "")
    else:
        key = (info.key, name)
        k = min(max(1, level if level is not None else _hints_shown.get(key, 0) + 1), len(levels))
        _hints_shown[key] = k
        title = f"Hint {k} of {len(levels)} for {name} ({info.key})"
        if len(levels) > 1 and k in HINT_NAMES:
            title += f": {HINT_NAMES[k]}"
        text = f"{title}\n{levels[k - 1]}"
        if k == len(levels):
            text += "\n(That was the last hint. The docstring's equation and the check's message say the rest.)"
        else:
            text += f'\n(Call hint("{info.key}", "{name}") again for the next one.)'
    print(text)
