"""Detect (and undo) a learner's monkeypatching of torch, the checker or the reference.

A learner's file runs in the same interpreter as the checks, so it can rebind what the
checks rely on: ``torch.allclose = lambda *a, **k: True``, ``_core.assert_close = ...``,
``ref.add_noise = my_add_noise``, ``ref.add_noise.__code__ = ...``, an in-place edit of a
tolerance table (``checks.TOL_XT[torch.float32]["atol"] = 1e9``), ``builtins.isinstance``,
``DDPMScheduler.add_noise``, or a new name in a check module's globals that shadows a
builtin. :class:`Snapshot` records, *before* the learner's file is loaded:

- every attribute of the critical modules (``builtins``, ``torch`` and its functional /
  linalg / fft / special / testing namespaces, ``math``, ``numpy``, ``json``, ``os``,
  the check, solution and core modules of the lab, ``helpers.exercise``, ``helpers.grade``,
  and every module those namespaces hold): its identity;
- for functions: the identity of ``__code__`` and the value of ``__defaults__`` /
  ``__kwdefaults__``;
- for containers (dict, list, tuple, set) and tensors held by the helper modules: their
  contents (structurally; tensors by shape, dtype, version counter and bytes);
- the attributes of ``torch.Tensor``, ``torch.Generator`` and of every class the helper
  modules hold (with their bases, e.g. ``DDPMScheduler``, ``CheckFailed``);
- for the helper modules: their set of names (an added name can shadow a builtin).

:meth:`Snapshot.changes` lists what differs now (``["torch.allclose"]``);
:meth:`Snapshot.restore` puts the recorded objects back (containers are restored in place
from a deep copy). The grader's worker verifies after the learner's file loads and after
every check, fails the offending row with "submission modified torch/the checker: ...",
restores, and verifies again before going on.

Limits (stated in the README): this guards Python-level patching, the way a learner would
cheat or break things by accident. Code running in-process can still corrupt memory through
``ctypes`` or forge the worker's report; grade untrusted submissions in a container.
"""
from __future__ import annotations

import copy
import hashlib
import types
from typing import Any, Iterable

import torch

_MAX_ITEMS = 20000  # containers larger than this are compared by identity only
_MAX_TENSOR = 1 << 20  # tensors with more elements are compared by version counter only

# torch namespaces whose attributes a check may call (besides the modules the checks hold).
TORCH_MODULES = ("torch", "torch.nn.functional", "torch.linalg", "torch.fft", "torch.special",
                 "torch.testing", "torch.random", "torch.nn.init")
STDLIB_MODULES = ("builtins", "math", "operator", "json", "os", "os.path", "numpy", "linecache",
                  "traceback", "time", "hashlib")


