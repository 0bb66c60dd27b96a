"""The model zoo: tiny pretrained models shipped with the course, loaded with the real
`from_pretrained`.

    pipe = load_pipeline("tiny-sd")                 # a diffusers StableDiffusionPipeline

Each model is a diffusers-format folder under `helpers/assets/<name>/` with safetensors
weights, a model card (README.md) and a checksum manifest (`checksums.sha256`). Loading
verifies every checksum first, and explains what is wrong when a file is missing, truncated
or is a Git LFS pointer instead of the weights.

Pointing the same code at another model: set `DIFFUSION_LABS_MODEL_TINY_SD` (the name in
upper case, "-" as "_") to a local diffusers folder or to a Hub model id such as
"stable-diffusion-v1-5/stable-diffusion-v1-5" (needs network and, in practice, a GPU). Such
a model is loaded as it is, without a checksum manifest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
MANIFEST = "checksums.sha256"
PIPELINES = {"tiny-sd": "StableDiffusionPipeline"}
LFS_HEADER = b"version https://git-lfs.github.com/spec/"


class ZooError(RuntimeError):
    """A zoo model is missing, damaged or not what its manifest says."""


def env_var(name: str) -> str:
    """The environment variable that redirects model `name`: tiny-sd -> DIFFUSION_LABS_MODEL_TINY_SD."""
    return "DIFFUSION_LABS_MODEL_" + name.upper().replace("-", "_")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write `checksums.sha256` (sha256sum format) over every file of `folder` but itself."""
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        lines.append(f"{sha256(path)}  {path.relative_to(folder).as_posix()}")
    out = folder / MANIFEST
    out.write_text("\n".join(lines) + "\n")
    return out


def verify(folder: str | Path) -> None:
    """Check every file listed in the folder's manifest; raise ZooError saying what is wrong."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise ZooError(f"{folder}: no {MANIFEST}; is this a zoo model folder? "
                       f"Rebuild it with `python -m helpers.train {folder.name}`.")
    problems = []
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        path = folder / rel
        if not path.exists():
            problems.append(f"{rel}: missing")
            continue
        with open(path, "rb") as f:
            head = f.read(len(LFS_HEADER))
        if head == LFS_HEADER:
            problems.append(f"{rel}: is a Git LFS pointer, not the file itself "
                            "(run `git lfs pull`, or download the repository as a zip)")
        elif sha256(path) != digest:
            problems.append(f"{rel}: checksum differs from the manifest "
                            f"({path.stat().st_size} bytes; truncated or modified?)")
    if problems:
        raise ZooError(f"zoo model at {folder} is damaged:\n  " + "\n  ".join(problems))


def model_path(name: str) -> str:
    """Where model `name` is loaded from: the override setting, else the shipped folder."""
    override = os.environ.get(env_var(name))
    if override:
        return override
    folder = ASSETS / name
    if not folder.exists():
        raise ZooError(f"unknown or missing zoo model {name!r}: no folder {folder}. "
                       f"Known: {sorted(p.name for p in ASSETS.iterdir() if p.is_dir())}")
    return str(folder)


def load_pipeline(name: str = "tiny-sd", device=None, dtype=None, **kwargs):
    """Load zoo pipeline `name` with diffusers' own `from_pretrained`.

    device: "cpu", "cuda", a torch.device or None (CUDA when available, else CPU).
    dtype: torch dtype of the weights (None: float32).
    Shipped models are checksum-verified first; an override (see module docstring) is not.
    """
    import diffusers
    import torch

    path = model_path(name)
    if not os.environ.get(env_var(name)):
        verify(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = getattr(diffusers, PIPELINES.get(name, "DiffusionPipeline"))
    if Path(path).exists():
        kwargs.setdefault("local_files_only", True)
    if cls is diffusers.StableDiffusionPipeline:
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    pipe = cls.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
