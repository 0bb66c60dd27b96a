"""`python -m helpers.train <model>`: train a zoo model from its seed, measure its card,
write its checksum manifest.

    python -m helpers.train tiny-sd [--out DIR] [--seed 0] [--quick] [--threads N]
    python -m helpers.train tiny-controlnet [--steps N] [--base DIR] [...]
    python -m helpers.train tiny-ip-adapter --set batch=128 --set enc_steps=6000 [--no-eval]
    accelerate launch -m helpers.train tiny-sd          (several GPUs)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from helpers.train.card import write_model_card
from helpers.train.registry import MODELS, model
from helpers.zoo import ASSETS, write_manifest

STEP_OPTIONS = {  # option -> config field; a model whose config lacks the field refuses it
    "unet_steps": "tiny-sd: UNet + text encoder steps",
    "vae_steps": "tiny-sd: VAE steps",
    "steps": "tiny-controlnet, tiny-dit, tiny-ip-adapter (the adapter), tiny-pixel*, tiny-sd3: training steps",
}


def config_value(default, text: str):
    """`text` typed like the config field's `default` (a None default takes a float)."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"not a boolean: {text!r}")
        return text.lower() in ("true", "1")
    if default is None:
        return float(text)
    if isinstance(default, tuple):
        return tuple(type(default[0])(x) for x in text.split(",")) if default else tuple(text.split(","))
    return type(default)(text)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m helpers.train",
                                 description="Reproducible training of the zoo's models (helpers/train/).")
    ap.add_argument("model", choices=list(MODELS))
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: helpers/assets/<model>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few steps (weights are not good)")
    for field, text in STEP_OPTIONS.items():
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=None, help=text)
    ap.add_argument("--base", type=Path, default=None,
                    help="tiny-controlnet / tiny-dit: the tiny-sd folder to build on (default: the zoo's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (1 is fastest on a CPU shared with other work)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override any field of the model's config (typed as its default), e.g. --set batch=128")
    ap.add_argument("--no-eval", action="store_true", help="skip the judge evaluation and model card")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    module = model(args.model)
    cfg = module.Config.quick() if args.quick else module.Config()
    cfg.seed = args.seed
    for field in STEP_OPTIONS:
        value = getattr(args, field)
        if value is not None:
            if not hasattr(cfg, field):
                ap.error(f"--{field.replace('_', '-')} does not apply to {args.model}")
            setattr(cfg, field, value)
    for item in args.set:
        field, _, value = item.partition("=")
        if not hasattr(cfg, field) or not value:
            ap.error(f"--set {item}: {args.model}'s config has no field {field!r} (or no value given)")
        setattr(cfg, field, config_value(getattr(cfg, field), value))
    if args.base is not None and args.model == "tiny-sd":
        ap.error("--base does not apply to tiny-sd (it is trained from scratch)")
    out = args.out or ASSETS / args.model
    info = module.train(out, cfg, base=args.base)
    print(json.dumps(info["times_s"]), info["params"])
    if not args.no_eval:
        write_model_card(out, quick=args.quick)
    write_manifest(out)
    print(f"wrote {out}")
