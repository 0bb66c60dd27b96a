"""Generate the learners' exercise files from the reference solutions.

    python -m helpers.make_starters            # write starters/<slug>.py for every lab
    python -m helpers.make_starters lab01 03   # only these labs
    python -m helpers.make_starters --check    # exit 1, with a diff, if any is out of date

In ``helpers/solutions/<slug>.py`` each exercise body is written as::

    def add_noise(x0, noise, t, abar):
        \"\"\"docstring with the equation\"\"\"
        # BEGIN SOLUTION
        # TODO: what to compute and where to read it (never the code)
        # HINT 1: where to look (the paper's equation, the diffusers function and its lines)
        # HINT 2: the plan in words
        # HINT 3: the formula
        ...reference code...
        # END SOLUTION

and the starter gets, at the block's indentation, the TODO lines only::

        # TODO: what to compute and where to read it (never the code)
        # Stuck? hint("lab01", "add_noise") in the notebook shows the next hint.
        raise NotImplementedError("TODO(lab01): add_noise")

The numbered hints stay out of the starter: ``helpers.exercise.hint(lab, name)`` reads them
from the solution module (:func:`solution_blocks`) and shows one more level per call. A
``# HINT n:`` line may continue on the following ``# HINT n:`` lines. The older form,
unnumbered ``# HINT: text`` lines, is copied into the starter as ``# TODO: text`` (and is
the only hint level); no lab uses it now (scripts/exercise_audit.py rejects it), but a
lab written elsewhere in that form still builds.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers.labs import LabInfo, available_labs, find_lab, repo_root

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
HINT = re.compile(r"^[ \t]*# HINT:[ \t]?(?P<text>.*)$")  # the older form: shown in the starter
TODO = re.compile(r"^[ \t]*# TODO:[ \t]?(?P<text>.*)$")
LEVEL = re.compile(r"^[ \t]*# HINT (?P<level>[1-9]):[ \t]?(?P<text>.*)$")
DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async[ \t]+)?(?:def|class)[ \t]+(?P<name>\w+)")


class MarkerError(ValueError):
    """Unmatched or nested ``# BEGIN SOLUTION`` / ``# END SOLUTION`` markers."""


def _enclosing(lines: list[str], i: int, indent: str) -> str:
    """Qualified name of the def/class enclosing line ``i`` (``Class.method``)."""
    parts, level = [], len(indent.expandtabs())
    for line in reversed(lines[:i]):
        m = DEF.match(line)
        if m and len(m.group("indent").expandtabs()) < level:
            parts.append(m.group("name"))
            level = len(m.group("indent").expandtabs())
            if level == 0:
                break
    return ".".join(reversed(parts)) or "<module>"


@dataclass
class Block:
    """One ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block of a solution module."""

    name: str  # the enclosing def/class, qualified ("LoRALinear.forward")
    indent: str
    todo: list[str] = field(default_factory=list)  # shown in the starter
    hints: dict[int, list[str]] = field(default_factory=dict)  # level -> lines; hint() only
    code: list[str] = field(default_factory=list)  # the solution's lines, comments included
    start: int = 0  # line index of BEGIN
    end: int = 0  # line index of END


def solution_blocks(source: str, filename: str = "<solution>") -> list[Block]:
    """Every solution block of ``source``, in order. Raises :class:`MarkerError` (with
    ``filename`` and line number) on nested or unmatched markers."""
    lines = source.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if END.match(lines[i]):
            raise MarkerError(f"{filename}:{i + 1}: '# END SOLUTION' without a matching '# BEGIN SOLUTION'")
        m = BEGIN.match(lines[i])
        if not m:
            i += 1
            continue
        block = Block(_enclosing(lines, i, m.group("indent")), m.group("indent"), start=i)
        i += 1
        while i < len(lines):  # the leading comments: TODO, HINT n and the older HINT lines
            if t := TODO.match(lines[i]):
                block.todo.append(t.group("text").rstrip())
            elif h := LEVEL.match(lines[i]):
                block.hints.setdefault(int(h.group("level")), []).append(h.group("text").rstrip())
            elif h := HINT.match(lines[i]):
                block.todo.append(h.group("text").rstrip())
                block.hints.setdefault(1, []).append(h.group("text").rstrip())
            else:
                break
            i += 1
        while i < len(lines) and not END.match(lines[i]):
            if BEGIN.match(lines[i]):
                raise MarkerError(f"{filename}:{i + 1}: nested '# BEGIN SOLUTION' (the block "
                                  f"opened at line {block.start + 1} is not closed)")
            block.code.append(lines[i])
            i += 1
        if i == len(lines):
            raise MarkerError(f"{filename}:{block.start + 1}: '# BEGIN SOLUTION' without a matching '# END SOLUTION'")
        block.end = i
        blocks.append(block)
        i += 1
    return blocks


