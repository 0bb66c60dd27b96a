"""Feedback that is exact: hints on demand (written next to the solution, out of the
starter), whole messages, enough digits, the learner's own line named as theirs."""
from __future__ import annotations

import textwrap

import pytest
import torch

from helpers.checks._core import CheckFailed, assert_close, describe_exception, distinct, run_check
from helpers.exercise import check, hint, hint_levels
from helpers.make_starters import MarkerError, solution_blocks, strip_solutions

NEW_FORM = textwrap.dedent('''\
    def add_noise(x0, noise, abar_t):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (DDPM eq. 4)."""
        # BEGIN SOLUTION
        # TODO: the closed form of the forward process; read DDPM eq. 4.
        # HINT 1: DDPMScheduler.add_noise, the lines that build sqrt_alpha_prod.
        # HINT 2: take the square roots of abar_t and of 1 - abar_t,
        # HINT 2: then weigh x0 and the noise with them.
        # HINT 3: x_t = abar_t**0.5 * x0 + (1 - abar_t)**0.5 * noise
        return abar_t**0.5 * x0 + (1 - abar_t) ** 0.5 * noise
        # END SOLUTION


    class Block:
        def forward(self, x):
            # BEGIN SOLUTION
            # TODO: the residual block of lab 11.
            # HINT 1: UNet2DModel's ResnetBlock2D.
            return x
            # END SOLUTION
''')


def test_starter_gets_the_todo_and_a_pointer_never_the_hints():
    text = strip_solutions(NEW_FORM, "lab99")
    assert "# TODO: the closed form of the forward process; read DDPM eq. 4." in text
    assert 'hint("lab99", "add_noise")' in text and 'hint("lab99", "Block")' in text
    assert "HINT" not in text and "sqrt_alpha_prod" not in text and "weigh" not in text
    assert "abar_t**0.5 * x0" not in text.split('"""')[-1]  # no solution line outside the docstring
    assert 'raise NotImplementedError("TODO(lab99): add_noise")' in text
    assert 'raise NotImplementedError("TODO(lab99): Block.forward")' in text


def test_solution_blocks_parse_levels_and_continuations():
    add, block = solution_blocks(NEW_FORM)
    assert add.name == "add_noise" and block.name == "Block.forward"
    assert add.todo == ["the closed form of the forward process; read DDPM eq. 4."]
    assert sorted(add.hints) == [1, 2, 3] and len(add.hints[2]) == 2
    assert add.code == ["    return abar_t**0.5 * x0 + (1 - abar_t) ** 0.5 * noise"]
    with pytest.raises(MarkerError, match="without a matching"):
        solution_blocks("def f():\n    # BEGIN SOLUTION\n    return 1\n")


def test_older_unnumbered_hints_still_go_to_the_starter():
    src = "def f(x):\n    # BEGIN SOLUTION\n    # HINT: multiply by two\n    return 2 * x\n    # END SOLUTION\n"
    text = strip_solutions(src, "lab99")
    assert "# TODO: multiply by two" in text and "Stuck?" not in text and "return 2 * x" not in text


def _numbered_fake(fake_lab):
    """Rewrite the fake lab's solution with numbered hints (the module stays imported)."""
    import fake_sol99

    path = fake_lab.root / "mods" / "fake_sol99.py"
    src = path.read_text().replace("    # HINT: multiply by two\n",
                                   "    # TODO: twice the input.\n    # HINT 1: read the docstring.\n"
                                   "    # HINT 2: scale x.\n    # HINT 3: 2 * x\n")
    path.write_text(src)
    assert fake_sol99.__file__ == str(path)


def test_hint_shows_one_more_level_per_call_then_stays(fake_lab, capsys):
    _numbered_fake(fake_lab)
    assert hint_levels("lab99", "double") == ["read the docstring.", "scale x.", "2 * x"]
    outs = []
    for _ in range(4):
        assert hint("lab99", "double") is None  # a cell ending in hint(...) shows it once
        outs.append(capsys.readouterr().out)
    assert outs[0].startswith("Hint 1 of 3 for double (lab99): where to look\nread the docstring.")
    assert "Hint 2 of 3" in outs[1] and "the plan" in outs[1] and "Hint 3 of 3" in outs[2] and "2 * x" in outs[2]
    assert "last hint" in outs[2] and outs[3] == outs[2]
    hint("lab99", "double", level=1)
    assert "Hint 1 of 3" in capsys.readouterr().out
    hint("lab99", "nope")
    assert "No hints are written for 'nope'" in capsys.readouterr().out


def test_a_failed_check_names_the_hint_call(fake_lab, capsys):
    _numbered_fake(fake_lab)
    fake_lab.write("def double(x):\n    return x\n\ndef quad(x):\n    return 4 * x\n")
    results = check("lab99", seed=1)
    row = {r.name: r for r in results}["double"]
    assert row.status == "failed" and row.message.endswith('More help: hint("lab99", "double") shows the next hint.')
    assert {r.name: r for r in results}["quad"].status == "passed"


