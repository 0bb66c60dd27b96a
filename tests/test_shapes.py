"""Tests of the toy world (helpers/shapes.py): rendering, captions, splits and the judge."""

import time

import numpy as np
import pytest
import torch

from helpers import shapes as S

ALL_PALETTE = {**S.COLORS, **S.EXTRA_COLORS}


@pytest.fixture(scope="module")
def batch():
    """2,000 ground-truth samples over every attribute combination."""
    return S.make_batch(2000, seed=123, split="all")


@pytest.fixture(scope="module")
def judged(batch):
    return S.judge((batch["pixel_values"] + 1) / 2, batch["attributes"])


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 5x5 Gaussian blur of (B, 3, H, W) images."""
    k = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / (2 * sigma**2))
    k = (k[:, None] * k[None]) / k.sum() ** 2                                # (5, 5)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    return torch.nn.functional.conv2d(x, k.expand(3, 1, 5, 5).contiguous(), groups=3)


# ---- the world --------------------------------------------------------------------------

def test_constants():
    assert S.IMAGE_SIZE == 64
    assert list(S.COLORS) == ["red", "green", "blue", "yellow", "purple", "cyan"]
    assert set(S.EXTRA_COLORS) == {"orange", "pink"}
    assert set(S.POSITION_CENTERS) == set(S.POSITIONS)
    rgb = np.array(list(ALL_PALETTE.values()), float)                       # (8, 3)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e3 * np.eye(len(rgb))
    assert dist.min() > 90                      # colours stay apart after +-8 jitter
    assert np.linalg.norm(rgb - np.array(S.BACKGROUND), axis=1).min() > 120
    a = S.Attributes("circle", "red", "small", "center")
    assert {a: 1}[S.Attributes("circle", "red", "small", "center")] == 1   # hashable


def test_render_deterministic_and_seeded():
    a = S.Attributes("triangle", "cyan", "large", "top right")
    img1, mask1 = S.render(a, seed=5)
    img2, mask2 = S.render(a, seed=5)
    assert torch.equal(img1, img2) and torch.equal(mask1, mask2)
    img3, _ = S.render(a, seed=6)
    assert not torch.equal(img1, img3)
    ds1, ds2, ds3 = S.ShapesDataset(10, seed=3), S.ShapesDataset(10, seed=3), S.ShapesDataset(10, seed=4)
    for i in (0, 7):
        assert torch.equal(ds1[i]["pixel_values"], ds2[i]["pixel_values"])
        assert ds1[i]["caption"] == ds2[i]["caption"]
    assert any(not torch.equal(ds1[i]["pixel_values"], ds3[i]["pixel_values"]) for i in range(3))
    # item i does not depend on the dataset's length
    assert torch.equal(S.ShapesDataset(1000, seed=3)[7]["pixel_values"], ds1[7]["pixel_values"])


def test_dataset_item():
    ds = S.ShapesDataset(50, seed=1, split="all")
    assert len(ds) == 50
    for i in range(0, 50, 7):
        item = ds[i]
        x, m, e = item["pixel_values"], item["mask"], item["edges"]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert m.shape == (1, 64, 64) and m.dtype == torch.float32
        assert e.shape == (1, 64, 64) and e.dtype == torch.float32
        assert -1 <= x.min() and x.max() <= 1
        assert set(m.unique().tolist()) == {0.0, 1.0}
        assert set(e.unique().tolist()) <= {0.0, 1.0} and e.sum() > 0
        assert isinstance(item["attributes"], S.Attributes)
        assert S.parse_caption(item["caption"]) == item["attributes"]
        # the background is plain, the shape is not background-coloured
        unit = (x + 1) / 2                                                   # (3, H, W)
        bg = torch.tensor(S.BACKGROUND) / 255
        dist = (unit - bg[:, None, None]).norm(dim=0)                        # (H, W)
        assert dist[m[0] == 0].median() < 1e-6
        assert dist[m[0] == 1].min() > 0.2
    with pytest.raises(IndexError):
        ds[50]


def test_edges_are_the_outline():
    b = S.make_batch(16, seed=2, split="all")
    m, e = b["mask"], b["edges"]                                             # (B, 1, H, W)
    assert torch.equal(S.edges(m), e)                                        # batched == per item
    assert torch.equal(S.edges(m[0]), e[0])
    assert (e <= m).all()                                                    # inside the mask
    # an edge pixel is exactly a mask pixel with a 4-neighbour (inside the image) outside it
    mm = m[:, 0].bool()
    outside_nb = torch.zeros_like(mm)
    outside_nb[:, 1:] |= ~mm[:, :-1]
    outside_nb[:, :-1] |= ~mm[:, 1:]
    outside_nb[:, :, 1:] |= ~mm[:, :, :-1]
    outside_nb[:, :, :-1] |= ~mm[:, :, 1:]
    assert torch.equal(e[:, 0].bool(), mm & outside_nb)
    # a thin outline: well under half of the mask
    assert (e.flatten(1).sum(1) < 0.6 * m.flatten(1).sum(1)).all()


def test_geometry_follows_attributes():
    for shape in S.SHAPES:
        for size, (lo, hi) in {"small": (13, 19), "large": (26, 34)}.items():
            for position, (cx, cy) in S.POSITION_CENTERS.items():
                _, mask = S.render(S.Attributes(shape, "red", size, position), seed=9)
                ys, xs = torch.nonzero(mask[0], as_tuple=True)
                width = int(xs.max() - xs.min() + 1)
                assert lo <= width <= hi, (shape, size, width)
                assert abs((xs.min() + xs.max() + 1) / 2 - cx) <= 2.6
                assert abs((ys.min() + ys.max() + 1) / 2 - cy) <= 2.6
                rows = mask[0].sum(1)[ys.min(): ys.max() + 1]                # (h,)
                if shape == "triangle":                                      # apex on top
                    assert rows[:3].sum() < rows[-3:].sum() / 3
                    assert (rows.diff() >= 0).all()


# ---- captions and splits ----------------------------------------------------------------

def test_captions_parse_back():
    combos = S.all_attributes("all") + [S.Attributes(sh, c, "small", "center")
                                        for sh in S.SHAPES for c in S.EXTRA_COLORS]
    vocab = set(S.VOCABULARY)
    assert list(S.VOCABULARY) == sorted(vocab)
    for a in combos:
        for t in range(len(S.TEMPLATES)):
            text = S.caption(a, t)
            assert S.parse_caption(text) == a, text
            assert set(text.replace(",", " ").split()) <= vocab, text
    a = S.Attributes("circle", "red", "small", "center")
    assert S.caption(a, 0) == "a small red circle at the center"
    assert S.parse_caption("A Large, BLUE square -- bottom left.") == S.Attributes(
        "square", "blue", "large", "bottom left")
    assert S.parse_caption("a red circle at the center") is None             # no size
    assert S.parse_caption("a small red blue circle at the center") is None  # two colours
    assert S.parse_caption("a small red circle at the top left and center") is None


def test_splits():
    assert len(S.all_attributes("all")) == 180
    assert len(S.all_attributes("train")) == 150
    assert len(S.all_attributes("heldout")) == 30
    assert S.all_attributes("all") == S.all_attributes("all")                # fixed order
    assert {(a.color, a.shape) for a in S.all_attributes("heldout")} == S.HELD_OUT
    train = S.sample_attributes(2000, seed=0, split="train")
    assert not any((a.color, a.shape) in S.HELD_OUT for a in train)
    assert len(set(train)) == 150                                            # all others seen
    held = S.sample_attributes(300, seed=0, split="heldout")
    assert all((a.color, a.shape) in S.HELD_OUT for a in held)
    assert S.sample_attributes(2000, seed=0) == train                        # default: train
    assert S.sample_attributes(10, seed=0) == train[:10]
    assert S.sample_attributes(10, seed=1) != train[:10]
    ds = S.ShapesDataset(20, seed=0, split="train")
    assert [ds[i]["attributes"] for i in range(20)] == train[:20]
    with pytest.raises(ValueError):
        S.all_attributes("test")


def test_template_choice():
    ds = S.ShapesDataset(40, seed=0, templates=[1])
    ds_all = S.ShapesDataset(40, seed=0)
    for i in range(0, 40, 5):
        assert ds[i]["caption"] == S.caption(ds[i]["attributes"], 1)
        assert torch.equal(ds[i]["pixel_values"], ds_all[i]["pixel_values"])
    all_t = S.ShapesDataset(200, seed=0)
    used = {next(t for t in range(len(S.TEMPLATES))
                 if all_t[i]["caption"] == S.caption(all_t[i]["attributes"], t))
            for i in range(200)}
    assert used == set(range(len(S.TEMPLATES)))


def test_make_batch(batch):
    assert batch["pixel_values"].shape == (2000, 3, 64, 64)
    assert batch["mask"].shape == batch["edges"].shape == (2000, 1, 64, 64)
    assert len(batch["captions"]) == len(batch["attributes"]) == 2000
    assert len(set(batch["attributes"])) == 180


def test_render_speed():
    """Loose guard (~1 ms/item measured): 20,000 items must render in well under a minute."""
    ds = S.ShapesDataset(500, seed=0)
    t = time.perf_counter()
    for i in range(500):
        ds[i]
    assert time.perf_counter() - t < 10


# ---- the judge --------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["shape", "color", "size", "position", "all"])
def test_judge_on_ground_truth(judged, key):
    assert judged.correct[key].shape == (2000,) and judged.correct[key].dtype == torch.bool
    assert judged.accuracy[key] >= 0.99, judged.summary()


def test_judge_masks_match(batch, judged):
    assert judged.masks.shape == (2000, 1, 64, 64) and judged.masks.dtype == torch.bool
    assert S.iou(judged.masks, batch["mask"]).mean() > 0.97


def test_judge_robust_to_noise_and_blur(batch):
    x = (batch["pixel_values"][:1000] + 1) / 2                               # (B, 3, H, W)
    gen = torch.Generator().manual_seed(0)
    noisy = (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    blurred = (_blur(x, 0.8) + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    for images in (noisy, blurred):
        result = S.judge(images, batch["attributes"][:1000])
        for key, acc in result.accuracy.items():
            assert acc >= 0.97, (key, result.summary())


def test_judge_blank_image_is_wrong():
    blank = (torch.tensor(S.BACKGROUND, dtype=torch.float32) / 255)[None, :, None, None]
    blank = blank.expand(2, 3, 64, 64).clone()                               # (2, 3, H, W)
    blank[1] += 0.02 * torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = S.Attributes("circle", "red", "small", "center")
    result = S.judge(blank.clamp(0, 1), [target, target])
    assert result.attributes == [None, None]
    assert not result.masks.any()
    assert all(not v.any() for v in result.correct.values())
    assert result.accuracy["all"] == 0.0
    assert "2 without a shape" in result.summary()


def test_judge_extra_colors():
    targets = [S.Attributes(shape, color, size, pos) for shape, color, size, pos in [
        ("circle", "orange", "small", "top left"), ("square", "orange", "large", "center"),
        ("triangle", "orange", "large", "bottom right"), ("circle", "orange", "large", "top right"),
        ("triangle", "pink", "small", "bottom left"), ("square", "pink", "small", "top right"),
        ("circle", "pink", "large", "center"), ("triangle", "pink", "large", "top left")]]
    images = torch.stack([S.render(a, seed=i)[0] for i, a in enumerate(targets)])
    result = S.judge(images, targets, palette=ALL_PALETTE)
    assert result.accuracy["all"] == 1.0, result.attributes
    # with the training palette the new colours cannot be named
    assert S.judge(images, targets).accuracy["color"] == 0.0


def test_judge_planted_wrong_targets_score_low(batch, judged):
    shuffled = batch["attributes"][1:] + batch["attributes"][:1]
    result = S.judge((batch["pixel_values"][:500] + 1) / 2, shuffled[:500])
    # chance levels: shape 1/3, colour 1/6, size 1/2, position 1/5
    assert result.accuracy["shape"] < 0.45
    assert result.accuracy["color"] < 0.3
    assert result.accuracy["size"] < 0.65
    assert result.accuracy["position"] < 0.35
    assert result.accuracy["all"] < 0.05


def test_judge_input_formats(batch):
    x = (batch["pixel_values"][:4] + 1) / 2                                  # (4, 3, H, W)
    ref = S.judge(x).attributes
    as_uint8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (4, H, W, 3)
    assert S.judge(as_uint8).attributes == ref
    assert S.judge(x.permute(0, 2, 3, 1).numpy()).attributes == ref
    assert S.judge(x[0]).attributes == ref[:1]
    Image = pytest.importorskip("PIL.Image")
    assert S.judge([Image.fromarray(a) for a in as_uint8]).attributes == ref
    assert S.to_unit(as_uint8).shape == (4, 3, 64, 64)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.judge(batch["pixel_values"][:4])                                   # [-1, 1] refused


def test_iou():
    a = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    b = torch.zeros(3, 1, 8, 8)
    a[0, 0, :4] = True
    b[0, 0, :2] = 1.0                     # half of a
    a[1, 0, :4] = True
    b[1, 0, 4:] = 1.0                     # disjoint
    out = S.iou(a, b)                     # image 2: both empty
    assert out.shape == (3,)
    assert torch.allclose(out, torch.tensor([0.5, 0.0, 1.0]))
