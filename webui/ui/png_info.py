"""PNG Info: read the generation parameters of an image (ours or AUTOMATIC1111's) and send them to a tab."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component
from PIL import Image

from webui.errors import WebUIError
from webui.ui.services import UIServices

NO_PARAMETERS = "No generation parameters found in this image."
SEND_TARGETS = {"txt2img": "Send to txt2img", "img2img": "Send to img2img", "inpaint": "Send to inpaint"}


@dataclass
class PngInfoTab:
    image: gr.Image
    text: gr.Textbox
    fields: gr.State  # GenerationRequest field values parsed from the image's parameters
    send_buttons: dict[str, gr.Button]


def build_png_info_tab(services: UIServices) -> PngInfoTab:
    with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
        with gr.Row(equal_height=False):
            with gr.Column():
                # image_mode=None: no conversion, so the PNG text chunks survive to read_infotext.
                image = gr.Image(type="pil", image_mode=None, label="Source", elem_id="pnginfo_image",
                                 sources=["upload", "clipboard"], height=420)
            with gr.Column():
                text = gr.Textbox(label="Parameters", elem_id="pnginfo_text", lines=8, interactive=False,
                                  buttons=["copy"])
                with gr.Row():
                    send_buttons = {target: gr.Button(label, elem_id=f"pnginfo_send_{target}", size="sm")
                                    for target, label in SEND_TARGETS.items()}
        fields = gr.State({})  # inside the Tab, like every child of gr.Tabs

    def read(values: Mapping[Component, Any]) -> dict[Component, Any]:
        picture: Image.Image | None = values[image]
        if picture is None:
            return {text: "", fields: {}}
        try:
            raw, parsed = services.read_infotext(picture)
        except WebUIError as exc:
            return {text: f"Cannot read this image's parameters: {exc}", fields: {}}
        return {text: raw if raw else NO_PARAMETERS, fields: dict(parsed or {})}

    image.change(read, inputs={image}, outputs=[text, fields], queue=False, api_visibility="private",
                 show_progress="hidden")
    return PngInfoTab(image, text, fields, send_buttons)
