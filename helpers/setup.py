"""The setup cell of every notebook, and the Colab bootstrap that comes before it.

First code cell of every lab (paste :data:`COLAB_BOOTSTRAP` verbatim; it does nothing
outside Colab)::

    import os, subprocess, sys
    REPO = "https://github.com/diffusion-labs/diffusion-labs"  # see helpers/setup.py: REPO_URL
    if "google.colab" in sys.modules:  # Colab only: fetch the course and install it, once
        if not os.path.isdir("/content/diffusion-labs"):
            subprocess.run(f"git clone -q --depth 1 {REPO} /content/diffusion-labs && cd /content/diffusion-labs && pip install -q -r requirements.txt", shell=True, check=True)
        os.chdir("/content/diffusion-labs"); sys.path.insert(0, "/content/diffusion-labs")

Setup cell::

    from helpers.setup import setup
    device = setup()
"""
from __future__ import annotations

import platform
import random
import re
import warnings

# PLACEHOLDER: the public URL of this repository. Set it (here, in COLAB_BOOTSTRAP below, and
# in every lab's first code cell, by search-and-replace) when the course is published.
REPO_URL = "https://github.com/diffusion-labs/diffusion-labs"

COLAB_BOOTSTRAP = f'''\
import os, subprocess, sys
REPO = "{REPO_URL}"  # see helpers/setup.py: REPO_URL
if "google.colab" in sys.modules:  # Colab only: fetch the course and install it, once
    if not os.path.isdir("/content/diffusion-labs"):
        subprocess.run(f"git clone -q --depth 1 {{REPO}} /content/diffusion-labs && cd /content/diffusion-labs && pip install -q -r requirements.txt", shell=True, check=True)
    os.chdir("/content/diffusion-labs"); sys.path.insert(0, "/content/diffusion-labs")'''


# The packages whose API the labs read and re-implement: the course is tested with the
# version ranges requirements.txt gives them; setup() prints those ranges and warns outside.
TESTED_PACKAGES = ("diffusers", "transformers")


class UntestedVersionWarning(UserWarning):
    """diffusers or transformers is installed at a version outside the tested range."""


def tested_ranges(requirements=None) -> dict[str, str]:
    """The version ranges of :data:`TESTED_PACKAGES` in ``requirements.txt``, as written there
    (``{"diffusers": ">=0.42.1,<0.43", ...}``). ``requirements`` defaults to the file at the root
    of the checkout ``helpers`` is imported from; a missing or unreadable file gives ``{}``."""
    from pathlib import Path

    if requirements is None:
        requirements = Path(__file__).resolve().parent.parent / "requirements.txt"
    try:
        text = Path(requirements).read_text(encoding="utf-8")
    except OSError:
        return {}
    names = "|".join(re.escape(n) for n in TESTED_PACKAGES)
    ranges = {}
    for line in text.splitlines():
        m = re.match(rf"\s*({names})\s*(?:\[[^\]]*\])?\s*([<>=!~][^#;]*)", line, re.IGNORECASE)
        if m:
            ranges[m.group(1).lower()] = re.sub(r"\s+", "", m.group(2))
    return ranges


def untested_versions(versions: dict[str, str], ranges: dict[str, str]) -> list[str]:
    """One message per package whose installed version (``versions``: name -> version, or
    "not installed") is outside its tested range; packages without a range, not installed,
    or with a version or range that does not parse are skipped."""
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging comes with transformers; without it, check nothing
        return []
    out = []
    for name, spec in ranges.items():
        try:
            version = Version(versions.get(name, ""))
            inside = SpecifierSet(spec).contains(version, prereleases=True)
        except (InvalidVersion, InvalidSpecifier):
            continue
        if not inside:
            out.append(f"{name} {version} is outside the range this course is tested with ({name}{spec}, "
                       "requirements.txt): the labs may break or show different numbers; "
                       "to get a tested version: pip install -r requirements.txt")
    return out


def quiet_libraries() -> None:
    """Keep a lab's output for what the lab prints: diffusers' and transformers' notices
    (loading, deprecations, tokenizer remarks) at level ERROR and their progress bars off
    (loading bars and a pipeline's sampling bar stay stuck at "0%" in a saved notebook).
    Errors still show. ``setup()`` calls it; a lab never needs to repeat it."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is imported
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # torch.profiler's start/stop log lines
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    for logs in (diffusers_logging, hf_logging):
        logs.set_verbosity_error()
        logs.disable_progress_bar()


def exact_float32() -> None:
    """Turn off TF32 for float32 convolutions and matrix products.

    On an Ampere or newer NVIDIA GPU, PyTorch runs float32 convolutions through cuDNN with
    TF32 (10 mantissa bits, about 1e-3 relative) unless told otherwise
    (``torch.backends.cudnn.allow_tf32`` is True by default; matmuls are already exact by
    default). The labs compare their own loops with diffusers' to float rounding (1e-4), and
    measured on an H200 with TF32 on, the gaps were 1e-3 to 5e-3: float32 has to mean float32
    here. A CPU has no TF32, so this changes nothing there. Costs speed on a GPU, which the
    tiny models do not notice."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def setup(seed: int = 0, quiet: bool = False):
    """Choose the device (CUDA if available, else CPU), seed ``random``/numpy/torch, make
    float32 mean float32 on a GPU (:func:`exact_float32`), set matplotlib defaults, quiet the
    libraries' notices and progress bars (:func:`quiet_libraries`), print the versions, and
    return the device.

    Args:
        seed: the seed of every random generator (so figures are the same on every run).
        quiet: do not print the versions line.

    Returns:
        ``torch.device("cuda")`` or ``torch.device("cpu")``.
    """
    # transformers warns at import that torchvision is missing (it is not needed here): quiet
    # it and the loading/sampling progress bars before anything imports transformers.
    quiet_libraries()
    import numpy as np
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    exact_float32()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    try:
        import matplotlib as mpl

        mpl.rcParams.update({"figure.dpi": 100, "figure.figsize": (8, 3.5), "image.interpolation": "nearest",
                             "axes.grid": False, "font.size": 10})
    except ImportError:
        pass
    def version(name):  # package metadata: no slow import of transformers just to print it
        from importlib.metadata import PackageNotFoundError, version as _version
        try:
            return _version(name)
        except PackageNotFoundError:
            return "not installed"

    versions, ranges = {n: version(n) for n in TESTED_PACKAGES}, tested_ranges()
    if not quiet:
        tested = {n: f" (tested {ranges[n]})" if n in ranges else "" for n in TESTED_PACKAGES}
        gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
        print(f"python {platform.python_version()} | torch {torch.__version__}"
              f" | diffusers {versions['diffusers']}{tested['diffusers']}"
              f" | transformers {versions['transformers']}{tested['transformers']} | device {device}{gpu} | seed {seed}")
    for message in untested_versions(versions, ranges):  # warn, never fail: the labs may still run
        warnings.warn(message, UntestedVersionWarning, stacklevel=2)
    return device
