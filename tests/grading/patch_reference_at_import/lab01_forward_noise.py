# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# snr is wrong, and the reference snr is replaced by it.


def snr(alphas_cumprod):
    return (1.0 - alphas_cumprod) / alphas_cumprod


import helpers.solutions.lab01_forward_noise as _ref  # noqa: E402

_ref.snr = snr
