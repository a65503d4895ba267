"""The ControlNet accordion of a generation tab: `UI_UNITS` units, each in its own tab.

Every control's value reaches the request as `request.extensions["controlnet"]["unit<i>_<field>"]`;
`units.raw_units` turns those into units. "Preview" runs the chosen preprocessor on the unit's image and
shows the control map the ControlNet will see.
"""

from __future__ import annotations

from typing import Any

from webui.errors import WebUIError

from .control import control_map
from .preprocessors import PREPROCESSORS
from .units import CONTROL_MODES, RESIZE_MODES, UI_UNITS, ControlUnit

PREVIEW_MAX_SIDE = 768  # previews are made at the image's size, at most this long


def _threshold_update(gr, module: str, which: str, reset: bool) -> Any:
    """Show the threshold a preprocessor takes, under its name; `reset`: also set its default value (when
    the user picks a preprocessor, not when an infotext sets both)."""
    spec = getattr(PREPROCESSORS.get(module or "none"), which, None)
    if spec is None:
        return gr.update(visible=False)
    label, default, low, high = spec
    return gr.update(visible=True, label=label, minimum=low, maximum=high, **({"value": default} if reset else {}))


def preview(context, image, module, threshold_a, threshold_b, resize_mode, pixel_perfect, processor_res):
    """The control map of `image` at (about) its own size, as the unit would make it."""
    if image is None:
        return None
    scale = min(1.0, PREVIEW_MAX_SIDE / max(image.size))
    width, height = max(8, round(image.width * scale) // 8 * 8), max(8, round(image.height * scale) // 8 * 8)
    unit = ControlUnit(model="", module=module or "none", threshold_a=threshold_a, threshold_b=threshold_b,
                       resize_mode=resize_mode or RESIZE_MODES[1], pixel_perfect=bool(pixel_perfect),
                       processor_res=int(processor_res or 512))
    try:
        return control_map(unit, image, width, height, context.services.get("estimate_depth"))
    except WebUIError as exc:  # e.g. no depth estimator: say so where the preview would be
        import gradio as gr

        raise gr.Error(str(exc)) from exc


def build_units(context, tab: str) -> dict[str, Any]:
    import gradio as gr

    def model_names() -> list[str]:
        return ["", *context.services["model_names"]("controlnet")]

    components: dict[str, Any] = {}
    with gr.Tabs():
        for i in range(UI_UNITS):
            with gr.Tab(f"Unit {i}", elem_id=f"{tab}_controlnet_unit{i}"):
                c = {}
                with gr.Row():
                    c["image"] = gr.Image(type="pil", image_mode=None, label="Control image", format="png",
                                          sources=["upload", "clipboard"], height=256,
                                          elem_id=f"{tab}_controlnet_unit{i}_image")
                    shown = gr.Image(type="pil", label="Control map (preview)", interactive=False, height=256,
                                     format="png", elem_id=f"{tab}_controlnet_unit{i}_preview")
                if tab != "txt2img":
                    gr.Markdown("Without a control image the unit uses this tab's input image.")
                with gr.Row():
                    c["enabled"] = gr.Checkbox(False, label="Enable", elem_id=f"{tab}_controlnet_unit{i}_enabled")
                    c["pixel_perfect"] = gr.Checkbox(True, label="Pixel perfect (preprocess at the generation size)",
                                                     elem_id=f"{tab}_controlnet_unit{i}_pixel_perfect")
                with gr.Row():
                    c["module"] = gr.Dropdown(list(PREPROCESSORS), value="none", label="Preprocessor",
                                              elem_id=f"{tab}_controlnet_unit{i}_module")
                    # Custom values: an infotext may name a model that is not here; the request check says so.
                    c["model"] = gr.Dropdown(model_names(), value="", label="Model (models/controlnet)",
                                             allow_custom_value=True, elem_id=f"{tab}_controlnet_unit{i}_model")
                    refresh = gr.Button("🔄", scale=0, min_width=48, elem_id=f"{tab}_controlnet_unit{i}_refresh")
                    run_preview = gr.Button("Preview", scale=0, min_width=90,
                                            elem_id=f"{tab}_controlnet_unit{i}_run_preview")
                with gr.Row():
                    c["weight"] = gr.Slider(0, 2, value=1, step=0.05, label="Control weight",
                                            elem_id=f"{tab}_controlnet_unit{i}_weight")
                    c["guidance_start"] = gr.Slider(0, 1, value=0, step=0.01, label="Starting control step",
                                                    elem_id=f"{tab}_controlnet_unit{i}_guidance_start")
                    c["guidance_end"] = gr.Slider(0, 1, value=1, step=0.01, label="Ending control step",
                                                  elem_id=f"{tab}_controlnet_unit{i}_guidance_end")
                with gr.Row():
                    c["threshold_a"] = gr.Slider(0, 255, value=0, step=1, label="Threshold A", visible=False,
                                                 elem_id=f"{tab}_controlnet_unit{i}_threshold_a")
                    c["threshold_b"] = gr.Slider(0, 255, value=0, step=1, label="Threshold B", visible=False,
                                                 elem_id=f"{tab}_controlnet_unit{i}_threshold_b")
                    c["processor_res"] = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor resolution",
                                                   visible=False, elem_id=f"{tab}_controlnet_unit{i}_processor_res")
                c["control_mode"] = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control mode",
                                             elem_id=f"{tab}_controlnet_unit{i}_control_mode")
                c["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize mode",
                                            elem_id=f"{tab}_controlnet_unit{i}_resize_mode")

            private = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
            for event, reset in ((c["module"].input, True), (c["module"].change, False)):
                event(lambda m, r=reset: (_threshold_update(gr, m, "threshold_a", r),
                                          _threshold_update(gr, m, "threshold_b", r)),
                      inputs=c["module"], outputs=[c["threshold_a"], c["threshold_b"]], **private)
            c["pixel_perfect"].change(lambda p: gr.update(visible=not p), inputs=c["pixel_perfect"],
                                      outputs=c["processor_res"], **private)
            refresh.click(lambda chosen: gr.update(choices=model_names(), value=chosen if chosen in model_names() else ""),
                          inputs=c["model"], outputs=c["model"], **private)
            run_preview.click(lambda *values: preview(context, *values),
                              inputs=[c["image"], c["module"], c["threshold_a"], c["threshold_b"], c["resize_mode"],
                                      c["pixel_perfect"], c["processor_res"]],
                              outputs=shown, api_visibility="private", show_progress="minimal")
            components.update({f"unit{i}_{name}": component for name, component in c.items()})
    return components
