# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# alphas_cumprod asks for 64 GB.
import torch


def alphas_cumprod(betas):
    hog = torch.ones(16 * 1024**3, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0) + 0 * hog[: betas.shape[0]]
