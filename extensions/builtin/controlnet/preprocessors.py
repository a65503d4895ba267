"""Preprocessors: turn the user's control image into the map a ControlNet was trained on.

Each takes an RGB image (already at the size it is processed at) and the unit's two thresholds, and
returns an RGB control map: white (or bright) marks on black, as ControlNets expect. Depth uses the
app's depth estimator (lent through the extension context).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Estimate = Callable[[Image.Image], Image.Image]  # RGB image -> "L" depth map, white = near


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[np.ndarray, float, float, Estimate | None], np.ndarray]  # (H, W, 3) uint8 -> (H, W) or (H, W, 3)
    threshold_a: tuple[str, float, float, float] | None = None  # (label, default, minimum, maximum)
    threshold_b: tuple[str, float, float, float] | None = None
    help: str = ""


def _none(rgb, a, b, estimate):
    return rgb


def _invert(rgb, a, b, estimate):
    return 255 - rgb


def _canny(rgb, low, high, estimate):
    import cv2  # imported on first use: loading the extension stays fast

    return cv2.Canny(np.ascontiguousarray(rgb), int(low), int(high))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _threshold(rgb, level, b, estimate):
    return np.where(_luminance(rgb) >= level, 255, 0).astype(np.uint8)


def _scribble(rgb, level, b, estimate):
    """Dark strokes on light paper -> white strokes on black, thickened (scribble models saw thick lines)."""
    import cv2

    strokes = np.where(_luminance(rgb) < level, 255, 0).astype(np.uint8)
    return cv2.dilate(strokes, np.ones((3, 3), np.uint8), iterations=1)


def _lineart(rgb, a, b, estimate):
    """Line art from a drawing or photo: how much darker each pixel is than its blurred surroundings
    (a difference of Gaussians, the formula of A1111's "lineart_standard"), scaled to a typical line."""
    import cv2

    x = rgb.astype(np.float32)
    blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 16.0)
    return (intensity * 127).clip(0, 255).astype(np.uint8)


def _depth(rgb, a, b, estimate):
    if estimate is None:
        raise LookupError("no depth estimator is available")
    depth = estimate(Image.fromarray(rgb))
    return np.asarray(depth.convert("L").resize((rgb.shape[1], rgb.shape[0]), Image.BICUBIC))


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", _none, help="the image is the control map as it is"),
    Preprocessor("invert", _invert, help="black lines on white -> white lines on black"),
    Preprocessor("canny", _canny, ("Low threshold", 100, 1, 255), ("High threshold", 200, 1, 255),
                 help="edges (for canny ControlNets)"),
    Preprocessor("depth", _depth, help="a depth map from the depth estimator (for depth ControlNets)"),
    Preprocessor("scribble", _scribble, ("Stroke darkness", 127, 0, 255),
                 help="dark strokes on light paper -> thick white strokes (scribble ControlNets)"),
    Preprocessor("threshold", _threshold, ("Threshold", 127, 0, 255), help="white where brighter than the threshold"),
    Preprocessor("lineart", _lineart, help="line art from a drawing or photo (lineart ControlNets)"),
)}


def threshold_defaults(name: str) -> tuple[float, float]:
    p = PREPROCESSORS[name]
    return (p.threshold_a[1] if p.threshold_a else 0.0), (p.threshold_b[1] if p.threshold_b else 0.0)


def preprocess(name: str, image: Image.Image, threshold_a: float, threshold_b: float,
               estimate: Estimate | None = None) -> Image.Image:
    """The control map of `image` (RGB, the size of `image`)."""
    rgb = np.asarray(image.convert("RGB"))
    out = PREPROCESSORS[name].run(rgb, threshold_a, threshold_b, estimate)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(out, dtype=np.uint8), "RGB")
