"""The bad-input catalogue (shared/reference/security.md, section 6): one test per row, through the real app.

Each row's input gets its specified answer, and afterwards nothing is lost (an autouse check): the server
still serves, the loaded model is the same one, the settings file and the saved outputs are unchanged
(except where a row is about saving).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from webui.ui.feedback import error_html

from ..engine.models.tiny_checkpoints import Recipe, make_checkpoint
from .conftest import SMALL, b64, start, unb64

CANARY_NAME = "pwned-by-pickle"


class Canary:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app with bad files beside the good ones, and extensions that misbehave."""
    root = tmp_path_factory.mktemp("catalogue")
    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "zero.safetensors").write_bytes(b"")
    (checkpoints / "huge-header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    good = make_checkpoint(Recipe("sd1"), seed=9)
    save_file(good, str(checkpoints / "cut.safetensors"))
    data = (checkpoints / "cut.safetensors").read_bytes()
    (checkpoints / "cut.safetensors").write_bytes(data[: len(data) // 2])
    save_file({k[len("first_stage_model."):]: v for k, v in good.items() if k.startswith("first_stage_model.")},
              str(checkpoints / "a-vae.safetensors"))
    save_file({"random.key": torch.zeros(3)}, str(checkpoints / "random.safetensors"))
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)},
                "x": Canary(root / CANARY_NAME)}, checkpoints / "evil.ckpt")
    loras = root / "models" / "loras"
    loras.mkdir(parents=True)
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q.lora_up.weight": torch.zeros(640, 4)},
              str(loras / "xl-style.safetensors"))
    extensions = root / "extensions"
    for name, code in (("raiser", "@hookimpl\ndef postprocess_image(image):\n    raise RuntimeError('kaboom')\n"),
                       ("typo", "@hookimpl\ndef on_genrate(step):\n    pass\n"),
                       ("broken", "this is not python\n")):
        (extensions / name).mkdir(parents=True)
        (extensions / name / "extension.yaml").write_text(f"name: {name}\nversion: '1'\napi_version: '1.0'\n")
        (extensions / name / "__init__.py").write_text("from webui.plugins import hookimpl\n" + code)
    url, demo = start(root)  # start() adds the good models
    requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, timeout=30)  # "a-vae" sorts first
    assert requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "warm up", **SMALL}, timeout=120).ok
    yield url, root, demo
    demo.close()


def fingerprint(root: Path) -> dict[str, str]:
    files = sorted((root / "outputs").rglob("*")) + [root / "settings.json"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


@pytest.fixture(autouse=True)
def nothing_lost(request, app):
    url, root, demo = app
    before, model = fingerprint(root), demo.service.store.current
    yield
    assert requests.get(f"{url}/sdapi/v1/options", timeout=30).status_code == 200  # still serving
    assert demo.service.store.current is model  # the same model object: never unloaded or half-loaded
    if "saves" not in request.keywords:
        assert fingerprint(root) == before  # settings and saved outputs untouched


def txt2img(url, **fields):
    return requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **fields}, timeout=120)


def img2img(url, **fields):
    return requests.post(f"{url}/sdapi/v1/img2img", json={"prompt": "x", **SMALL, **fields}, timeout=120)


def refused(response, field, status=422, fragment=""):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert fragment in error["message"], error
    return error


SOURCE = b64(Image.new("RGB", (64, 64), (30, 120, 200)))


def png_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_row_01_a_size_not_a_multiple_of_8(app):
    refused(txt2img(app[0], width=513), "width", fragment="a multiple of 8")


@pytest.mark.parametrize("value", [0, -64])
def test_row_02_a_size_of_zero_or_less(app, value):
    refused(txt2img(app[0], height=value), "height")


def test_row_03_a_huge_size_is_refused_before_any_allocation(app):
    refused(txt2img(app[0], width=100_000, height=100_000), "width")
    refused(txt2img(app[0], width=2048, height=2048, batch_size=8), "width", fragment="pixel budget")
    refused(txt2img(app[0], enable_hr=True, hr_scale=4, width=1024, height=1024, batch_size=2), "hr_scale",
            fragment="pixel budget")


