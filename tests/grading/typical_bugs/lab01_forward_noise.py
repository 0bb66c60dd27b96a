# On top of lab 01's reference (tests/test_grade.py, build_corpus): the definitions below replace
# the reference's, and any code at the end runs when the file is loaded.
# Two typical bugs: 'scaled_linear' returns the plain linear schedule; no square root on the
# noise coefficient.
_reference_betas = make_betas  # noqa: F821 - the reference's, defined above in the composed file


def make_betas(schedule, num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    # bug: 'scaled_linear' returns the plain linear schedule
    schedule = "linear" if schedule == "scaled_linear" else schedule
    return _reference_betas(schedule, num_train_timesteps, beta_start, beta_end)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    # bug: no square root on the noise coefficient
    abar = alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
    abar_t = abar[timesteps.to(original_samples.device)].reshape(-1, *[1] * (original_samples.ndim - 1))
    return abar_t**0.5 * original_samples + (1 - abar_t) * noise
