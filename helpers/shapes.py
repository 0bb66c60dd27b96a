"""The toy world of the course: coloured shapes on a plain background, and their judge.

Every image is 64x64 RGB and shows exactly one shape, described by four attributes
(shape, colour, size, position) and by a caption such as "a large red circle at the top
left". Each image comes with its binary mask and its outline (edge map), the control maps
of the ControlNet lab.

The judge reads the four attributes back out of any image (a training sample or a
generated one), so "did the prompt work" becomes a number: `judge(images, targets)`.

Conventions
-----------
- Pixel (row j, column i) covers the square [i, i+1) x [j, j+1) of the continuous plane;
  positions are given as (x, y) in that plane, x to the right and y downwards.
- Images handed to the model are float32 (3, 64, 64) in [-1, 1] (what diffusers VAEs
  expect); images handed to the judge are in [0, 1] (see `to_unit`).
- Everything random is drawn from numpy generators seeded by the caller: the same seed
  always gives the same image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "IMAGE_SIZE", "SHAPES", "COLORS", "EXTRA_COLORS", "SIZES", "POSITIONS", "BACKGROUND",
    "POSITION_CENTERS", "SIZE_PIXELS", "Attributes", "HELD_OUT", "all_attributes",
    "sample_attributes", "TEMPLATES", "PUNCTUATION", "caption", "parse_caption",
    "VOCABULARY", "render", "edges", "ShapesDataset", "make_batch", "to_unit",
    "JudgeResult", "judge", "iou",
]

# ----------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")

# Saturated, well separated colours: pairwise RGB distance >= 126 within COLORS (>= 96
# with EXTRA_COLORS: orange sits between red and yellow), >= 132 from the background.
# Order matters: it is the order of `all_attributes`.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 220, 30),
    "purple": (145, 40, 165),
    "cyan": (20, 195, 210),
}
# Never in the training data; a later lab teaches one of them with LoRA.
EXTRA_COLORS = {
    "orange": (245, 120, 10),
    "pink": (245, 110, 190),
}
_ALL_COLORS = {**COLORS, **EXTRA_COLORS}

SIZES = ("small", "large")
SIZE_PIXELS = {"small": 16.0, "large": 30.0}      # width of the shape, in pixels
POSITIONS = ("top left", "top right", "center", "bottom left", "bottom right")
POSITION_CENTERS = {                              # (x, y) of the shape's box centre
    "top left": (18.0, 18.0),
    "top right": (46.0, 18.0),
    "center": (32.0, 32.0),
    "bottom left": (18.0, 46.0),
    "bottom right": (46.0, 46.0),
}
BACKGROUND = (235, 235, 230)

POSITION_JITTER = 2.0     # +- px, per axis
SIZE_JITTER = 0.08        # +- fraction of the width
COLOR_JITTER = 8          # +- per channel, in 0..255
SUPERSAMPLE = 4           # sub-pixels per pixel and axis, for anti-aliasing


@dataclass(frozen=True)
class Attributes:
    """What one image shows. Hashable, so it can key dicts and sit in sets."""

    shape: str
    color: str
    size: str
    position: str


HELD_OUT = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square")})
"""(colour, shape) pairs never seen in the "train" split: the test of compositional
generalisation ("a red triangle" is new, but red and triangles are not)."""


def all_attributes(split: str = "all") -> list[Attributes]:
    """Every attribute combination of a split, in a fixed order (shape, colour, size, position).

    split: "all" (180 combinations), "train" (150: all but the HELD_OUT colour-shape
    pairs) or "heldout" (30: only them).
    """
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    out = []
    for shape in SHAPES:
        for color in COLORS:
            held = (color, shape) in HELD_OUT
            if (split == "train" and held) or (split == "heldout" and not held):
                continue
            for size in SIZES:
                for position in POSITIONS:
                    out.append(Attributes(shape, color, size, position))
    return out


def _item_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of item `index` of the stream `seed` (independent of any n)."""
    return np.random.default_rng([int(seed), int(index)])


_SPLIT_CACHE: dict[str, tuple[Attributes, ...]] = {}


