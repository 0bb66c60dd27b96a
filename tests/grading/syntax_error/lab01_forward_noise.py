# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# snr's def line lacks its colon.


def snr(alphas_cumprod)
    return alphas_cumprod / (1.0 - alphas_cumprod)
