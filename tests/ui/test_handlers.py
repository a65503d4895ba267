"""The generate handlers, driven through gradio_client against the app served with the fake services."""

from __future__ import annotations

import time

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.ui.conftest import launch
from tests.ui.fake_services import FakeServices

# Outputs of a generate endpoint, in order.
GALLERY, INFOTEXT, PROGRESS, PREVIEW, ERROR = range(5)
TXT2IMG_FIELDS = {
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "batch_count", "batch_size",
    "cfg_scale", "seed", "subseed", "subseed_strength", "clip_skip", "enable_hr", "hr_upscaler",
    "hr_second_pass_steps", "hr_denoising_strength", "hr_scale", "hr_resize_x", "hr_resize_y", "refiner_checkpoint",
    "refiner_switch_at",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    fake = FakeServices(step_seconds=0.01)
    demo, url = launch(fake)
    client = Client(url, verbose=False, analytics_enabled=False,
                    download_files=str(tmp_path_factory.mktemp("downloads")))
    yield fake, client, url
    demo.close()


def error_text(result) -> str:
    error = result[ERROR]
    return (error.get("value") or "") if isinstance(error, dict) else str(error or "")


def test_txt2img_returns_png_images_with_infotext(served):
    fake, client, _ = served
    result = client.predict(prompt="a red castle", steps=3, batch_size=2, width=64, height=96, seed=7,
                            api_name="/txt2img")
    assert error_text(result) == ""
    assert len(result[GALLERY]) == 2
    first = Image.open(result[GALLERY][0]["image"])
    assert first.format == "PNG" and first.size == (64, 96)
    assert first.info["parameters"].startswith("a red castle")  # the PNG keeps its parameters chunk
    assert result[INFOTEXT].startswith("a red castle") and "Seed: 7" in result[INFOTEXT]
    assert "Done: 2 images" in result[PROGRESS]


def test_values_arrive_by_field_name_with_their_types(served):
    fake, client, _ = served
    client.predict(prompt="typed", steps=5, cfg_scale=6.5, seed=123, enable_hr=True, hr_scale=1.5,
                   sampler_name="Euler a", api_name="/txt2img")
    values = fake.submitted[-1]
    assert set(values) == TXT2IMG_FIELDS
    assert values["prompt"] == "typed" and values["sampler_name"] == "Euler a"
    for name in ("steps", "seed", "subseed", "width", "height", "batch_count", "batch_size", "clip_skip",
                 "hr_second_pass_steps", "hr_resize_x", "hr_resize_y"):
        assert type(values[name]) is int, name
    assert values["steps"] == 5 and values["seed"] == 123
    assert values["cfg_scale"] == 6.5 and values["hr_scale"] == 1.5 and values["enable_hr"] is True
    assert fake.submitted_models[-1] == ("fake-v1.safetensors", "Automatic")


def test_steps_zero_is_a_clear_error_and_the_app_keeps_working(served):
    fake, client, _ = served
    jobs_before = len(fake.requests)
    result = client.predict(prompt="x", steps=0, api_name="/txt2img")
    text = error_text(result)
    assert "<strong>steps</strong>" in text and "an integer from 1 to 150" in text and "Traceback" not in text
    assert len(fake.requests) == jobs_before  # nothing was queued
    # Values the sliders' limits would refuse reach the server's validation, which names the field.
    assert "<strong>width</strong>" in error_text(client.predict(prompt="x", steps=2, width=100, api_name="/txt2img"))
    ok = client.predict(prompt="after the error", steps=2, width=64, height=64, api_name="/txt2img")
    assert error_text(ok) == "" and len(ok[GALLERY]) == 1


def test_img2img_sends_the_image(served, tmp_path):
    fake, client, _ = served
    path = tmp_path / "in.png"
    Image.new("RGBA", (80, 48), (200, 10, 10, 255)).save(path)
    result = client.predict(init_image=handle_file(str(path)), prompt="img", steps=2, denoising_strength=0.4,
                            resize_mode="Crop and resize", api_name="/img2img")
    assert error_text(result) == ""
    values = fake.submitted[-1]
    assert values["init_image"].mode == "RGB" and values["init_image"].size == (80, 48)
    assert values["denoising_strength"] == 0.4 and values["resize_mode"] == "Crop and resize"
    assert fake.requests[-1].mode == "img2img"
    missing = client.predict(init_image=None, prompt="img", steps=2, api_name="/img2img")
    assert "<strong>init_image</strong>" in error_text(missing)


def test_inpaint_mask_from_editor_layers_and_outpaint(served, tmp_path):
    fake, client, _ = served
    background, layer = tmp_path / "bg.png", tmp_path / "layer.png"
    Image.new("RGBA", (64, 64), (0, 128, 0, 255)).save(background)
    strokes = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (8, 8, 24, 24))
    strokes.save(layer)
    editor = {"background": handle_file(str(background)), "layers": [handle_file(str(layer))], "composite": None}
    result = client.predict(image_editor=editor, mask_upload=None, prompt="inpaint", steps=2, width=64, height=64,
                            inpaint_full_res="Only masked", inpainting_mask_invert="Inpaint not masked",
                            api_name="/inpaint")
    assert error_text(result) == ""
    values = fake.submitted[-1]
    assert values["mask"].size == values["init_image"].size == (64, 64)
    assert values["mask"].getbbox() == (8, 8, 24, 24)
    assert values["inpaint_full_res"] is True and values["inpainting_mask_invert"] is True
    assert values["mask_blur"] == 4 and values["inpainting_fill"] == "original"
    assert fake.requests[-1].mode == "inpaint"

    client.predict(image_editor=editor, mask_upload=None, prompt="outpaint", steps=2, outpaint_left=64,
                   api_name="/inpaint")
    values = fake.submitted[-1]
    assert values["mask"] is None and values["outpaint_left"] == 64 and fake.requests[-1].mode == "outpaint"


