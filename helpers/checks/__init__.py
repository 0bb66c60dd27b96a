"""Checks of every lab: ``helpers/checks/<slug>.py`` defines ``check_<name>(fn, gen)`` for each
name in its solution module's ``__all__`` (docs/CONTRACT.md). Shared tools live in
:mod:`helpers.checks._core`. Only :mod:`helpers.exercise` and :mod:`helpers.grade` import checks.
"""
