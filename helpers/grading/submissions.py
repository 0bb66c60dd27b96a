"""A class's submissions folder -> one folder of exercise files per learner.

Each entry of the submissions folder is one learner: a folder (their ``starters/``, the
files directly in it or anywhere below, e.g. ``alice/starters/lab01_forward_noise.py``) or a
``.zip`` of it. The learner's name is the folder's name or the zip's stem. From a zip only
the members named like a lab's exercise file are read, each at most 5 MB, and written under a
fresh name: no path from the archive is ever used (no zip-slip), and a zip bomb costs at
most that much per lab.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILE_BYTES = 5 << 20


@dataclass
class Submission:
    """One learner: ``name``, where it came from, and ``files[slug]`` -> path (or absent)."""

    name: str
    source: str
    files: dict[str, Path] = field(default_factory=dict)
    problem: str = ""  # why the whole submission could not be read (a bad zip, ...)
    notes: dict[str, str] = field(default_factory=dict)  # slug -> why that file was not taken


def safe_name(name: str) -> str:
    """A file-name-safe learner name (used for ``feedback/<name>.md``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "learner"
    return s[:100]


def _find(folder: Path, filename: str) -> Path | None:
    direct = folder / filename
    if direct.is_file():
        return direct
    found = sorted((p for p in folder.rglob(filename) if p.is_file() and "__MACOSX" not in p.parts),
                   key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def _from_zip(path: Path, slugs: list[str], dest: Path, sub: Submission) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and "__MACOSX" not in m.filename]
            for slug in slugs:
                want = f"{slug}.py"
                hits = sorted((m for m in members if m.filename.replace("\\", "/").rsplit("/", 1)[-1] == want),
                              key=lambda m: (m.filename.count("/"), m.filename))
                if not hits:
                    continue
                m = hits[0]
                with zf.open(m) as fh:
                    data = fh.read(MAX_FILE_BYTES + 1)
                if m.file_size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
                    sub.notes[slug] = f"{m.filename} in the zip is larger than {MAX_FILE_BYTES >> 20} MB"
                    continue
                dest.mkdir(parents=True, exist_ok=True)
                out = dest / want
                out.write_bytes(data)
                sub.files[slug] = out
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
        sub.problem = f"could not read the zip {path.name}: {type(exc).__name__}: {exc}"


def discover(submissions: str | Path, slugs: list[str], scratch: Path) -> list[Submission]:
    """The learners of ``submissions`` in name order; zips are extracted under ``scratch``."""
    root = Path(submissions)
    if not root.is_dir():
        raise FileNotFoundError(f"submissions folder not found: {root}")
    subs: list[Submission] = []
    taken: set[str] = set()
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        is_zip = entry.is_file() and entry.suffix.lower() == ".zip"
        if not (entry.is_dir() or is_zip):
            continue
        name = safe_name(entry.stem if is_zip else entry.name)
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        sub = Submission(name, str(entry))
        if is_zip:
            _from_zip(entry, slugs, scratch / name, sub)
        else:
            for slug in slugs:
                p = _find(entry, f"{slug}.py")
                if p is not None:
                    sub.files[slug] = p
        subs.append(sub)
    return subs