def test_check_prints_every_long_message_whole(fake_lab, capsys):
    long = "x" * 150 + "END"
    fake_lab.write(f"def double(x):\n    raise ValueError({long!r})\n\ndef quad(x):\n    return 4 * x\n")
    check("lab99", seed=2)
    out = capsys.readouterr().out
    assert long in out  # cut to 100 characters in the table, whole below it


def test_enough_digits_to_see_the_difference():
    assert distinct(0.06971391, 0.06971392) == ("0.06971391", "0.06971392")
    assert distinct(1.0, 1.0) == ("1", "1")
    e = torch.tensor([0.0697139123], dtype=torch.float64)
    with pytest.raises(CheckFailed) as info:
        assert_close("f(x)", e + 3e-9, e, atol=1e-12, rtol=0.0)
    got, expected = info.value.args[0].split("got ")[1].split(", expected ")
    assert got != expected.strip()


def test_a_learner_error_caught_by_a_check_still_names_the_learners_line(tmp_path):
    learner = tmp_path / "lab99_fake.py"
    learner.write_text("def f(x):\n    return x[10]\n")
    ns: dict = {}
    exec(compile(learner.read_text(), str(learner), "exec"), ns)

    def check_f(fn, gen):  # a check that catches the learner's exception and describes it
        try:
            fn(torch.zeros(3))
        except IndexError as exc:
            raise CheckFailed(f"f raised {describe_exception(exc)}") from exc

    res = run_check(check_f, ns["f"], torch.Generator(), learner_file=str(learner))
    assert res.status == "failed" and "at lab99_fake.py line 2, in f: return x[10]" in res.message
    assert "not in your file" not in res.message


def test_return_type_rule_judges_values_not_types():
    import numpy as np

    from helpers.checks._core import as_number, as_numbers

    assert as_number("f()", torch.tensor(0.5)) == 0.5 and as_number("f()", np.float32(0.25)) == 0.25
    assert as_number("f()", 3) == 3.0 and isinstance(as_number("f()", 3), float)
    assert as_number("n()", 4.0, integer=True) == 4 and as_number("n()", torch.tensor(7), integer=True) == 7
    for bad, integer, why in [(torch.ones(2), False, "2 values"), ("1.0", False, "expected a number"),
                              (True, False, "expected a number"), (2.5, True, "a fraction")]:
        with pytest.raises(CheckFailed, match=why):
            as_number("f()", bad, integer=integer)
    assert as_numbers("s()", [4, 8.0, torch.tensor(8)], 3, integer=True) == (4, 8, 8)
    assert as_numbers("s()", torch.Size([4, 8, 8]), 3, integer=True) == (4, 8, 8)
    with pytest.raises(CheckFailed, match="expected 3 values, got 2"):
        as_numbers("s()", (8, 8), 3)
    with pytest.raises(CheckFailed, match="expected a tuple"):
        as_numbers("s()", 8, 3)


def test_importing_any_check_prints_no_library_notice():
    """Issue 15: a check run from a shell printed transformers' "requires torchvision" notice
    (labs 04, 07, 08, 10). helpers.checks quiets transformers before any check imports it."""
    import os
    import subprocess
    import sys

    from helpers.labs import available_labs

    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    code = "import importlib\n" + "".join(f"importlib.import_module({info.check_module!r})\n"
                                          for info in available_labs())
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "torchvision" not in res.stdout + res.stderr


def test_require_raises_judges_the_invalid_input_call():
    """_core.require_raises: the one place that checks 'raises ValueError like diffusers'."""
    import pytest

    from helpers.checks._core import CheckFailed, require_raises

    def bad(_):
        raise ValueError("no")

    require_raises("f('x')", lambda: bad("x"), "an unknown name")  # raises: passes
    with pytest.raises(CheckFailed, match=r"Likely bug: accepted\.\nf\('x'\): expected a ValueError \(an unknown "
                                          r"name\), but it returned .*int.*\. See diffusers\."):
        require_raises("f('x')", lambda: 3, "an unknown name", likely="Likely bug: accepted.\n", note=" See diffusers.")
    with pytest.raises(CheckFailed, match=r"expected a ValueError \(an unknown name\), got KeyError"):
        require_raises("f('x')", lambda: {}["x"], "an unknown name")
    with pytest.raises(NotImplementedError):  # a TODO stays a TODO
        require_raises("f('x')", lambda: (_ for _ in ()).throw(NotImplementedError("TODO")), "an unknown name")
    with pytest.raises(CheckFailed, match="got NotImplementedError"):  # where raising it is the bug
        require_raises("f('x')", lambda: (_ for _ in ()).throw(NotImplementedError("no")), "an unknown name",
                       passthrough=())
