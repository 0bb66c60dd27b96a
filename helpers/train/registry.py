"""The zoo's models, by name. A new model is one module in helpers/train/ and one entry here.

A model module has:
    NAME                     "tiny-sd", the folder name under helpers/assets/
    Config                   its config dataclass (with `seed`; `Config.quick()`: a smoke run)
    train(out, cfg, base)    trains, writes the folder `out` (base: the model it builds on, or None)
    measure(folder, quick, workers) -> metrics (dict, stored as metrics.json)
    render_card(folder, metrics, train_info) -> the card, README.md (measures nothing)
    WORKERS                  default processes for `measure`
"""

from __future__ import annotations

from helpers.train import tiny_controlnet, tiny_dit, tiny_ip_adapter, tiny_sd, tiny_sd3
from helpers.train import tiny_pixel

MODELS = {m.NAME: m for m in (tiny_sd, tiny_controlnet, tiny_dit, tiny_ip_adapter, tiny_sd3)}
MODELS.update({tiny_pixel.NAME: tiny_pixel, **tiny_pixel.VARIANTS})   # Lab 11's pixel model and its variants


def model(name: str):
    """The module of zoo model `name`."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def model_of(info: dict):
    """The module that trained a folder, from its train_info.json: its "model", or tiny-sd
    (whose first shipped train_info.json has no "model")."""
    return model(info.get("model", tiny_sd.NAME))
