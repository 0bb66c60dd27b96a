"""A lab's claims about its own measurements, checked where they are made.

A sentence of a lab page that reads a number ("DDIM at 25 steps is as accurate as DDPM at
1000", "the two runs differ less from each other than from the original") is backed by an
``expect`` in the code cell that measures it::

    from helpers.claims import expect
    expect(rms_runs < rms_orig, "two SDEdit runs differ less from each other than from the original",
           run_to_run=rms_runs, to_original=rms_orig)

prints one line, ``✓ two SDEdit runs ... | run_to_run=0.037, to_original=0.066``, and raises
:class:`ClaimError` with the same numbers when the data contradict the sentence: nbval fails
in CI, and a learner sees which claim did not hold on their machine.

Accuracies over N prompts are noisy. Two of them are compared with :func:`proportion_diff`
(Newcombe's interval for a difference of two binomial proportions, 95 %): claim "A beats B"
only when its lower end is above 0, and say "within noise" otherwise, showing the interval.
:func:`wilson` gives one accuracy's interval, :func:`mean_interval` a mean's.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["expect", "ClaimError", "wilson", "proportion_diff", "mean_interval", "fmt"]

Z95 = 1.959963984540054  # the two-sided 95 % quantile of the standard normal


class ClaimError(AssertionError):
    """A lab's sentence is contradicted by the numbers this run measured."""


def fmt(value) -> str:
    """A measured value, short: 4 significant digits for floats, tensors/arrays of one
    element as that element, small sequences element by element, anything else by ``repr``."""
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:  # torch
        value = value.item()
    elif hasattr(value, "size") and hasattr(value, "item") and getattr(value, "size", 0) == 1:  # numpy
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(value, (list, tuple)) and len(value) <= 12:
        inner = ", ".join(fmt(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def expect(condition, claim: str, **measured):
    """Check ``claim`` (the page's sentence, in a few words) against this run's numbers.

    Args:
        condition: truthy when the measurement supports the claim (a bool, or a one-element
            tensor/array).
        claim: what the page says, as a sentence.
        **measured: the numbers the condition was computed from, printed with the claim.

    Returns:
        ``None``; prints ``✓ claim | name=value, ...``.

    Raises:
        ClaimError: when ``condition`` is false, with the claim and the numbers.
    """
    numbers_text = ", ".join(f"{k}={fmt(v)}" for k, v in measured.items())
    line = claim + (f" | {numbers_text}" if numbers_text else "")
    if not bool(condition):
        raise ClaimError(f"this claim of the lab does not hold on this run: {line}")
    print(f"\N{CHECK MARK} {line}")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (95 % by default) for an accuracy of ``k`` successes in ``n``
    trials: (low, high), within [0, 1]; sound at k = 0 and k = n, unlike the normal one."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} is not within 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion_diff(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """The difference of two accuracies, p1 - p2 = k1/n1 - k2/n2, with its 95 % interval
    (Newcombe 1998, method 10: Wilson intervals of each, combined): (diff, low, high).

    "A is more accurate than B" is a claim only when ``low > 0``; when the interval holds 0,
    the difference is within noise."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def mean_interval(values, z: float = Z95) -> tuple[float, float]:
    """The mean of ``values`` (a sequence, array or tensor of at least 2 numbers) and the
    half-width of its 95 % normal interval, z * std / sqrt(n) (unbiased std): (mean, half)."""
    xs = [float(v) for v in (values.flatten().tolist() if hasattr(values, "flatten") else values)]
    n = len(xs)
    if n < 2:
        raise ValueError("mean_interval needs at least 2 values")
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, z * math.sqrt(var / n)
