"""`python -m helpers.train <model>` (see helpers/train/cli.py)."""

from helpers.train.cli import main

main()
