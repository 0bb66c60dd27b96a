"""Checks of every lab: ``helpers/checks/<slug>.py`` defines ``check_<name>(fn, gen)`` for each
name in its solution module's ``__all__`` (docs/CONTRACT.md). Shared tools live in
:mod:`helpers.checks._core`. Only :mod:`helpers.exercise` and :mod:`helpers.grade` import checks.
"""

import os as _os

# A check run from a shell (no setup()) imports diffusers, which imports transformers: keep its
# notices (e.g. "requires torchvision (not installed); falling back ...") out of the check's output.
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
