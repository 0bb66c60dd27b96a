"""The forward process in closed form, shared by the library's own training loops: the
zoo's (`helpers.train`) and Lab 08's LoRA loop (`helpers.lora`). Lab 01 has the learner
write it (`add_noise`); this is the library's copy, so that training never depends on a
lab's exercise file.
"""

from __future__ import annotations

import torch


def q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) sampled in one shot (Ho et al. 2020, DDPM eq. 4):
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. x0, noise: (B, C, H, W); t: (B,) int;
    alphas_cumprod: (T,) on x0's device."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)                                   # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
