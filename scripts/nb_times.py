"""Per-notebook time from nbval's JUnit XML: the table docs/BUDGETS.md records.

    python -m pytest --nbval-lax notebooks/ --junitxml=runs/nbval.xml
    python -m scripts.nb_times runs/nbval.xml [--budget 90]
    python -m scripts.nb_times --summary docs/BUDGETS.md      # min / median / max per notebook

Each notebook's time is the sum of its cells' times (kernel start-up, 2-3 s, not included).
Prints a markdown table; exit status 0 (the budget is reported, not enforced: timings on a
shared machine vary, and a test that fails on a slow day is a flaky test).
"""
from __future__ import annotations

import argparse
import re
import statistics
import xml.etree.ElementTree as ET
from collections import defaultdict


def notebook_times(xml_path: str) -> dict[str, tuple[float, int, int]]:
    """{notebook file: (seconds, cells, failed cells)} from a JUnit XML report."""
    times: dict[str, list] = defaultdict(lambda: [0.0, 0, 0])
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("file") or case.get("classname", "").replace(".", "/")
        if ".ipynb" not in name and "ipynb" not in case.get("classname", ""):
            continue
        key = name if name.endswith(".ipynb") else case.get("classname", "")
        row = times[key]
        row[0] += float(case.get("time", 0.0))
        row[1] += 1
        row[2] += any(child.tag in ("failure", "error") for child in case)
    return {k: (round(v[0], 1), v[1], v[2]) for k, v in sorted(times.items())}


RUN_BY_RUN = "## Per notebook, run by run"


def history(markdown: str) -> dict[str, list[float]]:
    """{notebook: [seconds of each recorded run]} from the run-by-run table of docs/BUDGETS.md
    (rows ``| 01_forward_noise | 8.1 s | ... |`` in its section RUN_BY_RUN, up to the next
    heading of that level; the page's other tables of notebooks are not runs; cells without a
    number are skipped). A page without that section: every such row counts."""
    lines = markdown.splitlines()
    if RUN_BY_RUN in lines:
        start = lines.index(RUN_BY_RUN) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[start:end]
    runs: dict[str, list[float]] = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.fullmatch(r"\d\d_\w+", cells[0]):
            continue
        runs[cells[0]] = [float(m.group(1)) for c in cells[1:] if (m := re.match(r"\**([\d.]+) s\b", c))]
    return runs


def summary_table(runs: dict[str, list[float]], budget: float = 90.0) -> str:
    """Markdown: per notebook the number of runs, min / median / max seconds and the budget."""
    lines = ["| notebook | runs | min | median | max | budget |", "|---|---|---|---|---|---|"]
    for name, xs in runs.items():
        if xs:
            worst = f"**{max(xs):.1f} s**" if max(xs) > budget else f"{max(xs):.1f} s"
            lines.append(f"| {name} | {len(xs)} | {min(xs):.1f} s | {statistics.median(xs):.1f} s | {worst} | "
                         f"{budget:g} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml", nargs="?")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds per notebook")
    ap.add_argument("--summary", metavar="BUDGETS_MD", help="print the summary of a run-by-run table")
    args = ap.parse_args(argv)
    if args.summary:
        with open(args.summary, encoding="utf-8") as fh:
            print(summary_table(history(fh.read()), args.budget))
        return 0
    if not args.xml:
        ap.error("give the JUnit XML of an nbval run, or --summary docs/BUDGETS.md")
    rows = notebook_times(args.xml)
    print("| notebook | cells | failed | seconds | within budget |\n|---|---|---|---|---|")
    for name, (sec, cells, failed) in rows.items():
        print(f"| {name} | {cells} | {failed} | {sec:.1f} | {'yes' if sec <= args.budget else 'NO'} |")
    print(f"| all | {sum(r[1] for r in rows.values())} | {sum(r[2] for r in rows.values())} | "
          f"{sum(r[0] for r in rows.values()):.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
