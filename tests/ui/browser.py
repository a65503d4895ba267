"""Playwright helpers shared by the browser tests: headless Debian Chromium, screenshots, inputs."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

needs_browser = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="browser tests need Chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]


@contextmanager
def open_page(url: str, ready_selector: str = "#txt2img_prompt textarea"):
    """A page of `url` in a fresh headless Chromium profile, once the UI is ready."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=ARGS, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(20_000)
        expect.set_options(timeout=15_000)  # the 2-core test machine is shared: be patient, not flaky
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(url, wait_until="domcontentloaded")  # never "networkidle": the heartbeat stays open
        page.locator(ready_selector).wait_for()
        try:
            yield page
        finally:
            context.close()


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"ui_{name}.png"), full_page=True)


def upload_to_editor(page, editor_id: str, path: Path) -> None:
    """Put an image into an ImageEditor; a freshly opened editor may drop a file it gets too early."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.locator(f"#{editor_id} canvas").first.wait_for()
    for attempt in range(3):
        page.locator(f"#{editor_id} input[type=file]").set_input_files(str(path))
        try:
            page.locator(f"#{editor_id} .empty").wait_for(state="detached", timeout=6_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    page.wait_for_timeout(500)  # the editor draws the background before it takes strokes


def paint_stroke(page, editor_id: str, start=(0.4, 0.45), end=(0.55, 0.5)) -> None:
    box = page.locator(f"#{editor_id} canvas").first.bounding_box()
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=2)
    page.mouse.up()
