"""The controls every generation tab shares, built once per tab with elem_ids prefixed by the tab's name.

Each control that is a GenerationRequest field is registered under the field's name in `bindings`;
the handlers collect and fill values through that mapping, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from webui.engine.request import HR_UPSCALERS
from webui.ui.fields import REQUEST_DEFAULTS, Binding, FieldDropdown, FieldNumber, slider
from webui.ui.services import UIServices


@dataclass
class PromptArea:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    token_counter: gr.HTML
    negative_token_counter: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    preset: gr.Dropdown


@dataclass
class SettingsArea:
    seed: FieldNumber
    random_seed: gr.Button
    reuse_seed: gr.Button
    bindings: dict[str, Binding] = field(default_factory=dict)


def token_count_html(services: UIServices, text: str | None) -> str:
    tokens, capacity = services.count_tokens(text or "")
    return f'<span class="webui-token-counter">{tokens}/{capacity}</span>'


def build_prompt_area(tab: str, services: UIServices, defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> PromptArea:
    """Prompt and negative prompt with token counters; Generate, Interrupt, Skip; the presets menu."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_prompt", value=defaults["prompt"],
                                placeholder="Prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_negative_prompt",
                                  value=defaults["negative_prompt"], placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=220):
            with gr.Row():
                counter = gr.HTML(token_count_html(services, ""), elem_id=f"{tab}_token_counter",
                                  label="Prompt tokens")
                negative_counter = gr.HTML(token_count_html(services, ""), elem_id=f"{tab}_negative_token_counter",
                                           label="Negative prompt tokens")
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
            preset = gr.Dropdown(choices=list(services.presets()), value=None, label="Preset",
                                 elem_id=f"{tab}_preset", info="Fills the fields below")
    return PromptArea(prompt, negative, counter, negative_counter, generate, interrupt, skip, preset)


def _choice_default(choices: list[str], default: Any) -> Any:
    return default if default in choices or not choices else choices[0]


def build_settings_area(tab: str, services: UIServices, *, hires: bool = False,
                        defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> SettingsArea:
    """Sampler, schedule, steps, size, batch, CFG, seeds, clip skip (and hires fix for txt2img), starting at
    `defaults` (field name -> value)."""
    d = defaults
    b: dict[str, Binding] = {}
    samplers, schedules = services.samplers(), services.schedules()
    with gr.Row():
        b["sampler_name"] = Binding(FieldDropdown(choices=samplers, value=_choice_default(samplers, d["sampler_name"]),
                                                  label="Sampling method", elem_id=f"{tab}_sampler"))
        b["scheduler"] = Binding(FieldDropdown(choices=schedules, value=_choice_default(schedules, d["scheduler"]),
                                               label="Schedule type", elem_id=f"{tab}_scheduler"))
    b["steps"] = Binding(slider("steps", "Sampling steps", 1, 150, 1, f"{tab}_steps", defaults=d))
    with gr.Row():
        with gr.Column(scale=3):
            b["width"] = Binding(slider("width", "Width", 64, 2048, 8, f"{tab}_width", defaults=d))
            b["height"] = Binding(slider("height", "Height", 64, 2048, 8, f"{tab}_height", defaults=d))
        with gr.Column(scale=1, min_width=160):
            b["batch_count"] = Binding(slider("batch_count", "Batch count", 1, 100, 1, f"{tab}_batch_count",
                                              defaults=d))
            b["batch_size"] = Binding(slider("batch_size", "Batch size", 1, 8, 1, f"{tab}_batch_size", defaults=d))
    b["cfg_scale"] = Binding(slider("cfg_scale", "CFG Scale", 1, 30, 0.5, f"{tab}_cfg_scale", integer=False,
                                    defaults=d))
    with gr.Row(equal_height=True):
        seed = FieldNumber(value=d["seed"], label="Seed", precision=0, elem_id=f"{tab}_seed",
                           scale=4, info="-1: random")
        random_seed = gr.Button("🎲", elem_id=f"{tab}_random_seed", size="sm", scale=0, min_width=48)
        reuse_seed = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", size="sm", scale=0, min_width=48)
    b["seed"] = Binding(seed)
    with gr.Accordion("Variation seed", open=False, elem_id=f"{tab}_variation"):
        with gr.Row():
            b["subseed"] = Binding(FieldNumber(value=d["subseed"], label="Variation seed",
                                               precision=0, elem_id=f"{tab}_subseed"))
            b["subseed_strength"] = Binding(slider("subseed_strength", "Variation strength", 0, 1, 0.01,
                                                   f"{tab}_subseed_strength", integer=False, defaults=d))
    b["clip_skip"] = Binding(slider("clip_skip", "Clip skip", 1, 12, 1, f"{tab}_clip_skip", defaults=d))
    if hires:
        b.update(build_hires(tab, d))
    b.update(build_refiner(tab, services, d))
    return SettingsArea(seed, random_seed, reuse_seed, b)


def build_refiner(tab: str, services: UIServices,
                  defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> dict[str, Binding]:
    """A second model (the SDXL refiner) that takes over for the last part of sampling."""
    d = defaults
    b: dict[str, Binding] = {}
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        with gr.Row():
            b["refiner_checkpoint"] = Binding(FieldDropdown(
                choices=["", *services.checkpoints()], value=d["refiner_checkpoint"],
                label="Refiner checkpoint (empty: none)", elem_id=f"{tab}_refiner_checkpoint"))
            b["refiner_switch_at"] = Binding(slider("refiner_switch_at", "Switch at (fraction of steps)", 0.01, 1,
                                                    0.01, f"{tab}_refiner_switch_at", integer=False, defaults=d))
    return b


def build_hires(tab: str, defaults: Mapping[str, Any] = REQUEST_DEFAULTS) -> dict[str, Binding]:
    """Hires fix: a first pass at width x height, then an upscaled second pass."""
    d = defaults
    b: dict[str, Binding] = {}
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hires"):
        b["enable_hr"] = Binding(gr.Checkbox(value=d["enable_hr"], label="Enable hires. fix",
                                             elem_id=f"{tab}_enable_hr"))
        with gr.Row():
            b["hr_upscaler"] = Binding(FieldDropdown(choices=list(HR_UPSCALERS), value=d["hr_upscaler"],
                                                     label="Upscaler", elem_id=f"{tab}_hr_upscaler"))
            b["hr_second_pass_steps"] = Binding(slider("hr_second_pass_steps", "Hires steps (0: same as sampling)",
                                                       0, 150, 1, f"{tab}_hr_second_pass_steps", defaults=d))
            b["hr_denoising_strength"] = Binding(slider("hr_denoising_strength", "Denoising strength", 0, 1, 0.01,
                                                        f"{tab}_hr_denoising_strength", integer=False, defaults=d))
        with gr.Row():
            b["hr_scale"] = Binding(slider("hr_scale", "Upscale by", 1, 4, 0.05, f"{tab}_hr_scale", integer=False,
                                           defaults=d))
            b["hr_resize_x"] = Binding(slider("hr_resize_x", "Resize width to (0: by scale)", 0, 2048, 8,
                                              f"{tab}_hr_resize_x", defaults=d))
            b["hr_resize_y"] = Binding(slider("hr_resize_y", "Resize height to (0: by scale)", 0, 2048, 8,
                                              f"{tab}_hr_resize_y", defaults=d))
    return b
