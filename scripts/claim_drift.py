"""How far the labs' claims move on another machine (maintainers).

    python -m scripts.claim_drift DIR                        # executed notebooks in DIR vs solutions/
    python -m scripts.claim_drift --execute DIR [NB ...]     # execute notebooks here into DIR, then compare

Every ``expect(...)`` prints ``✓ claim | name=value, ...`` or raises ``ClaimError`` ("this claim of
the lab does not hold on this run: claim | ..."). A lab's claims pass under nbval on the machine
that built ``solutions/``; this tool shows what the same claims measured elsewhere: another CPU
(other float rounding), oneDNN off (the convolution path of Apple-silicon wheels), a GPU (carry
back the notebooks that ``scripts/gpu_nbval.sh --save`` executed). Claims are paired with the
solved notebook's by code cell and order within it (the same notebook source runs on both
machines). Per notebook it prints the claims that failed or were not reached, those whose
numbers moved, with both runs' numbers, and how many are unchanged; a claim whose numbers move
near its threshold is one to make sturdier. Exit status 1 when a claim failed, else 0.

``--execute`` runs each notebook (nbclient, this interpreter's kernel, the learners' default
mode, errors allowed so every claim gets its chance) with the environment as it is: set it up
for the machine to imitate first (``DL_PERTURB=1 PYTHONPATH=scripts/onednn_off``: oneDNN off in
every process, see scripts/onednn_off/sitecustomize.py).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHECK = "\N{CHECK MARK} "
FAILED = "this claim of the lab does not hold on this run: "
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def claims(nb) -> dict[tuple[int, int], tuple[str, str, str]]:
    """``(code cell index, order in the cell) -> (status, claim, numbers)``; status "ok" or "FAILED"."""
    out, code = {}, -1
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code += 1
        k = 0
        for o in cell.get("outputs", []):
            lines = []
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                lines = [("ok", line[len(CHECK):]) for line in o.get("text", "").splitlines() if line.startswith(CHECK)]
            elif o.get("output_type") == "error" and o.get("ename") == "ClaimError":
                value = ANSI.sub("", o.get("evalue", ""))
                lines = [("FAILED", value.split(FAILED, 1)[-1])]
            for status, text in lines:
                claim, _, numbers = text.partition(" | ")
                out[code, k] = (status, claim.strip(), numbers.strip())
                k += 1
    return out


def numbers(text: str) -> list[float]:
    """Every number in a claim's numbers text, in order."""
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]


def compare(run: Path, reference: Path) -> tuple[list[str], int]:
    """Report lines for one notebook and the number of failed claims."""
    mine, theirs = claims(nbformat.read(run, as_version=4)), claims(nbformat.read(reference, as_version=4))
    lines, same, failed = [], 0, 0
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if a is None:
            lines.append(f"- NOT REACHED (cell {key[0]}): {b[1]} | reference: {b[2]}")
            continue
        if a[0] == "FAILED":
            failed += 1
        if b is None:
            lines.append(f"- {a[0]}, not in the reference (cell {key[0]}): {a[1]} | {a[2]}")
        elif a[0] == "FAILED" or a[2] != b[2] or a[1] != b[1]:
            moved = [f"{x:.4g}->{y:.4g}" for x, y in zip(numbers(b[2]), numbers(a[2])) if x != y]
            tag = "FAILED" if a[0] == "FAILED" else "moved"
            lines.append(f"- {tag} (cell {key[0]}): {a[1]}\n    this run:  {a[2]}\n    reference: {b[2]}"
                         + (f"\n    changes:   {', '.join(moved)}" if moved else ""))
        else:
            same += 1
    head = f"## {run.stem}: {len(mine)} claims here, {len(theirs)} in the reference, {same} unchanged, {failed} failed"
    return [head, *lines, ""], failed


def execute(notebook: Path, target: Path, timeout: int) -> float:
    """Execute ``notebook`` (errors allowed) in the learners' default mode into ``target``; the seconds it took."""
    from scripts.build_solutions import run_notebook

    mode = os.environ.pop("DIFFUSION_LABS_MODE", None)
    t0 = time.perf_counter()
    try:
        run_notebook(notebook, target, timeout, allow_errors=True)
    finally:
        if mode is not None:
            os.environ["DIFFUSION_LABS_MODE"] = mode
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.claim_drift", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="folder of executed notebooks (written first with --execute)")
    p.add_argument("notebooks", nargs="*", type=Path, help="with --execute: notebooks to run (default: notebooks/*)")
    p.add_argument("--execute", action="store_true", help="execute the notebooks here into DIR first")
    p.add_argument("--reference", type=Path, default=ROOT / "solutions", help="solved notebooks (default solutions/)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell when executing")
    args = p.parse_args(argv)
    if args.execute:
        args.dir.mkdir(parents=True, exist_ok=True)
        for nb in args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb")):
            secs = execute(nb.resolve(), args.dir / nb.name, args.timeout)
            print(f"executed {nb.name} in {secs:.0f} s", file=sys.stderr)
    runs = sorted(args.dir.glob("*.ipynb"))
    if not runs:
        print(f"no executed notebooks in {args.dir}", file=sys.stderr)
        return 2
    total = 0
    for run in runs:
        ref = args.reference / run.name
        if not ref.exists():
            print(f"## {run.stem}: no reference {ref}\n")
            continue
        lines, failed = compare(run, ref)
        total += failed
        print("\n".join(lines))
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
