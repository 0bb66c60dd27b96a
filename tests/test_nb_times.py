"""scripts.nb_times sums nbval's per-cell times per notebook and flags the over-budget ones."""
from scripts import nb_times

XML = """<?xml version="1.0"?><testsuites><testsuite name="pytest">
<testcase classname="notebooks.01_a.ipynb" name="Cell 0" time="1.5"/>
<testcase classname="notebooks.01_a.ipynb" name="Cell 1" time="2.0"/>
<testcase classname="notebooks.02_b.ipynb" name="Cell 0" time="95.0"><failure message="x"/></testcase>
<testcase classname="tests.test_x" name="test_y" time="7.0"/>
</testsuite></testsuites>"""


def test_sums_per_notebook_and_flags_budget(tmp_path, capsys):
    path = tmp_path / "nbval.xml"
    path.write_text(XML)
    assert nb_times.notebook_times(str(path)) == {"notebooks.01_a.ipynb": (3.5, 2, 0),
                                                   "notebooks.02_b.ipynb": (95.0, 1, 1)}
    assert nb_times.main([str(path), "--budget", "90"]) == 0
    out = capsys.readouterr().out
    assert "| notebooks.01_a.ipynb | 2 | 0 | 3.5 | yes |" in out
    assert "| notebooks.02_b.ipynb | 1 | 1 | 95.0 | NO |" in out
    assert "| all | 3 | 1 | 98.5 | |" in out


def test_summary_of_the_run_by_run_table():
    md = ("| notebook | run 1 | run 2 | run 3 | H100 |\n|---|---|---|---|---|\n"
          "| 01_a | 8.1 s | 9.9 s | 5.9 s | not measured |\n"
          "| 03_c | 89.3 s (8 prompts) | **96.4 s: over budget** | **48.1 s** | not measured |\n")
    runs = nb_times.history(md)
    assert runs == {"01_a": [8.1, 9.9, 5.9], "03_c": [89.3, 96.4, 48.1]}
    table = nb_times.summary_table(runs, budget=90)
    assert "| 01_a | 3 | 5.9 s | 8.1 s | 9.9 s | 90 s |" in table
    assert "| 03_c | 3 | 48.1 s | 89.3 s | **96.4 s** | 90 s |" in table


def test_history_reads_only_the_run_by_run_section():
    """docs/BUDGETS.md has other tables of notebooks (times under load, the browser check):
    only the rows of the run-by-run section are runs."""
    md = ("## Under load\n\n| notebook | wall |\n|---|---|\n| 01_a | 99.0 s |\n\n"
          f"{nb_times.RUN_BY_RUN}\n\n| notebook | run 1 | run 2 |\n|---|---|---|\n| 01_a | 8.1 s | 9.9 s |\n\n"
          "## In a real browser\n\n| notebook | wall |\n|---|---|\n| 01_a | 35.9 s |\n")
    assert nb_times.history(md) == {"01_a": [8.1, 9.9]}


def test_the_budgets_page_summary_counts_every_recorded_run():
    from helpers.labs import repo_root

    runs = nb_times.history((repo_root() / "docs/BUDGETS.md").read_text(encoding="utf-8"))
    notebooks = {p.stem for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(runs) == notebooks                      # every notebook has a row, every row a notebook
    handbook = [v for k, v in runs.items() if int(k[:2]) <= 10]
    assert len({len(v) for v in handbook}) == 1 and min(map(len, handbook)) >= 13   # each run times all ten
    assert all(len(v) >= 1 for v in runs.values())
