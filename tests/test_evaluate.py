"""evaluate.pareto_knee: the rule Lab 03 uses to pick a sampler and a step count."""

from helpers.evaluate import pareto_knee


def run(name, seconds, distance, accuracy=1.0):
    return dict(sampler=name, seconds=seconds, distance=distance, accuracy=accuracy)


def names(runs):
    return [r["sampler"] for r in runs]


def test_the_knee_is_where_fidelity_flattens():
    runs = [run("a", 1, 1.0), run("b", 2, 0.2), run("c", 4, 0.15), run("d", 8, 0.1)]
    knee, front = pareto_knee(runs, min_accuracy=0.9)
    assert names(front) == ["a", "b", "c", "d"] and knee["sampler"] == "b"


def test_time_is_read_on_a_log_scale():
    # on a log scale "b" (2 s) is the bend; on a linear one "c" (30 s) would be picked
    runs = [run("a", 1, 1.0), run("b", 2, 0.5), run("c", 30, 0.02), run("d", 100, 0.0)]
    assert pareto_knee(runs, 0.9)[0]["sampler"] == "b"


def test_no_run_below_the_line_makes_the_best_run_the_knee():
    # Lab 03 on a CPU (2026-11-23): Euler 10 costs almost what Euler a 10 costs and is much worse;
    # the fastest run (Euler 5) is not a knee, the best one is
    runs = [run("Euler 5", 0.18, 0.037), run("Euler 10", 0.30, 0.021), run("Euler a 10", 0.31, 0.006)]
    knee, front = pareto_knee(runs, 0.95)
    assert len(front) == 3 and knee["sampler"] == "Euler a 10"


def test_only_runs_where_the_prompt_works_count():
    runs = [run("fast but wrong", 0.1, 0.0, accuracy=0.5), run("a", 1, 1.0), run("b", 2, 0.2),
            run("c", 4, 0.15), run("d", 8, 0.1)]
    knee, front = pareto_knee(runs, min_accuracy=0.95)
    assert "fast but wrong" not in names(front) and knee["sampler"] == "b"


def test_the_front_drops_slower_runs_that_are_not_closer():
    runs = [run("a", 1, 0.5), run("slow and worse", 3, 0.6), run("b", 4, 0.1)]
    knee, front = pareto_knee(runs, 0.9)
    assert names(front) == ["a", "b"] and knee["sampler"] == "b"       # < 3 on the front: the best


def test_when_no_run_works_all_runs_are_used():
    runs = [run("a", 1, 0.5, accuracy=0.2), run("b", 2, 0.1, accuracy=0.2)]
    knee, front = pareto_knee(runs, 0.9)
    assert names(front) == ["a", "b"] and knee["sampler"] == "b"
