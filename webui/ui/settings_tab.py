"""Settings: one control per `SettingSpec`, filled from the current settings, saved by Apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
from gradio.components import Component

from webui.errors import WebUIError
from webui.ui.feedback import error_html, notes_html
from webui.ui.fields import FieldDropdown, FieldNumber, FieldSlider
from webui.ui.services import SettingSpec, UIServices

SAVED = "Settings saved."


def setting_component(spec: SettingSpec, value: Any) -> Component:
    """The control for one setting. Limits show in the browser; the service validates what is saved."""
    label = spec.label + (" (restart required)" if spec.restart_required else "")
    common: dict[str, Any] = {"label": label, "elem_id": f"setting_{spec.name}", "info": spec.help or None}
    bounded = spec.minimum is not None and spec.maximum is not None
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "choice":
        return FieldDropdown(choices=list(spec.choices), value=value, **common)
    if spec.kind == "int" and bounded:
        return FieldSlider(minimum=spec.minimum, maximum=spec.maximum, step=1, precision=0, value=value, **common)
    if spec.kind in ("int", "float"):
        return FieldNumber(value=value, precision=0 if spec.kind == "int" else None, minimum=spec.minimum,
                           maximum=spec.maximum, step=1 if spec.kind == "int" else 0.01, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def build_settings_tab(services: UIServices, demo: gr.Blocks) -> dict[str, Component]:
    specs = services.setting_specs()
    current = services.settings()
    with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
        controls = {spec.name: setting_component(spec, current.get(spec.name)) for spec in specs}
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
        result = gr.HTML("", elem_id="settings_result")

    def save(values: Mapping[Component, Any]) -> str:
        try:
            notes = services.save_settings({name: values[c] for name, c in controls.items()})
        except WebUIError as exc:  # RequestError names the setting
            return error_html(exc)
        return notes_html(list(notes or []), SAVED)

    def reload() -> dict[Component, Any]:  # each page load shows the settings as saved now
        now = services.settings()
        return {c: now[name] for name, c in controls.items() if name in now}

    apply.click(save, inputs=set(controls.values()), outputs=result, queue=False, api_visibility="private",
                show_progress="hidden")
    if controls:
        demo.load(reload, outputs=list(controls.values()), queue=False, api_visibility="private",
                  show_progress="hidden")
    return controls