def _draw_item(seed: int, index: int, split: str, n_templates: int):
    """(attributes, template choice, render seed) of item `index`: one draw per item."""
    rng = _item_rng(seed, index)
    if split not in _SPLIT_CACHE:
        _SPLIT_CACHE[split] = tuple(all_attributes(split))
    choices = _SPLIT_CACHE[split]
    attrs = choices[int(rng.integers(len(choices)))]
    render_seed = int(rng.integers(2**62))       # drawn before the template: the pixels do
    template = int(rng.integers(n_templates))    # not depend on the caption templates
    return attrs, template, render_seed


def sample_attributes(n: int, seed: int, split: str = "train") -> list[Attributes]:
    """n attribute combinations drawn uniformly from a split, deterministic in `seed`.

    Item i is the attributes of item i of `ShapesDataset(n, seed, split)`, so
    `sample_attributes(k, s)` is a prefix of `sample_attributes(n, s)` for k <= n.
    """
    return [_draw_item(seed, i, split, len(TEMPLATES))[0] for i in range(n)]


# ----------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------

TEMPLATES = (
    "a {size} {color} {shape} at the {position}",
    "{size} {color} {shape}, {position}",
    "a {color} {shape}, {size}, {position}",
    "a {size} {shape} in {color} at the {position}",
)
PUNCTUATION = (",",)   # the only non-word token a caption can contain


def caption(attrs: Attributes, template: int | str = 0) -> str:
    """The caption of `attrs`; template is an index into TEMPLATES or a format string."""
    fmt = TEMPLATES[template] if isinstance(template, int) else template
    return fmt.format(shape=attrs.shape, color=attrs.color, size=attrs.size,
                      position=attrs.position)


_SYNONYMS = {"centre": "center", "middle": "center", "big": "large"}


def parse_caption(text: str) -> Attributes | None:
    """The attributes a caption names, or None when one is missing or two conflict.

    Tolerant: case, punctuation, word order and unknown words do not matter; one shape,
    one colour (COLORS or EXTRA_COLORS), one size and one position must be named.
    """
    words = [_SYNONYMS.get(w, w) for w in
             text.lower().replace(",", " ").replace(".", " ").replace("-", " ").split()]
    found: dict[str, set] = {"shape": set(), "color": set(), "size": set(), "position": set()}
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("top", "bottom") and nxt in ("left", "right"):
            found["position"].add(f"{w} {nxt}")
            i += 2
            continue
        if w == "center":
            found["position"].add(w)
        elif w in SHAPES:
            found["shape"].add(w)
        elif w in _ALL_COLORS:
            found["color"].add(w)
        elif w in SIZES:
            found["size"].add(w)
        i += 1
    if any(len(v) != 1 for v in found.values()):
        return None
    return Attributes(*(next(iter(found[k])) for k in ("shape", "color", "size", "position")))


def _vocabulary() -> tuple[str, ...]:
    words = set()
    for t in TEMPLATES:
        for ph in ("{size}", "{color}", "{shape}", "{position}"):
            t = t.replace(ph, " ")
        words.update(t.replace(",", " ").split())
    words.update(SHAPES, _ALL_COLORS, SIZES)
    for p in POSITIONS:
        words.update(p.split())
    return tuple(sorted(words))


VOCABULARY = _vocabulary()
"""Every word a caption can contain (EXTRA_COLORS included, so the LoRA lab's new colour
has a token), sorted. Punctuation is in PUNCTUATION."""


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------

