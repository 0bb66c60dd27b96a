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


def setup(seed: int = 0, quiet: bool = False):
    """Choose the device (CUDA if available, else CPU), seed ``random``/numpy/torch, set
    matplotlib defaults, print the versions, and return the device.

    Args:
        seed: the seed of every random generator (so figures are the same on every run).
        quiet: do not print the versions line.

    Returns:
        ``torch.device("cuda")`` or ``torch.device("cpu")``.
    """
    import numpy as np
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    try:
        import matplotlib as mpl

        mpl.rcParams.update({"figure.dpi": 100, "figure.figsize": (8, 3.5), "image.interpolation": "nearest",
                             "axes.grid": False, "font.size": 10})
    except ImportError:
        pass
    if not quiet:
        def version(name):  # package metadata: no slow import of transformers just to print it
            from importlib.metadata import PackageNotFoundError, version as _version
            try:
                return _version(name)
            except PackageNotFoundError:
                return "not installed"

        gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
        print(f"python {platform.python_version()} | torch {torch.__version__} | diffusers {version('diffusers')}"
              f" | transformers {version('transformers')} | device {device}{gpu} | seed {seed}")
    return device
