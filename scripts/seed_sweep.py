"""Run every lab's reference solutions against their own checks over many seeds (maintainers).

A check draws fresh random inputs on every run, so a check that is wrong for a rare draw shows
up in a learner's notebook as the *reference* failing. This sweep finds such draws before
learners do:

    python -m scripts.seed_sweep                    # every lab, seeds 0..49, both streams
    python -m scripts.seed_sweep 03 lab08 --seeds 200 --stream notebook

Exit status 1 when any (lab, function, stream, seed) fails; each failure is printed with the
seed that reproduces it: ``check("labNN", seed=S)`` for the notebook stream, ``python -m
helpers.grade --seed S`` for the grader's.
"""
from __future__ import annotations

import argparse
import sys
import time

from helpers.exercise import run_lab_checks
from helpers.labs import available_labs, find_lab


def sweep(labs, seeds: int, streams: list[str]) -> list[tuple[str, str, str, int, str]]:
    """[(lab, function, stream, seed, message)] of every failing reference check."""
    failures = []
    for info in labs:
        t0 = time.perf_counter()
        for stream in streams:
            for seed in range(seeds):
                for name, res in run_lab_checks(info, None, seed, stream=stream, fallback=False).items():
                    if res.status != "passed":
                        failures.append((info.key, name, stream, seed, res.message))
                        print(f"FAIL {info.key} {name} stream={stream} seed={seed}: {res.message}", flush=True)
        print(f"{info.key}: {seeds} seeds x {len(streams)} streams in {time.perf_counter() - t0:.0f} s", flush=True)
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("labs", nargs="*", help="labs to sweep, e.g. 03 lab08 (default: all)")
    ap.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1 per stream")
    ap.add_argument("--stream", action="append", choices=["notebook", "grade"],
                    help="generator stream(s) (default: both)")
    args = ap.parse_args(argv)
    labs = [find_lab(x) for x in args.labs] if args.labs else available_labs()
    failures = sweep(labs, args.seeds, args.stream or ["notebook", "grade"])
    print(f"{len(failures)} failing draws")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
