# alphas_cumprod reads address 0
import ctypes
import math

import torch

__all__ = ["make_betas", "alphas_cumprod", "add_noise", "snr"]


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    T = num_train_timesteps
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((t + 1) / T) / f(t / T), 0.999) for t in range(T)], dtype=torch.float32)
    raise ValueError(schedule)


def alphas_cumprod(betas):
    ctypes.string_at(0)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    abar = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
    abar_t = abar[timesteps.to(original_samples.device)].reshape(-1, *[1] * (original_samples.ndim - 1))
    return abar_t**0.5 * original_samples + (1 - abar_t) ** 0.5 * noise


def snr(alphas_cumprod):
    return alphas_cumprod / (1.0 - alphas_cumprod)
