"""The grader's outputs for a class: ``grades.csv``, ``grades.json``, ``feedback/<learner>.md``.

- ``grades.csv``: one row per learner: ``learner``, one column per lab (functions passed),
  ``total``, ``max`` (functions graded), ``percent``, ``seed``.
- ``grades.json``: the seed and stream, the labs and their functions, and per learner every
  function's status, message and seconds, plus each lab's captured (truncated) output and
  how its worker ended.
- ``feedback/<learner>.md``: per lab a table of functions and statuses, then every message
  in full: the same text the notebook's ``check()`` prints ("Likely bug: ...", "Hint: ...",
  the learner's line for an error).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path


def _percent(p: int, t: int) -> float:
    return round(100.0 * p / t, 1) if t else 0.0


def write_csv(path: Path, learners: list, lab_keys: list[str], seed: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["learner", *lab_keys, "total", "max", "percent", "seed"])
        for lr in learners:
            p, t = lr.report.score()
            w.writerow([lr.name, *[lr.report.score(k)[0] for k in lab_keys], p, t, _percent(p, t), seed])


def to_json(learners: list, labs: dict[str, list[str]], seed: int, stream: str, meta: dict) -> dict:
    out = {"seed": seed, "stream": stream, **meta,
           "labs": {k: {"functions": names, "max": len(names)} for k, names in labs.items()},
           "learners": []}
    for lr in learners:
        p, t = lr.report.score()
        out["learners"].append({
            "learner": lr.name, "source": lr.source, "passed": p, "total": t, "percent": _percent(p, t),
            "labs": {k: {"passed": lr.report.score(k)[0], "total": lr.report.score(k)[1],
                         **lr.report.lab_info.get(k, {})} for k in labs},
            "rows": [r.to_dict() for r in lr.report.rows],
        })
    return out


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def feedback_markdown(lr, lab_titles: dict[str, str], seed: int) -> str:
    p, t = lr.report.score()
    lines = [f"# Feedback for {lr.name}", "",
             f"Score: **{p}/{t}** ({_percent(p, t):g}%). Graded with seed {seed} "
             f"(the grader's inputs differ from the notebook's: run `check(\"labNN\")` in the "
             f"notebook to see your functions on fresh inputs).", ""]
    for key, title in lab_titles.items():
        rows = [r for r in lr.report.rows if r.lab == key]
        lp, lt = lr.report.score(key)
        lines += [f"## {title}: {lp}/{lt}", "", "| function | status | summary |", "|---|---|---|"]
        for r in rows:
            first = (r.message.splitlines() or [""])[0]
            lines.append(f"| `{r.function}` | {r.status} | {_md_escape(first[:160])} |")
        lines.append("")
        for r in rows:
            if r.status != "passed" and r.message:
                lines += [f"### `{r.function}`: {r.status}", "", "```", r.message.strip(), "```", ""]
        info = lr.report.lab_info.get(key, {})
        if info.get("output"):
            lines += ["<details><summary>What your code printed (truncated)</summary>", "", "```",
                      info["output"].replace("```", "'''"), "```", "", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_all(out: Path, learners: list, labs: dict[str, list[str]], lab_titles: dict[str, str],
              seed: int, stream: str, meta: dict) -> None:
    """Write the three outputs under ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "feedback").mkdir(exist_ok=True)
    write_csv(out / "grades.csv", learners, list(labs), seed)
    (out / "grades.json").write_text(json.dumps(to_json(learners, labs, seed, stream, meta), indent=2),
                                     encoding="utf-8")
    for lr in learners:
        (out / "feedback" / f"{lr.name}.md").write_text(feedback_markdown(lr, lab_titles, seed),
                                                        encoding="utf-8")
