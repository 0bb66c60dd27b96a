"""The lab pages, notebooks and solved notebooks never drift apart.

labs/NN_x.md is the source; notebooks/NN_x.ipynb is its jupytext pairing, stored without
outputs; solutions/NN_x.ipynb is the notebook executed with the references, outputs kept.
(Executing the notebooks is nbval's job, in scripts/test.sh.)
"""
from __future__ import annotations


import jupytext
import nbformat
import pytest

from helpers import labs
from helpers.setup import COLAB_BOOTSTRAP

ROOT = labs.repo_root()
PAGES = sorted((ROOT / "labs").glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STEMS = sorted({p.stem for p in PAGES} | {p.stem for p in NOTEBOOKS})


def code(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def test_every_lab_with_a_solution_has_a_page_and_notebook():
    for info in labs.available_labs():
        assert info.page_path.exists(), f"{info.key}: page {info.page_path.relative_to(ROOT)} missing"
        assert info.notebook_path.exists(), f"{info.key}: notebook missing: jupytext --sync {info.page_path.relative_to(ROOT)}"


@pytest.mark.parametrize("stem", STEMS)
def test_page_and_notebook_are_paired(stem):
    assert (ROOT / "labs" / f"{stem}.md").exists(), f"notebooks/{stem}.ipynb has no labs/{stem}.md"
    assert (ROOT / "notebooks" / f"{stem}.ipynb").exists(), \
        f"labs/{stem}.md has no notebook: run `jupytext --sync labs/{stem}.md`"
    labs.find_lab(stem)  # named after a catalogued lab


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_equals_page(stem):
    page = jupytext.read(ROOT / "labs" / f"{stem}.md")
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    assert code(nb) == code(page), f"notebooks/{stem}.ipynb drifted from labs/{stem}.md: " \
                                   f"run `jupytext --sync labs/{stem}.md`"
    assert [c.cell_type for c in nb.cells] == [c.cell_type for c in page.cells]


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_has_no_outputs(stem):
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"notebooks/{stem}.ipynb stores outputs in cells {dirty}: strip them " \
                      "(python -m scripts.build_solutions --no-execute)"


@pytest.mark.parametrize("stem", STEMS)
def test_first_code_cell_is_the_colab_bootstrap(stem):
    page = jupytext.read(ROOT / "labs" / f"{stem}.md")
    assert code(page) and code(page)[0] == COLAB_BOOTSTRAP.strip(), \
        "the first code cell must be helpers.setup.COLAB_BOOTSTRAP, verbatim"


@pytest.mark.parametrize("stem", STEMS)
def test_solved_notebook_matches_and_has_outputs(stem):
    solved = ROOT / "solutions" / f"{stem}.ipynb"
    assert solved.exists(), f"{solved.relative_to(ROOT)} missing: run `python -m scripts.build_solutions {stem[:2]}`"
    s = nbformat.read(solved, as_version=4)
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    assert code(s) == code(nb), f"{solved.relative_to(ROOT)} is stale: run `python -m scripts.build_solutions {stem[:2]}`"
    cells = [c for c in s.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in cells), "solved notebook not fully executed"
    assert any(c.outputs for c in cells), "solved notebook has no outputs"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"solved notebook stores an error: {errors[0].ename}: {errors[0].evalue}"


def test_solutions_have_no_orphans():
    for p in sorted((ROOT / "solutions").glob("*.ipynb")):
        assert (ROOT / "notebooks" / p.name).exists(), f"{p.relative_to(ROOT)} has no notebook"


def test_readme_lab_table():
    """README lists every catalog lab in order; written ones link their four files, others say coming."""
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and line[2:4].isdigit()]
    assert len(rows) == len(labs.catalog())
    available = {i.key for i in labs.available_labs()}
    for info, row in zip(labs.catalog(), rows):
        assert row.startswith(f"| {info.number:02d} | {info.title} |"), row
        if info.key in available:
            for path in (info.page_path, info.notebook_path, info.starter_path, info.solved_path):
                assert f"]({path.relative_to(ROOT)})" in row, (info.key, path)
        else:
            assert "coming" in row, row


@pytest.mark.parametrize("stem", STEMS)
def test_saving_the_notebook_in_jupyterlab_keeps_the_page(stem):
    """JupyterLab's jupytext writes the page from the notebook on every save, with the
    notebook's metadata (language_info, jupytext's version stamps): with jupytext.toml's
    filter the page comes back byte for byte, so a save changes only what was edited."""
    from jupytext.config import load_jupytext_configuration_file

    config = load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    nb.metadata.setdefault("jupytext", {})["text_representation"] = {
        "extension": ".md", "format_name": "markdown", "format_version": "1.3", "jupytext_version": "1.19.6"}
    page = (ROOT / "labs" / f"{stem}.md").read_text(encoding="utf-8")
    assert jupytext.writes(nb, fmt="md", config=config) == page, \
        f"saving notebooks/{stem}.ipynb in JupyterLab would rewrite labs/{stem}.md beyond its content"