@pytest.mark.parametrize("field, value", [("batch_size", 1000), ("n_iter", 1000)])
def test_row_04_a_huge_batch(app, field, value):
    refused(txt2img(app[0], **{field: value}), {"n_iter": "batch_count"}.get(field, field))


@pytest.mark.parametrize("value", [0, -1, 10**9, 20.5, True, "20"])
def test_row_05_bad_steps(app, value):
    refused(txt2img(app[0], steps=value), "steps")


@pytest.mark.parametrize("body", ['"cfg_scale": NaN', '"cfg_scale": Infinity', '"cfg_scale": 1e309', '"cfg_scale": -5'])
def test_row_06_bad_cfg_scale(app, body):
    response = requests.post(f"{app[0]}/sdapi/v1/txt2img", data="{" + body + ', "steps": 2}',
                             headers={"Content-Type": "application/json"}, timeout=60)
    refused(response, "cfg_scale")


@pytest.mark.parametrize("value", [2**80, -(2**63) - 1, 1.5, 2**32])
def test_row_07_a_seed_out_of_range(app, value):
    refused(txt2img(app[0], seed=value), "seed")


def test_row_07_seed_minus_one_is_a_random_seed_resolved_first(app):
    seeds = {json.loads(txt2img(app[0], seed=-1).json()["info"])["seed"] for _ in range(2)}
    assert all(0 <= s < 2**32 for s in seeds) and len(seeds) == 2


def test_row_08_an_unknown_sampler_lists_the_valid_ones(app):
    refused(txt2img(app[0], sampler_name="Eulr"), "sampler_name", fragment="Euler a")


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_row_09_denoising_strength_out_of_range(app, value):
    refused(img2img(app[0], init_images=[SOURCE], denoising_strength=value), "denoising_strength")


def test_row_09_strength_zero_gives_the_input_back(app):
    """As far as the VAE gives any image back: the result is the input's VAE round trip."""
    from webui.engine.pipelines import PipelineContext
    from webui.engine.pipelines.steps import decode, encode

    out = unb64(img2img(app[0], init_images=[SOURCE], denoising_strength=0.0).json()["images"][0])
    ctx = PipelineContext(app[2].service.store.current)
    round_trip = decode(ctx, encode(ctx, unb64(SOURCE)))[0]
    difference = np.abs(np.asarray(out, np.int16) - np.asarray(round_trip, np.int16)).mean()
    assert difference < 2


@pytest.mark.parametrize("prompt", ["", "   "])
def test_row_10_an_empty_prompt_is_allowed(app, prompt):
    response = txt2img(app[0], prompt=prompt)
    assert response.status_code == 200, response.text


def test_row_11_a_long_prompt_is_chunked_not_cut(app):
    prompt = " ".join(["circle"] * 300)
    response = txt2img(app[0], prompt=prompt)
    assert response.status_code == 200 and json.loads(response.json()["info"])["prompt"] == prompt


def test_row_12_a_huge_prompt_is_refused(app):
    start = time.perf_counter()
    refused(txt2img(app[0], prompt="word " * 200_000), "prompt", fragment="at most 16,384 characters")
    refused(txt2img(app[0], prompt="word " * 3000), "prompt", fragment="at most 16 chunks")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("prompt", ["((a)", "a))", "(word:abc)", "(word:1e400)", "[a:b:", "[|", "[a:b:0.25]", "\\(",
                                    "(" * 1000 + "deep" + ")" * 1000, "[" * 500])
def test_row_13_malformed_weighting_never_fails(app, prompt):
    response = txt2img(app[0], prompt=prompt)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("prompt", ["zero\u200bwidth", "rtl \u202e override", "nul\x00byte", "lone \ud800 surrogate",
                                    "emoji \U0001f3a8", "CJK 𠀀 字", "e\u0301 composed"])