def _fingerprint(value: Any, depth: int = 0) -> Any:
    """A comparable summary of ``value``: structural for containers and tensors, identity
    (plus code and defaults for functions) for everything else."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, torch.Tensor):
        fp = ("tensor", id(value), tuple(value.shape), str(value.dtype), str(value.device), value._version)
        if value.device.type == "cpu" and value.numel() <= _MAX_TENSOR and value.layout == torch.strided:
            try:
                data = value.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                fp += (hashlib.sha1(data).hexdigest(),)
            except (RuntimeError, TypeError, ValueError):
                pass
        return fp
    if isinstance(value, types.FunctionType):
        return ("function", id(value), id(value.__code__),
                _fingerprint(value.__defaults__, depth + 1), _fingerprint(value.__kwdefaults__, depth + 1))
    if depth < 6 and isinstance(value, (dict, list, tuple, set, frozenset)) and len(value) <= _MAX_ITEMS:
        if isinstance(value, dict):
            items = tuple((_fingerprint(k, depth + 1), _fingerprint(v, depth + 1)) for k, v in value.items())
        elif isinstance(value, (set, frozenset)):
            items = tuple(sorted(repr(_fingerprint(v, depth + 1)) for v in value))
        else:
            items = tuple(_fingerprint(v, depth + 1) for v in value)
        return (type(value).__name__, id(value) if depth == 0 else None, items)
    return ("object", id(value))


class _Entry:
    """One recorded attribute: ``owner.name`` was ``value`` with fingerprint ``fp``."""

    __slots__ = ("owner", "label", "name", "value", "fp", "code", "defaults", "kwdefaults", "copy")

    def __init__(self, owner, label: str, name: str, value: Any, deep: bool):
        self.owner, self.label, self.name, self.value = owner, label, name, value
        self.fp = _fingerprint(value) if deep else ("object", id(value)) if not isinstance(
            value, types.FunctionType) else _fingerprint(value)
        self.code = getattr(value, "__code__", None) if isinstance(value, types.FunctionType) else None
        self.defaults = value.__defaults__ if self.code is not None else None
        self.kwdefaults = value.__kwdefaults__ if self.code is not None else None
        self.copy = None
        if deep and isinstance(value, (dict, list, set)) and len(value) <= _MAX_ITEMS:
            try:
                self.copy = copy.deepcopy(value)
            except Exception:  # noqa: BLE001 - not restorable in place; still detected
                self.copy = None


def _namespace(owner) -> dict:
    try:
        return vars(owner)
    except TypeError:
        return {}


class Snapshot:
    """What the checks rely on, recorded now; see the module docstring."""

    def __init__(self, helper_modules: Iterable[types.ModuleType],
                 other_modules: Iterable[types.ModuleType] = ()):
        self.entries: list[_Entry] = []
        self.names: dict[int, tuple[Any, str, frozenset]] = {}  # helper modules' name sets
        seen_owners: set[int] = set()
        helpers_ = [m for m in helper_modules if m is not None]
        modules = list(other_modules)
        classes: list[type] = [torch.Tensor, torch.Generator]
        for m in helpers_:
            for v in list(vars(m).values()):
                if isinstance(v, types.ModuleType):
                    modules.append(v)
                elif isinstance(v, type):
                    classes.extend(c for c in v.__mro__ if c is not object)
        for m in helpers_:
            self._record(m, m.__name__, deep=True, seen=seen_owners)
            self.names[id(m)] = (m, m.__name__, frozenset(vars(m)))
        for m in modules:
            self._record(m, getattr(m, "__name__", type(m).__name__), deep=False, seen=seen_owners)
        for c in classes:
            self._record(c, f"{c.__module__}.{c.__qualname__}", deep=False, seen=seen_owners)

    def _record(self, owner, label: str, deep: bool, seen: set[int]) -> None:
        if id(owner) in seen:
            return
        seen.add(id(owner))
        for name, value in list(_namespace(owner).items()):
            if name in ("__dict__", "__weakref__", "__builtins__", "__loader__", "__spec__", "__cached__"):
                continue
            if isinstance(owner, types.ModuleType) and name == "__warningregistry__":
                continue
            self.entries.append(_Entry(owner, label, name, value, deep and not isinstance(value, type)))

    # ------------------------------------------------------------------ verify / restore

    def _changed(self, e: _Entry) -> bool:
        ns = _namespace(e.owner)
        if e.name not in ns or ns[e.name] is not e.value:
            return True
        if e.code is not None and (e.value.__code__ is not e.code or e.value.__defaults__ is not e.defaults
                                   or e.value.__kwdefaults__ is not e.kwdefaults):
            return True
        if e.fp[0] in ("object",):
            return False
        return _fingerprint(e.value) != e.fp

    def changes(self) -> list[str]:
        """Dotted names of what differs from the snapshot (empty: all intact)."""
        out = [f"{e.label}.{e.name}" for e in self.entries if self._changed(e)]
        for m, label, names in self.names.values():
            added = sorted(set(vars(m)) - names - {"__warningregistry__"})
            out += [f"{label}.{n} (added)" for n in added]
        return out

    def restore(self) -> list[str]:
        """Put every changed entry back; returns what could not be restored."""
        for e in self.entries:
            if not self._changed(e):
                continue
            try:
                if e.code is not None:
                    e.value.__code__, e.value.__defaults__, e.value.__kwdefaults__ = e.code, e.defaults, e.kwdefaults
                if _namespace(e.owner).get(e.name, _MISSING) is not e.value:
                    if isinstance(e.owner, type):
                        type.__setattr__(e.owner, e.name, e.value)
                    else:
                        setattr(e.owner, e.name, e.value)
                if e.copy is not None and _fingerprint(e.value) != e.fp:
                    fresh = copy.deepcopy(e.copy)
                    if isinstance(e.value, dict):
                        e.value.clear()
                        e.value.update(fresh)
                    elif isinstance(e.value, list):
                        e.value[:] = fresh
                    elif isinstance(e.value, set):
                        e.value.clear()
                        e.value.update(fresh)
            except Exception:  # noqa: BLE001 - reported by the re-check below
                pass
        for m, _label, names in self.names.values():
            for n in set(vars(m)) - names - {"__warningregistry__"}:
                try:
                    delattr(m, n)
                except Exception:  # noqa: BLE001
                    pass
        return self.changes()


_MISSING = object()


def snapshot_for(check_module: types.ModuleType, solution_module: types.ModuleType,
                 extra: Iterable[types.ModuleType] = ()) -> Snapshot:
    """The snapshot the grader takes for one lab: its check and solution modules, the core
    and runner modules, ``extra`` (the worker's own modules), torch and the stdlib."""
    import importlib
    import sys

    helper_modules = [check_module, solution_module]
    for name in ("helpers.checks._core", "helpers.exercise", "helpers.labs"):
        helper_modules.append(importlib.import_module(name))
    helper_modules += list(extra)
    others = [sys.modules[n] for n in TORCH_MODULES + STDLIB_MODULES if n in sys.modules]
    others.append(torch._C._VariableFunctions)  # type: ignore[attr-defined]
    uniq = list({id(m): m for m in helper_modules}.values())
    return Snapshot(uniq, others)
