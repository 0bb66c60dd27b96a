"""scripts/claim_drift.py: a run's claims paired with the solved notebook's, moved and failed ones shown."""
from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from scripts import claim_drift


def notebook(cells_outputs):
    """A notebook whose code cells carry the given outputs (a list of outputs per cell)."""
    cells = [new_markdown_cell("# lab")]
    for outputs in cells_outputs:
        c = new_code_cell("pass")
        c.outputs = outputs
        cells.append(c)
    return new_notebook(cells=cells)


def ok(*lines):
    return new_output("stream", name="stdout", text="".join(f"\N{CHECK MARK} {line}\n" for line in lines) + "other text\n")


def failed(line):
    return new_output("error", ename="ClaimError", traceback=[],
                      evalue=f"\x1b[0mthis claim of the lab does not hold on this run: {line}")


def test_claims_parsed_per_cell_in_order():
    nb = notebook([[ok("a holds | x=1", "b holds | y=2.5")], [], [failed("c holds | z=0.3")]])
    assert claim_drift.claims(nb) == {(0, 0): ("ok", "a holds", "x=1"), (0, 1): ("ok", "b holds", "y=2.5"),
                                      (2, 0): ("FAILED", "c holds", "z=0.3")}


def test_compare_shows_moved_failed_and_not_reached(tmp_path, capsys):
    ref = notebook([[ok("a holds | x=1", "b holds | y=2.5")], [ok("c holds | z=0.3")], [ok("d holds")]])
    run = notebook([[ok("a holds | x=1", "b holds | y=2.6")], [failed("c holds | z=0.9")], []])
    (tmp_path / "ref").mkdir(), (tmp_path / "run").mkdir()
    nbformat.write(ref, tmp_path / "ref" / "01_x.ipynb")
    nbformat.write(run, tmp_path / "run" / "01_x.ipynb")
    lines, n_failed = claim_drift.compare(tmp_path / "run" / "01_x.ipynb", tmp_path / "ref" / "01_x.ipynb")
    text = "\n".join(lines)
    assert n_failed == 1
    assert "1 unchanged, 1 failed" in lines[0]
    assert "moved (cell 0): b holds" in text and "2.5->2.6" in text
    assert "FAILED (cell 1): c holds" in text and "0.3->0.9" in text
    assert "NOT REACHED (cell 2): d holds" in text
    assert claim_drift.main([str(tmp_path / "run"), "--reference", str(tmp_path / "ref")]) == 1
    assert "b holds" in capsys.readouterr().out
    nbformat.write(ref, tmp_path / "run" / "01_x.ipynb")
    assert claim_drift.main([str(tmp_path / "run"), "--reference", str(tmp_path / "ref")]) == 0
    assert "4 claims here, 4 in the reference, 4 unchanged, 0 failed" in capsys.readouterr().out


def test_onednn_off_switch():
    """scripts/onednn_off on PYTHONPATH switches oneDNN off in every new process, only with DL_PERTURB set."""
    import os
    import subprocess
    import sys

    from helpers import labs

    root = labs.repo_root()
    probe = [sys.executable, "-c", "import torch; print(torch.backends.mkldnn.enabled)"]
    env = {k: v for k, v in os.environ.items() if k not in ("DL_PERTURB", "PYTHONPATH")}
    env["PYTHONPATH"] = str(root / "scripts" / "onednn_off")
    off = subprocess.run(probe, env={**env, "DL_PERTURB": "1"}, capture_output=True, text=True, check=True)
    on = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    assert off.stdout.strip() == "False" and on.stdout.strip() == "True"
