"""Images that arrive from outside (API base64 strings, uploads): decoded safely and made usable.

- `decode_image(text, field)`: a base64 string or `data:image/...;base64,` URL -> a PIL image, or a
  `RequestError` naming the field: not base64, a wrong data-URL header, not an image, a format we do not
  take, a truncated file, or more pixels than the cap (checked from the header, before any pixel is read).
- `normalize_image(image)`: EXIF orientation applied; 16-bit and 32-bit images scaled to 8 bits (Pillow's
  `convert` clips them, so mid-grey 16-bit turns white); CMYK and other colour spaces to RGB; palette
  images to RGB(A).
- `configure_pillow(max_pixels)`: makes Pillow refuse images above the cap everywhere in the process
  (Gradio's uploads too), instead of only warning up to twice its own limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from webui.errors import RequestError

MAX_INPUT_PIXELS = 4096 * 4096  # an input image's cap (16.8 MP): the largest the engine ever generates
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")  # what uploads may be; GIF: its first frame
_DATA_URL = re.compile(r"data:([^;,]*)(;base64)?,", re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]*={0,2}\s*")


def configure_pillow(max_pixels: int = MAX_INPUT_PIXELS) -> None:
    """Pillow raises for images over `max_pixels` when they are opened (by us or by Gradio)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(text: object, field: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A base64 image (optionally a data URL) as a normalized PIL image; RequestError naming `field`."""
    if not isinstance(text, str):
        raise RequestError(field, type(text).__name__, "a base64-encoded image (a string)")
    match = _DATA_URL.match(text)
    if match:
        if not match.group(1).lower().startswith("image/") or not match.group(2):
            raise RequestError(field, text[: match.end()], "a data URL of the form data:image/png;base64,...")
        text = text[match.end():]
    if not _BASE64.fullmatch(text):
        raise RequestError(field, "text that is not base64", "a base64-encoded PNG, JPEG or WebP image")
    try:
        raw = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(field, "malformed base64", "a base64-encoded PNG, JPEG or WebP image") from exc
    return open_image(raw, field, max_pixels)


def open_image(raw: bytes, field: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """Image bytes as a normalized PIL image, fully read; RequestError naming `field` otherwise."""
    if not raw:
        raise RequestError(field, "an empty file", "a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:  # Pillow's own limit
        size = re.search(r"\((\d+) pixels\)", str(exc))
        shown = f"an image of {int(size.group(1)):,} pixels" if size else "an image far too large"
        raise RequestError(field, shown, f"an image of at most {max_pixels:,} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(field, "not an image", "a PNG, JPEG or WebP image") from exc
    if image.format not in FORMATS:
        raise RequestError(field, f"a {image.format} file", "a PNG, JPEG or WebP image")
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise RequestError(field, f"{image.width}x{image.height} ({pixels:,} pixels)",
                           f"an image of at most {max_pixels:,} pixels")
    try:
        image.load()
    except OSError as exc:  # "image file is truncated", broken data
        raise RequestError(field, "a truncated or damaged image file", "a complete PNG, JPEG or WebP image") from exc
    return normalize_image(image)


def normalize_image(image: Image.Image) -> Image.Image:
    """Upright, 8 bits per channel, in L, LA, RGB or RGBA (see the module docstring)."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max(initial=0)
        # 16-bit images span 0..65535 (65535 -> 255); 32-bit ones are taken as 8-bit when they fit, else stretched
        scale = 257.0 if mode.startswith("I;16") or 255 < top <= 65535 else (top / 255.0 if top > 65535 else 1.0)
        return Image.fromarray(np.clip(np.round(array / scale), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = array.max(initial=0)
        scaled = array * (255.0 if top <= 1.0 else 255.0 / top)  # [0, 1] floats, or any positive range
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
