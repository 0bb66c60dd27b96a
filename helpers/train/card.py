"""Measure a trained zoo model and write its model card (README.md) and metrics.json.

    python -m helpers.train.card helpers/assets/tiny-sd [--quick] [--workers N]
    python -m helpers.train.card helpers/assets/tiny-dit --rerender     (no measuring)

The model is read from the folder's train_info.json ("model"; tiny-sd when absent); its
module (helpers/train/<model>.py) measures (`measure`) and renders (`render_card`). Every
number in a card is measured here, by the judge, on the machine that runs this. Then the
checksum manifest is rewritten.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers.train.registry import model_of
from helpers.zoo import write_manifest

CARD_COMMAND = "python -m helpers.train.card"  # recorded in metrics.json, named by the card


def write_model_card(folder, quick=False, workers=None) -> dict:
    """Measure the model in `folder` (with its module's default worker processes unless
    `workers` is given), write metrics.json and its card README.md; returns the metrics."""
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    module = model_of(info)
    m = module.measure(folder, quick=quick, workers=module.WORKERS if workers is None else workers)
    m["measured_by"] = CARD_COMMAND
    (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    (folder / "README.md").write_text(module.render_card(folder, m, info))
    return m


def render_stored_card(folder) -> str:
    """The card of `folder` rendered from its stored metrics.json and train_info.json."""
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    m = json.loads((folder / "metrics.json").read_text())
    return model_of(info).render_card(folder, m, info)


def rerender_card(folder, bench=False) -> dict:
    """Re-render README.md from metrics.json; with `bench` (tiny-sd), re-measure the speed
    benchmark first (on a quiet machine: the full measurement shares the CPU between workers)."""
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text())
    m = json.loads((folder / "metrics.json").read_text())
    module = model_of(info)
    if bench:
        if not hasattr(module, "rebench"):
            raise SystemExit(f"--bench: {module.NAME} has no separate speed benchmark")
        m = module.rebench(folder, m)
        (folder / "metrics.json").write_text(json.dumps(m, indent=2))
    (folder / "README.md").write_text(module.render_card(folder, m, info))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m helpers.train.card", description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a trained model's folder (helpers/assets/<model>)")
    ap.add_argument("--quick", action="store_true", help="a few prompts per measurement (smoke test)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes sharing the evaluation (default: the model's own, tiny-sd 2, others 1)")
    ap.add_argument("--rerender", action="store_true", help="re-render the card from metrics.json, measure nothing")
    ap.add_argument("--bench", action="store_true", help="with --rerender, tiny-sd: re-measure the speed benchmark")
    args = ap.parse_args(argv)
    if args.rerender:
        rerender_card(args.folder, bench=args.bench)
    else:
        write_model_card(args.folder, quick=args.quick, workers=args.workers)
    write_manifest(args.folder)


if __name__ == "__main__":
    main()
