"""AUTOMATIC1111's API (/sdapi/v1) on the real app: every route, its request shapes and defaults, its
response shapes (base64 images, `info` as a JSON string with the infotexts), and its errors."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from PIL import Image

from webui.outputs import read_infotext

from .conftest import SMALL, b64, unb64


def post(url, path, body, **kwargs):
    return requests.post(f"{url}/sdapi/v1/{path}", json=body, timeout=120, **kwargs)


def saved(root) -> set:
    return set((root / "outputs").rglob("*.png"))


def test_txt2img_returns_png_images_with_their_infotext_and_a1111_info(local_app):
    url, root = local_app
    before = saved(root)
    response = post(url, "txt2img", {"prompt": "a red circle", "seed": 42, "batch_size": 2, **SMALL})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"images", "parameters", "info"} and isinstance(body["info"], str)
    info = json.loads(body["info"])
    for key in ("prompt", "all_prompts", "seed", "all_seeds", "width", "height", "sampler_name", "cfg_scale", "steps",
                "sd_model_name", "sd_model_hash", "infotexts", "clip_skip", "version"):
        assert key in info, key
    assert info["all_seeds"] == [42, 43] and len(body["images"]) == 2
    images = [unb64(text) for text in body["images"]]
    assert images[0].size == (64, 64) and images[0].format == "PNG"
    assert read_infotext(images[1]) == info["infotexts"][1] and "Seed: 43" in info["infotexts"][1]
    # A1111's API defaults: Euler, and nothing saved unless save_images is true
    assert info["sampler_name"] == "Euler" and body["parameters"]["prompt"] == "a red circle"
    assert saved(root) == before


def test_save_images_and_send_images(local_app):
    url, root = local_app
    body = post(url, "txt2img", {"prompt": "kept", "seed": 987654, "save_images": True, "send_images": False,
                                 **SMALL}).json()
    assert body["images"] == []
    files = sorted((root / "outputs" / "txt2img-images").glob("*-987654.png"))
    assert len(files) == 1 and read_infotext(files[0]) == json.loads(body["info"])["infotexts"][0]


def test_img2img_and_inpainting(local_app):
    url, _ = local_app
    source = Image.new("RGB", (80, 64), (200, 40, 40))
    body = post(url, "img2img", {"init_images": [b64(source)], "prompt": "paint", "denoising_strength": 0.5,
                                 **SMALL}).json()
    assert "Denoising strength: 0.5" in json.loads(body["info"])["infotexts"][0]
    mask = Image.new("L", (80, 64))
    mask.paste(255, (0, 0, 40, 64))
    response = post(url, "img2img", {"init_images": [b64(source)], "mask": b64(mask), "prompt": "a door",
                                     "inpainting_fill": 1, **SMALL})
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "Mask blur: 4" in text and "Inpaint area: Only masked" in text  # A1111's API defaults
    assert unb64(response.json()["images"][0]).size == (80, 64)


def test_png_info_reads_the_parameters(local_app):
    url, _ = local_app
    png = post(url, "txt2img", {"prompt": "read me", "seed": 3, **SMALL}).json()["images"][0]
    info = post(url, "png-info", {"image": png}).json()
    assert info["info"].startswith("read me\n") and info["parameters"]["Seed"] == "3"
    assert post(url, "png-info", {"image": b64(Image.new("RGB", (8, 8)))}).json()["info"] == ""


def test_lists_and_refresh(local_app):
    url, root = local_app
    models = requests.get(f"{url}/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny.safetensors", "v1-inpaint.safetensors"]
    assert {"name", "aliases", "options"} <= set(requests.get(f"{url}/sdapi/v1/samplers").json()[0])
    assert "Karras" in [s["label"] for s in requests.get(f"{url}/sdapi/v1/schedulers").json()]
    assert requests.get(f"{url}/sdapi/v1/sd-vae").json() == []
    assert requests.get(f"{url}/sdapi/v1/loras").json() == []
    assert requests.get(f"{url}/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    memory = requests.get(f"{url}/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    (root / "models" / "loras" / "new.safetensors").write_bytes((root / "models" / "controlnet" / "edges.safetensors")
                                                                 .read_bytes())
    assert requests.get(f"{url}/sdapi/v1/loras").json() == []  # not rescanned yet
    assert post(url, "refresh-checkpoints", {}).status_code == 200
    assert [lora["name"] for lora in requests.get(f"{url}/sdapi/v1/loras").json()] == ["new"]


def test_options_choose_the_model_and_clip_skip_for_later_requests(local_app):
    url, _ = local_app
    options = requests.get(f"{url}/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "tiny.safetensors" and options["CLIP_stop_at_last_layers"] == 1
    missing = post(url, "options", {"sd_model_checkpoint": "v1-inpant"})
    assert missing.status_code == 404 and "did you mean v1-inpaint.safetensors" in missing.json()["error"]["message"]
    assert post(url, "options", {"outdir_samples": "/tmp"}).status_code == 422  # no path settings, no unknown ones
    assert post(url, "options", {"sd_model_checkpoint": "v1-inpaint", "CLIP_stop_at_last_layers": 2}).status_code == 200
    try:
        text = json.loads(post(url, "txt2img", {"prompt": "x", **SMALL}).json()["info"])["infotexts"][0]
        assert "Model: v1-inpaint" in text and "Clip skip: 2" in text
        per_request = {"prompt": "x", "override_settings": {"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 1,
                                                            "sd_checkpoint_cache": 3}, **SMALL}
        info = json.loads(post(url, "txt2img", per_request).json()["info"])
        assert "Model: tiny," in info["infotexts"][0] and "Clip skip" not in info["infotexts"][0]
        assert info["ignored_override_settings"] == ["sd_checkpoint_cache"]
    finally:
        post(url, "options", {"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 1})


def test_settings_by_a1111_names(local_app):
    url, _ = local_app
    assert post(url, "options", {"samples_save": False, "show_progress_every_n_steps": 2}).status_code == 200
    options = requests.get(f"{url}/sdapi/v1/options").json()
    assert (options["save_images"], options["preview_every"]) == (False, 2)
    bad = post(url, "options", {"preview_every": -3})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "preview_every"
    post(url, "options", {"samples_save": True, "preview_every": 1})


def test_progress_shows_the_running_job_and_interrupt_ends_it_with_what_is_done(local_app):
    url, _ = local_app
    result = {}

    def long_job():
        result["response"] = post(url, "txt2img", {"prompt": "slow", "seed": 1, "width": 64, "height": 64,
                                                   "steps": 150, "n_iter": 3})

    thread = threading.Thread(target=long_job)
    thread.start()
    deadline = time.monotonic() + 60
    progress = {}
    while time.monotonic() < deadline:
        progress = requests.get(f"{url}/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.1)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
    assert progress["current_image"] and unb64(progress["current_image"]).size[0] > 0
    assert requests.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    assert post(url, "interrupt", {}).status_code == 200
    thread.join(60)
    info = json.loads(result["response"].json()["info"])
    assert result["response"].status_code == 200 and info["interrupted"] and info["all_seeds"] == []


def test_a_controlnet_unit_through_alwayson_scripts(local_app):
    url, _ = local_app
    control = Image.new("RGB", (64, 64))
    control.paste((255, 255, 255), (8, 8, 40, 40))
    unit = {"image": b64(control), "module": "canny", "model": "edges [0123abcd]", "weight": 0.8, "mask": None,
            "resize_mode": "Crop and Resize", "low_vram": False, "processor_res": 512, "threshold_a": 100,
            "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0, "pixel_perfect": True,
            "enabled": True}
    response = post(url, "txt2img", {"prompt": "x", "alwayson_scripts": {"ControlNet": {"args": [unit]}}, **SMALL})
    assert response.status_code == 200, response.text
    assert 'ControlNet 0: "Module: canny, Model: edges [' in json.loads(response.json()["info"])["infotexts"][0]
    unknown = post(url, "txt2img", {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}, **SMALL})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "alwayson_scripts.ADetailer"
    bad = post(url, "txt2img", {"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [{**unit, "weight": 9}]}},
                                **SMALL})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "controlnet.units[0].weight"


@pytest.mark.parametrize("field, value", [("restore_faces", True), ("tiling", True), ("styles", ["cinematic"]),
                                          ("script_name", "x/y/z plot"), ("hr_sampler_name", "DDIM"),
                                          ("s_churn", 0.5)])
def test_what_this_server_does_not_do_is_refused_by_field_not_ignored(local_app, field, value):
    url, _ = local_app
    response = post(url, "txt2img", {"prompt": "x", field: value, **SMALL})
    assert response.status_code == 422 and response.json()["error"]["field"] == field


def test_an_infotext_fills_what_the_request_leaves_out(local_app):
    url, _ = local_app
    text = "a lighthouse\nNegative prompt: fog\nSteps: 3, Sampler: DDIM, CFG scale: 4.5, Seed: 77, Size: 64x64"
    info = json.loads(post(url, "txt2img", {"infotext": text, "cfg_scale": 6.0}).json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["seed"]) == ("a lighthouse", "fog", 3, 77)
    assert info["cfg_scale"] == 6.0 and info["sampler_name"] == "DDIM"  # given by the request: it wins


def test_the_a1111_client_library_works_unchanged(local_app):
    """webuiapi (PyPI), the Python client many tools use for AUTOMATIC1111's API."""
    import webuiapi

    url, _ = local_app
    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a cat", width=64, height=64, seed=11)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [11]
    result = api.img2img(images=[result.image], prompt="a dog", width=64, height=64, denoising_strength=0.5, seed=12)
    assert result.info["seed"] == 12 and "Sampler: Euler a" in result.info["infotexts"][0]
    unit = webuiapi.ControlNetUnit(image=Image.new("RGB", (64, 64), "white"), module="invert", model="edges",
                                   resize_mode="Just Resize")
    result = api.txt2img(prompt="a cat", width=64, height=64, controlnet_units=[unit])
    assert 'ControlNet 0: "Module: invert, Model: edges [' in result.info["infotexts"][0]
    assert [m["model_name"] for m in api.get_sd_models()] == ["tiny", "v1-inpaint"]
    assert "Euler a" in [s["name"] for s in api.get_samplers()]
    assert api.get_progress()["progress"] == 0
    api.interrupt()
    api.set_options({"CLIP_stop_at_last_layers": 1})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1
