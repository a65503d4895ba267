"""From the inpaint editor's value to the request's init_image and mask (PIL only).

`gr.ImageMask(type="pil")` gives `{"background": RGBA image, "layers": [RGBA images], "composite": ...}`.
Brush strokes live in the layers: the mask is alpha > 0 of any layer (the brush colour does not matter).
An uploaded mask (white = repaint) is added to the painted one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageChops

from webui.errors import RequestError

OUTPAINT_FIELDS = ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom")


class MissingImage(RequestError):
    """An image input the tab needs is empty (caught before anything is queued)."""

    def __init__(self, field: str, where: str) -> None:
        super().__init__(field, None, f"an image: upload one into {where}")
        self.args = (f"{field}: no image yet; upload one into {where}",)


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white (as Gradio flattens editor backgrounds)."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def painted_mask(layers: Sequence[Image.Image | None], size: tuple[int, int]) -> Image.Image:
    """"L" mask of `size`: 255 where any layer has alpha > 0, else 0."""
    mask = Image.new("L", size, 0)
    for layer in layers:
        if layer is None:
            continue
        alpha = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.NEAREST)
        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
    return mask


def uploaded_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An uploaded mask as "L" (white = repaint), resized to the image it masks."""
    if "A" in mask.getbands():  # a transparent PNG: transparent parts count as black
        mask = Image.alpha_composite(Image.new("RGBA", mask.size, "black"), mask.convert("RGBA"))
    grey = mask.convert("L")
    return grey if grey.size == size else grey.resize(size, Image.BILINEAR)


def is_outpaint(values: Mapping[str, Any]) -> bool:
    """Any side to extend by more than 0 pixels (non-numbers are left for the request to reject)."""
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for v in (values.get(name) for name in OUTPAINT_FIELDS))


def inpaint_images(editor: Mapping[str, Any] | None, mask_upload: Image.Image | None,
                   outpaint: bool) -> dict[str, Image.Image | None]:
    """{"init_image": RGB, "mask": "L" of the same size, or None when outpainting}."""
    background = editor.get("background") if editor else None
    if background is None:
        raise MissingImage("init_image", "the inpaint editor first")
    image = flatten(background)
    if outpaint:  # the engine makes the mask itself: the new border
        return {"init_image": image, "mask": None}
    mask = painted_mask(editor.get("layers") or [], image.size)
    if mask_upload is not None:
        mask = ImageChops.lighter(mask, uploaded_mask(mask_upload, image.size))
    return {"init_image": image, "mask": mask}
