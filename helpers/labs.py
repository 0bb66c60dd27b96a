"""The labs registry: which labs exist, their names, and where their files live.

A lab has a key ``labNN`` (``lab01``) and a slug ``labNN_name`` (``lab01_forward_noise``).
It *exists* when its solution module ``helpers/solutions/<slug>.py`` exists; the catalog
below names every lab in handbook order.

Files of lab ``lab01_forward_noise``::

    helpers/solutions/lab01_forward_noise.py   reference solution (the one source)
    helpers/checks/lab01_forward_noise.py      its checks
    starters/lab01_forward_noise.py            the learner's exercise file (generated)
    labs/01_forward_noise.md                   the lab page (jupytext markdown)
    notebooks/01_forward_noise.ipynb           the paired notebook, without outputs
    solutions/01_forward_noise.ipynb           the notebook executed with the references
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# (number, slug, title) in handbook order.
CATALOG: list[tuple[int, str, str]] = [
    (1, "lab01_forward_noise", "Forward Noise Process"),
    (2, "lab02_denoising_step", "Denoising Step"),
    (3, "lab03_scheduler_reading", "Scheduler Reading"),
    (4, "lab04_cfg", "CFG Code Reading"),
    (5, "lab05_vae_latents", "VAE Latent Space"),
    (6, "lab06_pipeline_components", "Diffusers Pipeline Components"),
    (7, "lab07_unet_dit_conditioning", "UNet / DiT Conditioning"),
    (8, "lab08_lora", "LoRA Injection Reading"),
    (9, "lab09_controlnet", "ControlNet / Conditioning Reading"),
    (10, "lab10_memory", "Memory Optimization Reading"),
    (11, "lab11_from_scratch", "Train a Diffusion Model from Scratch"),
    (12, "lab12_flow_matching", "Flow Matching (SD3 / FLUX)"),
]

_SLUG = re.compile(r"^lab(\d{2})_(\w+)$")


def repo_root() -> Path:
    """The repository root (the folder holding ``helpers/``)."""
    return Path(__file__).resolve().parent.parent


def starters_dir() -> Path:
    """Where learners' exercise files live: ``$DIFFUSION_LABS_STARTERS`` or ``<repo>/starters``."""
    env = os.environ.get("DIFFUSION_LABS_STARTERS")
    return Path(env).expanduser().resolve() if env else repo_root() / "starters"


@dataclass(frozen=True)
class LabInfo:
    """One lab. ``solution_module`` / ``check_module`` are dotted import names; they default
    to ``helpers.solutions.<slug>`` / ``helpers.checks.<slug>`` (tests register fake labs
    with other names)."""

    key: str  # "lab01"
    slug: str  # "lab01_forward_noise"
    number: int  # 1
    title: str  # "Forward Noise Process"
    solution_module: str = ""
    check_module: str = ""

    def __post_init__(self):
        if not self.solution_module:
            object.__setattr__(self, "solution_module", f"helpers.solutions.{self.slug}")
        if not self.check_module:
            object.__setattr__(self, "check_module", f"helpers.checks.{self.slug}")

    @property
    def stem(self) -> str:
        """``01_forward_noise``: the name of the page, notebook and solved notebook."""
        return f"{self.number:02d}_{self.slug.split('_', 1)[1]}"

    @property
    def name(self) -> str:
        """``Lab 01: Forward Noise Process``."""
        return f"Lab {self.number:02d}: {self.title}"

    @property
    def solution_path(self) -> Path:
        return repo_root() / "helpers" / "solutions" / f"{self.slug}.py"

    @property
    def check_path(self) -> Path:
        return repo_root() / "helpers" / "checks" / f"{self.slug}.py"

    @property
    def starter_path(self) -> Path:
        return starters_dir() / f"{self.slug}.py"

    @property
    def page_path(self) -> Path:
        return repo_root() / "labs" / f"{self.stem}.md"

    @property
    def notebook_path(self) -> Path:
        return repo_root() / "notebooks" / f"{self.stem}.ipynb"

    @property
    def solved_path(self) -> Path:
        return repo_root() / "solutions" / f"{self.stem}.ipynb"

    @property
    def exists(self) -> bool:
        """True when the solution module exists (fake labs: when it is importable)."""
        if self.solution_module == f"helpers.solutions.{self.slug}":
            return self.solution_path.exists()
        import importlib.util

        return importlib.util.find_spec(self.solution_module) is not None


# Labs registered at run time (tests register fake labs here via monkeypatch/register()).
REGISTERED: dict[str, LabInfo] = {}


def register(info: LabInfo) -> LabInfo:
    """Add a lab outside the catalog (e.g. a test's fake lab); returns it."""
    REGISTERED[info.key] = info
    return info


def catalog() -> list[LabInfo]:
    """All ten catalogued labs in handbook order, whether written yet or not."""
    return [LabInfo(f"lab{n:02d}", slug, n, title) for n, slug, title in CATALOG]


def available_labs() -> list[LabInfo]:
    """Labs whose solution module exists, in order: the catalog's, then any
    ``helpers/solutions/labNN_*.py`` outside it (title taken from the slug)."""
    found = {info.slug: info for info in catalog() if info.exists}
    for path in sorted((repo_root() / "helpers" / "solutions").glob("lab*.py")):
        m = _SLUG.match(path.stem)
        if m and path.stem not in found:
            title = m.group(2).replace("_", " ").title()
            found[path.stem] = LabInfo(f"lab{m.group(1)}", path.stem, int(m.group(1)), title)
    return sorted(found.values(), key=lambda i: i.number)


def find_lab(x: "str | int | LabInfo") -> LabInfo:
    """Resolve ``"lab01"``, ``"01"``, ``"1"``, ``1``, ``"lab01_forward_noise"`` or
    ``"01_forward_noise"`` to its :class:`LabInfo`. Raises ``KeyError`` for an unknown lab."""
    if isinstance(x, LabInfo):
        return x
    s = str(x).strip().lower()
    if s in REGISTERED:
        return REGISTERED[s]
    for info in REGISTERED.values():
        if s == info.slug:
            return info
    m = re.match(r"^(?:lab)?(\d{1,2})(?:_\w*)?$", s)
    if m:
        n = int(m.group(1))
        for info in list(REGISTERED.values()) + available_labs() + catalog():
            if info.number == n and (s.isdigit() or s in (info.key, info.slug, info.stem)
                                     or s == f"lab{n}"):
                return info
    known = ", ".join(i.key for i in catalog())
    raise KeyError(f"unknown lab {x!r}; known labs: {known}")