def test_row_14_unicode_is_accepted_or_normalised(app, prompt):
    response = requests.post(f"{app[0]}/sdapi/v1/txt2img", timeout=120, headers={"Content-Type": "application/json"},
                             data=json.dumps({"prompt": prompt, **SMALL}).encode())
    assert response.status_code == 200, response.text
    text = json.loads(response.json()["info"])["infotexts"][0]
    assert "\x00" not in text and "\ud800" not in text and (prompt != "e\u0301 composed" or "\u00e9" in text)


@pytest.mark.parametrize("tag, notice", [("<lora:missing:1>", "no LoRA named 'missing'"), ("<lora:x:abc>", None),
                                         ("<lora::0.5>", None)])
def test_row_15_missing_or_malformed_lora_tags(app, tag, notice):
    response = txt2img(app[0], prompt=f"a cat {tag}")
    assert response.status_code == 200
    notices = json.loads(response.json()["info"])["notices"]
    assert (notice is None and notices == []) or any(notice in n for n in notices)


def test_row_16_a_decompression_bomb_is_refused_at_once(app):
    start = time.perf_counter()
    response = img2img(app[0], init_images=[b64_raw(png_claiming(100_000, 100_000))])
    refused(response, "init_images[0]", fragment="pixels")
    assert time.perf_counter() - start < 2


def b64_raw(raw: bytes) -> str:
    import base64
    return base64.b64encode(raw).decode()


