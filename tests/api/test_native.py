"""Our own API (/api/v1) on the real app: submit, follow (status and events), fetch images, cancel, and
its OpenAPI schema."""

from __future__ import annotations

import json
import time

import requests
from PIL import Image

from webui.outputs import read_infotext

from .conftest import SMALL, b64, unb64


def wait_done(url, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/api/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "interrupted"):
            return job
        time.sleep(0.05)
    raise TimeoutError(job_id)


def test_submit_follow_and_fetch_the_images(local_app):
    url, _ = local_app
    submitted = requests.post(f"{url}/api/v1/jobs", json={"prompt": "a boat", "seed": 5, "batch_size": 2, **SMALL})
    assert submitted.status_code == 202
    job = wait_done(url, submitted.json()["id"])
    assert job["state"] == "done" and job["seeds"] == [5, 6] and len(job["images"]) == 2
    assert "Sampler: DPM++ 2M" in job["infotexts"][0]  # the app's default sampler (Settings), not A1111's API's
    image = requests.get(url + job["images"][1])
    assert image.headers["content-type"] == "image/png"
    png = unb64_bytes(image.content)
    assert png.size == (64, 64) and read_infotext(png) == job["infotexts"][1]
    assert requests.get(f"{url}/api/v1/jobs/{job['id']}/images/7").status_code == 404
    assert job["id"] in [j["id"] for j in requests.get(f"{url}/api/v1/jobs").json()]


def unb64_bytes(raw: bytes) -> Image.Image:
    import io

    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def test_images_controlnet_units_and_model_choice_in_a_request(local_app):
    url, _ = local_app
    control = Image.new("RGB", (64, 64))
    control.paste((255, 255, 255), (10, 10, 40, 40))
    body = {"prompt": "a door", "init_image": b64(Image.new("RGB", (64, 64), "gray")), "denoising_strength": 0.6,
            "checkpoint": "tiny", "extensions": {"controlnet": {"units": [{"model": "edges", "image": b64(control),
                                                                          "module": "canny"}]}}, **SMALL}
    job = wait_done(url, requests.post(f"{url}/api/v1/jobs", json=body).json()["id"])
    assert job["state"] == "done", job["error"]
    assert "Denoising strength: 0.6" in job["infotexts"][0] and "ControlNet 0: " in job["infotexts"][0]


def test_events_stream_the_job_until_it_ends(local_app):
    url, _ = local_app
    job_id = requests.post(f"{url}/api/v1/jobs", json={"prompt": "stream", "steps": 4, "width": 64,
                                                         "height": 64}).json()["id"]
    with requests.get(f"{url}/api/v1/jobs/{job_id}/events", stream=True, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = []
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                if name == "end":
                    break
    statuses = [data for name, data in events if name == "status"]
    assert events[-1] == ("end", {"id": job_id, "state": "done"})
    assert statuses[-1]["state"] == "done" and len(statuses[-1]["images"]) == 1
    steps = [s["step"] for s in statuses if s["state"] == "running"]
    assert steps == sorted(steps)


def test_a_waiting_job_is_cancelled_and_never_runs(local_app):
    url, _ = local_app
    long_id = requests.post(f"{url}/api/v1/jobs", json={"prompt": "long", "steps": 150, "width": 64, "height": 64,
                                                          "batch_count": 3}).json()["id"]
    waiting = requests.post(f"{url}/api/v1/jobs", json={"prompt": "waiting", **SMALL}).json()
    assert waiting["state"] == "queued" and waiting["queue_position"] >= 1
    cancelled = requests.delete(f"{url}/api/v1/jobs/{waiting['id']}").json()
    assert cancelled["state"] == "interrupted" and cancelled["images"] == []
    requests.delete(f"{url}/api/v1/jobs/{long_id}")
    assert wait_done(url, long_id)["state"] == "interrupted"
    assert requests.get(f"{url}/api/v1/jobs/{waiting['id']}").json()["step"] == 0  # it never ran


def test_errors_name_the_field(local_app):
    url, _ = local_app
    for body, field in (({"steps": "20"}, "steps"), ({"width": 65}, "width"), ({"sampler_name": "Fast"}, "sampler_name"),
                        ({"init_image": "not an image"}, "init_image"), ({"checkpoint": "nope"}, "checkpoint")):
        response = requests.post(f"{url}/api/v1/jobs", json={"prompt": "x", **body})
        assert response.status_code in (404, 422), (body, response.text)
        assert response.json()["error"]["field"] == field, (body, response.json())
    assert requests.get(f"{url}/api/v1/jobs/0123456789abcdef").status_code == 404


def test_a_job_that_fails_says_why(local_app):
    url, _ = local_app
    job = wait_done(url, requests.post(f"{url}/api/v1/jobs", json={"prompt": "x", "depth": True,
                                                                  "init_image": b64(Image.new("RGB", (64, 64))),
                                                                  **SMALL}).json()["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "invalid_value"
    assert job["error"]["field"] == "checkpoint" and "depth" in job["error"]["message"]


def test_the_openapi_schema_documents_the_routes_and_the_request(local_app):
    url, _ = local_app
    schema = requests.get(f"{url}/api/v1/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/jobs/{job_id}/images/{index}", "/models"} <= set(
        schema["paths"])
    request = schema["components"]["schemas"]["JobRequest"]["properties"]
    assert {"prompt", "steps", "init_image", "depth_map", "extensions", "checkpoint"} <= set(request)
    sdapi = requests.get(f"{url}/sdapi/v1/openapi.json").json()
    assert {"/txt2img", "/img2img", "/progress", "/options"} <= set(sdapi["paths"])
    models = requests.get(f"{url}/api/v1/models").json()
    assert models["checkpoints"] == ["tiny.safetensors", "v1-inpaint.safetensors"] and "Euler" in models["samplers"]
