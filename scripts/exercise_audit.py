"""Audit the exercises of every lab against the exercise contract (maintainers; tests use it).

    python -m scripts.exercise_audit            # every lab: a table, then each problem
    python -m scripts.exercise_audit lab05      # one lab

Per lab: the lines of solution code (non-blank, non-comment, and not trivial: not a bare
``return x``, ``pass``, ``else:``, a lone bracket), which must reach :data:`MIN_LINES`; the
hint levels each exercise has (``# HINT 1:`` .. ``# HINT 3:``: where to look, the plan, the
formula), which must be all three; and leaks: a line of solution code that appears, near
verbatim, anywhere in the generated starter (comments and docstrings included). A starter
says what to compute and where to read it, never the code. A solution line that only
restates a convention the docstring must give (a shape, a factor's definition) is marked
``# convention: <why>`` and not counted as a leak. Exit code 1 on any problem.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys

from helpers.labs import LabInfo, available_labs, find_lab
from helpers.make_starters import is_legacy, solution_blocks, starter_text

MIN_LINES = 25  # lines of solution code per lab (the exercise contract)
LEAK_RATIO = 0.85  # difflib similarity above which a starter line repeats a solution line
MIN_LEAK_CHARS = 16  # shorter code lines (``x = x + 1``) are too generic to count as leaks
TRIVIAL = re.compile(r"^(return\s+\w+|pass|else:|try:|\)|\]|\}|\),?|\],?|return|continue|break|"
                     r"(el)?if .*:|for .*:|with .*:|def .*:|class .*:)$")


def _normal(line: str) -> str:
    """A line without comment markers, quotes of a docstring, and spaces (for comparison)."""
    return re.sub(r"\s+", "", line.strip().lstrip("#").strip().strip('"').strip("'"))


def code_lines(block, leaks_only: bool = False) -> list[str]:
    """The block's lines of code that count: stripped, no comments, no trivial lines.
    ``leaks_only``: without the lines marked ``# convention: <why>``, a convention the
    docstring must state anyway (``f = 2 ** (len(vae.config.block_out_channels) - 1)``)."""
    out = []
    for line in block.code:
        if leaks_only and "# convention:" in line:
            continue
        s = line.split("  # ")[0].strip()
        if s and not s.startswith("#") and not TRIVIAL.match(s):
            out.append(s)
    return out


def leaks(info: LabInfo) -> list[tuple[str, str]]:
    """(solution line, starter line) pairs where the starter repeats the solution's code."""
    blocks = solution_blocks(info.solution_path.read_text(encoding="utf-8"))
    starter = [ln for ln in starter_text(info).splitlines()  # signatures repeat calls by design
               if _normal(ln) and not re.match(r"\s*(def|class)\s", ln)]
    found = []
    for b in blocks:
        for code in code_lines(b, leaks_only=True):
            c = _normal(code)
            core = re.sub(r"^(return|[\w.,\[\]]+=)", "", c)  # the expression, without `return` / `x =`
            if len(core) < MIN_LEAK_CHARS or c.startswith("raise") or not re.search(r"[-+*/%@\[(]", core):
                continue  # too short, an error to raise, or a bare name: not code a starter gives away
            for s_line in starter:
                s = _normal(s_line)
                m = difflib.SequenceMatcher(None, core, s, autojunk=False)
                if core in s or m.ratio() >= LEAK_RATIO or \
                        m.find_longest_match(0, len(core), 0, len(s)).size >= LEAK_RATIO * len(core):
                    found.append((code, s_line.strip()))
                    break
    return found


def audit(info: LabInfo) -> dict:
    blocks = solution_blocks(info.solution_path.read_text(encoding="utf-8"))
    lines = sum(len(code_lines(b)) for b in blocks)
    missing_hints = sorted({b.name for b in blocks if is_legacy(b) or sorted(b.hints) != [1, 2, 3]})
    no_todo = sorted({b.name for b in blocks if not b.todo})
    problems = []
    if lines < MIN_LINES:
        problems.append(f"{lines} lines of solution code (at least {MIN_LINES})")
    if missing_hints:
        problems.append(f"without the three hint levels: {', '.join(missing_hints)}")
    if no_todo:
        problems.append(f"without a TODO line: {', '.join(no_todo)}")
    found = leaks(info)
    for code, where in found:
        problems.append(f"starter repeats solution code {code!r} in: {where!r}")
    return {"lab": info.key, "lines": lines, "exercises": len(blocks), "leaks": len(found),
            "missing_hints": missing_hints, "problems": problems}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labs", nargs="*")
    args = parser.parse_args(argv)
    infos = [find_lab(x) for x in args.labs] if args.labs else available_labs()
    reports = [audit(i) for i in infos]
    print(f"{'lab':6s} {'lines':>5s} {'blocks':>6s} {'leaks':>5s}  hints missing")
    for r in reports:
        print(f"{r['lab']:6s} {r['lines']:5d} {r['exercises']:6d} {r['leaks']:5d}  {len(r['missing_hints'])}")
    bad = [r for r in reports if r["problems"]]
    for r in bad:
        print(f"\n{r['lab']}:")
        for p in r["problems"]:
            print(f"  - {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
