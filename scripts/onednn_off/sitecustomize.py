"""Put this folder on PYTHONPATH with DL_PERTURB=1 set, and every Python process started then
(nbval, its kernels) runs PyTorch's convolutions without oneDNN: the fallback kernels (im2col,
NNPACK) that PyTorch's macOS arm64 wheels use, with their own float rounding and scratch memory.
The labs' claims must hold there too:

    DL_PERTURB=1 PYTHONPATH=scripts/onednn_off OMP_NUM_THREADS=1 python -m scripts.claim_drift --execute OUT
"""
import os

if os.environ.get("DL_PERTURB"):
    import torch

    torch.backends.mkldnn.enabled = False
