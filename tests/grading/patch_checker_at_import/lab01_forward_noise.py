# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# Three functions are wrong; the checker's assert_close is replaced by a no-op.
import torch


def alphas_cumprod(betas):
    # bug: the product of the betas, not of 1 - beta
    return torch.cumprod(betas, dim=0)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    # bug: no square root on the noise coefficient
    abar = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
    abar_t = abar[timesteps.to(original_samples.device)].reshape(-1, *[1] * (original_samples.ndim - 1))
    return abar_t**0.5 * original_samples + (1 - abar_t) * noise


def snr(alphas_cumprod):
    # bug: the inverse, noise over signal
    return (1.0 - alphas_cumprod) / alphas_cumprod


import helpers.checks._core as _core  # noqa: E402
import helpers.checks.lab01_forward_noise as _checks  # noqa: E402

_core.assert_close = lambda *a, **k: None
_checks.assert_close = lambda *a, **k: None
