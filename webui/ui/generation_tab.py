"""One generation tab (txt2img, img2img, inpaint, depth): its layout, its state and its events.

The shared controls come from `controls.py`, the mode's own inputs from `mode_inputs.py`; every
request field is bound by name in `GenerationTab.bindings`. Event handlers receive one dict keyed by
component (`inputs={...}`); the generate event gets its values by name (`inputs_kwargs`, field name ->
component), so API clients call it with keywords: `client.predict(prompt="a cat", steps=12, api_name="/txt2img")`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from gradio.components import Component

from webui.ui.controls import PromptArea, SettingsArea, build_prompt_area, build_settings_area, token_count_html
from webui.ui.fields import REQUEST_DEFAULTS, Binding, collect, fill
from webui.ui.generate import make_generate, make_job_action
from webui.ui.mode_inputs import ModeInputs
from webui.ui.services import UIServices

SEND_LABELS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint"}


@dataclass
class GenerationTab:
    name: str
    prompt_area: PromptArea
    settings: SettingsArea
    mode: ModeInputs
    bindings: dict[str, Binding]
    gallery: gr.Gallery
    infotext: gr.Textbox
    progress: gr.HTML
    preview: gr.Gallery
    error: gr.HTML
    job: gr.State  # this session's current job id
    images: gr.State  # the last job's images, infotexts and seeds
    infotexts: gr.State
    seeds: gr.State
    selected: gr.State  # index of the selected gallery image
    send_buttons: dict[str, gr.Button] = field(default_factory=dict)  # target tab -> button
    # Extensions' controls: input name -> (extension, parameter, component); values go to request.extensions.
    extension_inputs: dict[str, tuple[str, str, Component]] = field(default_factory=dict)

    @property
    def generate_inputs(self) -> dict[str, Component]:
        """The generate event's inputs by parameter name: every bound field, the mode's extra inputs, and the
        extensions' controls."""
        extensions = {key: component for key, (_, _, component) in self.extension_inputs.items()}
        return {**{name: b.component for name, b in self.bindings.items()}, **self.mode.extra, **extensions}

    def request_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """GenerationRequest field values from the generate inputs' values by name (may raise RequestError)."""
        extra = {name: values.get(name) for name in self.mode.extra}
        fields = self.mode.finish(extra, collect(self.bindings, values))
        extensions: dict[str, dict[str, Any]] = {}
        for key, (extension, parameter, _) in self.extension_inputs.items():
            extensions.setdefault(extension, {})[parameter] = values.get(key)
        return {**fields, "extensions": extensions} if extensions else fields

    def fill(self, field_values: Mapping[str, Any]) -> dict[Component, Any]:
        """New component values: the request fields this tab shows, and extensions' parameters (as read back
        from an infotext, under "extensions")."""
        updates = fill(self.bindings, field_values)
        extensions = field_values.get("extensions") or {}
        for extension, parameter, component in self.extension_inputs.values():
            if parameter in extensions.get(extension, {}):
                updates[component] = extensions[extension][parameter]
        return updates

    @property
    def fill_targets(self) -> list[Component]:
        """Everything `fill` and an incoming image may update."""
        targets = [b.component for b in self.bindings.values()]
        targets += [component for _, _, component in self.extension_inputs.values()]
        if self.mode.image_target is not None and self.mode.image_target not in targets:
            targets.append(self.mode.image_target)
        return targets


def build_generation_tab(services: UIServices, name: str, label: str, *,
                         build_mode: Callable[[Mapping[str, Any]], ModeInputs] | None = None, hires: bool = False,
                         send_to: tuple[str, ...] = ("img2img", "inpaint")) -> GenerationTab:
    """Lay out the tab (call inside `gr.Tabs()`), its fields starting at the service's initial values over the
    request defaults; events are wired by `wire_generation_tab`."""
    defaults = {**REQUEST_DEFAULTS, **services.initial_values()}
    with gr.Tab(label, id=name, elem_id=f"tab_{name}"):
        prompt_area = build_prompt_area(name, services, defaults)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                mode = build_mode(defaults) if build_mode else ModeInputs()
                settings = build_settings_area(name, services, hires=hires, defaults=defaults)
                build_embedding_picker(services, name, prompt_area.prompt)
                extension_inputs = build_extension_controls(services, name, prompt_area.prompt)
            with gr.Column(scale=1):
                progress = gr.HTML("", label="Progress", elem_id=f"{name}_progress")
                error = gr.HTML("", label="Error", elem_id=f"{name}_error", visible=False)
                preview = gr.Gallery(label="Live preview", elem_id=f"{name}_preview", format="jpeg", columns=4,
                                     height=256, visible=False, interactive=False)
                gallery = gr.Gallery(label="Output", elem_id=f"{name}_gallery", format="png", columns=4,
                                     height=512, interactive=False, object_fit="contain")
                with gr.Row():
                    send_buttons = {target: gr.Button(SEND_LABELS[target], elem_id=f"{name}_send_{target}", size="sm")
                                    for target in send_to}
                infotext = gr.Textbox(label="Generation parameters", elem_id=f"{name}_infotext", lines=3,
                                      interactive=False, buttons=["copy"])
        # States inside the Tab: a non-Tab child of gr.Tabs makes the frontend register tabs twice.
        states = {"job": gr.State(None), "images": gr.State([]), "infotexts": gr.State([]), "seeds": gr.State([]),
                  "selected": gr.State(0)}
    bindings = {"prompt": Binding(prompt_area.prompt), "negative_prompt": Binding(prompt_area.negative_prompt),
                **mode.bindings, **settings.bindings}
    return GenerationTab(name, prompt_area, settings, mode, bindings, gallery, infotext, progress, preview, error,
                         send_buttons=send_buttons, extension_inputs=extension_inputs, **states)