def _coverage(shape: str, cx: float, cy: float, width: float, size: int = IMAGE_SIZE,
              ss: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (size, size) float32 in [0, 1].

    The inside test runs on an ss x ss sub-pixel grid restricted to the shape's box, and
    each pixel averages its ss*ss sub-pixels (box-filter anti-aliasing).
    circle: diameter `width`; square: side `width`; triangle: upright equilateral, side
    `width`, height width*sqrt(3)/2, its bounding box centred on (cx, cy).
    """
    half = width / 2
    if shape == "triangle":
        half_h = width * math.sqrt(3) / 4
    elif shape in ("circle", "square"):
        half_h = half
    else:
        raise ValueError(f"unknown shape {shape!r}")
    x0, x1 = max(0, math.floor(cx - half) - 1), min(size, math.ceil(cx + half) + 1)
    y0, y1 = max(0, math.floor(cy - half_h) - 1), min(size, math.ceil(cy + half_h) + 1)
    cov = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return cov
    xs = x0 + (np.arange((x1 - x0) * ss, dtype=np.float32) + 0.5) / ss - cx   # (W*ss,)
    ys = y0 + (np.arange((y1 - y0) * ss, dtype=np.float32) + 0.5) / ss - cy   # (H*ss,)
    if shape == "circle":
        inside = ys[:, None] ** 2 + xs[None, :] ** 2 <= half ** 2
    elif shape == "square":
        inside = (np.abs(ys) <= half)[:, None] & (np.abs(xs) <= half)[None, :]
    else:  # triangle: apex at y = -half_h, base at y = +half_h
        half_w_at_y = (ys + half_h) * (half / (2 * half_h))                    # (H*ss,)
        inside = (np.abs(xs)[None, :] <= half_w_at_y[:, None]) & (ys <= half_h)[:, None]
    h, w = y1 - y0, x1 - x0
    cov[y0:y1, x0:x1] = inside.reshape(h, ss, w, ss).mean(axis=(1, 3))
    return cov


def _render_np(attrs: Attributes, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) float32 in [0, 1], coverage (H, W) float32 in [0, 1])."""
    rng = np.random.default_rng(seed)
    cx, cy = POSITION_CENTERS[attrs.position]
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    width = SIZE_PIXELS[attrs.size] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    rgb = np.clip(np.array(_ALL_COLORS[attrs.color], np.float32)
                  + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
    cov = _coverage(attrs.shape, cx + dx, cy + dy, width)                    # (H, W)
    bg = np.array(BACKGROUND, np.float32)
    img = (bg + cov[..., None] * (rgb - bg)) / 255.0                        # (H, W, 3)
    return img.astype(np.float32), cov


def render(attrs: Attributes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one shape: (image (3, 64, 64) float32 in [0, 1], mask (1, 64, 64) float32 {0, 1}).

    Jitter from `seed`: position +-2 px per axis, width +-8 %, colour +-8 per channel.
    The image is anti-aliased (4x4 supersampling); the mask is the pixels at least half
    covered by the shape.
    """
    img, cov = _render_np(attrs, seed)
    image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))   # (3, H, W)
    mask = torch.from_numpy((cov >= 0.5).astype(np.float32))[None]           # (1, H, W)
    return image, mask


def edges(mask: torch.Tensor) -> torch.Tensor:
    """The outline of a mask: mask pixels with a 4-neighbour outside it (1 px wide).

    mask: (1, H, W) or (B, 1, H, W), float or bool. Returns float32 {0, 1}, same shape.
    The image border is not an outline (a neighbour beyond the border counts as inside),
    so a shape cut by the border stays open there.
    """
    m = mask.float()                                                         # (..., H, W)
    eroded = m.clone()                   # min over the 4-neighbours; a missing one (border)
    eroded[..., 1:, :] = torch.minimum(eroded[..., 1:, :], m[..., :-1, :])  # counts as inside
    eroded[..., :-1, :] = torch.minimum(eroded[..., :-1, :], m[..., 1:, :])
    eroded[..., :, 1:] = torch.minimum(eroded[..., :, 1:], m[..., :, :-1])
    eroded[..., :, :-1] = torch.minimum(eroded[..., :, :-1], m[..., :, 1:])
    return m - eroded


class ShapesDataset(torch.utils.data.Dataset):
    """n rendered samples of a split; item i depends only on (seed, i).

    templates: caption templates to draw from (indices into TEMPLATES or format strings);
    None: all of TEMPLATES. Item dict:
      "pixel_values" (3, 64, 64) float32 in [-1, 1], "caption" str,
      "mask" (1, 64, 64) float32 {0, 1}, "edges" (1, 64, 64) float32 {0, 1},
      "attributes" Attributes.
    """

    def __init__(self, n: int, seed: int = 0, split: str = "train", templates=None):
        all_attributes(split)  # validates split
        self.n, self.seed, self.split = int(n), int(seed), split
        self.templates = list(range(len(TEMPLATES))) if templates is None else list(templates)
        if not self.templates:
            raise ValueError("templates must not be empty")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i = i % self.n
        attrs, t, render_seed = _draw_item(self.seed, i, self.split, len(self.templates))
        image, mask = render(attrs, render_seed)
        return {
            "pixel_values": image * 2 - 1,                                   # (3, H, W)
            "caption": caption(attrs, self.templates[t]),
            "mask": mask,                                                    # (1, H, W)
            "edges": edges(mask),                                            # (1, H, W)
            "attributes": attrs,
        }


def make_batch(n: int, seed: int = 0, split: str = "train") -> dict:
    """The first n items of ShapesDataset(n, seed, split), stacked.

    Returns "pixel_values" (n, 3, 64, 64) in [-1, 1], "mask" (n, 1, 64, 64),
    "edges" (n, 1, 64, 64), "captions" list[str], "attributes" list[Attributes].
    """
    ds = ShapesDataset(n, seed, split)
    items = [ds[i] for i in range(n)]
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "edges": torch.stack([it["edges"] for it in items]),
        "captions": [it["caption"] for it in items],
        "attributes": [it["attributes"] for it in items],
    }


# ----------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------

def _pil_to_array(img) -> np.ndarray:
    """A PIL image (duck-typed: has .convert) as a uint8 (H, W, 3) array; anything else as is."""
    return np.asarray(img.convert("RGB")) if hasattr(img, "convert") else img


def to_unit(images) -> torch.Tensor:
    """Images for the judge, as float32 (B, 3, H, W) in [0, 1] on the CPU.

    Accepts
      - a torch tensor (B, 3, H, W) or (3, H, W): float in [0, 1], or uint8 in 0..255;
      - a numpy array (B, H, W, 3) or (H, W, 3): float in [0, 1], or uint8 in 0..255
        (an alpha channel, (..., 4), is dropped);
      - a list of PIL images, or of any of the above single images.
    Floats a little outside [0, 1] (noise, decoder overshoot) are clamped. Floats below
    -0.2 or above 1.2 raise ValueError: the judge never guesses the range, so model-space
    images in [-1, 1] must be mapped with (x + 1) / 2 first.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images")
        return torch.cat([to_unit(_pil_to_array(im)) for im in images])
    if isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"numpy images must be (B, H, W, 3), got {images.shape}")
        x = torch.from_numpy(np.array(arr[..., :3])).permute(0, 3, 1, 2)      # (B, 3, H, W)
    elif torch.is_tensor(images):
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"torch images must be (B, 3, H, W), got {tuple(images.shape)}")
    else:
        raise TypeError(f"cannot read images of type {type(images).__name__}")
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.2 or hi > 1.2:
        raise ValueError(f"judge expects images in [0, 1], got values in [{lo:.2f}, {hi:.2f}]; "
                         "map [-1, 1] images with (x + 1) / 2, 0..255 floats with x / 255")
    return x.clamp(0, 1)


# Decision constants of the judge (documented in `judge`).
FOREGROUND_DISTANCE = 50 / 255          # RGB distance from the background, in [0, 1] units
BACKGROUND_NEAR = 0.25                  # pixels this close to BACKGROUND estimate the background
MIN_BLOB_PIXELS = 20                    # a smaller largest blob means "no shape"
SIZE_THRESHOLD = math.sqrt(SIZE_PIXELS["small"] * SIZE_PIXELS["large"])   # ~21.9 px
HALF_COVERED = 0.47                     # coverage threshold of the judged mask: 0.5, less a
                                        # margin for rounding (rendered coverage is k/16)


@dataclass
class JudgeResult:
    """What the judge read from a batch of B images.

    attributes: one Attributes per image, None where no shape was found.
    masks: (B, 1, H, W) bool, the judged shape (all False where None).
    features: per image, the measurements behind the decisions (None where no shape):
      "rgb" median colour (0..255), "area" px, "width" and "center" of the fitted shape,
      "fits" {shape: IoU with its ideal}.
    correct / accuracy: only when targets were given, keys "shape", "color", "size",
      "position" and "all" (all four right); an unreadable image is wrong on every key.
    """

    attributes: list
    masks: torch.Tensor
    features: list = field(default_factory=list)
    correct: dict | None = None
    accuracy: dict | None = None

    def summary(self) -> str:
        n = len(self.attributes)
        none = sum(a is None for a in self.attributes)
        text = f"judge: {n} images, {none} without a shape"
        if self.accuracy is not None:
            text += " | " + " ".join(f"{k} {100 * v:.1f}%" for k, v in self.accuracy.items())
        return text


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a (H, W) bool mask (all False if empty)."""
    from skimage.measure import label   # scikit-image is in requirements.txt

    lab = label(mask, connectivity=1)                                        # (H, W) int
    if lab.max() == 0:
        return np.zeros_like(mask)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == counts.argmax()


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion of a (H, W) bool mask (outside the image counts as inside)."""
    e = mask.copy()
    e[1:] &= mask[:-1]
    e[:-1] &= mask[1:]
    e[:, 1:] &= mask[:, :-1]
    e[:, :-1] &= mask[:, 1:]
    return e


def _shape_fits(blob: np.ndarray) -> dict:
    """Fit each ideal shape to a (H, W) bool blob: {shape: (iou, width, cx, cy)}.

    The ideal shape has the blob's area and centroid; (cx, cy) is its box centre (an
    upright triangle's centroid sits 1/6 of its height below its box centre) and iou its
    overlap with the blob. Area and centroid average over every pixel, so a few noisy
    outline pixels barely move them, where they would move a bounding box.
    """
    ys, xs = np.nonzero(blob)
    area, mx, my = len(ys), xs.mean() + 0.5, ys.mean() + 0.5
    fits = {}
    for shape in SHAPES:
        if shape == "circle":
            width, cy = math.sqrt(4 * area / math.pi), my
        elif shape == "square":
            width, cy = math.sqrt(area), my
        else:
            width = math.sqrt(4 * area / math.sqrt(3))
            cy = my - width * math.sqrt(3) / 12
        ideal = _coverage(shape, mx, cy, width, blob.shape[0], ss=1) > 0     # (H, W) pixel centres
        overlap = float((ideal & blob).sum() / max(1, (ideal | blob).sum()))
        fits[shape] = (overlap, float(width), float(mx), float(cy))
    return fits


def _judge_one(img: np.ndarray, names: list, rgbs: np.ndarray):
    """Judge one (H, W, 3) float image in [0, 1]: (Attributes | None, (H, W) bool, features)."""
    h, w, _ = img.shape
    ref = np.array(BACKGROUND, np.float64) / 255
    near = np.linalg.norm(img - ref, axis=-1) < BACKGROUND_NEAR              # (H, W)
    bg = np.median(img[near], axis=0) if near.mean() >= 0.25 else ref        # (3,)
    diff = img - bg                                                          # (H, W, 3)
    fg = np.linalg.norm(diff, axis=-1) > FOREGROUND_DISTANCE                 # (H, W)
    blob = _largest_component(fg)
    if blob.sum() < MIN_BLOB_PIXELS:
        return None, np.zeros((h, w), bool), None
    core = _erode(blob)
    rgb = np.median(img[core if core.any() else blob], axis=0)               # (3,)
    # Refine to the pixels at least half covered: alpha = projection on (colour - bg).
    axis = rgb - bg
    if np.linalg.norm(axis) > FOREGROUND_DISTANCE:
        alpha = diff @ axis / (axis @ axis)                                  # (H, W)
        refined = _largest_component(fg & (alpha >= HALF_COVERED))
        if refined.sum() >= MIN_BLOB_PIXELS:
            blob = refined
    fits = _shape_fits(blob)
    shape = max(fits, key=lambda s: fits[s][0])
    _, width, cx, cy = fits[shape]
    color = names[int(np.argmin(np.linalg.norm(rgbs - rgb * 255, axis=1)))]
    size = "large" if width >= SIZE_THRESHOLD else "small"
    position = min(POSITIONS, key=lambda p: (cx - POSITION_CENTERS[p][0]) ** 2
                   + (cy - POSITION_CENTERS[p][1]) ** 2)
    features = {"rgb": tuple(float(v) for v in rgb * 255), "area": int(blob.sum()),
                "width": width, "center": (cx, cy),
                "fits": {s: f[0] for s, f in fits.items()}}
    return Attributes(shape, color, size, position), blob, features


def judge(images, targets=None, palette=None) -> JudgeResult:
    """Read shape, colour, size and position back out of each image.

    images: anything `to_unit` accepts, in [0, 1] (B images).
    targets: optional list of B Attributes; then `correct` and `accuracy` are filled.
    palette: dict name -> (r, g, b) in 0..255 of the colours to choose from (default
      COLORS; pass {**COLORS, **EXTRA_COLORS} to read the LoRA lab's colours).

    Decision rules, per image (all thresholds are module constants):
    1. Background: the median colour of the pixels within BACKGROUND_NEAR (RGB distance)
       of BACKGROUND, so a slight global shift of a generated background is absorbed;
       BACKGROUND itself if fewer than a quarter of the pixels are that close.
    2. Foreground: pixels farther than FOREGROUND_DISTANCE (50/255) from the background,
       well above pixel noise (std 0.03 per channel gives a distance ~0.05 = 13/255) and
       well below any palette colour's distance (>= 132/255). The shape is the largest
       4-connected foreground blob; under MIN_BLOB_PIXELS pixels: no shape (None).
    3. Colour: the median colour of the blob's interior (the blob eroded by one pixel,
       free of anti-aliased edge pixels), then the nearest palette colour (RGB distance).
    4. Mask: the blob refined to its pixels at least half covered (HALF_COVERED), the
       coverage being the projection of (pixel - background) on (colour - background),
       kept 4-connected. It matches the rendered masks: `iou(result.masks, batch["mask"])`
       is 1 on real samples.
    5. Shape: for each shape, the ideal one with the blob's area and centroid is drawn;
       the one with the highest IoU with the blob wins (real samples: ~0.99 for the true
       shape, <= 0.87 for the others). Area and centroid use every pixel of the blob, so
       noisy or blurred outlines barely move them.
    6. Size: the width of the winning ideal shape; "large" if at least SIZE_THRESHOLD
       (~21.9 px, the geometric mean of the 16 px and 30 px widths), else "small".
    7. Position: the POSITION_CENTERS entry nearest to the winning ideal shape's box
       centre (shapes are placed by their box centre; centres are >= 14 px apart and the
       jitter is <= 2 px per axis).
    Images must be 64x64 (positions and sizes are in pixels of the 64x64 world).
    """
    x = to_unit(images)                                                      # (B, 3, H, W)
    if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"judge reads {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(x.shape[-2:])}")
    pal = COLORS if palette is None else palette
    names = list(pal)
    rgbs = np.array([pal[k] for k in names], np.float64)                     # (C, 3)
    arr = x.permute(0, 2, 3, 1).double().numpy()                             # (B, H, W, 3)
    attributes, masks, features = [], [], []
    for img in arr:
        a, m, f = _judge_one(img, names, rgbs)
        attributes.append(a)
        masks.append(m)
        features.append(f)
    result = JudgeResult(attributes=attributes,
                         masks=torch.from_numpy(np.stack(masks))[:, None],   # (B, 1, H, W)
                         features=features)
    if targets is not None:
        if len(targets) != len(attributes):
            raise ValueError(f"{len(targets)} targets for {len(attributes)} images")
        correct = {}
        for key in ("shape", "color", "size", "position"):
            correct[key] = torch.tensor([a is not None and getattr(a, key) == getattr(t, key)
                                         for a, t in zip(attributes, targets)], dtype=torch.bool)
        correct["all"] = (correct["shape"] & correct["color"] & correct["size"]
                          & correct["position"])
        result.correct = correct
        result.accuracy = {k: float(v.float().mean()) for k, v in correct.items()}
    return result


def iou(pred_masks: torch.Tensor, target_masks: torch.Tensor) -> torch.Tensor:
    """Intersection over union per image, (B,) float32.

    pred_masks, target_masks: (B, 1, H, W) bool or float (a float mask counts where >= 0.5).
    Two empty masks agree perfectly: IoU 1.
    """
    p = (pred_masks >= 0.5) if pred_masks.is_floating_point() else pred_masks.bool()
    t = (target_masks >= 0.5) if target_masks.is_floating_point() else target_masks.bool()
    inter = (p & t).flatten(1).sum(1).float()                                # (B,)
    union = (p | t).flatten(1).sum(1).float()                                # (B,)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
