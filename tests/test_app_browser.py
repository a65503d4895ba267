"""The real app (real engine, tiny random-weight model) in headless Chromium: every tab end to end.

Screenshots of each flow go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from tests.ui.browser import needs_browser, open_page, paint_stroke, set_number, shot, upload_to_editor
from webui.app import launch
from webui.config import LaunchOptions

from .engine.models.tiny_checkpoints import Recipe, make_checkpoint
from .extensions.builtin.controlnet.tiny import make_controlnet

pytestmark = needs_browser
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
expect = sync_api.expect


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("browserapp")
    (root / "models" / "checkpoints").mkdir(parents=True)
    checkpoint = make_checkpoint(Recipe("sd1"), seed=1)
    save_file(checkpoint, str(root / "models" / "checkpoints" / "tiny.safetensors"))
    save_lora(checkpoint, root / "models" / "loras" / "style.safetensors")
    # Sorted after "tiny", so "tiny" stays the default checkpoint; the depth tab test switches to it.
    save_file(make_checkpoint(Recipe("sd2", "depth"), seed=2), str(root / "models" / "checkpoints" / "v2-depth.safetensors"))
    (root / "models" / "controlnet").mkdir()
    save_file(make_controlnet(Recipe("sd1"), seed=3), str(root / "models" / "controlnet" / "tiny-canny.safetensors"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = LaunchOptions(port=port, models_dir=root / "models", outputs_dir=root / "outputs",
                            settings_file=root / "settings.json",
                            presets_dir=Path(__file__).resolve().parent.parent / "presets", precision="fp32")
    demo = launch(options, block=False)
    yield root, f"http://127.0.0.1:{port}/"
    demo.close()


def save_lora(checkpoint, path: Path) -> None:
    """A kohya LoRA on the first cross-attention key projection of the tiny SD 1 model."""
    import torch

    out, inp = checkpoint["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    gen = torch.Generator().manual_seed(5)
    path.parent.mkdir(parents=True)
    save_file({f"{key}.lora_down.weight": torch.randn(4, inp, generator=gen),
               f"{key}.lora_up.weight": torch.randn(out, 4, generator=gen)}, str(path))


@pytest.fixture(scope="module")
def page(app):
    with open_page(app[1]) as page:
        yield page


def small(page, tab: str, steps: int = 3, size: int = 64) -> None:
    set_number(page, f"{tab}_steps", steps)
    set_number(page, f"{tab}_width", size)
    set_number(page, f"{tab}_height", size)


def test_txt2img_then_img2img(app, page):
    root, _ = app
    page.locator("#txt2img_prompt textarea").fill("a red circle on a blue background")
    expect(page.locator("#txt2img_token_counter")).to_contain_text("7/75")
    small(page, "txt2img")
    set_number(page, "txt2img_seed", 1234)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(r"Steps: 3, .*Seed: 1234"))
    assert len(list((root / "outputs" / "txt2img-images").glob("*-1234.png"))) == 1
    shot(page, "real_txt2img")

    page.locator("#txt2img_send_img2img").click()
    expect(page.locator("#tab_img2img")).to_be_visible()
    page.locator("#img2img_prompt textarea").fill("an oil painting")
    small(page, "img2img")
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_infotext textarea")).to_have_value(re.compile(r"Denoising strength: 0\.75"),
                                                                     timeout=60_000)
    shot(page, "real_img2img")


def test_interrupt_a_long_job(app, page):
    page.get_by_role("tab", name="txt2img").click()
    small(page, "txt2img", steps=150)
    set_number(page, "txt2img_batch_count", 5)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
    page.locator("#txt2img_interrupt").click()
    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"nterrupted"), timeout=30_000)
    shot(page, "real_interrupted")
    set_number(page, "txt2img_batch_count", 1)


def test_inpaint_with_a_painted_mask(app, page, tmp_path):
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (40, 90, 160)).save(source)
    page.get_by_role("tab", name="Inpaint").click()
    upload_to_editor(page, "inpaint_editor", source)
    paint_stroke(page, "inpaint_editor")
    page.locator("#inpaint_prompt textarea").fill("a window")
    small(page, "inpaint")
    page.locator("#inpaint_generate").click()
    expect(page.locator("#inpaint_gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#inpaint_infotext textarea")).to_have_value(re.compile(r"Mask blur: 4"))
    shot(page, "real_inpaint")


def test_png_info_round_trip_of_our_own_image(app, page):
    root, _ = app
    saved = sorted((root / "outputs" / "txt2img-images").glob("*.png"))[0]
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    expect(page.locator("#pnginfo_text textarea")).to_have_value(re.compile(r"^a red circle on a blue background\n"))
    page.locator("#pnginfo_send_txt2img").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a red circle on a blue background")
    expect(page.locator("#txt2img_seed input")).to_have_value("1234")
    shot(page, "real_pnginfo")


def test_a_setting_is_persisted(app, page):
    root, _ = app
    page.get_by_role("tab", name="Settings").click()
    set_number(page, "setting_preview_every", 3)
    for name, value in (("attention", "sliced"), ("vae_tiling", "on")):  # the memory settings
        choice = page.locator(f"#setting_{name} input")
        choice.click()
        choice.fill(value)  # filters the options; Enter picks the match
        choice.press("Enter")
        expect(choice).to_have_value(value)
    page.locator("#settings_apply").click()
    expect(page.locator("#settings_result")).to_contain_text("Settings saved")
    saved = json.loads((root / "settings.json").read_text())
    assert (saved["preview_every"], saved["attention"], saved["vae_tiling"]) == (3, "sliced", "on")
    shot(page, "real_settings")


def test_lora_picker_and_extensions_tab(app, page):
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a cat")
    page.locator("#txt2img_ext_lora").get_by_text("LoRA").first.click()  # open the accordion
    choice = page.locator("#txt2img_ext_lora .lora-picker input")
    choice.click()
    choice.fill("style")
    choice.press("Enter")
    page.locator("#txt2img_ext_lora .lora-add").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cat <lora:style:1>")
    small(page, "txt2img", steps=2)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(
        re.compile(r"^a cat <lora:style:1>\n.*Lora hashes: \"style: [0-9a-f]{12}\"", re.S), timeout=60_000)
    expect(page.locator("#txt2img_error")).to_be_hidden()
    shot(page, "real_lora")

    page.get_by_role("tab", name="Extensions").click()
    table = page.locator("#extensions_table")
    expect(table).to_contain_text("prompt_weighting")
    expect(table).to_contain_text("lora")
    expect(table).to_contain_text("loaded")
    shot(page, "real_extensions")


def choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in a dropdown: typing filters the options, Enter takes the match."""
    choice = page.locator(f"#{elem_id} input")
    choice.click()
    choice.fill(value)
    choice.press("Enter")
    expect(choice).to_have_value(value)


