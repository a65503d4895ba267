"""Image preparation for img2img and inpainting (PIL and numpy only): resizing, masks, fill, crops."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps


def resize_image(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """A1111's resize modes: stretch, crop to the aspect ratio, or fit and fill the borders."""
    image = image.convert("RGB")
    if mode == "Just resize":
        return image.resize((width, height), Image.LANCZOS)
    ratio = width / height
    src_ratio = image.width / image.height
    if mode == "Crop and resize":
        scale = width / image.width if ratio > src_ratio else height / image.height
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == "Resize and fill":
        scale = width / image.width if ratio < src_ratio else height / image.height
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
        canvas = Image.new("RGB", (width, height))
        left, top = (width - resized.width) // 2, (height - resized.height) // 2
        canvas.paste(resized, (left, top))
        # Fill the borders by stretching the image's edge rows/columns outwards.
        if left > 0:
            canvas.paste(resized.crop((0, 0, 1, resized.height)).resize((left, resized.height)), (0, top))
            right = width - left - resized.width
            canvas.paste(resized.crop((resized.width - 1, 0, resized.width, resized.height)).resize((right, resized.height)),
                         (left + resized.width, top))
        if top > 0:
            canvas.paste(resized.crop((0, 0, resized.width, 1)).resize((resized.width, top)), (left, 0))
            bottom = height - top - resized.height
            canvas.paste(resized.crop((0, resized.height - 1, resized.width, resized.height)).resize((resized.width, bottom)),
                         (left, top + resized.height))
        return canvas
    raise ValueError(f"unknown resize mode {mode!r}")


def prepare_mask(mask: Image.Image, invert: bool, blur: int) -> tuple[Image.Image, Image.Image]:
    """(sharp, blurred) "L" masks, white = repaint. The blurred one feathers the final composite."""
    sharp = mask.convert("L")
    if invert:
        sharp = ImageOps.invert(sharp)
    sharp = sharp.point(lambda v: 255 if v >= 128 else 0)
    blurred = sharp.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else sharp
    return sharp, blurred


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area takes blurred colours of the surrounding picture.

    Successively smaller blurs of the unmasked picture are layered, so far-away colours set the
    average and nearby colours the detail (the approach of A1111's `masking.fill`).
    """
    keep = ImageOps.invert(mask.convert("L"))
    known = Image.new("RGBa", image.size)
    known.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = known.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box (left, top, right, bottom) of the mask's white pixels grown by `padding`."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return (max(left - padding, 0), max(top - padding, 0), min(right + padding, mask.width), min(bottom + padding, mask.height))


def expand_to_aspect(box: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """Grow `box` to the width:height ratio (so the crop is not distorted), staying inside the image."""
    left, top, right, bottom = box
    ratio = width / height
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < ratio:
        target_w = min(round(box_h * ratio), image_w)
        extra = target_w - box_w
        left = max(0, min(left - extra // 2, image_w - target_w))
        right = left + target_w
    else:
        target_h = min(round(box_w / ratio), image_h)
        extra = target_h - box_h
        top = max(0, min(top - extra // 2, image_h - target_h))
        bottom = top + target_h
    return left, top, right, bottom


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """"L" mask -> (1, 1, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] -> RGB images."""
    array = ((batch.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]
