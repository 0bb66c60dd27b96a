# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# make_betas is imported from the reference; alphas_cumprod is the reference's code in a
# new function; add_noise calls the reference; snr is the learner's own.
import types

import torch

import helpers.solutions.lab01_forward_noise as _ref
from helpers.solutions.lab01_forward_noise import make_betas  # noqa: F401

alphas_cumprod = types.FunctionType(_ref.alphas_cumprod.__code__, globals(), "alphas_cumprod")


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    return _ref.add_noise(original_samples, noise, timesteps, alphas_cumprod)


def snr(alphas_cumprod):
    return alphas_cumprod / (1.0 - alphas_cumprod)
