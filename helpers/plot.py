"""Small figure helpers shared by the labs (matplotlib only; no global style changes).

    image_grid([[img, img], [img, img]], row_labels=[...], col_labels=[...])
    plot_curves({"linear": y1, "cosine": y2}, xlabel="t", ylabel="abar_t")

Each helper returns the Figure (or Axes) and never calls ``plt.show()``: a notebook cell ends
with ``plt.show()`` itself, so a figure is never displayed twice.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["to_image", "image_grid", "plot_curves", "flow_diagram"]


def to_image(x, value_range=(-1.0, 1.0)) -> np.ndarray:
    """A (C, H, W) or (H, W, C) tensor/array (C = 1 or 3) in ``value_range`` -> an
    (H, W, 3) float array in [0, 1], clipped, ready for ``imshow``."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    lo, hi = value_range
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _wrap(label, width: int) -> str:
    """``label`` broken into lines of at most ``width`` characters (words kept whole; a word
    longer than a line is split); explicit newlines are kept."""
    return "\n".join(textwrap.fill(part, width, break_long_words=True) or " " for part in str(label).split("\n"))


def image_grid(rows, row_labels=None, col_labels=None, title=None, cell=1.4, value_range=(-1.0, 1.0),
               fontsize=9):
    """A grid of images: ``rows`` is a list of rows, each a list of images (see
    :func:`to_image`). Labels go on the left of each row and above each column.

    Labels are shown whole: each is wrapped to the width of its cell (a column label) or of
    a left margin of about one cell (a row label), and the figure grows to fit the tallest
    label, so captions such as "a large cyan circle at the bottom right" neither overlap
    their neighbours nor get cut."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    char_in = fontsize * 0.6 / 72  # the width of an average character, in inches
    col_chars = max(6, int(cell / char_in))
    row_chars = max(8, int(max(cell, 1.2) / char_in))
    cols = [_wrap(c, col_chars) for c in col_labels] if col_labels is not None else None
    rlab = [_wrap(r, row_chars) for r in row_labels] if row_labels is not None else None
    line_in = fontsize * 1.35 / 72  # one line of label text, in inches
    top = (max(c.count("\n") + 1 for c in cols) * line_in + 0.1) if cols else 0.0
    left = (max(len(line) for r in rlab for line in r.split("\n")) * char_in + 0.2) if rlab else 0.0
    row_h = max(cell, max((r.count("\n") + 1) * line_in for r in rlab)) if rlab else cell
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + left + 0.3, row_h * n_rows + top + 0.3),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(to_image(row[j], value_range))
            else:
                ax.axis("off")
            if rlab is not None and j == 0:
                ax.set_ylabel(rlab[i], fontsize=fontsize, rotation=0, ha="right", va="center")
            if cols is not None and i == 0:
                ax.set_title(cols[j], fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize + 1)
    fig.tight_layout()
    return fig


def plot_curves(curves, *, xlabel, ylabel, title=None, ax=None, logy=False, x=None, **line_kw):
    """Plot named 1-D curves on one Axes. ``curves``: ``{label: y}`` (y a tensor/array; x
    defaults to 0..len(y)-1, or pass ``x``) or ``{label: (x, y)}``. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 3.2))
    for label, c in curves.items():
        xs, ys = c if isinstance(c, tuple) else (x if x is not None else np.arange(len(c)), c)
        ys = ys.detach().cpu().numpy() if isinstance(ys, torch.Tensor) else np.asarray(ys)
        xs = xs.detach().cpu().numpy() if isinstance(xs, torch.Tensor) else np.asarray(xs)
        ax.plot(xs, ys, label=label, **line_kw)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def flow_diagram(nodes, edges, *, title=None, figsize=(10.5, 3.6)):
    """Boxes joined by labelled arrows, e.g. a pipeline's components and the tensors they pass.

    ``nodes``: ``{name: (x, y, text)}``, box centres in axes units ([0, 1] both ways).
    ``edges``: ``[(src, dst, label)]`` or ``(src, dst, label, rad)``: an arrow from box ``src``
    to box ``dst`` (bent by ``rad``, matplotlib's arc3 curvature) with ``label`` beside its
    middle. Returns the Figure."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    boxes = {name: ax.text(x, y, text, ha="center", va="center", fontsize=8, zorder=3,
                           bbox=dict(boxstyle="round,pad=0.45", fc="#eef3fb", ec="#4a6fa5"))
             for name, (x, y, text) in nodes.items()}
    for edge in edges:
        src, dst, label = edge[:3]
        rad = edge[3] if len(edge) > 3 else 0.0
        ax.annotate("", xy=(0.5, 0.5), xycoords=boxes[dst], xytext=(0.5, 0.5), textcoords=boxes[src],
                    arrowprops=dict(arrowstyle="-|>", color="#555", lw=1.0, shrinkA=2, shrinkB=2,
                                    patchA=boxes[src].get_bbox_patch(), patchB=boxes[dst].get_bbox_patch(),
                                    connectionstyle=f"arc3,rad={rad}"))
        (x0, y0), (x1, y1) = nodes[src][:2], nodes[dst][:2]
        # the middle of an arc3 curve: the chord's middle moved by rad / 2 times the chord turned by -90
        # degrees, in display units (hence the aspect ratio)
        aspect = figsize[0] / figsize[1]
        x, y = (x0 + x1) / 2 + rad / 2 * (y1 - y0) / aspect, (y0 + y1) / 2 - rad / 2 * (x1 - x0) * aspect
        horizontal = abs(y1 - y0) < 1e-6
        if horizontal:
            y += 0.07
        side = "center" if horizontal else ("left" if x >= (x0 + x1) / 2 else "right")
        x += {"left": 0.01, "right": -0.01, "center": 0.0}[side]
        ax.text(x, y, label, ha=side, va="center", fontsize=7, color="#333", zorder=4)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