def test_a_controlnet_unit_from_txt2img(app, page, tmp_path):
    control = tmp_path / "control.png"
    image = Image.new("RGB", (64, 64), (20, 20, 20))
    image.paste((230, 230, 230), (10, 12, 40, 44))
    image.save(control)
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("a square")
    page.locator("#txt2img_ext_controlnet").get_by_text("ControlNet").first.click()  # open the accordion
    page.locator("#txt2img_controlnet_unit0_image input[type=file]").set_input_files(str(control))
    expect(page.locator("#txt2img_controlnet_unit0_image img")).to_be_visible()
    page.locator("#txt2img_controlnet_unit0_enabled input").check()
    choose(page, "txt2img_controlnet_unit0_module", "canny")
    expect(page.locator("#txt2img_controlnet_unit0_threshold_a")).to_contain_text("Low threshold")
    choose(page, "txt2img_controlnet_unit0_model", "tiny-canny.safetensors")
    page.locator("#txt2img_controlnet_unit0_run_preview").click()
    expect(page.locator("#txt2img_controlnet_unit0_preview img")).to_be_visible(timeout=30_000)
    small(page, "txt2img", steps=2)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(
        re.compile(r'ControlNet 0: "Module: canny, Model: tiny-canny \[[0-9a-f]{8}\], Weight: 1, .*Threshold A: 100, '
                   r"Threshold B: 200"), timeout=60_000)
    expect(page.locator("#txt2img_error")).to_be_hidden()
    shot(page, "real_controlnet")
    page.locator("#txt2img_controlnet_unit0_enabled input").uncheck()


def test_the_depth_tab_with_an_uploaded_depth_map(app, page, tmp_path):
    depth_map = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)), "L").save(depth_map)
    choose(page, "checkpoint", "v2-depth.safetensors")
    try:
        page.get_by_role("tab", name="Depth").click()
        expect(page.locator("#depth_support")).to_contain_text("is an SD 2 depth model")
        page.locator("#depth_map_upload input[type=file]").set_input_files(str(depth_map))
        expect(page.locator("#depth_map_upload img")).to_be_visible()
        page.locator("#depth_prompt textarea").fill("a room")
        small(page, "depth", steps=2)
        page.locator("#depth_generate").click()
        expect(page.locator("#depth_gallery img").first).to_be_visible(timeout=60_000)
        expect(page.locator("#depth_infotext textarea")).to_have_value(re.compile(r"Depth map: uploaded"))
        expect(page.locator("#depth_error")).to_be_hidden()
        shot(page, "real_depth")
    finally:
        choose(page, "checkpoint", "tiny.safetensors")
