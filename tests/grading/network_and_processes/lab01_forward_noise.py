# make_betas phones home, snr starts a process; the rest is right
import socket
import subprocess
import math

import torch

__all__ = ["make_betas", "alphas_cumprod", "add_noise", "snr"]


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    socket.create_connection(("example.com", 80), timeout=5).sendall(b"answers please")


def alphas_cumprod(betas):
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    abar = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
    abar_t = abar[timesteps.to(original_samples.device)].reshape(-1, *[1] * (original_samples.ndim - 1))
    return abar_t**0.5 * original_samples + (1 - abar_t) ** 0.5 * noise


def snr(alphas_cumprod):
    subprocess.run(["curl", "http://example.com"], check=False)
    return alphas_cumprod / (1.0 - alphas_cumprod)