def strip_solutions(source: str, lab_key: str, filename: str = "<solution>") -> str:
    """``source`` with every solution block replaced by its ``# TODO:`` lines, a pointer to
    ``hint(...)`` when the block has numbered hints, and a
    ``raise NotImplementedError("TODO(<lab_key>): <name>")``. Raises :class:`MarkerError`
    (with ``filename`` and line number) on nested or unmatched markers."""
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    for b in solution_blocks(source, filename):
        out += lines[i:b.start]
        out += [f"{b.indent}# TODO: {t}\n" if t else f"{b.indent}# TODO:\n" for t in b.todo]
        if b.hints and not is_legacy(b):
            function = b.name.split(".")[0]
            out.append(f'{b.indent}# Stuck? hint("{lab_key}", "{function}") in the notebook shows the next hint.\n')
        out.append(f'{b.indent}raise NotImplementedError("TODO({lab_key}): {b.name}")\n')
        i = b.end + 1
    return "".join(out + lines[i:])


def is_legacy(block: Block) -> bool:
    """Whether the block's only hints are the older unnumbered ``# HINT:`` lines."""
    return list(block.hints) == [1] and block.hints[1] == block.todo


def header(info: LabInfo) -> str:
    return (
        f"# Your exercise file for {info.name}.\n"
        f"#\n"
        f"# Fill in each TODO (replace the `raise NotImplementedError`), save, and run\n"
        f'# `check("{info.key}")` in notebooks/{info.stem}.ipynb (edits are picked up without\n'
        f"# restarting the kernel) or from a shell:\n"
        f'#     python -c "from helpers.exercise import check; check(\'{info.key}\')"\n'
        f'# Stuck? hint("{info.key}", "<function name>") shows one more hint per call.\n'
        f"# Until a function passes its check, the notebook uses the reference.\n"
        f"\n"
    )


def starter_text(info: LabInfo) -> str:
    """The full text of ``starters/<slug>.py`` for ``info``."""
    path = info.solution_path
    rel = path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path
    return header(info) + strip_solutions(path.read_text(encoding="utf-8"), info.key, str(rel))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.make_starters", description=__doc__.splitlines()[0])
    p.add_argument("labs", nargs="*", help="labs to write (default: all), e.g. lab01 03")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 with a diff if any starter is stale")
    p.add_argument("--out", type=Path, default=repo_root() / "starters", help="output folder (default: starters/)")
    args = p.parse_args(argv)
    stale = 0
    args.out.mkdir(parents=True, exist_ok=True) if not args.check else None
    labs = [find_lab(x) for x in args.labs] if args.labs else available_labs()
    for info in labs:
        target = args.out / f"{info.slug}.py"
        text = starter_text(info)
        old = target.read_text(encoding="utf-8") if target.exists() else ""
        if old == text:
            continue
        if args.check:
            stale += 1
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), f"{target} (committed)", f"{target} (generated)"))
        else:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    slugs = {i.slug for i in available_labs()}
    orphans = [p for p in sorted(args.out.glob("lab*.py")) if p.stem not in slugs] if args.out.exists() else []
    for p in orphans:
        print(f"{p}: no solution module helpers/solutions/{p.name} (remove it?)")
    if args.check and (stale or orphans):
        print(f"{stale} starter(s) out of date, {len(orphans)} orphan(s): run `python -m helpers.make_starters`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
