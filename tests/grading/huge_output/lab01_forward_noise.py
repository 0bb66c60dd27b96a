# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# Correct, but make_betas prints about 8 MB.
import sys

_reference_betas = make_betas  # noqa: F821 - the reference's, defined above in the composed file


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    for i in range(20000):  # about 8 MB of debugging output
        print("debug " * 60, i)
        print("warning " * 10, file=sys.stderr)
    return _reference_betas(schedule, num_train_timesteps, beta_start, beta_end)
