"""Rebuild the generated notebooks from the lab pages (maintainers).

    python -m scripts.build_solutions              # every lab with a page labs/NN_*.md
    python -m scripts.build_solutions 01 lab03     # some labs
    python -m scripts.build_solutions --no-execute # only notebooks/ (no solutions/)

For each lab page ``labs/NN_slug.md`` (THE source):

1. ``notebooks/NN_slug.ipynb`` <- the page, via ``jupytext --update`` (cell ids kept, so
   diffs stay small), outputs stripped: what learners open.
2. ``solutions/NN_slug.ipynb`` <- that notebook executed top to bottom with
   ``DIFFUSION_LABS_MODE=solutions`` (every exercise uses the reference), outputs kept:
   what a reader browses without running anything.

Run ``python -m helpers.make_starters`` first if a solution module changed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def pages(selected: list[str]) -> list[Path]:
    """Lab pages, all or those whose number matches ``selected`` ("01", "lab01", "1")."""
    found = sorted((ROOT / "labs").glob("[0-9][0-9]_*.md"))
    if not selected:
        return found
    nums = {int("".join(c for c in s if c.isdigit())) for s in selected}
    return [p for p in found if int(p.name[:2]) in nums]


def strip_outputs(nb) -> bool:
    """Remove outputs and execution counts in place; True if anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
    return changed


def build_notebook(page: Path) -> Path:
    """``labs/NN.md`` -> ``notebooks/NN.ipynb`` (inputs only)."""
    target = ROOT / "notebooks" / f"{page.stem}.ipynb"
    target.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--output", str(target), str(page)]
    if target.exists():
        cmd.insert(3, "--update")
    subprocess.run(cmd, check=True, cwd=ROOT)
    nb = nbformat.read(target, as_version=4)
    if strip_outputs(nb):
        nbformat.write(nb, target)
    return target


def run_notebook(notebook: Path, target: Path, timeout: int = 600, allow_errors: bool = False) -> None:
    """Execute ``notebook`` (nbclient, the python3 kernel, offline, figures kept inline) with the
    environment as it is, and write it with its outputs to ``target`` (also when a cell raised
    and ``allow_errors`` is False: the error is then raised after writing)."""
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    os.environ.pop("MPLBACKEND", None)  # let the kernel's inline backend capture figures
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
    finally:
        nbformat.write(nb, target)


def execute(notebook: Path, timeout: int = 600) -> Path:
    """Run ``notebook`` with the references; write ``solutions/<name>.ipynb`` with outputs."""
    target = ROOT / "solutions" / notebook.name
    target.parent.mkdir(exist_ok=True)
    os.environ["DIFFUSION_LABS_MODE"] = "solutions"
    run_notebook(notebook, target, timeout)
    return target


def refresh_prose(notebook: Path) -> Path:
    """Copy the markdown cells of ``notebook`` into its solved notebook, keeping the outputs.
    Only when every code cell is unchanged (prose edits need no re-execution); else raise."""
    target = ROOT / "solutions" / notebook.name
    nb, solved = nbformat.read(notebook, as_version=4), nbformat.read(target, as_version=4)
    kinds = lambda n: [c.cell_type for c in n.cells]  # noqa: E731
    same_code = all(a.source == b.source for a, b in zip(nb.cells, solved.cells) if a.cell_type == "code")
    if kinds(nb) != kinds(solved) or not same_code:
        raise SystemExit(f"{target.relative_to(ROOT)}: code cells changed; execute it (drop --prose)")
    for a, b in zip(nb.cells, solved.cells):
        if a.cell_type == "markdown":
            b.source = a.source
    nbformat.write(solved, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.build_solutions", description=__doc__.splitlines()[0])
    p.add_argument("labs", nargs="*", help="lab numbers (default: all pages)")
    p.add_argument("--no-execute", action="store_true", help="only regenerate notebooks/")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--prose", action="store_true",
                   help="only copy changed markdown into solutions/ (code cells must be unchanged)")
    args = p.parse_args(argv)
    todo = pages(args.labs)
    if not todo:
        print("no lab pages found", file=sys.stderr)
        return 1
    for page in todo:
        nb = build_notebook(page)
        print(f"{page.relative_to(ROOT)} -> {nb.relative_to(ROOT)}")
        if args.prose:
            print(f"  prose -> {refresh_prose(nb).relative_to(ROOT)}")
        elif not args.no_execute:
            t0 = time.perf_counter()
            out = execute(nb, args.timeout)
            print(f"  executed -> {out.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
