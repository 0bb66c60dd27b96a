"""Show the source of the INSTALLED library, so a lab reads the code that actually runs.

    show_source(DDPMScheduler.add_noise)                                  # the whole method
    show_source(DDPMScheduler.__init__, start="if trained_betas", stop="self.alphas_cumprod =")

Lines are numbered as in the file, under a header with the file's path and the library
version, so a learner can open the same lines in an editor. Slicing by text markers (not by
line numbers) keeps a page working when diffusers moves code around; a marker that is not
found falls back to the whole object, with a note.
"""
from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path

__all__ = ["source_lines", "show_source"]


def _where(obj) -> tuple[str, str]:
    """("diffusers/schedulers/scheduling_ddpm.py", "diffusers 0.42.1")."""
    obj = inspect.unwrap(obj)  # decorated methods (diffusers' register_to_config) live elsewhere
    path = Path(inspect.getsourcefile(obj) or "?")
    package = (getattr(inspect.getmodule(obj), "__name__", "") or "").split(".")[0]
    try:
        version = f"{package} {importlib.metadata.version(package)}"
    except Exception:  # noqa: BLE001 - not an installed distribution
        version = package or "?"
    parts = path.parts
    short = "/".join(parts[parts.index(package):]) if package in parts else path.name
    return short, version


def source_lines(obj, start: str | None = None, stop: str | None = None) -> tuple[int, list[str], str]:
    """(first line number, lines, note) of ``obj``'s source, cut from the first line that
    contains ``start`` through the next line that contains ``stop`` (both included)."""
    lines, first = inspect.getsourcelines(obj)
    lines = [ln.rstrip("\n") for ln in lines]
    note = ""
    i = 0
    if start is not None:
        found = [k for k, ln in enumerate(lines) if start in ln]
        if found:
            i = found[0]
        else:
            note = f"(marker {start!r} not found in this version: showing everything)"
    j = len(lines) - 1
    if stop is not None and not note:
        found = [k for k, ln in enumerate(lines) if k >= i and stop in ln]
        if found:
            j = found[0]
        else:
            note = f"(marker {stop!r} not found in this version: showing to the end)"
    return first + i, lines[i:j + 1], note


def show_source(obj, start: str | None = None, stop: str | None = None) -> None:
    """Print ``obj``'s source (or the part from ``start`` to ``stop``) with file line numbers."""
    first, lines, note = source_lines(obj, start, stop)
    path, version = _where(obj)
    indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
    print(f"# {path}, lines {first}-{first + len(lines) - 1} ({version}) {note}".rstrip())
    for k, line in enumerate(lines):
        print(f"{first + k:5d} | {line[indent:]}")
