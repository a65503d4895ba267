"""The UI in headless Chromium (Playwright) against the fake services: the main flows end to end.

Screenshots of each flow go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.ui.browser import needs_browser, open_page, paint_stroke, set_number, shot, upload_to_editor
from tests.ui.conftest import launch
from tests.ui.fake_services import FakeServices

pytestmark = needs_browser
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install playwright)")
expect = sync_api.expect


@pytest.fixture(scope="module")
def app():
    fake = FakeServices(step_seconds=0.05)
    demo, url = launch(fake)
    yield fake, url
    demo.close()


@pytest.fixture(scope="module")
def page(app):
    _, url = app
    with open_page(url) as page:
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request, page):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        shot(page, f"FAILED_{request.node.name}")


def test_txt2img_flow(app, page):
    fake, _ = app
    page.locator("#txt2img_prompt textarea").fill("a red castle on a hill")
    expect(page.locator("#txt2img_token_counter")).to_contain_text("6/75")
    set_number(page, "txt2img_steps", 16)
    set_number(page, "txt2img_width", 128)
    set_number(page, "txt2img_height", 128)
    set_number(page, "txt2img_batch_size", 2)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"Step \d+/16 · batch 1/1"))
    expect(page.locator("#txt2img_preview img").first).to_be_visible()
    shot(page, "txt2img_running")
    expect(page.locator("#txt2img_gallery img").first).to_be_visible()
    expect(page.locator("#txt2img_progress")).to_contain_text("Done: 2 images")
    infotext = page.locator("#txt2img_infotext textarea")
    expect(infotext).to_have_value(re.compile(r"^a red castle on a hill\nSteps: 16"))
    assert fake.submitted[-1]["prompt"] == "a red castle on a hill" and fake.submitted[-1]["steps"] == 16
    shot(page, "txt2img_done")
    first_seed = int(re.search(r"Seed: (\d+)", infotext.input_value()).group(1))
    page.locator("#txt2img_gallery img").nth(1).click()  # selecting an image shows its own infotext
    expect(infotext).to_have_value(re.compile(rf"Seed: {first_seed + 1}$"))
    set_number(page, "txt2img_batch_size", 1)
    page.locator("#txt2img_send_img2img").click()  # the image and its parameters go to img2img
    expect(page.locator("#tab_img2img")).to_be_visible()
    expect(page.locator("#img2img_image img")).to_be_visible()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("a red castle on a hill")
    shot(page, "txt2img_sent_to_img2img")
    page.get_by_role("tab", name="txt2img").click()


def test_interrupt_stops_a_long_job(app, page):
    fake, _ = app
    set_number(page, "txt2img_steps", 150)  # 150 x 0.05 s per image, 2 images: 15 s if not interrupted
    set_number(page, "txt2img_batch_count", 2)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text(re.compile(r"Step \d+/150"))
    started = time.monotonic()
    page.locator("#txt2img_interrupt").click()
    expect(page.locator("#txt2img_progress")).to_contain_text("Interrupted: 0 images finished", timeout=8_000)
    assert time.monotonic() - started < 8 and fake.interrupted  # the whole job would take 15 s
    shot(page, "txt2img_interrupted")
    set_number(page, "txt2img_batch_count", 1)
    set_number(page, "txt2img_steps", 4)


def test_inpaint_paints_a_mask(app, page, tmp_path):
    fake, _ = app
    source = tmp_path / "inpaint-source.png"
    Image.new("RGB", (256, 256), (40, 90, 160)).save(source)
    page.get_by_role("tab", name="Inpaint").click()
    upload_to_editor(page, "inpaint_editor", source)
    paint_stroke(page, "inpaint_editor")
    page.locator("#inpaint_prompt textarea").fill("a window")
    set_number(page, "inpaint_steps", 3)
    set_number(page, "inpaint_width", 256)
    set_number(page, "inpaint_height", 256)
    shot(page, "inpaint_painted")
    page.locator("#inpaint_generate").click()
    expect(page.locator("#inpaint_gallery img").first).to_be_visible()
    values = fake.submitted[-1]
    assert values["prompt"] == "a window"
    assert values["init_image"].size == (256, 256) and values["mask"].size == (256, 256)
    assert values["mask"].getbbox() is not None, "the painted stroke must reach the service as mask"
    assert fake.requests[-1].mode == "inpaint"
    shot(page, "inpaint_done")


def test_png_info_round_trip(app, page, tmp_path):
    text = ("a lighthouse at dusk\nNegative prompt: blurry\n"
            "Steps: 33, Sampler: Euler a, CFG scale: 5.5, Seed: 4242, Size: 512x512")
    path = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), "orange").save(path, pnginfo=info)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    expect(page.locator("#pnginfo_text textarea")).to_have_value(text)
    shot(page, "pnginfo")
    page.locator("#pnginfo_send_txt2img").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#txt2img_negative_prompt textarea")).to_have_value("blurry")
    expect(page.locator("#txt2img_steps input[type=number]")).to_have_value("33")
    expect(page.locator("#txt2img_seed input")).to_have_value("4242")
    shot(page, "pnginfo_sent")


def test_errors_show_in_the_tab(app, page):
    page.get_by_role("tab", name="Depth").click()
    expect(page.locator("#depth_support")).to_contain_text("SD 2 depth model (fake)")
    page.locator("#depth_generate").click()
    expect(page.locator("#depth_error")).to_contain_text("depth_map")
    expect(page.locator("#depth_error")).to_contain_text("an image, a depth map, or both")
    shot(page, "depth_error")


def test_settings_apply_shows_the_note(app, page):
    fake, _ = app
    page.get_by_role("tab", name="Settings").click()
    choice = page.locator("#setting_attention input")
    choice.click()
    choice.fill("sdpa")  # filters the options; Enter picks the match
    choice.press("Enter")
    expect(choice).to_have_value("sdpa")
    page.locator("#settings_apply").click()
    expect(page.locator("#settings_result")).to_contain_text("Attention backend: takes effect after a restart")
    assert fake.saved_settings[-1]["attention"] == "sdpa"
    shot(page, "settings")
