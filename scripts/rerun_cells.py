"""Run each notebook top to bottom, then run every code cell a second time in the same kernel.

Learners re-run cells after Run All (to look again, to change a number): a cell that depends
on a global a later cell overwrote fails then, though nbval's single pass is green. This
script catches that: the second pass goes from the last cell to the first, so each cell runs
again in the state Run All left (plus the re-runs of the cells below it), not after its own
predecessors have just reset what it needs.

    python -m scripts.rerun_cells                       # every notebook in notebooks/
    python -m scripts.rerun_cells notebooks/08_lora.ipynb

Executes as learners get it (pristine starters, ``auto`` mode, unless DIFFUSION_LABS_MODE is
set), with the notebook's folder as the working directory. Prints one line per notebook
(first pass and second pass seconds) and, on failure, the cell, its pass and the error; exit
code 1 if any notebook failed.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


def rerun(path: Path, timeout: int = 300) -> tuple[float, float]:
    """Execute ``path`` once, then each code cell again, last to first, in one kernel.
    Returns the seconds of both passes; raises RuntimeError naming the cell on failure."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    seconds = []
    with client.setup_kernel():
        for attempt in ("first", "second"):
            start = time.perf_counter()
            order = list(enumerate(nb.cells))
            for index, cell in (order if attempt == "first" else order[::-1]):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as exc:
                    head = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                    error = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # no terminal colours in a log
                    raise RuntimeError(f"{path.name}: cell {index} ({head[:60]!r}) fails on the {attempt} run:\n"
                                       f"{error[-1500:]}") from None
            seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    failed = 0
    for path in paths:
        try:
            first, second = rerun(path, args.timeout)
            print(f"{path.name:34s} ok   first run {first:6.1f} s, every cell again, last to first, {second:6.1f} s", flush=True)
        except RuntimeError as exc:
            failed += 1
            print(f"{path.name:34s} FAIL {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
