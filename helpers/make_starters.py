"""Generate the learners' exercise files from the reference solutions.

    python -m helpers.make_starters            # write starters/<slug>.py for every lab
    python -m helpers.make_starters --check    # exit 1, with a diff, if any is out of date

In ``helpers/solutions/<slug>.py`` each exercise body is written as::

    def add_noise(x0, noise, t, abar):
        \"\"\"docstring with the equation\"\"\"
        # BEGIN SOLUTION
        # HINT: abar_t = abar[t], reshaped to (B, 1, ..., 1)
        ...reference code...
        # END SOLUTION

and the starter gets, at the block's indentation::

        # TODO: abar_t = abar[t], reshaped to (B, 1, ..., 1)
        raise NotImplementedError("TODO(lab01): add_noise")
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

from helpers.labs import LabInfo, available_labs, repo_root

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[ \t]*$")
END = re.compile(r"^[ \t]*# END SOLUTION[ \t]*$")
HINT = re.compile(r"^[ \t]*# HINT:[ \t]?(?P<text>.*)$")
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


def strip_solutions(source: str, lab_key: str, filename: str = "<solution>") -> str:
    """``source`` with every solution block replaced by its hints (as ``# TODO:``) and a
    ``raise NotImplementedError("TODO(<lab_key>): <name>")``. Raises :class:`MarkerError`
    (with ``filename`` and line number) on nested or unmatched markers."""
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = BEGIN.match(line.rstrip("\r\n"))
        if END.match(line.rstrip("\r\n")):
            raise MarkerError(f"{filename}:{i + 1}: '# END SOLUTION' without a matching '# BEGIN SOLUTION'")
        if not m:
            out.append(line)
            i += 1
            continue
        start, indent = i, m.group("indent")
        name = _enclosing(lines, i, indent)
        i += 1
        hints = []
        while i < len(lines) and (h := HINT.match(lines[i].rstrip("\r\n"))):
            hints.append(h.group("text").rstrip())
            i += 1
        while i < len(lines) and not END.match(lines[i].rstrip("\r\n")):
            if BEGIN.match(lines[i].rstrip("\r\n")):
                raise MarkerError(f"{filename}:{i + 1}: nested '# BEGIN SOLUTION' (the block "
                                  f"opened at line {start + 1} is not closed)")
            i += 1
        if i == len(lines):
            raise MarkerError(f"{filename}:{start + 1}: '# BEGIN SOLUTION' without a matching '# END SOLUTION'")
        i += 1  # skip END
        out += [f"{indent}# TODO: {h}\n" if h else f"{indent}# TODO:\n" for h in hints]
        out.append(f'{indent}raise NotImplementedError("TODO({lab_key}): {name}")\n')
    return "".join(out)


def header(info: LabInfo) -> str:
    return (
        f"# Your exercise file for {info.name}.\n"
        f"#\n"
        f"# Generated from helpers/solutions/{info.slug}.py by `python -m helpers.make_starters`.\n"
        f"# Fill in each TODO (replace the `raise NotImplementedError`), save, and run\n"
        f'# `check("{info.key}")` in notebooks/{info.stem}.ipynb: edits are picked up without\n'
        f"# restarting the kernel. Until a function passes its check, the notebook uses the reference.\n"
        f"\n"
    )


def starter_text(info: LabInfo) -> str:
    """The full text of ``starters/<slug>.py`` for ``info``."""
    path = info.solution_path
    rel = path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path
    return header(info) + strip_solutions(path.read_text(encoding="utf-8"), info.key, str(rel))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.make_starters", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="do not write; exit 1 with a diff if any starter is stale")
    p.add_argument("--out", type=Path, default=repo_root() / "starters", help="output folder (default: starters/)")
    args = p.parse_args(argv)
    stale = 0
    args.out.mkdir(parents=True, exist_ok=True) if not args.check else None
    labs = available_labs()
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
    slugs = {i.slug for i in labs}
    orphans = [p for p in sorted(args.out.glob("lab*.py")) if p.stem not in slugs] if args.out.exists() else []
    for p in orphans:
        print(f"{p}: no solution module helpers/solutions/{p.name} (remove it?)")
    if args.check and (stale or orphans):
        print(f"{stale} starter(s) out of date, {len(orphans)} orphan(s): run `python -m helpers.make_starters`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
