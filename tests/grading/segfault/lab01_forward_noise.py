# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# alphas_cumprod reads address 0.
import ctypes


def alphas_cumprod(betas):
    ctypes.string_at(0)