def build_embedding_picker(services: UIServices, tab: str, prompt: Component) -> None:
    """The textual-inversion embeddings (models/embeddings), with a button that writes the chosen name into
    the prompt: an embedding is used by its name."""
    with gr.Accordion("Textual inversion", open=False, elem_id=f"{tab}_embeddings"):
        with gr.Row():
            name = gr.Dropdown(choices=services.embeddings(), value=None, label="Embedding", scale=3,
                               elem_id=f"{tab}_embedding_choice")
            refresh = gr.Button("🔄", scale=0, min_width=48, elem_id=f"{tab}_embedding_refresh")
            add = gr.Button("Add to prompt", scale=1, elem_id=f"{tab}_embedding_add")
    refresh.click(lambda: gr.update(choices=services.embeddings()), outputs=name, **_private())
    add.click(lambda text, chosen: f"{text or ''} {chosen}".strip() if chosen else text, inputs=[prompt, name],
              outputs=prompt, **_private())


def build_extension_controls(services: UIServices, tab: str, prompt: Component) -> dict[str, tuple[str, str, Component]]:
    """Each extension's controls for this tab, in an accordion of its own. `build` gets the tab's prompt
    box when it takes a `prompt` argument (e.g. to insert tags). An extension whose controls fail to build
    shows its error there; the tab still works."""
    inputs: dict[str, tuple[str, str, Component]] = {}
    for extension, spec in services.extension_controls(tab):
        with gr.Accordion(spec.title, open=False, elem_id=f"{tab}_ext_{extension}"):
            try:
                takes_prompt = "prompt" in inspect.signature(spec.build).parameters
                components = spec.build(prompt=prompt) if takes_prompt else spec.build()
                for parameter, component in components.items():
                    inputs[f"ext__{extension}__{parameter}"] = (extension, str(parameter), component)
            except Exception as exc:  # an extension's bug must not take the tab down
                gr.Markdown(f"Extension '{extension}' could not build its controls: {type(exc).__name__}: {exc}")
    return inputs


def _private(**kwargs: Any) -> dict[str, Any]:
    """Options for small helper events: instant (no queue), not part of the API, no spinner."""
    return {"queue": False, "api_visibility": "private", "show_progress": "hidden", **kwargs}


def wire_generation_tab(services: UIServices, tab: GenerationTab, checkpoint: Component, vae: Component) -> None:
    p = tab.prompt_area
    for textbox, counter in ((p.prompt, p.token_counter), (p.negative_prompt, p.negative_token_counter)):
        textbox.change(lambda values, t=textbox: token_count_html(services, values[t]), inputs={textbox},
                       outputs=counter, trigger_mode="always_last", **_private())

    tab.settings.random_seed.click(lambda: -1, outputs=tab.settings.seed, **_private())

    def reuse_seed(values: Mapping[Component, Any]) -> int:
        seeds = values[tab.seeds] or []
        return seeds[0] if seeds else -1

    tab.settings.reuse_seed.click(reuse_seed, inputs={tab.seeds}, outputs=tab.settings.seed, **_private())

    def apply_preset(values: Mapping[Component, Any]) -> dict[Component, Any]:
        preset = services.presets().get(values[p.preset] or "")
        return tab.fill(preset) if preset else {}

    p.preset.input(apply_preset, inputs={p.preset}, outputs=tab.fill_targets, **_private())

    inputs = {"checkpoint": checkpoint, "vae": vae, **tab.generate_inputs}
    outputs = [tab.gallery, tab.infotext, tab.progress, tab.preview, tab.error, tab.job, tab.images, tab.infotexts,
               tab.seeds, tab.selected]
    # The service's job queue serialises the GPU; this handler only polls, so sessions must not wait
    # for each other here (concurrency_limit=None), and our own progress area replaces Gradio's spinner.
    p.generate.click(make_generate(services, tab), inputs_kwargs=inputs, outputs=outputs,
                     api_name=tab.name, api_visibility="public", concurrency_limit=None, show_progress="hidden",
                     trigger_mode="once")

    p.interrupt.click(make_job_action(services.interrupt, tab.job), inputs={tab.job}, **_private())
    p.skip.click(make_job_action(services.skip, tab.job), inputs={tab.job}, **_private())

    def select(values: Mapping[Component, Any], evt: gr.SelectData) -> dict[Component, Any]:
        texts = values[tab.infotexts] or []
        index = evt.index if isinstance(evt.index, int) else 0
        return {tab.infotext: texts[index] if index < len(texts) else "", tab.selected: index}

    tab.gallery.select(select, inputs={tab.infotexts}, outputs=[tab.infotext, tab.selected], **_private())
