"""helpers.claims: expect() prints a holding claim and raises on a false one; the intervals
match published values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.claims import ClaimError, expect, fmt, mean_interval, proportion_diff, wilson


def test_expect_prints_a_claim_that_holds(capsys):
    expect(0.037 < 0.066, "runs differ less from each other than from the original", runs=0.037, orig=0.066)
    out = capsys.readouterr().out
    assert out.startswith("\N{CHECK MARK} runs differ less") and "runs=0.037, orig=0.066" in out
    assert out.count("\n") == 1  # one compact line


def test_expect_raises_with_the_numbers_on_a_false_claim(capsys):
    with pytest.raises(ClaimError, match=r"does not hold on this run: A beats B \| a=0.5, b=0.75"):
        expect(0.5 > 0.75, "A beats B", a=0.5, b=0.75)
    assert capsys.readouterr().out == ""
    assert issubclass(ClaimError, AssertionError)  # nbval and pytest report it as a failed assertion


def test_expect_takes_one_element_tensors_and_arrays():
    expect(torch.tensor(True), "tensor condition", x=torch.tensor(0.25))
    expect(np.bool_(True), "numpy condition", x=np.float32(0.5))
    with pytest.raises(ClaimError, match="x=1.5"):
        expect(torch.tensor(False), "tensor condition", x=torch.tensor([1.5]))
    with pytest.raises(RuntimeError):  # a many-element condition is ambiguous: never silently true
        expect(torch.tensor([True, False]), "ambiguous")


def test_fmt():
    assert fmt(0.0660123) == "0.06601" and fmt(12345.678) == "1.235e+04"
    assert fmt(3) == "3" and fmt(True) == "True" and fmt(float("nan")) == "nan"
    assert fmt([0.1, 0.25]) == "[0.1, 0.25]" and fmt((1, 2)) == "(1, 2)"
    assert fmt("DDIM") == "'DDIM'"


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775
    lo, hi = wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10)[0] == 0.0 and round(wilson(0, 10)[1], 4) == 0.2775
    assert round(wilson(10, 10)[0], 4) == 0.7225 and wilson(10, 10)[1] <= 1.0
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_proportion_diff_matches_newcombe_method_10():
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80 = 0.2000, method 10: 0.0524 to 0.3339
    d, lo, hi = proportion_diff(56, 70, 48, 80)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    # 9/10 vs 8/10 is within noise; 20/20 vs 5/20 is not
    assert proportion_diff(9, 10, 8, 10)[1] < 0
    assert proportion_diff(20, 20, 5, 20)[1] > 0


def test_mean_interval():
    m, half = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and half == pytest.approx(1.959964 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-6)
    assert mean_interval(torch.tensor([1.0, 1.0]))[1] == 0.0
    with pytest.raises(ValueError):
        mean_interval([1.0])
