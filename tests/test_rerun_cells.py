"""scripts/rerun_cells.py fails a notebook whose cell breaks when run again after Run All."""
from __future__ import annotations

import nbformat
import pytest

from scripts.rerun_cells import rerun


def _notebook(tmp_path, *cells):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_global_overwritten_by_a_later_cell_fails(tmp_path):
    path = _notebook(tmp_path, "targets = [1, 2, 3]", "assert len(targets) == 3, 'targets overwritten'",
                     "targets = ['unet']")
    with pytest.raises(RuntimeError, match=r"cell 1 .* second run:[\s\S]*targets overwritten"):
        rerun(path, timeout=60)


def test_a_notebook_whose_cells_rerun_passes(tmp_path):
    path = _notebook(tmp_path, "xs = [1, 2, 3]", "total = sum(xs)\nassert total == 6", "ys = [x * 2 for x in xs]")
    first, second = rerun(path, timeout=60)
    assert first >= 0 and second >= 0
