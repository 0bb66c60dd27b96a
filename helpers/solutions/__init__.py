"""Reference solutions, one self-contained module per lab (``labNN_slug.py``).

Each exercise body sits between ``# BEGIN SOLUTION`` and ``# END SOLUTION``; the learner's
starter is generated from it by ``python -m helpers.make_starters`` (docs/CONTRACT.md).
"""
