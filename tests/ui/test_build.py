"""The UI builds with the fake services, carries the elem_ids and API names tests and users rely on,
and never pulls torch or engine internals in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.fake_services import FakeServices

GENERATION_TABS = ("txt2img", "img2img", "inpaint", "depth")
PER_TAB = ("prompt", "negative_prompt", "token_counter", "steps", "sampler", "seed", "generate", "interrupt",
           "skip", "gallery", "progress", "preview", "infotext", "error")
REQUIRED = {
    *(f"{tab}_{name}" for tab in GENERATION_TABS for name in PER_TAB),
    *(f"tab_{tab}" for tab in (*GENERATION_TABS, "pnginfo", "extensions", "settings")),
    "img2img_image", "inpaint_editor", "inpaint_mask_upload", "pnginfo_image", "pnginfo_text", "settings_apply",
    "settings_result", "checkpoint", "vae", "refresh_models", "txt2img_enable_hr", "txt2img_hr_upscaler",
    "txt2img_hr_scale", "txt2img_hr_second_pass_steps", "txt2img_hr_denoising_strength", "txt2img_hr_resize_x",
    "txt2img_hr_resize_y", "txt2img_clip_skip", "txt2img_cfg_scale", "txt2img_width", "txt2img_height",
    "txt2img_subseed", "txt2img_subseed_strength", "txt2img_preset", "txt2img_random_seed", "txt2img_reuse_seed",
    "inpaint_mask_blur", "inpaint_inpainting_fill", "inpaint_area", "inpaint_full_res_padding", "inpaint_mask_mode",
    "inpaint_outpaint_left", "inpaint_outpaint_right", "inpaint_outpaint_top", "inpaint_outpaint_bottom",
    "img2img_denoising_strength", "img2img_resize_mode", "depth_image", "depth_map_upload",
    "pnginfo_send_txt2img", "pnginfo_send_img2img", "pnginfo_send_inpaint", "txt2img_send_img2img",
    "txt2img_send_inpaint",
}


@pytest.fixture(scope="module")
def config():
    from webui.ui.app_ui import build_ui

    demo = build_ui(FakeServices(), title="test")
    return demo.get_config_file()


def test_required_elem_ids_exist_once(config):
    ids = [c["props"].get("elem_id") for c in config["components"] if c["props"].get("elem_id")]
    assert REQUIRED <= set(ids), sorted(REQUIRED - set(ids))
    assert len(ids) == len(set(ids)), "duplicate elem_ids"


def test_generate_events_are_the_only_public_api(config):
    public = {d["api_name"] for d in config["dependencies"] if d.get("api_visibility") == "public"}
    assert public == {"txt2img", "img2img", "inpaint", "depth"}


def test_field_defaults_follow_the_request():
    from webui.ui.app_ui import build_ui

    demo = build_ui(FakeServices())
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["txt2img_steps"].value == 20 and by_id["txt2img_cfg_scale"].value == 7.0
    assert (by_id["txt2img_steps"].minimum, by_id["txt2img_steps"].maximum) == (1, 150)
    assert by_id["txt2img_width"].step == 8 and by_id["txt2img_cfg_scale"].step == 0.5
    assert by_id["img2img_denoising_strength"].value == 0.75
    assert by_id["inpaint_mask_blur"].value == 4 and by_id["inpaint_full_res_padding"].value == 32
    assert by_id["inpaint_inpainting_fill"].value == "original" and by_id["inpaint_area"].value == "Whole picture"
    assert by_id["txt2img_hr_denoising_strength"].value == 0.7
    assert by_id["checkpoint"].value == "fake-v1.safetensors" and by_id["vae"].value == "Automatic"


def test_fields_start_at_the_services_initial_values():
    """E.g. the demo preset's 128x128 when the app starts on the demo model; other fields keep the defaults."""
    from webui.ui.app_ui import build_ui

    fake = FakeServices()
    fake.initial = {"width": 128, "height": 128, "steps": 12, "sampler_name": "Euler a", "scheduler": "Karras",
                    "cfg_scale": 5.5, "denoising_strength": 0.4, "inpaint_full_res": True}
    by_id = {b.elem_id: b for b in build_ui(fake).blocks.values() if getattr(b, "elem_id", None)}
    for tab in GENERATION_TABS:
        assert (by_id[f"{tab}_width"].value, by_id[f"{tab}_height"].value) == (128, 128)
        assert by_id[f"{tab}_steps"].value == 12 and by_id[f"{tab}_cfg_scale"].value == 5.5
        assert (by_id[f"{tab}_sampler"].value, by_id[f"{tab}_scheduler"].value) == ("Euler a", "Karras")
        assert by_id[f"{tab}_seed"].value == -1 and by_id[f"{tab}_batch_size"].value == 1
    assert by_id["img2img_denoising_strength"].value == 0.4 and by_id["inpaint_area"].value == "Only masked"
    assert by_id["inpaint_mask_mode"].value == "Inpaint masked"