def test_row_17_a_truncated_image(app):
    raw = encoded(Image.effect_noise((64, 64), 40).convert("RGB"))
    refused(img2img(app[0], init_images=[b64_raw(raw[: len(raw) // 2])]), "init_images[0]", fragment="truncated")


def encoded(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("raw", [b"%PDF-1.7 ...", b"<html><script>alert(1)</script></html>",
                                 b'<svg onload="alert(1)"/>', b"PK\x03\x04zip", b"MZ\x90\x00exe renamed .png"])
def test_row_18_a_non_image_upload(app, raw):
    refused(img2img(app[0], init_images=[b64_raw(raw)]), "init_images[0]", fragment="not an image")


def test_row_19_cmyk_16_bit_and_palette_images_are_converted(app):
    for image, fmt in ((Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"),
                       (Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16)), "PNG"),
                       (Image.new("RGB", (64, 64), "blue").convert("P"), "PNG"),
                       (Image.new("LA", (64, 64)), "PNG"), (Image.new("1", (64, 64)), "PNG")):
        assert img2img(app[0], init_images=[b64_raw(encoded(image, fmt))]).status_code == 200, image.mode


def test_row_20_bad_masks(app):
    refused(img2img(app[0], init_images=[SOURCE], mask=b64(Image.new("L", (32, 32), 255))), "mask",
            fragment="the size of init_images[0]")
    refused(img2img(app[0], init_images=[SOURCE], mask=b64(Image.new("L", (64, 64), 0))), "mask",
            fragment="a mask with some white")
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)))
    assert img2img(app[0], init_images=[SOURCE], mask=b64(gradient)).status_code == 200  # made binary
    assert img2img(app[0], init_images=[SOURCE], mask=b64(Image.new("L", (64, 64), 255))).status_code == 200


def test_row_21_the_depth_tab_without_an_estimator(app):
    job = requests.post(f"{app[0]}/api/v1/jobs", json={"prompt": "x", "depth": True, "init_image": SOURCE, **SMALL},
                        timeout=30).json()
    deadline = time.monotonic() + 60
    while job["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        job = requests.get(f"{app[0]}/api/v1/jobs/{job['id']}", timeout=30).json()
        time.sleep(0.05)
    assert job["state"] == "failed" and job["error"]["field"] in ("checkpoint", "depth_map"), job


@pytest.mark.parametrize("text", ["!!!not base64!!!", "data:text/plain;base64,aGVsbG8=", "data:image/png,raw"])
def test_row_22_malformed_base64_or_data_url(app, text):
    refused(img2img(app[0], init_images=[text]), "init_images[0]")


@pytest.mark.parametrize("url", ["http://127.0.0.1:22/x.png", "http://169.254.169.254/latest/meta-data",
                                 "file:///etc/passwd", "https://10.0.0.1/a.png"])
def test_row_23_image_urls_are_not_fetched(app, url):
    refused(img2img(app[0], init_images=[url]), "init_images[0]", fragment="not base64")


def test_row_24_a_misspelled_checkpoint(app):
    error = refused(requests.post(f"{app[0]}/sdapi/v1/options", json={"sd_model_checkpoint": "tinny"}, timeout=30),
                    "sd_model_checkpoint", status=404)
    assert "did you mean tiny.safetensors" in error["message"]
    refused(txt2img(app[0], override_settings={"sd_model_checkpoint": "tinny"}), "checkpoint", status=404)


@pytest.mark.parametrize("name, fragment", [("zero", "empty"), ("cut", "truncated"),
                                            ("huge-header", "header"), ("a-vae", "this is a VAE"),
                                            ("random", "not a Stable Diffusion checkpoint")])
def test_rows_25_26_damaged_or_wrong_files_leave_the_model_loaded(app, name, fragment):
    response = txt2img(app[0], override_settings={"sd_model_checkpoint": name})
    assert response.status_code == 422 and fragment in response.json()["error"]["message"], response.text
    assert txt2img(app[0]).status_code == 200


def test_row_27_a_lora_for_another_model_is_skipped_with_a_warning(app):
    response = txt2img(app[0], prompt="a cat <lora:xl-style:1>")
    assert response.status_code == 200
    assert json.loads(response.json()["info"])["notices"]


def test_row_28_a_malicious_pickle_is_refused_and_runs_nothing(app):
    url, root, _ = app
    response = txt2img(url, override_settings={"sd_model_checkpoint": "evil.ckpt"})
    assert response.status_code == 422 and "refused" in response.json()["error"]["message"]
    assert not (root / CANARY_NAME).exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\..\\x", "%2e%2e%2f", "/abs/path", "C:\\x", "\\\\host\\share",
                                  "tiny\x00.safetensors", "TINY.SAFETENSORS", "checkpoints/../tiny"])
def test_row_29_names_only_from_the_lists(app, name):
    url = app[0]
    refused(requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": name}, timeout=30),
            "sd_model_checkpoint", status=404)
    refused(txt2img(url, override_settings={"sd_vae": name}), "vae", status=404)
    refused(txt2img(url, refiner_checkpoint=name), "refiner_checkpoint", status=404)
    unit = {"model": name, "image": SOURCE}
    refused(txt2img(url, alwayson_scripts={"controlnet": {"args": [unit]}}), "controlnet.units[].model", status=404)
    assert requests.get(f"{url}/api/v1/jobs/{name}", timeout=30).status_code == 404


def test_row_30_an_extension_that_raises_never_fails_a_generation(app):
    response = txt2img(app[0])
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    notices = json.loads(response.json()["info"])["notices"]
    assert any("Extension 'raiser' failed in postprocess_image: RuntimeError: kaboom" in n for n in notices) or \
        app[2].service.manager.record("raiser").status == "stopped"


def test_rows_31_32_bad_extensions_are_reported_and_the_app_started(app):
    manager = app[2].service.manager
    assert manager.record("typo").status == "failed" and "on_genrate" in manager.record("typo").error
    assert manager.record("broken").status == "failed" and "NameError" in manager.record("broken").error


@pytest.mark.parametrize("url", ["file:///etc", "ext::sh -c touch% /tmp/x", "ssh://-oProxyCommand=x/y", "http://a.b/c",
                                 "https://host/../x"])
def test_row_33_extension_install_urls_are_refused(app, url):
    from webui.errors import WebUIError

    with pytest.raises(WebUIError):
        app[2].service.install_extension(url)


def test_rows_34_35_interrupting_a_waiting_job_and_a_sampling_one(app):
    url = app[0]
    running = requests.post(f"{url}/api/v1/jobs", json={"prompt": "long", "steps": 150, "width": 64, "height": 64},
                            timeout=30).json()
    waiting = requests.post(f"{url}/api/v1/jobs", json={"prompt": "next", **SMALL}, timeout=30).json()
    assert requests.delete(f"{url}/api/v1/jobs/{waiting['id']}", timeout=30).json()["state"] == "interrupted"
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/api/v1/jobs/{running['id']}", timeout=30).json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = time.monotonic()
    requests.delete(f"{url}/api/v1/jobs/{running['id']}", timeout=30)
    while requests.get(f"{url}/api/v1/jobs/{running['id']}", timeout=30).json()["state"] != "interrupted":
        assert time.monotonic() - stopped < 5  # at the next step
        time.sleep(0.02)
    assert txt2img(url).status_code == 200


def test_row_36_running_out_of_memory_is_a_clear_error_and_the_next_job_works(app, monkeypatch):
    vae = app[2].service.store.current.vae

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(vae, "decode", out_of_memory)  # whole and in tiles: every attempt fails
    response = txt2img(app[0])
    assert response.status_code == 503, response.text
    assert "out of memory at VAE decode (64x64, batch 1)" in response.json()["error"]["message"]
    monkeypatch.undo()
    assert txt2img(app[0]).status_code == 200


@pytest.mark.saves
def test_row_37_an_image_that_cannot_be_saved_is_still_returned(app):
    url, root, _ = app
    blocked = root / "outputs" / "txt2img-images"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    if blocked.is_dir():
        import shutil
        shutil.rmtree(blocked)
    blocked.write_text("a file where the folder should be")
    try:
        response = txt2img(url, save_images=True)
        assert response.status_code == 200 and len(response.json()["images"]) == 1
        assert any("Could not save the image" in n for n in json.loads(response.json()["info"])["notices"])
        assert [p.name for p in (root / "outputs").rglob("*.tmp")] == []  # nothing partial left
    finally:
        blocked.unlink()


def test_row_38_a_huge_upload_is_refused_before_it_is_read(app):
    response = requests.post(f"{app[0]}/sdapi/v1/img2img", data=b"x" * (65 << 20),
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413


def test_row_39_deep_json_and_wrong_content_types(app):
    url = app[0]
    deep = "[" * 100_000 + "]" * 100_000
    response = requests.post(f"{url}/sdapi/v1/txt2img", data=deep, headers={"Content-Type": "application/json"},
                             timeout=60)
    assert 400 <= response.status_code < 500
    response = requests.post(f"{url}/sdapi/v1/txt2img", data="prompt=x",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
    assert response.status_code == 415


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}])
def test_row_40_cross_origin_writes(app, headers):
    response = requests.post(f"{app[0]}/sdapi/v1/txt2img", json={"prompt": "x"}, headers=headers, timeout=30)
    assert response.status_code == 403
    response = requests.post(f"{app[0]}/gradio_api/queue/join", json={}, headers=headers, timeout=30)
    assert response.status_code == 403


@pytest.mark.parametrize("key, value", [("outdir_samples", "../../extensions"), ("outdir_txt2img_samples", "/tmp"),
                                        ("samples_filename_pattern", "../[prompt]")])
def test_row_41_no_path_settings(app, key, value):
    refused(requests.post(f"{app[0]}/sdapi/v1/options", json={key: value}, timeout=30), key)


def test_row_42_markup_in_prompts_is_escaped_where_it_is_shown(app):
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
    response = txt2img(app[0], prompt=hostile, sampler_name=hostile)
    assert hostile in response.json()["error"]["message"]  # JSON carries it as data
    html = error_html(Exception(response.json()["error"]["message"]))  # the UI shows it escaped
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;" in html
    info = requests.post(f"{app[0]}/sdapi/v1/png-info", json={"image": b64(Image.new("RGB", (8, 8)))}, timeout=30)
    assert info.status_code == 200
    big = "Steps: 20, " + "A: " + "x" * (1 << 20)
    assert txt2img(app[0], infotext=big).status_code == 200
