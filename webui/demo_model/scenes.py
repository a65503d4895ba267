"""The demo model's data: procedural scenes of one flat shape on a flat background, with captions.

Everything is a pure function of a seed, so a data set is reproducible without storing it:
`sample_scene(rng)` draws a scene, `render(scene, size)` draws its pixels (anti-aliased by 4x
supersampling) and `caption(scene, rng)` writes one of several phrasings of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Colours far enough apart that the nearest palette entry of a rendered pixel is never ambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 40),
    "orange": (245, 135, 20),
    "purple": (135, 50, 190),
    "pink": (250, 140, 205),
    "cyan": (40, 215, 225),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.13, "medium": 0.2, "large": 0.29}  # shape radius as a fraction of the image side
# Centres as fractions of (width, height); "left" is the middle of the left side.
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
STYLES = ("filled", "hollow")
OUTLINE_WIDTH = 0.045  # of the image side, for hollow shapes
JITTER = 0.035  # random offset of the centre, fraction of the image side
COLOUR_JITTER = 10  # per-channel random offset of the flat colours


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: str
    style: str = "filled"
    dx: float = 0.0  # jitter of the centre, fractions of the image side
    dy: float = 0.0
    tint: tuple[int, ...] = (0, 0, 0, 0, 0, 0)  # colour jitter: shape rgb, background rgb

    @property
    def centre(self) -> tuple[float, float]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy

    def rgb(self, which: str) -> tuple[int, int, int]:
        base, tint = (PALETTE[self.colour], self.tint[:3]) if which == "shape" else (PALETTE[self.background], self.tint[3:])
        return tuple(int(np.clip(c + t, 0, 255)) for c, t in zip(base, tint))  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator, style: str = "filled") -> Scene:
    colour = COLOURS[rng.integers(len(COLOURS))]
    backgrounds = [c for c in COLOURS if c != colour]
    return Scene(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=colour,
        background=backgrounds[rng.integers(len(backgrounds))],
        size=tuple(SIZES)[rng.integers(len(SIZES))],
        position=tuple(POSITIONS)[rng.integers(len(POSITIONS))],
        style=style,
        dx=float(rng.uniform(-JITTER, JITTER)),
        dy=float(rng.uniform(-JITTER, JITTER)),
        tint=tuple(int(t) for t in rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=6)),
    )


def scenes(seed: int, count: int, style: str = "filled") -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, style) for _ in range(count)]


def shape_mask(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """Coverage of the shape per pixel, (size, size) floats in [0, 1]."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(coords, coords)
    cx, cy = scene.centre
    r = SIZES[scene.size]

    def inside(radius: float) -> np.ndarray:
        if radius <= 0:
            return np.zeros_like(x, dtype=bool)
        if scene.shape == "circle":
            return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        if scene.shape == "square":  # same area as the circle of this radius
            half = radius * np.sqrt(np.pi) / 2
            return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
        # an upright equilateral triangle with its centroid at the centre, circumradius 1.2 r
        R = 1.2 * radius
        top, base = cy - R, cy + R / 2
        half_width = (y - top) / (base - top) * (R * np.sqrt(3) / 2)
        return (y >= top) & (y <= base) & (np.abs(x - cx) <= half_width)

    mask = inside(r)
    if scene.style == "hollow":
        mask &= ~inside(r - OUTLINE_WIDTH)
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render(scene: Scene, size: int = 128, cover: np.ndarray | None = None) -> np.ndarray:
    """The scene as (size, size, 3) uint8 RGB; `cover` is its `shape_mask(scene, size)` when the caller has it."""
    cover = (shape_mask(scene, size) if cover is None else cover)[..., None]
    image = cover * np.array(scene.rgb("shape"), np.float32) + (1 - cover) * np.array(scene.rgb("background"), np.float32)
    return np.round(image).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption of the scene; with `rng`, one of several phrasings (parts left out at random, or only the
    shape's colour)."""
    if rng is None:
        keep_size = keep_colour = keep_position = keep_background = True
    else:
        if rng.random() < 0.05:  # one word, as people write negative prompts ("red")
            return scene.colour
        keep_size, keep_colour, keep_position, keep_background = (rng.random(4) < (0.6, 0.85, 0.75, 0.8)).tolist()
    size = f"{scene.size} " if keep_size else ""
    style = "hollow " if scene.style == "hollow" else ""
    colour = f"{scene.colour} " if keep_colour else ""
    words = f"{size}{style}{colour}{scene.shape}"
    text = ("an " if words[0] in "aeiou" else "a ") + words
    if keep_position:
        text += " in the centre" if scene.position == "centre" else f" at the {scene.position}"
    if keep_background:
        text += f" on a {scene.background} background"
    return text


def with_style(scene: Scene, style: str) -> Scene:
    return replace(scene, style=style)


# Every word a caption can use, plus a few a user is likely to type; the demo tokenizer knows each
# as one token.
VOCABULARY = sorted(
    {*COLOURS, *SHAPES, *SIZES, *STYLES, "top", "bottom", "left", "right", "centre", "center", "middle",
     "a", "an", "the", "at", "in", "on", "of", "with", "and", "background", "shape", "outline", "outlined",
     "big", "tiny", "image", "picture", "photo", "grey", "gray", "brown", ","}
)