def test_the_demo_preset_as_initial_values_reaches_the_request():
    import gradio as gr

    from webui.presets import load_preset
    from webui.ui.generation_tab import build_generation_tab

    fake = FakeServices()
    fake.initial = load_preset(Path(__file__).resolve().parents[2] / "presets" / "demo.yaml")
    with gr.Blocks():
        with gr.Tabs():
            tab = build_generation_tab(fake, "txt2img", "txt2img", hires=True)
    values = tab.request_values({name: b.component.value for name, b in tab.bindings.items()})
    assert {k: values[k] for k in fake.initial} == fake.initial


def test_field_components_pass_values_through():
    from webui.ui.fields import FieldDropdown, FieldSlider

    steps = FieldSlider(1, 150, value=20, step=1, precision=0, render=False)
    assert steps.preprocess(0) == 0 and type(steps.preprocess(12.0)) is int and steps.preprocess(7.5) == 7.5
    assert steps.get_block_name() == "slider"  # rendered by the frontend as a plain slider
    sampler = FieldDropdown(choices=["Euler"], value="Euler", render=False)
    assert sampler.preprocess("k_euler_a") == "k_euler_a"


def test_mask_is_alpha_of_layers_plus_upload():
    from webui.ui.masks import inpaint_images

    background = Image.new("RGBA", (64, 48), (10, 20, 30, 255))
    layer = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 40), (4, 4, 12, 12))  # faint brush stroke still counts
    upload = Image.new("L", (32, 24), 0)
    upload.paste(255, (16, 12, 32, 24))  # bottom-right quarter, at half size
    out = inpaint_images({"background": background, "layers": [layer], "composite": None}, upload, False)
    assert out["init_image"].mode == "RGB" and out["init_image"].size == (64, 48)
    mask = out["mask"]
    assert mask.mode == "L" and mask.size == (64, 48)
    assert mask.getpixel((5, 5)) == 255 and mask.getpixel((20, 5)) == 0 and mask.getpixel((60, 44)) == 255
    outpaint = inpaint_images({"background": background, "layers": [layer], "composite": None}, None, True)
    assert outpaint["mask"] is None and outpaint["init_image"].size == (64, 48)


def test_importing_the_ui_pulls_no_torch_nor_engine_internals():
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, json\n"
        "import webui.ui, webui.ui.app_ui\n"
        "from tests.ui.fake_services import FakeServices\n"
        "webui.ui.app_ui.build_ui(FakeServices())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'webui.engine')))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert out.returncode == 0, out.stderr
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "torch" not in modules
    allowed = {"webui.engine", "webui.engine.request", "webui.engine.sampling", "webui.engine.sampling.registry"}
    assert modules <= allowed, sorted(modules - allowed)


def test_extensions_tab_lists_rows_or_says_none():
    from webui.ui.app_ui import build_ui
    from webui.ui.extensions_tab import EMPTY

    def blocks(fake):
        return {b.elem_id: b for b in build_ui(fake).blocks.values() if getattr(b, "elem_id", None)}

    assert blocks(FakeServices())["extensions_empty"].value == EMPTY
    fake = FakeServices()
    fake.extension_rows = [{"name": "lora", "version": "1.0", "status": "enabled", "error": None, "hooks": 3}]
    table = blocks(fake)["extensions_table"].value
    assert table["headers"] == ["Name", "Version", "Status", "Error", "Hooks"]
    assert table["data"] == [["lora", "1.0", "enabled", "", "3"]]


def test_extension_controls_are_collected_into_the_request_and_filled_from_infotext():
    import gradio as gr

    from webui.plugins import ControlsSpec
    from webui.ui.generation_tab import build_generation_tab

    class WithControls(FakeServices):
        def extension_controls(self, tab):
            return [("vignette", ControlsSpec("Vignette", lambda: {"strength": gr.Slider(0, 1, value=0.2)}))]

    with gr.Blocks():
        with gr.Tabs():
            tab = build_generation_tab(WithControls(), "txt2img", "txt2img")
    [(key, (extension, parameter, component))] = tab.extension_inputs.items()
    assert (extension, parameter) == ("vignette", "strength") and tab.generate_inputs[key] is component
    values = tab.request_values({**{name: b.component.value for name, b in tab.bindings.items()}, key: 0.7})
    assert values["extensions"] == {"vignette": {"strength": 0.7}}
    assert tab.fill({"extensions": {"vignette": {"strength": 0.4}}})[component] == 0.4
    assert component in tab.fill_targets
