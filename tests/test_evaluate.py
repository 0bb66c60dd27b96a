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


# ------------------------------------------------ Lab 11: the pixel world and its Fréchet distance

def _pixel_sets():
    import torch

    from helpers import evaluate
    a, _, _ = evaluate.pixel_dataset(240, seed=1)
    b, labels, attrs = evaluate.pixel_dataset(240, seed=2)
    return torch, evaluate, a, b, labels, attrs


def test_world_fid_is_about_zero_for_two_real_sets_and_grows_with_corruption():
    torch, evaluate, a, b, _, _ = _pixel_sets()
    g = torch.Generator().manual_seed(0)
    real = evaluate.world_fid(a, b)
    noisy = [evaluate.world_fid(a, (b + s * torch.randn(b.shape, generator=g)).clamp(-1, 1)) for s in (0.03, 0.1, 0.3)]
    blurred = [evaluate.world_fid(a, torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(b, (k // 2,) * 4, mode="replicate"), k, 1)) for k in (3, 5)]
    assert real < 1.0
    assert real < noisy[0] < noisy[1] < noisy[2] and noisy[0] > 3 * real
    assert real < blurred[0] < blurred[1] and blurred[0] > 3 * real


def test_world_fid_sees_wrong_shapes_and_colours():
    """Real images of other classes only (all circles; all red): far from the real mix."""
    torch, evaluate, a, b, _, attrs = _pixel_sets()
    circles = b[torch.tensor([x.shape == "circle" for x in attrs])]
    reds = b[torch.tensor([x.color == "red" for x in attrs])]
    real = evaluate.world_fid(a, b)
    assert evaluate.world_fid(a, circles) > 5 * real and evaluate.world_fid(a, reds) > 5 * real


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    import torch

    from helpers.evaluate import frechet_distance
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    y = torch.randn(200_000, 2, generator=g, dtype=torch.float64) * 2 + torch.tensor([1.0, 0.0], dtype=torch.float64)
    # |mu|^2 = 1; Tr(I + 4I - 2 * 2I) = 2 -> 3
    assert abs(frechet_distance(x, y) - 3.0) < 0.05
    assert abs(frechet_distance(x, x)) < 1e-9


def test_real_32px_images_are_judged_right_after_upsampling():
    torch, evaluate, _, b, labels, _ = _pixel_sets()
    acc = evaluate.pixel_accuracy(b, labels)
    assert acc["color"] == 1.0 and acc["shape"] >= 0.99
    assert all(evaluate.pixel_label(type("A", (), {"color": c, "shape": s})) == k
               for k in range(evaluate.NUM_PIXEL_CLASSES) for c, s in [evaluate.label_attributes(k)])


def test_count_flops_counts_fused_attention_as_its_two_matmuls():
    """On a CPU the fused scaled_dot_product_attention kernel has no flop formula (it counted 0:
    a learner's attention written with it failed lab 07's head-count claim); count_flops runs
    it on the math backend: 2 * B H N M d for q k^T plus the same for the weights times v."""
    import torch
    import torch.nn.functional as F

    from helpers.evaluate import count_flops
    B, H, N, M, d = 2, 3, 10, 7, 8
    q, k, v = torch.randn(B, H, N, d), torch.randn(B, H, M, d), torch.randn(B, H, M, d)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 4 * B * H * N * M * d
    explicit = count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1) @ v)
    assert explicit == 4 * B * H * N * M * d
