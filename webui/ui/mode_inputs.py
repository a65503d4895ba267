"""The inputs that differ between tabs: img2img's image, inpaint's editor and outpaint, depth's image and map.

Each builder returns a `ModeInputs`: the field bindings it adds, the non-field inputs the generate event
needs (by parameter name), a `finish` step that puts the images into the request values (and refuses a
missing image, which would otherwise turn the request into txt2img), and where "Send to" puts an image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.components import Component
from PIL import Image

from webui.engine.request import INPAINTING_FILLS, RESIZE_MODES
from webui.ui.fields import REQUEST_DEFAULTS, Binding, FieldRadio, slider
from webui.ui.masks import OUTPAINT_FIELDS, MissingImage, flatten, inpaint_images, is_outpaint
from webui.uploads import normalize_image

# (the extra inputs' values by name, the request values so far) -> the request values
Finish = Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]]


def _unchanged(extra: Mapping[str, Any], request_values: dict[str, Any]) -> dict[str, Any]:
    return request_values


@dataclass
class ModeInputs:
    bindings: dict[str, Binding] = field(default_factory=dict)
    extra: dict[str, Component] = field(default_factory=dict)  # generate inputs that are not fields, by API name
    finish: Finish = _unchanged
    image_target: Component | None = None  # receives images sent from other tabs
    image_value: Callable[[Image.Image], Any] = lambda image: image
    info: Component | None = None  # a note about the chosen checkpoint (the depth tab), updated with it


def _require_image(values: dict[str, Any], tab: str) -> None:
    if values.get("init_image") is None:
        raise MissingImage("init_image", f"the {tab} tab first")


def _resize_and_denoise(tab: str, d: Mapping[str, Any]) -> dict[str, Binding]:
    b = {"resize_mode": Binding(FieldRadio(list(RESIZE_MODES), value=d["resize_mode"],
                                           label="Resize mode", elem_id=f"{tab}_resize_mode"))}
    b["denoising_strength"] = Binding(slider("denoising_strength", "Denoising strength", 0, 1, 0.01,
                                             f"{tab}_denoising_strength", integer=False, defaults=d))
    return b


def _input_image(elem_id: str, label: str) -> gr.Image:
    # image_mode=None: Gradio would convert with Pillow, which clips 16-bit images to white; `_uploaded` does it.
    return gr.Image(type="pil", image_mode=None, label=label, elem_id=elem_id, sources=["upload", "clipboard"],
                    format="png", height=360)


def _uploaded(image: Image.Image | None) -> Image.Image | None:
    """An upload as the engine takes it: 8 bits, upright, transparency on white (`webui.uploads`)."""
    if image is None:
        return None
    image = normalize_image(image)
    return flatten(image) if image.mode in ("RGBA", "LA") else image


def _image_binding(component: gr.Image) -> Binding:
    return Binding(component, to_request=_uploaded)


def img2img_inputs(defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> ModeInputs:
    image = _input_image("img2img_image", "Image")
    b = {"init_image": _image_binding(image)}
    b.update(_resize_and_denoise("img2img", defaults))

    def finish(extra: Mapping[str, Any], request_values: dict[str, Any]) -> dict[str, Any]:
        _require_image(request_values, "img2img")
        return request_values

    return ModeInputs(b, finish=finish, image_target=image)


def _editor_value(image: Image.Image) -> dict[str, Any]:
    return {"background": image, "layers": [], "composite": image}


def _mask_mode(invert: bool) -> str:
    return "Inpaint not masked" if invert else "Inpaint masked"


def _inpaint_area(full_res: bool) -> str:
    return "Only masked" if full_res else "Whole picture"


def inpaint_inputs(defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> ModeInputs:
    d = defaults
    editor = gr.ImageMask(type="pil", label="Image (paint the area to repaint)", elem_id="inpaint_editor",
                          sources=["upload", "clipboard"], format="png", height=480,
                          brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
    with gr.Accordion("Mask upload (optional)", open=False, elem_id="inpaint_mask_upload_accordion"):
        mask_upload = _input_image("inpaint_mask_upload", "Mask (white = repaint; added to the painted one)")
    b = _resize_and_denoise("inpaint", d)
    with gr.Row():
        b["mask_blur"] = Binding(slider("mask_blur", "Mask blur", 0, 64, 1, "inpaint_mask_blur", defaults=d))
        b["inpainting_mask_invert"] = Binding(
            gr.Radio(["Inpaint masked", "Inpaint not masked"], value=_mask_mode(d["inpainting_mask_invert"]),
                     label="Mask mode", elem_id="inpaint_mask_mode"),
            to_request=lambda v: v == "Inpaint not masked", from_request=_mask_mode)
    b["inpainting_fill"] = Binding(FieldRadio(list(INPAINTING_FILLS), value=d["inpainting_fill"],
                                              label="Masked content", elem_id="inpaint_inpainting_fill"))
    with gr.Row():
        b["inpaint_full_res"] = Binding(
            gr.Radio(["Whole picture", "Only masked"], value=_inpaint_area(d["inpaint_full_res"]),
                     label="Inpaint area", elem_id="inpaint_area"),
            to_request=lambda v: v == "Only masked", from_request=_inpaint_area)
        b["inpaint_full_res_padding"] = Binding(slider("inpaint_full_res_padding", "Only masked padding, pixels",
                                                       0, 256, 4, "inpaint_full_res_padding", defaults=d))
    with gr.Accordion("Outpaint: extend the image by", open=False, elem_id="inpaint_outpaint"):
        with gr.Row():
            for name in OUTPAINT_FIELDS:
                side = name.removeprefix("outpaint_")
                b[name] = Binding(slider(name, f"{side.capitalize()} (pixels)", 0, 2048, 8, f"inpaint_{name}",
                                         defaults=d))

    def finish(extra: Mapping[str, Any], request_values: dict[str, Any]) -> dict[str, Any]:
        mask = extra.get("mask_upload")
        mask = normalize_image(mask) if mask is not None else None  # its alpha, if any, is read as the mask
        images = inpaint_images(extra.get("image_editor"), mask, is_outpaint(request_values))
        return {**request_values, **images}

    return ModeInputs(b, extra={"image_editor": editor, "mask_upload": mask_upload}, finish=finish,
                      image_target=editor, image_value=_editor_value)


def depth_inputs(defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> ModeInputs:
    """Depth-to-image: an image (denoised like img2img) and/or a depth map (white = near); without a map the
    depth is estimated from the image."""
    info = gr.Markdown("", elem_id="depth_support")
    with gr.Row():
        image = _input_image("depth_image", "Image (optional with a depth map)")
        depth_map = _input_image("depth_map_upload", "Depth map (optional; white = near)")
    b = {"init_image": _image_binding(image)}
    b.update(_resize_and_denoise("depth", defaults))

    def finish(extra: Mapping[str, Any], request_values: dict[str, Any]) -> dict[str, Any]:
        depth = _uploaded(extra.get("depth_map"))
        if request_values.get("init_image") is None and depth is None:
            raise MissingImage("depth_map", "the depth tab first: an image, a depth map, or both")
        return {**request_values, "depth": True, "depth_map": depth}

    return ModeInputs(b, extra={"depth_map": depth_map}, finish=finish, image_target=image, info=info)
