"""Per-notebook time from nbval's JUnit XML: the table docs/BUDGETS.md records.

    python -m pytest --nbval-lax notebooks/ --junitxml=runs/nbval.xml
    python -m scripts.nb_times runs/nbval.xml [--budget 90]

Each notebook's time is the sum of its cells' times (kernel start-up, 2-3 s, not included).
Prints a markdown table; exit status 0 (the budget is reported, not enforced: timings on a
shared machine vary, and a test that fails on a slow day is a flaky test).
"""
from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds per notebook")
    args = ap.parse_args(argv)
    rows = notebook_times(args.xml)
    print("| notebook | cells | failed | seconds | within budget |\n|---|---|---|---|---|")
    for name, (sec, cells, failed) in rows.items():
        print(f"| {name} | {cells} | {failed} | {sec:.1f} | {'yes' if sec <= args.budget else 'NO'} |")
    print(f"| all | {sum(r[1] for r in rows.values())} | {sum(r[2] for r in rows.values())} | "
          f"{sum(r[0] for r in rows.values()):.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
