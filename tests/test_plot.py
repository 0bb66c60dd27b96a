"""helpers.plot.image_grid shows every label whole: no two labels overlap, none leaves the figure."""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from helpers.plot import image_grid

CAPTIONS = ["a large cyan circle at the bottom right", "a small magenta triangle at the top left",
            "a large yellow square at the center", "a small red circle at the bottom left"]


def _label_boxes(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [ax.title for ax in fig.axes if ax.get_title()] + [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    return [(t.get_text(), t.get_window_extent(r)) for t in texts], fig.bbox


@pytest.mark.parametrize("cell", [0.9, 1.0, 1.4])
def test_long_captions_neither_overlap_nor_leave_the_figure(cell):
    img = torch.zeros(3, 8, 8)
    fig = image_grid([[img] * 4, [img] * 4], col_labels=CAPTIONS, row_labels=["DDIM 25 steps, w = 4.0", "x"],
                     cell=cell)
    boxes, figbox = _label_boxes(fig)
    assert len(boxes) == 6
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        assert not ba.overlaps(bb), f"labels overlap: {a!r} and {b!r}"
    for text, box in boxes:
        assert box.x0 >= figbox.x0 - 1 and box.x1 <= figbox.x1 + 1 and box.y1 <= figbox.y1 + 1, f"cut: {text!r}"
    # the words are all there, only wrapped
    assert [t.replace("\n", " ") for t, _ in boxes[:4]] == CAPTIONS
    plt.close(fig)


def test_short_labels_stay_on_one_line():
    fig = image_grid([[torch.zeros(3, 8, 8)] * 2], col_labels=["w = 1", "w = 4"], row_labels=["DDIM"])
    assert [ax.get_title() for ax in fig.axes] == ["w = 1", "w = 4"] and fig.axes[0].get_ylabel() == "DDIM"
    plt.close(fig)