def test_depth_sends_the_image_and_or_the_depth_map(served, tmp_path):
    fake, client, _ = served
    path = tmp_path / "d.png"
    Image.new("RGB", (32, 32), "gray").save(path)
    client.predict(init_image=handle_file(str(path)), depth_map=None, prompt="depth", api_name="/depth")
    values = fake.submitted[-1]
    assert values["depth"] is True and values["depth_map"] is None and fake.requests[-1].mode == "depth"
    client.predict(init_image=None, depth_map=handle_file(str(path)), prompt="depth", api_name="/depth")
    request = fake.requests[-1]
    assert request.mode == "depth" and request.init_image is None and request.depth_map.size == (32, 32)
    result = client.predict(init_image=None, depth_map=None, prompt="depth", api_name="/depth")
    assert "<strong>depth_map</strong>: no image yet" in error_text(result)


def test_each_client_is_its_own_owner(served):
    fake, client, url = served
    other = Client(url, verbose=False, analytics_enabled=False)
    client.predict(prompt="one", steps=1, api_name="/txt2img")
    other.predict(prompt="two", steps=1, api_name="/txt2img")
    assert fake.owners[-1] != fake.owners[-2] and all(fake.owners[-2:])


def test_progress_is_reported_while_running(served):
    fake, client, _ = served
    job = client.submit(prompt="slow", steps=30, api_name="/txt2img")
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while not job.done() and time.monotonic() < deadline:
        seen.extend(str(out[PROGRESS]) for out in job.outputs() if isinstance(out, (list, tuple)))
        time.sleep(0.05)
    seen.extend(str(out[PROGRESS]) for out in job.outputs())
    assert any("Step " in text and "/30 · batch 1/1" in text for text in seen)
    assert "Done" in str(job.result()[PROGRESS])


def test_a_cancelled_client_interrupts_its_job(served, monkeypatch):
    fake, client, _ = served
    monkeypatch.setattr(fake, "step_seconds", 0.1)  # a 15 s job: still running when the cancel arrives on a busy machine
    job = client.submit(prompt="abandoned", steps=150, api_name="/txt2img")
    deadline = time.monotonic() + 10
    while not any(v.get("prompt") == "abandoned" for v in fake.submitted) and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted_before = len(fake.interrupted)
    job.cancel()  # Gradio closes the generator; nobody waits for the job any more
    deadline = time.monotonic() + 10
    while len(fake.interrupted) == interrupted_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fake.interrupted) > interrupted_before


# The small helper events are private (not callable by gradio_client): call their functions directly.

class FakeRequest:
    def __init__(self, session_hash: str = "session-1", username: str | None = None) -> None:
        self.session_hash, self.username = session_hash, username


@pytest.fixture(scope="module")
def built():
    from webui.ui.app_ui import build_ui

    fake = FakeServices(step_seconds=0.01)
    demo = build_ui(fake)
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    return fake, demo, by_id


def event(demo, trigger, name: str):
    """The function of the `name` event whose trigger is the component `trigger`."""
    for fn in demo.fns.values():
        if name in (fn.name or "") and any(t[0] == trigger._id for t in fn.targets):
            return fn
    raise LookupError(name)


