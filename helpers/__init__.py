"""Diffusion Labs: the course library.

In a notebook::

    from helpers.setup import setup
    from helpers.exercise import exercise, check
    device = setup()
    ex = exercise("lab01")      # your functions, or the reference where yours is TODO/failing
    check("lab01")              # one row per function: passed / failed (why) / TODO

See README.md and docs/CONTRACT.md.
"""
