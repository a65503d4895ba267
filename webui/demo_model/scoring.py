"""Judge a generated demo image from its pixels alone: background colour, shape colour, position, fill.

No learned judge: the background is the median of the image's border, the shape is every pixel far
from it (less specks: parts under a quarter of the largest part; the demo VAE leaves a few off-colour
pixels in the top-left corner, which would stretch the shape's box and pull its centroid), colours are
the nearest palette entries and the position is the nearest anchor to the shape's centroid. `score` compares judgements with the scenes the prompts described.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scenes import PALETTE, POSITIONS, Scene

_PALETTE = np.array(list(PALETTE.values()), dtype=np.float32)
_NAMES = list(PALETTE)
_ANCHORS = np.array(list(POSITIONS.values()), dtype=np.float32)
SHAPE_DISTANCE = 50.0  # RGB distance from the background beyond which a pixel belongs to the shape
MIN_SHAPE_SHARE = 0.005  # below this share of the image, no shape was drawn
MIN_PART = 0.25  # of the largest connected part: smaller parts are specks, not the shape


@dataclass(frozen=True)
class Judgement:
    background: str
    colour: str | None  # None: no shape found
    position: str | None
    share: float  # of the image covered by the shape
    hollowness: float  # share of background-coloured pixels in the middle of the shape's box (0: filled)
    shape_rgb: tuple[float, float, float] | None = None  # the median colour of the shape's pixels


def nearest_colour(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(axis=1)))]


def colour_share(image: Image.Image | np.ndarray, colour: str) -> float:
    """Share of the pixels whose nearest palette colour is `colour`."""
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 1, 3)
    nearest = ((pixels - _PALETTE[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((nearest == _NAMES.index(colour)).mean())


def without_specks(mask: np.ndarray) -> np.ndarray:
    """`mask` less its connected parts smaller than MIN_PART of the largest one."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_PART * sizes.max()) + 1
    return np.isin(labels, keep)


def judge(image: Image.Image | np.ndarray) -> Judgement:
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    h, w, _ = pixels.shape
    frame = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                            pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(frame, axis=0)
    mask = without_specks(np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2)) > SHAPE_DISTANCE)
    share = float(mask.mean())
    if share < MIN_SHAPE_SHARE:
        return Judgement(nearest_colour(background_rgb), None, None, share, 0.0)
    ys, xs = np.nonzero(mask)
    centroid = np.array([(xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h], dtype=np.float32)
    position = list(POSITIONS)[int(np.argmin(((_ANCHORS - centroid) ** 2).sum(axis=1)))]
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
    middle = mask[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
    hollowness = float(1.0 - middle.mean()) if middle.size else 0.0
    shape_rgb = np.median(pixels[mask], axis=0)
    return Judgement(nearest_colour(background_rgb), nearest_colour(shape_rgb), position, share, hollowness,
                     tuple(float(c) for c in shape_rgb))


@dataclass(frozen=True)
class Scores:
    count: int
    colours: float  # shape colour and background colour both right
    positions: float  # the shape's position right (over scenes whose prompt names a position)
    shapes_found: float
    colour_error: float  # mean RGB distance of the found shapes' colours from the prompted colours

    def __str__(self) -> str:
        return (f"colours {self.colours:.0%}, positions {self.positions:.0%}, shapes found {self.shapes_found:.0%}, "
                f"shape colour error {self.colour_error:.1f} over {self.count} images")


def score(scenes: Sequence[Scene], images: Sequence[Image.Image]) -> Scores:
    judged = [judge(image) for image in images]
    colours = [j.colour == s.colour and j.background == s.background for s, j in zip(scenes, judged)]
    positions = [j.position == s.position for s, j in zip(scenes, judged)]
    found = [j.colour is not None for j in judged]
    errors = [np.linalg.norm(np.subtract(j.shape_rgb, PALETTE[s.colour]))
              for s, j in zip(scenes, judged) if j.shape_rgb is not None]
    n = len(judged)
    return Scores(n, sum(colours) / n, sum(positions) / n, sum(found) / n, float(np.mean(errors)) if errors else np.inf)
