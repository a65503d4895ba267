"""The whole interface: the model bar on top, then the tabs. `build_ui(services)` returns the Blocks.

The caller (the composition root) queues and launches it, e.g.
`demo.queue(max_size=16).launch(footer_links=["api", "settings"], run_history=False, enable_monitoring=False)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr
from gradio.components import Component
from PIL import Image

from webui.errors import WebUIError
from webui.ui.extensions_tab import build_extension_tabs, build_extensions_tab
from webui.ui.fields import FieldDropdown
from webui.ui.generation_tab import GenerationTab, build_generation_tab, wire_generation_tab
from webui.ui.mode_inputs import depth_inputs, img2img_inputs, inpaint_inputs
from webui.ui.png_info import PngInfoTab, build_png_info_tab
from webui.ui.services import UIServices
from webui.ui.settings_tab import build_settings_tab

# What a "Send to" handler needs from its source: (the image or None, the field values to fill in).
Source = Callable[[Mapping[Component, Any]], tuple[Image.Image | None, Mapping[str, Any]]]


def build_ui(services: UIServices, *, title: str = "webui") -> gr.Blocks:
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        checkpoint, vae = build_model_bar(services)
        with gr.Tabs(elem_id="tabs"):
            generation = {
                "txt2img": build_generation_tab(services, "txt2img", "txt2img", hires=True),
                "img2img": build_generation_tab(services, "img2img", "img2img", build_mode=img2img_inputs),
                "inpaint": build_generation_tab(services, "inpaint", "Inpaint", build_mode=inpaint_inputs),
                "depth": build_generation_tab(services, "depth", "Depth", build_mode=depth_inputs),
            }
            png_info = build_png_info_tab(services)
            build_extension_tabs(services)
            build_extensions_tab(services)
            build_settings_tab(services, demo)
        for tab in generation.values():
            wire_generation_tab(services, tab, checkpoint, vae)
        wire_send_buttons(services, generation, png_info)
        wire_mode_info(services, generation.values(), checkpoint, demo)
    return demo


def wire_mode_info(services: UIServices, tabs, checkpoint: Component, demo: gr.Blocks) -> None:
    """Tabs with a note about the chosen checkpoint (the depth tab) show it on load and when it changes."""
    for tab in tabs:
        info = tab.mode.info
        if info is None:
            continue
        options = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
        demo.load(services.depth_support, inputs=checkpoint, outputs=info, **options)
        checkpoint.change(services.depth_support, inputs=checkpoint, outputs=info, **options)


def build_model_bar(services: UIServices) -> tuple[FieldDropdown, FieldDropdown]:
    """Checkpoint and VAE, shared by every tab, with a refresh button that rescans the model folders."""
    vaes = services.vaes()
    with gr.Row(elem_id="model_bar", equal_height=True):
        checkpoint = FieldDropdown(choices=services.checkpoints(), value=services.default_checkpoint(),
                                   label="Stable Diffusion checkpoint", elem_id="checkpoint", scale=4)
        vae = FieldDropdown(choices=vaes, value=vaes[0] if vaes else None, label="SD VAE", elem_id="vae", scale=2)
        refresh = gr.Button("🔄", elem_id="refresh_models", scale=0, min_width=48)

    def refresh_models(values: Mapping[Component, Any]) -> dict[Component, Any]:
        services.refresh_models()
        checkpoints, vae_names = services.checkpoints(), services.vaes()
        current_checkpoint, current_vae = values[checkpoint], values[vae]
        return {
            checkpoint: gr.update(choices=checkpoints, value=current_checkpoint if current_checkpoint in checkpoints
                                  else services.default_checkpoint()),
            vae: gr.update(choices=vae_names, value=current_vae if current_vae in vae_names
                           else (vae_names[0] if vae_names else None)),
        }

    refresh.click(refresh_models, inputs={checkpoint, vae}, outputs=[checkpoint, vae], api_visibility="private",
                  show_progress="minimal")
    return checkpoint, vae


def wire_send_buttons(services: UIServices, generation: dict[str, GenerationTab], png_info: PngInfoTab) -> None:
    """"Send to ..." from each tab's gallery and from PNG Info: fill the target's fields, switch tab."""
    for source in generation.values():
        gallery_source = _gallery_source(services, source)
        for target_name, button in source.send_buttons.items():
            _wire_send(button, {source.images, source.selected}, gallery_source, generation[target_name])

    def png_source(values: Mapping[Component, Any]) -> tuple[Image.Image | None, Mapping[str, Any]]:
        return values[png_info.image], values[png_info.fields] or {}

    for target_name, button in png_info.send_buttons.items():
        _wire_send(button, {png_info.image, png_info.fields}, png_source, generation[target_name])


def _gallery_source(services: UIServices, tab: GenerationTab) -> Source:
    def selected_image(values: Mapping[Component, Any]) -> tuple[Image.Image | None, Mapping[str, Any]]:
        images = values[tab.images] or []
        if not images:
            return None, {}
        index = values[tab.selected] or 0
        image = images[index if 0 <= index < len(images) else 0]
        try:
            return image, services.read_infotext(image)[1] or {}
        except WebUIError:
            return image, {}

    return selected_image


def switch_tab_js(name: str) -> str:
    """Select a tab in the browser, as if its header were clicked.

    Switching client-side rather than by returning `gr.Tabs(selected=...)`: with a server-set selection,
    Gradio 6.31 sometimes jumps back to that tab when another tab is first opened later.
    """
    return f"() => {{ document.querySelector('button[role=tab][aria-controls=\"tab_{name}\"]')?.click(); }}"


def _wire_send(button: gr.Button, inputs: set[Component], source: Source, target: GenerationTab) -> None:
    def send(values: Mapping[Component, Any]) -> dict[Component, Any]:
        image, field_values = source(values)
        if image is None and not field_values:
            gr.Warning("Nothing to send: no image or parameters yet.")
            return {}
        update = target.fill(field_values)
        if image is not None and target.mode.image_target is not None:
            update[target.mode.image_target] = target.mode.image_value(image)
        return update

    button.click(None, js=switch_tab_js(target.name), queue=False, api_visibility="private")
    button.click(send, inputs=inputs, outputs=target.fill_targets, api_visibility="private", show_progress="hidden")
