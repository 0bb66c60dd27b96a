# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# add_noise calls sys.exit.
import sys


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    sys.exit(3)