def test_preset_fills_fields_by_name(built):
    fake, demo, by_id = built
    preset = by_id["txt2img_preset"]
    update = event(demo, preset, "apply_preset").fn({preset: "tiny"})
    filled = {c.elem_id: v for c, v in update.items()}
    assert filled == {"txt2img_width": 128, "txt2img_height": 192, "txt2img_steps": 4, "txt2img_cfg_scale": 5.5,
                      "txt2img_sampler": "Euler a"}


def test_seed_buttons(built):
    fake, demo, by_id = built
    reuse = event(demo, by_id["txt2img_reuse_seed"], "reuse_seed")
    seeds_state = reuse.inputs[0]
    assert reuse.fn({seeds_state: [42, 43]}) == 42 and reuse.fn({seeds_state: []}) == -1
    assert event(demo, by_id["txt2img_random_seed"], "lambda").fn() == -1


def test_refresh_keeps_the_selection_and_lists_new_models(built):
    fake, demo, by_id = built
    checkpoint, vae = by_id["checkpoint"], by_id["vae"]
    update = event(demo, by_id["refresh_models"], "refresh_models").fn(
        {checkpoint: "fake-inpainting.safetensors", vae: "gone.safetensors"})
    assert fake.refresh_count == 1
    assert "fake-new.safetensors" in update[checkpoint]["choices"]
    assert update[checkpoint]["value"] == "fake-inpainting.safetensors" and update[vae]["value"] == "Automatic"


def test_interrupt_and_skip_act_on_the_sessions_job(built):
    fake, demo, by_id = built
    job_id = fake.submit("session-1", "fake-v1.safetensors", None, {"steps": 50})
    interrupt = event(demo, by_id["txt2img_interrupt"], "act")
    skip = event(demo, by_id["txt2img_skip"], "act")
    job_state = interrupt.inputs[0]
    skip.fn({job_state: job_id}, FakeRequest())
    interrupt.fn({job_state: None}, FakeRequest())  # no job yet: nothing happens
    interrupt.fn({job_state: job_id}, FakeRequest("someone-else"))  # not theirs: ignored, no error
    assert fake.status("session-1", job_id).state in ("queued", "running")  # skip ends one image, not the job
    interrupt.fn({job_state: job_id}, FakeRequest())
    deadline = time.monotonic() + 5
    while not fake.status("session-1", job_id).finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.status("session-1", job_id).state == "interrupted"


def test_settings_apply_shows_notes_or_the_setting_in_error(built):
    fake, demo, by_id = built
    save = event(demo, by_id["settings_apply"], "save")
    values = {c: fake.settings()[c.elem_id.removeprefix("setting_")] for c in save.inputs}
    by_name = {c.elem_id.removeprefix("setting_"): c for c in save.inputs}
    assert "Settings saved." in save.fn(values)
    assert "takes effect after a restart" in save.fn({**values, by_name["attention"]: "sliced"})
    error = save.fn({**values, by_name["preview_every"]: 500})
    assert "<strong>preview_every</strong>" in error and "an integer from 0 to 100" in error


def test_send_to_inpaint_puts_image_and_parameters_into_the_tab(built):
    fake, demo, by_id = built
    send = event(demo, by_id["txt2img_send_inpaint"], "send")
    images_state, selected_state = sorted(send.inputs, key=lambda c: c._id)
    first, second = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
    second.info["parameters"] = "a blue square\nSteps: 9, Sampler: Euler, Seed: 77"
    update = send.fn({images_state: [first, second], selected_state: 1})
    editor = by_id["inpaint_editor"]
    assert update[editor]["background"] is second and update[editor]["layers"] == []
    assert editor.postprocess(update[editor]).background is not None  # a value the editor can show
    assert update[by_id["inpaint_prompt"]] == "a blue square" and update[by_id["inpaint_steps"]] == 9
    assert update[by_id["inpaint_seed"]] == 77 and update[by_id["inpaint_sampler"]] == "Euler"
    with pytest.warns(UserWarning, match="Nothing to send"):  # nothing generated yet: a warning, no change
        assert send.fn({images_state: [], selected_state: 0}) == {}


def test_uploads_of_16_bit_images_are_scaled_not_clipped_to_white(served, tmp_path):
    """Gradio would convert with Pillow, which turns a 16-bit mid-grey into white."""
    import numpy as np

    fake, client, _ = served
    path = tmp_path / "depth16.png"
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(path)
    client.predict(init_image=None, depth_map=handle_file(str(path)), prompt="depth", api_name="/depth")
    assert fake.requests[-1].depth_map.convert("L").getpixel((0, 0)) == 128
    client.predict(init_image=handle_file(str(path)), prompt="img", api_name="/img2img")
    assert fake.requests[-1].init_image.convert("L").getpixel((0, 0)) == 128
