"""Images from outside: base64 decoding that refuses what is not a usable image, and normalisation."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from webui.errors import RequestError
from webui.uploads import decode_image, normalize_image, open_image


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_png_and_a_data_url_decode():
    image = Image.new("RGB", (10, 6), (1, 2, 3))
    assert decode_image(b64(encoded(image)), "f").getpixel((0, 0)) == (1, 2, 3)
    assert decode_image("data:image/png;base64," + b64(encoded(image)), "f").size == (10, 6)


@pytest.mark.parametrize("text, fragment", [
    ("%%%%", "not base64"),
    ("data:text/html;base64,PGI+", "data URL of the form data:image/png;base64"),
    ("data:image/png,notbase64", "data URL of the form"),
    (b64(b"%PDF-1.7 not an image"), "not an image"),
    (b64(b"<html><script>alert(1)</script></html>"), "not an image"),
    ("", "an empty file"),
    ("http://169.254.169.254/latest/meta-data.png", "not base64"),
])
def test_what_is_not_an_image_is_refused_by_field(text, fragment):
    with pytest.raises(RequestError, match=fragment) as info:
        decode_image(text, "init_images[0]")
    assert info.value.field == "init_images[0]"


def test_a_decompression_bomb_is_refused_from_its_header_at_once():
    raw = png_header_claiming(100_000, 100_000)
    assert len(raw) < 100
    started = time.perf_counter()
    with pytest.raises(RequestError, match="at most 16,777,216 pixels"):
        open_image(raw, "mask")
    assert time.perf_counter() - started < 0.1
    with pytest.raises(RequestError, match="100,000,000 pixels"):  # below Pillow's own error level: a warning there
        open_image(png_header_claiming(10_000, 10_000), "mask")
    with pytest.raises(RequestError, match="25,000,000 pixels"):  # above our cap, whatever Pillow's own limit is now
        open_image(png_header_claiming(5_000, 5_000), "mask")


def test_a_truncated_file_is_refused():
    raw = encoded(Image.effect_noise((64, 64), 40).convert("RGB"))
    with pytest.raises(RequestError, match="truncated or damaged"):
        open_image(raw[: len(raw) // 2], "init_images[0]")


def test_a_format_we_do_not_take_is_refused():
    with pytest.raises(RequestError, match="a TIFF file"):
        open_image(encoded(Image.new("RGB", (4, 4)), "TIFF"), "image")


def test_16_bit_images_are_scaled_not_clipped_to_white():
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # mid-grey at 16 bits
    assert grey.mode.startswith("I;16")
    image = open_image(encoded(grey), "depth_map")
    assert image.mode == "L" and image.getpixel((0, 0)) == 128  # Pillow's convert would give 255
    assert normalize_image(Image.fromarray(np.full((2, 2), 65535, dtype=np.int32), "I")).getpixel((0, 0)) == 255
    assert normalize_image(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), "F")).getpixel((0, 0)) == 128


def test_cmyk_palette_and_one_bit_images_become_rgb_or_grey():
    cmyk = open_image(encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), "f")
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 200 and cmyk.getpixel((1, 1))[1] < 60  # red
    palette = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    assert open_image(encoded(palette), "f").mode == "RGB"
    assert open_image(encoded(Image.new("1", (4, 4), 1)), "f").mode == "L"
    assert open_image(encoded(Image.new("RGBA", (4, 4))), "f").mode == "RGBA"  # the alpha is kept (masks)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    upright = open_image(encoded(image, "JPEG", exif=exif.tobytes()), "f")
    assert upright.size == (10, 30)
